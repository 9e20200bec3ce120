#!/usr/bin/env python3
"""Reference AutoAttack runs for `mpm-attack` (issue 6), on the same weights and data files.

Subcommands:

  demo   Makes a small synthetic 10-class 32x32 data set and trains a plain ResNet-18 (GELU,
         base width --width) on it with PGD adversarial training in PyTorch; writes
         weights.safetensors (every state_dict entry, num_batches_tracked as int64 scalars,
         contract A names) and data.safetensors (`input` [N,3,32,32] in [0,1], `target` [N]).

  run    Runs the reference AutoAttack on W + X and writes a report with contract B's fields
         (clean_accuracy, robust_accuracy, n, per_attack, robust) + its time, and optionally
         `adv` [N,3,H,W]. The reference is Croce & Hein's `autoattack` package (not on PyPI:
         install it from a checkout of fra31/auto-attack, or put that checkout on PYTHONPATH /
         pass --autoattack-path); without it, torchattacks' port (`pip install torchattacks`).

  scale  Makes a model and data at the paper's scale for throughput comparisons on a GPU: a
         ResNet-50 (GELU, base width --width, --num-classes outputs) with a seeded random
         initialisation and BN statistics taken from one pass over 32 other images (so the
         logits depend on the input), and --n smooth random 224x224 images
         labelled with the model's own strict-f32 predictions (clean accuracy 100%). It then
         picks the largest l-inf eps (4/255 halved until it holds) at which a 10-step PGD leaves at
         least 75% of the first 16 images correctly classified, so AutoAttack runs most of its
         budget in both tools, and writes it to scale.json. No training needed: the point is
         to time both tools on the same work at ResNet-50 / 224 px, where the demo model times
         per-call overhead.

  check-adv
         Re-evaluates an `mpm-attack` run in PyTorch: every sample the report counts as not
         robust (and clean-correct) must be misclassified by the PyTorch model on the `adv`
         file's example, within eps as f32 measures it (no tolerance for l-inf, 1e-6 relative
         for l2/l1: summation order) and in [0, 1]. Prints a summary; exit status 1 on any failure.

Examples:
  python3 scripts/autoattack_reference.py demo --out /tmp/aa_demo
  python3 scripts/autoattack_reference.py run --weights /tmp/aa_demo/weights.safetensors \
      --data /tmp/aa_demo/data.safetensors --arch resnet18 --act gelu --num-classes 10 \
      --norm Linf --eps 0.03137255 --report /tmp/aa_demo/ref.json
  python3 scripts/autoattack_reference.py check-adv --weights ... --data ... --report R.json --adv A.safetensors ...
"""

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mpm_reference as R  # noqa: E402

NOISE = 0.3


