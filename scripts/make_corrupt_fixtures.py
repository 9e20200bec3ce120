#!/usr/bin/env python3
"""Reference fixtures and timings for `mpm-data corrupt` from the real `imagecorruptions` package.

    pip install imagecorruptions==1.1.2 numpy scipy scikit-image opencv-python-headless pillow
    python3 scripts/make_corrupt_fixtures.py fixtures      # rewrites tests/fixtures/corrupt/
    python3 scripts/make_corrupt_fixtures.py bench --images DIR [--corruptions a,b] [--min-time 1]
    python3 scripts/make_corrupt_fixtures.py corrupt --images DIR --out OUT [--corruptions a,b]

imagecorruptions 1.1.2 (2019) predates NumPy 2 and scikit-image 0.19; `load_package()` applies,
at run time and without touching the installed files, the three patches it needs today:
`np.float_` (removed in NumPy 2.0) is aliased to `np.float64`; skimage's `gaussian(...,
multichannel=True)` (removed in 0.19) is wrapped to pass `channel_axis=-1`; and a stand-in
`pkg_resources.resource_filename` is installed when setuptools no longer ships one.

`fixtures` writes (see tests/fixtures/corrupt/README.md):
  clean/<photo>.png                   four real photographs from scikit-image's data module
                                      (public domain / CC0), downscaled with Pillow's Lanczos;
  deterministic/<name>/<s>/<photo>.png  the package's outputs for the six corruptions that
                                      draw no random numbers;
  pinned/motion_blur/<s>/<photo>.png  motion blur with the angle fixed at 17 degrees;
  pinned/frost/<s>/<photo>.png        frost with picture index s - 1 and crop offset (5, 7);
  stats.json                          for the nine random corruptions, per severity: the mean
                                      absolute change from the clean image (grey levels, over
                                      all photos and DRAWS seeded draws) and the standard
                                      deviation of one draw's value; versions of every library.
"""
import argparse
import json
import os
import sys
import time
import types

import numpy as np

PHOTOS = {
    # name: (skimage.data loader, crop box as fractions (left, top, right, bottom), output size)
    "astronaut": ("astronaut", (0.0, 0.0, 1.0, 1.0), (96, 96)),
    "chelsea": ("chelsea", (0.0, 0.0, 1.0, 1.0), (120, 80)),
    "coffee": ("coffee", (0.0, 0.0, 1.0, 1.0), (105, 70)),
    "rocket": ("rocket", (0.25, 0.0, 0.75, 1.0), (64, 110)),
}
DRAWS = 12
DETERMINISTIC = ["defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate", "jpeg_compression"]
RANDOM = ["gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "motion_blur", "snow",
          "frost", "fog", "elastic_transform"]
PINNED_ANGLE = 17.0
PINNED_FROST_OFFSET = (5, 7)


def load_package():
    """Imports imagecorruptions 1.1.2 with the run-time patches described above."""
    if not hasattr(np, "float_"):
        np.float_ = np.float64
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        import importlib.util
        shim = types.ModuleType("pkg_resources")

        def resource_filename(package, resource):
            spec = importlib.util.find_spec(package)
            return os.path.join(os.path.dirname(spec.origin), resource)

        shim.resource_filename = resource_filename
        sys.modules["pkg_resources"] = shim
    import skimage.filters
    import imagecorruptions
    import imagecorruptions.corruptions as C

    def gaussian(image, sigma=1, multichannel=None, **kw):
        if multichannel:
            kw["channel_axis"] = -1
        return skimage.filters.gaussian(image, sigma=sigma, **kw)

    C.gaussian = gaussian
    return imagecorruptions, C


def versions():
    import cv2
    import PIL
    import scipy
    import skimage
    from PIL import features
    from importlib.metadata import version
    return {
        "imagecorruptions": version("imagecorruptions"),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "scikit-image": skimage.__version__,
        "opencv": cv2.__version__,
        "pillow": PIL.__version__,
        "libjpeg-turbo": features.version("libjpeg_turbo"),
        "python": sys.version.split()[0],
    }


def make_photos(out_dir):
    import skimage.data
    from PIL import Image
    os.makedirs(out_dir, exist_ok=True)
    photos = {}
    for name, (loader, box, size) in PHOTOS.items():
        arr = getattr(skimage.data, loader)()
        im = Image.fromarray(arr).convert("RGB")
        w, h = im.size
        im = im.crop((int(box[0] * w), int(box[1] * h), int(box[2] * w), int(box[3] * h)))
        im = im.resize(size, Image.LANCZOS)
        im.save(os.path.join(out_dir, name + ".png"))
        photos[name] = np.array(im)
    return photos


