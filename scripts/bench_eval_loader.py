#!/usr/bin/env python3
"""The reference side of `cargo bench --bench eval_loader`: the authors' evaluation loader per
image (PIL decode + torchvision `Resize(256, bicubic)` + `CenterCrop(224)` + `ToTensor()`, as in
their `eval_multi_dataset.py` with timm's crop_pct 0.875), on one thread.

    pip install torch torchvision pillow      # the shared venv has them
    python3 scripts/bench_eval_loader.py --images DIR [--transform shorter|squash] [--min-time 1]

DIR is an ImageFolder (DIR/<class>/<image>); every image is loaded in turn, repeatedly, until
--min-time seconds have passed. Prints one JSON line: {"images_per_s", "images", "versions"}.
`squash` is ImageNet-A-Plus's `Resize((256, 256))` (bilinear) + `CenterCrop(224)`.
"""
import argparse
import json
import os
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", required=True)
    ap.add_argument("--transform", default="shorter", choices=["shorter", "squash"])
    ap.add_argument("--min-time", type=float, default=1.0)
    a = ap.parse_args()

    import PIL
    import torch
    import torchvision
    from PIL import Image
    from torchvision import transforms as T

    torch.set_num_threads(1)
    bicubic = T.InterpolationMode.BICUBIC
    if a.transform == "shorter":
        tf = T.Compose([T.Resize(256, interpolation=bicubic), T.CenterCrop(224), T.ToTensor()])
    else:
        tf = T.Compose([T.Resize((256, 256)), T.CenterCrop(224), T.ToTensor()])
    paths = sorted(
        os.path.join(root, f)
        for root, _, files in os.walk(a.images)
        for f in files
        if f.lower().endswith((".jpeg", ".jpg", ".png"))
    )
    if not paths:
        sys.exit(f"no images under {a.images}")

    def load(p):
        with open(p, "rb") as f:
            return tf(Image.open(f).convert("RGB"))

    load(paths[0])  # warm-up (lazy imports, allocator)
    n, t0 = 0, time.perf_counter()
    while True:
        for p in paths:
            load(p)
            n += 1
        if time.perf_counter() - t0 >= a.min_time:
            break
    dt = time.perf_counter() - t0
    versions = {"python": sys.version.split()[0], "torch": torch.__version__,
                "torchvision": torchvision.__version__, "pillow": PIL.__version__}
    print(json.dumps({"images_per_s": n / dt, "images": len(paths), "versions": versions}))


if __name__ == "__main__":
    main()