def load_model(args):
    sd = load_file(args.weights)
    w = sd["conv1.weight"].shape[0] if "conv1.weight" in sd else sd["segmenter.conv1.weight"].shape[0]
    head = getattr(args, "head", "none")
    model = R.build_model(args.arch, args.act, args.num_classes, head=head, width=w,
                          seg_classes=getattr(args, "seg_classes", None) or 3311)
    sd = {k: (v.long() if k.endswith("num_batches_tracked") else v) for k, v in sd.items()}
    model.load_state_dict(sd)
    model.eval()
    if head and head != "none":
        # Inference path: logits only (the MPM bypass is dropped).
        inner = model

        class Logits(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.m = inner

            def forward(self, x):
                return R.forward_any(self.m, x)[0]

        model = Logits().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_data(path):
    t = load_file(path)
    return t["input"].float(), t["target"].long()


# ----------------------------------------------------------------------------- demo


def synth(n, gen, templates):
    k = templates.shape[0]
    y = torch.randint(0, k, (n,), generator=gen)
    base = templates[y]  # [n,3,32,32]
    shift = torch.randint(-4, 5, (n, 2), generator=gen)
    x = torch.stack([torch.roll(base[i], shifts=(int(shift[i, 0]), int(shift[i, 1])), dims=(1, 2))
                     for i in range(n)])
    x = x * (0.7 + 0.6 * torch.rand(n, 1, 1, 1, generator=gen))
    x = x + NOISE * torch.randn(x.shape, generator=gen)
    return (0.5 + x).clamp(0, 1), y


def cmd_demo(a):
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    k = 10
    low = torch.randn(k, 3, 4, 4, generator=gen)
    global NOISE
    NOISE = a.noise
    templates = a.amplitude * F.interpolate(low, size=(32, 32), mode="bilinear", align_corners=False)
    xtr, ytr = synth(a.train, gen, templates)
    xte, yte = synth(a.test, gen, templates)
    model = R.build_model("resnet18", "gelu", k, width=a.width)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    eps = a.train_eps
    steps = a.epochs * ((a.train + a.batch - 1) // a.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    t0 = time.time()
    for ep in range(a.epochs):
        perm = torch.randperm(a.train, generator=gen)
        for b in range(0, a.train, a.batch):
            idx = perm[b:b + a.batch]
            x, y = xtr[idx], ytr[idx]
            if eps > 0:
                model.eval()
                delta = (torch.rand_like(x) * 2 - 1) * eps
                for _ in range(2):
                    delta.requires_grad_(True)
                    loss = F.cross_entropy(model((x + delta).clamp(0, 1)), y)
                    g, = torch.autograd.grad(loss, delta)
                    delta = (delta + eps * g.sign()).clamp(-eps, eps).detach()
                x = (x + delta).clamp(0, 1)
            model.train()
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            acc = (model(xte).argmax(1) == yte).float().mean().item()
        print(f"epoch {ep}: loss {loss.item():.3f} test acc {acc:.3f} ({time.time() - t0:.0f} s)")
    os.makedirs(a.out, exist_ok=True)
    sd = {k2: v.detach().clone().contiguous() for k2, v in model.state_dict().items()}
    sd = {k2: (v.to(torch.int64) if k2.endswith("num_batches_tracked") else v.float()) for k2, v in sd.items()}
    save_file(sd, os.path.join(a.out, "weights.safetensors"))
    save_file({"input": xte.contiguous(), "target": yte.contiguous()},
              os.path.join(a.out, "data.safetensors"))
    print(f"wrote {a.out}/weights.safetensors and data.safetensors ({a.test} test images)")


# ----------------------------------------------------------------------------- scale


def still_correct_after_pgd(model, x, y, eps, steps=10):
    """Fraction of (x, y) still classified y after an l-inf PGD of radius eps."""
    delta = torch.zeros_like(x)
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model((x + delta).clamp(0, 1)), y)
        g, = torch.autograd.grad(loss, delta)
        delta = (delta + eps / 4 * g.sign()).clamp(-eps, eps).detach()
    with torch.no_grad():
        return (model((x + delta).clamp(0, 1)).argmax(1) == y).float().mean().item()


def cmd_scale(a):
    torch.backends.cudnn.allow_tf32 = False  # labels from strict f32 arithmetic
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    model = R.build_model(a.arch, "gelu", a.num_classes, width=a.width).to(a.device)
    calib = 32
    low = torch.rand(a.n + calib, 3, 14, 14, generator=gen)
    x = F.interpolate(low, size=(a.size, a.size), mode="bilinear", align_corners=False)
    x = (x + 0.05 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    # BN running statistics from one train-mode pass over separate images (a data-dependent
    # init): with PyTorch's default init and identity BN the activations vanish through 50
    # layers and every image gets the same logits; normalised, the logits follow the input.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # cumulative average: the statistics of this batch
        model.train()
        model(x[a.n:].to(a.device))
    x = x[:a.n]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        y = torch.cat([model(x[b:b + 32].to(a.device)).argmax(1).cpu() for b in range(0, a.n, 32)])
    print(f"labels: {len(set(y.tolist()))} distinct classes over {a.n} images")
    xs, ys = x[:16].to(a.device), y[:16].to(a.device)
    # Random-feature models are fragile (margins of a few 1e-2 against large input gradients),
    # so search down from 4/255 by halves.
    chosen, table, k = None, {}, 4.0
    while chosen is None and k >= 1e-4:
        acc = still_correct_after_pgd(model, xs, ys, k / 255)
        table[f"{k:.6g}/255"] = acc
        print(f"eps {k:.6g}/255: {100 * acc:.0f}% still correct after 10-step PGD")
        if acc >= 0.75:
            chosen = k / 255
        k /= 2
    chosen = chosen or k / 255
    os.makedirs(a.out, exist_ok=True)
    sd = {k2: v.detach().cpu().clone().contiguous() for k2, v in model.state_dict().items()}
    sd = {k2: (v.to(torch.int64) if k2.endswith("num_batches_tracked") else v.float()) for k2, v in sd.items()}
    save_file(sd, os.path.join(a.out, "weights.safetensors"))
    save_file({"input": x.contiguous(), "target": y.contiguous()}, os.path.join(a.out, "data.safetensors"))
    with open(os.path.join(a.out, "scale.json"), "w") as f:
        json.dump({"arch": a.arch, "width": a.width, "num_classes": a.num_classes, "n": a.n,
                   "size": a.size, "eps_linf": chosen, "pgd10_still_correct": table}, f, indent=1)
    print(f"wrote {a.out}: weights, data, scale.json (eps_linf {chosen:.8f})")


# ----------------------------------------------------------------------------- run


def cmd_run(a):
    torch.set_num_threads(a.threads or torch.get_num_threads())
    if a.autoattack_path:
        sys.path.insert(0, a.autoattack_path)
    dev = getattr(a, "device", None) or "cpu"
    model = load_model(a).to(dev)
    x, y = load_data(a.data)
    if a.limit:
        x, y = x[:a.limit], y[:a.limit]
    x, y = x.to(dev), y.to(dev)
    impl = None
    try:
        from autoattack import AutoAttack  # Croce & Hein's reference
        impl = "autoattack"
    except ImportError:
        import torchattacks  # noqa: F401
        impl = "torchattacks"
    t0 = time.time()
    c0 = time.process_time()
    if impl == "autoattack":
        attacks = [s for s in a.attacks.split(",") if s]
        version = "standard" if attacks == ["apgd-ce", "apgd-t", "fab-t", "square"] and \
            a.n_iter == 100 and a.square_queries == 5000 else "custom"
        aa = AutoAttack(model, norm=a.norm, eps=a.eps, version=version if version == "standard" else "standard",
                        seed=a.seed, device=dev, verbose=a.verbose)
        if version == "custom":
            aa.attacks_to_run = attacks
            aa.version = "custom"
            aa.apgd.n_iter = aa.apgd_targeted.n_iter = aa.fab.n_iter = a.n_iter
            aa.apgd.n_iter_orig = aa.apgd_targeted.n_iter_orig = a.n_iter
            for at in (aa.apgd, aa.apgd_targeted):
                at.n_iter_2 = max(int(0.22 * a.n_iter), 1)
                at.n_iter_min = max(int(0.06 * a.n_iter), 1)
                at.size_decr = max(int(0.03 * a.n_iter), 1)
            aa.square.n_queries = a.square_queries
        # Per-attack robust accuracy: the reference logs it; recompute it by running the
        # attacks in sequence exactly as run_standard_evaluation does.
        per_attack = {}
        robust = None
        with torch.no_grad():
            clean = model(x).argmax(1) == y
        robust = clean.clone()
        adv = x.clone()
        for att in aa.attacks_to_run:
            idx = robust.nonzero().squeeze(1)
            for b in range(0, idx.numel(), a.batch_size):
                bi = idx[b:b + a.batch_size]
                xb, yb = x[bi], y[bi]
                if att == "apgd-ce":
                    aa.apgd.loss = "ce"
                    aa.apgd.seed = aa.get_seed()
                    out = aa.apgd.perturb(xb, yb)
                elif att == "apgd-t":
                    aa.apgd_targeted.seed = aa.get_seed()
                    out = aa.apgd_targeted.perturb(xb, yb)
                elif att == "fab-t":
                    aa.fab.targeted = True
                    aa.fab.n_restarts = 1
                    aa.fab.seed = aa.get_seed()
                    out = aa.fab.perturb(xb, yb)
                elif att == "square":
                    aa.square.seed = aa.get_seed()
                    out = aa.square.perturb(xb, yb)
                else:
                    raise SystemExit(f"unsupported attack {att}")
                with torch.no_grad():
                    fooled = model(out).argmax(1) != yb
                robust[bi[fooled]] = False
                adv[bi[fooled]] = out[fooled]
            per_attack[att] = robust.float().mean().item()
    else:
        import torchattacks
        atk = torchattacks.AutoAttack(model, norm=a.norm, eps=a.eps, version="standard",
                                      n_classes=a.num_classes, seed=a.seed)
        adv = torch.cat([atk(x[b:b + a.batch_size], y[b:b + a.batch_size])
                         for b in range(0, len(y), a.batch_size)])
        with torch.no_grad():
            clean = model(x).argmax(1) == y
            robust = model(adv).argmax(1) == y
        robust &= clean
        per_attack = {}
    secs = time.time() - t0
    cpu_secs = time.process_time() - c0
    rep = {
        "implementation": impl,
        "clean_accuracy": clean.float().mean().item(),
        "robust_accuracy": robust.float().mean().item(),
        "n": int(len(y)),
        "per_attack": per_attack,
        "robust": [bool(v) for v in robust.tolist()],
        "norm": a.norm, "eps": a.eps, "seed": a.seed,
        "seconds": secs, "cpu_seconds": cpu_secs, "images_per_s": len(y) / secs,
        "torch_version": torch.__version__, "threads": torch.get_num_threads(),
    }
    with open(a.report, "w") as f:
        json.dump(rep, f, indent=1)
    if a.adv_out:
        save_file({"adv": adv.cpu().contiguous()}, a.adv_out)
    print(json.dumps({k: v for k, v in rep.items() if k != "robust"}))


# ----------------------------------------------------------------------------- check-adv


def cmd_check_adv(a):
    model = load_model(a)
    x, y = load_data(a.data)
    rep = json.load(open(a.report))
    n = rep["n"]
    x, y = x[:n], y[:n]
    adv = load_file(a.adv)["adv"].float()
    if adv.shape != x.shape:
        raise SystemExit(f"adv {tuple(adv.shape)} does not match input {tuple(x.shape)}")
    norm, eps = rep["norm"], rep["eps"]
    d = (adv - x).reshape(n, -1)
    dist = {"Linf": d.abs().max(1)[0], "L2": d.norm(dim=1), "L1": d.abs().sum(1)}[norm]
    # mpm-attack pulls examples strictly inside the ball (l-inf: exact in f32; l2/l1: scaled
    # to eps (1 - 1e-6)), so no tolerance beyond summation order is needed.
    eps = float(torch.tensor(eps, dtype=torch.float32))
    tol = 0.0 if norm == "Linf" else 1e-6 * eps
    with torch.no_grad():
        pred_adv = model(adv).argmax(1)
        pred_clean = model(x).argmax(1)
    clean = rep["clean"]
    bad = []
    n_fooled = 0
    for i in range(n):
        if clean[i] != bool(pred_clean[i] == y[i]):
            bad.append((i, "clean prediction differs from PyTorch's"))
        if clean[i] and not rep["robust"][i]:
            n_fooled += 1
            if pred_adv[i] == y[i]:
                bad.append((i, "adversarial example not misclassified by PyTorch"))
            if dist[i] > eps + tol:
                bad.append((i, f"{norm} distance {dist[i]:.6g} > eps {eps}"))
            if adv[i].min() < 0 or adv[i].max() > 1:
                bad.append((i, "outside [0, 1]"))
    print(json.dumps({"n": n, "fooled_checked": n_fooled, "failures": len(bad),
                      "max_dist": float(dist.max()), "eps": eps, "first_failures": bad[:10]}))
    sys.exit(1 if bad else 0)


def model_flags(p):
    p.add_argument("--weights", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--act", default="gelu")
    p.add_argument("--num-classes", type=int, required=True)
    p.add_argument("--head", default="none")
    p.add_argument("--seg-classes", type=int)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo")
    d.add_argument("--out", required=True)
    d.add_argument("--width", type=int, default=8)
    d.add_argument("--train", type=int, default=4000)
    d.add_argument("--test", type=int, default=500)
    d.add_argument("--epochs", type=int, default=6)
    d.add_argument("--batch", type=int, default=128)
    d.add_argument("--train-eps", type=float, default=8 / 255)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--noise", type=float, default=0.3)
    d.add_argument("--amplitude", type=float, default=0.12)
    sc = sub.add_parser("scale")
    sc.add_argument("--out", required=True)
    sc.add_argument("--arch", default="resnet50")
    sc.add_argument("--width", type=int, default=64)
    sc.add_argument("--num-classes", type=int, default=1000)
    sc.add_argument("--n", type=int, default=64)
    sc.add_argument("--size", type=int, default=224)
    sc.add_argument("--seed", type=int, default=0)
    sc.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    r = sub.add_parser("run")
    model_flags(r)
    r.add_argument("--norm", required=True, choices=["Linf", "L2", "L1"])
    r.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    r.add_argument("--eps", type=float, required=True)
    r.add_argument("--attacks", default="apgd-ce,apgd-t,fab-t,square")
    r.add_argument("--n-iter", type=int, default=100)
    r.add_argument("--square-queries", type=int, default=5000)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--batch-size", type=int, default=250)
    r.add_argument("--limit", type=int)
    r.add_argument("--threads", type=int)
    r.add_argument("--report", required=True)
    r.add_argument("--adv-out")
    r.add_argument("--autoattack-path")
    r.add_argument("--verbose", action="store_true")
    c = sub.add_parser("check-adv")
    model_flags(c)
    c.add_argument("--report", required=True)
    c.add_argument("--adv", required=True)
    a = ap.parse_args()
    {"demo": cmd_demo, "scale": cmd_scale, "run": cmd_run, "check-adv": cmd_check_adv}[a.cmd](a)


if __name__ == "__main__":
    main()
