#!/usr/bin/env python3
"""PyTorch CPU baseline for the MPM engine benchmarks.

Model: ResNet-50-GELU + MPM head (S = 3311, levels 3, top-down), input 224x224, f32,
contiguous NCHW (PyTorch's default layout), built by scripts/mpm_reference.py.

  (a) full train step: train mode, forward, loss = CE_smooth(0.1) + 1.0 * focal(gamma 2)
      over the three seg levels, backward to every parameter gradient (no optimizer step);
  (b) input-gradient-only pass (the PGD / AutoAttack inner step): eval mode, parameters
      requires_grad=False, gradient of mean CE w.r.t. the input, through the inference
      model (backbone + classifier; the MPM bypass layers/heads are not evaluated).

Warm-up iterations are run first, then --repeats timed iterations; the median time per
iteration is reported.  Prints one JSON line:
  {"torch_version":..., "threads":..., "full_step_images_per_s":..., "input_grad_images_per_s":..., "batch":8, ...}

  python3 scripts/bench_pytorch.py [--batch 8] [--size 224] [--repeats 5] [--warmup 1] [--threads N]
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mpm_reference as R  # noqa: E402


def timed(fn, warmup, repeats):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), ts


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: PyTorch's)")
    ap.add_argument("--seg-classes", type=int, default=3311)
    ap.add_argument("--num-classes", type=int, default=1000)
    ap.add_argument("--only", choices=["full", "input_grad"], default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n, s = args.batch, args.size
    model = R.MPM("resnet50", 64, "gelu", args.num_classes, args.seg_classes, levels=3, top_down=True)
    x = torch.rand(n, 3, s, s)
    y = torch.randint(0, args.num_classes, (n,))
    with torch.no_grad():
        sizes = [tuple(t.shape[-2:]) for t in model.eval().segmenter.forward_stages(x[:1])]
    label_map = torch.randint(0, args.seg_classes, (n, s, s))
    seg_t = R.soft_seg_targets(label_map, args.seg_classes, sizes, 0.1)
    seg_w = torch.ones(n)

    def full_step():
        model.train()
        for p in model.parameters():
            p.grad = None
        logits, segs = model(x)
        loss = R.total_loss(logits, segs, y, seg_t, seg_w, 1.0, 2.0, 0.1)
        loss.backward()

    def input_grad():
        xi = x.clone().requires_grad_(True)
        logits = model.classify(xi)  # inference model: bypass layers dropped
        loss = torch.nn.functional.cross_entropy(logits, y)
        (g,) = torch.autograd.grad(loss, xi)
        return g

    out = {"torch_version": torch.__version__, "threads": torch.get_num_threads(), "batch": n,
           "size": s, "seg_classes": args.seg_classes, "repeats": args.repeats, "warmup": args.warmup}
    if args.only in (None, "full"):
        for p in model.parameters():
            p.requires_grad_(True)
        t, _ = timed(full_step, args.warmup, args.repeats)
        out["full_step_s"] = t
        out["full_step_images_per_s"] = n / t
    if args.only in (None, "input_grad"):
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        t, _ = timed(input_grad, args.warmup, args.repeats)
        out["input_grad_s"] = t
        out["input_grad_images_per_s"] = n / t
    print(json.dumps(out))


if __name__ == "__main__":
    main()