def save(arr, path):
    from PIL import Image
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path)


def mean_abs_change(a, b):
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def cmd_fixtures(args):
    ic, C = load_package()
    out = args.out
    photos = make_photos(os.path.join(out, "clean"))
    for name in DETERMINISTIC:
        for s in range(1, 6):
            for p, img in photos.items():
                save(ic.corrupt(img, corruption_name=name, severity=s),
                     os.path.join(out, "deterministic", name, str(s), p + ".png"))
    # Motion blur and frost with their random draws pinned.
    real_uniform, real_randint = np.random.uniform, np.random.randint
    try:
        np.random.uniform = lambda *a, **k: PINNED_ANGLE
        for s in range(1, 6):
            for p, img in photos.items():
                save(ic.corrupt(img, corruption_name="motion_blur", severity=s),
                     os.path.join(out, "pinned", "motion_blur", str(s), p + ".png"))
        for s in range(1, 6):
            calls = []

            def pinned_randint(low, high=None, size=None):
                calls.append((low, high))
                if high is None:  # randint(5): the picture index
                    return s - 1
                return PINNED_FROST_OFFSET[(len(calls) - 2) % 2]

            np.random.randint = pinned_randint
            for p, img in photos.items():
                calls.clear()
                save(ic.corrupt(img, corruption_name="frost", severity=s),
                     os.path.join(out, "pinned", "frost", str(s), p + ".png"))
    finally:
        np.random.uniform, np.random.randint = real_uniform, real_randint
    stats = {}
    for name in RANDOM:
        stats[name] = {}
        for s in range(1, 6):
            per_draw = []
            for d in range(DRAWS):
                np.random.seed(1000 * d + 10 * s + RANDOM.index(name))
                per_draw.append(np.mean([
                    mean_abs_change(ic.corrupt(img, corruption_name=name, severity=s), img)
                    for img in photos.values()]))
            stats[name][str(s)] = {
                "mean_abs_change": float(np.mean(per_draw)),
                "draw_std": float(np.std(per_draw, ddof=1)),
            }
            print(f"{name:18s} s{s}: {stats[name][str(s)]}", flush=True)
    meta = {
        "generator": "scripts/make_corrupt_fixtures.py fixtures",
        "versions": versions(),
        "photos": {p: list(img.shape) for p, img in photos.items()},
        "draws": DRAWS,
        "pinned": {"motion_blur_angle": PINNED_ANGLE, "frost_offset": list(PINNED_FROST_OFFSET),
                   "frost_picture": "severity - 1"},
        "random": stats,
    }
    with open(os.path.join(out, "stats.json"), "w") as f:
        json.dump(meta, f, indent=1)


def list_images(d):
    return sorted(os.path.join(d, f) for f in os.listdir(d)
                  if f.lower().endswith((".png", ".jpg", ".jpeg")))


def cmd_bench(args):
    import cv2
    from PIL import Image
    cv2.setNumThreads(1)
    ic, _ = load_package()
    imgs = [np.array(Image.open(p).convert("RGB")) for p in list_images(args.images)]
    names = ic.get_corruption_names() if args.corruptions == "all" else args.corruptions.split(",")
    result = {}
    for name in names:
        n, t0 = 0, time.perf_counter()
        while True:
            for s in range(1, 6):
                for img in imgs:
                    ic.corrupt(img, corruption_name=name, severity=s)
                    n += 1
            if time.perf_counter() - t0 >= args.min_time:
                break
        result[name] = n / (time.perf_counter() - t0)
    print(json.dumps({"images_per_s": result, "versions": versions()}))


def cmd_corrupt(args):
    from PIL import Image
    ic, _ = load_package()
    names = ic.get_corruption_names() if args.corruptions == "all" else args.corruptions.split(",")
    np.random.seed(args.seed)
    for p in list_images(args.images):
        img = np.array(Image.open(p).convert("RGB"))
        stem = os.path.splitext(os.path.basename(p))[0]
        for name in names:
            for s in range(1, 6):
                save(ic.corrupt(img, corruption_name=name, severity=s),
                     os.path.join(args.out, name, str(s), stem + ".png"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fixtures")
    f.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "corrupt"))
    b = sub.add_parser("bench")
    b.add_argument("--images", required=True)
    b.add_argument("--corruptions", default="all")
    b.add_argument("--min-time", type=float, default=1.0)
    c = sub.add_parser("corrupt")
    c.add_argument("--images", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--corruptions", default="all")
    c.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    {"fixtures": cmd_fixtures, "bench": cmd_bench, "corrupt": cmd_corrupt}[args.cmd](args)


if __name__ == "__main__":
    main()
