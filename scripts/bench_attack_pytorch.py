#!/usr/bin/env python3
"""Reference throughput for `cargo bench --bench attack` (issue 6): the reference PyTorch
AutoAttack (Croce & Hein's `autoattack` package; see scripts/autoattack_reference.py for
how to make it importable) on the same weights and data, on this machine.

  (a) APGD-CE step: `APGDAttack(n_iter=K, n_restarts=1)` on one batch of B images;
      images x (K + 1) gradient evaluations / s (the reference runs every iteration whatever
      the outcome, as the engine does);
  (b) full AutoAttack "standard" (or the budgets given) on the first N images: images / s,
      wall and CPU (process_time) seconds, and the robust accuracy reached (throughput is only
      comparable at equal robust accuracy).

Prints one JSON line.

  python3 scripts/bench_attack_pytorch.py --weights W --data X --arch resnet18 --num-classes 10 \
      --norm Linf --eps 0.03137255 [--batch 16] [--iters 20] [--n 16] [--n-iter 100] \
      [--square-queries 5000] [--threads N] [--autoattack-path DIR] [--skip-full] [--skip-apgd]
"""

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import autoattack_reference as AR  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--act", default="gelu")
    ap.add_argument("--num-classes", type=int, required=True)
    ap.add_argument("--head", default="none")
    ap.add_argument("--seg-classes", type=int)
    ap.add_argument("--norm", default="Linf")
    ap.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    ap.add_argument("--eps", type=float, default=8 / 255)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--n-iter", type=int, default=100)
    ap.add_argument("--square-queries", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--autoattack-path")
    ap.add_argument("--skip-full", action="store_true")
    ap.add_argument("--skip-apgd", action="store_true")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.autoattack_path:
        sys.path.insert(0, a.autoattack_path)
    from autoattack.autopgd_base import APGDAttack

    model = AR.load_model(a).to(a.device)
    x, y = AR.load_data(a.data)
    x, y = x.to(a.device), y.to(a.device)
    out = {"torch_version": torch.__version__, "threads": torch.get_num_threads()}

    if not a.skip_apgd:
        xb, yb = x[:a.batch], y[:a.batch]
        atk = APGDAttack(model, n_iter=a.iters, norm=a.norm, n_restarts=1, eps=a.eps, seed=a.seed,
                         loss="ce", eot_iter=1, rho=.75, device=a.device)
        atk.init_hyperparam(xb)
        t0 = time.perf_counter()
        atk.attack_single_run(xb.clone(), yb.clone())
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        out["apgd_step_images_per_s"] = len(yb) * (a.iters + 1) / dt
        out["apgd_batch"] = len(yb)
        out["apgd_iters"] = a.iters

    if not a.skip_full:
        r = argparse.Namespace(**vars(a))
        r.attacks = "apgd-ce,apgd-t,fab-t,square"
        r.batch_size = a.n
        r.limit = a.n
        r.report = os.devnull
        r.adv_out = None
        r.verbose = False
        import io
        import contextlib
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            AR.cmd_run(r)
        rep = json.loads(buf.getvalue().strip().splitlines()[-1])
        out["autoattack_images_per_s"] = rep["images_per_s"]
        out["autoattack_seconds"] = rep["seconds"]
        out["autoattack_cpu_seconds"] = rep["cpu_seconds"]
        out["autoattack_n"] = rep["n"]
        out["clean_accuracy"] = rep["clean_accuracy"]
        out["robust_accuracy"] = rep["robust_accuracy"]
        out["per_attack"] = rep["per_attack"]
        out["implementation"] = rep["implementation"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
