#!/usr/bin/env python3
"""Reference fixtures for the data pipeline tests (tests/data_*.rs).

Writes, under tests/fixtures/data/:
  coco_masks.json    pycocotools `COCO.annToMask` on tricky and random segmentations;
                     expected masks as *uncompressed* column-major run lengths computed here with
                     numpy (independent of pycocotools' string codec), plus pycocotools' own
                     compressed string; `error: true` where pycocotools raises.
  soft_targets.json  DESIGN.md section 1 soft targets computed with PyTorch:
                     F.interpolate(nearest) to 28x28 (stored as the label map `n28`), one-hot
                     with smoothing, then bilinear (align_corners=False) to 14x14 and 7x7;
                     stored NHWC, float32 values printed with 9 significant digits.
  resize.json        Pillow `Image.resize(size, BICUBIC | NEAREST, box=crop)` (what torchvision's
                     resized_crop does on PIL images) of a small random RGB image and a label map
                     (mode I;16), for several crop boxes and output sizes, up and down.

Needs: numpy, pycocotools, torch, Pillow. Deterministic (numpy seed 1234). Run from the repo root:
    python3 scripts/make_data_fixtures.py
The Rust tests never run Python: they read the committed JSON files.
"""
import json
import os
import sys

import numpy as np
import pycocotools
from pycocotools import mask as mask_utils

OUT = os.path.join("tests", "fixtures", "data")


def col_major_runs(m):
    """Runs of 0/1 over the column-major flattening, starting with a run of 0s."""
    flat = np.asarray(m, dtype=np.uint8).flatten(order="F")
    runs, prev, c = [], 0, 0
    for v in flat:
        if v != prev:
            runs.append(c)
            c, prev = 0, v
        c += 1
    runs.append(c)
    return [int(r) for r in runs]


def ann_to_mask(segm, h, w):
    """pycocotools.coco.COCO.annToRLE + annToMask, without building a COCO object."""
    if isinstance(segm, list):
        rles = mask_utils.frPyObjects(segm, h, w)
        rle = mask_utils.merge(rles)
    elif isinstance(segm["counts"], list):
        rle = mask_utils.frPyObjects(segm, h, w)
    else:
        rle = segm
    return mask_utils.decode(rle), rle


def coco_cases():
    rng = np.random.default_rng(1234)
    cases = []

    def add(name, h, w, segm):
        case = {"name": name, "h": h, "w": w, "segmentation": segm}
        try:
            m, _ = ann_to_mask(segm, h, w)
            if m.shape != (h, w):
                case["error"] = True  # RLE of another size: Rust rejects it
            else:
                case["runs"] = col_major_runs(m)
                enc = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
                case["rle_string"] = enc["counts"].decode("ascii")
                case["area"] = int(m.sum())
        except Exception as e:  # pycocotools raises: Rust must report an error
            case["error"] = True
            case["pycocotools_error"] = type(e).__name__
        cases.append(case)

    add("square", 10, 12, [[1, 1, 5, 1, 5, 6, 1, 6]])
    add("fractional", 20, 17, [[1.3, 2.7, 14.45, 3.1, 9.9, 18.2, 0.51, 11.49]])
    add("half_coords", 16, 16, [[0.5, 0.5, 10.5, 0.5, 10.5, 10.5, 0.5, 10.5]])
    add("negative_and_outside", 15, 20, [[-5.2, -3.1, 25.4, 4.0, 12.0, 30.7]])
    add("entirely_outside", 15, 20, [[30, 30, 40, 30, 40, 40]])
    add("self_intersecting", 24, 24, [[2, 2, 20, 20, 20, 2, 2, 20]])
    add("two_rings", 30, 30, [[1, 1, 10, 1, 10, 10], [15, 15, 28, 16, 20, 28, 14, 22]])
    add("overlapping_rings", 30, 30, [[1, 1, 20, 1, 20, 20, 1, 20], [10, 10, 28, 10, 28, 28]])
    add("duplicate_vertices", 20, 20, [[3, 3, 3, 3, 15, 4, 15, 4, 9, 17, 3, 3]])
    add("thin_line", 20, 20, [[2, 5, 18, 5.2, 18, 5.3, 2, 5.1]])
    add("odd_length_ring", 20, 20, [[2, 2, 15, 3, 12, 14, 9]])
    add("single_point_second_ring", 20, 20, [[2, 2, 15, 3, 12, 14], [5, 5]])
    # pycocotools 2.0.11 raises TypeError on a first ring of 4 numbers (older versions read boxes).
    add("first_ring_of_four", 20, 25, [[2.5, 3.5, 10, 7], [12, 1, 5, 5]])
    add("later_ring_of_four", 20, 25, [[2, 2, 15, 3, 12, 14], [12, 1, 5, 5]])
    add("too_short_first_ring", 20, 20, [[2, 2]])
    add("empty_list", 20, 20, [])
    add("edge_touching", 12, 9, [[0, 0, 9, 0, 9, 12, 0, 12]])
    add("huge_coords", 12, 9, [[-1000, -1000, 1000, -1000, 1000, 1000, -1000, 1000]])
    # RLEs
    m = (rng.random((13, 11)) > 0.6).astype(np.uint8)
    add("uncompressed_rle", 13, 11, {"size": [13, 11], "counts": col_major_runs(m)})
    add("uncompressed_rle_starts_with_one", 4, 3, {"size": [4, 3], "counts": [0, 5, 7]})
    enc = mask_utils.encode(np.asfortranarray(m))
    add("compressed_rle", 13, 11, {"size": [13, 11], "counts": enc["counts"].decode("ascii")})
    big = np.zeros((300, 400), dtype=np.uint8)
    big[50:250, 70:390] = 1
    big[100:120, :] = 0
    big[:, 200:201] = 0
    enc = mask_utils.encode(np.asfortranarray(big))
    add("compressed_rle_large_runs", 300, 400,
        {"size": [300, 400], "counts": enc["counts"].decode("ascii")})
    add("rle_size_mismatch", 13, 12, {"size": [13, 11], "counts": col_major_runs(m)})

    # Random polygons: fractional coordinates, some outside the image, 3..12 vertices, 1..3 rings.
    for i in range(120):
        h, w = int(rng.integers(5, 60)), int(rng.integers(5, 60))
        rings = []
        for _ in range(int(rng.integers(1, 4))):
            k = int(rng.integers(3, 13))
            xs = rng.uniform(-0.2 * w, 1.2 * w, k)
            ys = rng.uniform(-0.2 * h, 1.2 * h, k)
            if i % 3 == 0:  # quarter-pixel grid: hits the rounding boundaries of the 5x grid
                xs, ys = np.round(xs * 4) / 4, np.round(ys * 4) / 4
            ring = []
            for x, y in zip(xs, ys):
                ring += [float(x), float(y)]
            rings.append(ring)
        add(f"random_{i}", h, w, rings)
    return cases


def soft_target_cases():
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(99)
    cases = []
    for (h, w, s, smoothing) in [(20, 17, 5, 0.1), (61, 45, 6, 0.1), (28, 28, 4, 0.0), (9, 70, 3, 0.2)]:
        lab = rng.integers(0, s, size=(h, w))
        lab[: h // 3, : w // 3] = 0
        t = torch.from_numpy(lab).float()[None, None]
        t28 = F.interpolate(t, size=(28, 28), mode="nearest").long()[0, 0]
        onehot = F.one_hot(t28, s).float()  # (28, 28, S)
        onehot = onehot * (1 - smoothing) + smoothing / s
        x = onehot.permute(2, 0, 1)[None]  # (1, S, 28, 28)
        t14 = F.interpolate(x, size=(14, 14), mode="bilinear", align_corners=False)
        t7 = F.interpolate(x, size=(7, 7), mode="bilinear", align_corners=False)
        def nhwc(a):  # float32 values, 9 significant digits round-trip exactly
            return [float(f"{v:.9g}") for v in a[0].permute(1, 2, 0).contiguous().flatten().tolist()]
        cases.append({
            "h": h, "w": w, "s": s, "smoothing": smoothing,
            "label": lab.flatten().astype(int).tolist(),
            "n28": t28.flatten().tolist(), "t14": nhwc(t14), "t7": nhwc(t7),
        })
    return cases, torch.__version__


def resize_cases():
    from PIL import Image
    import PIL

    rng = np.random.default_rng(7)
    h, w = 29, 37
    # Smooth-ish content plus noise, so bicubic overshoot and clamping both occur.
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 6, yy * 8, (xx + yy) * 3], -1) + rng.integers(-40, 40, (h, w, 3))
    rgb = np.clip(base, 0, 255).astype(np.uint8)
    lab = rng.integers(0, 3000, (h, w)).astype(np.uint16)
    im = Image.fromarray(rgb, "RGB")
    lm = Image.fromarray(lab.astype(np.uint16))
    assert lm.mode in ("I;16", "I"), lm.mode
    cases = []
    for (left, top, cw, ch, ow, oh) in [(0, 0, 37, 29, 64, 64), (3, 2, 20, 17, 48, 40),
                                        (0, 0, 37, 29, 16, 12), (10, 5, 9, 7, 24, 24),
                                        (1, 1, 35, 27, 33, 26), (5, 0, 30, 29, 8, 8)]:
        box = (left, top, left + cw, top + ch)
        r = np.asarray(im.resize((ow, oh), Image.BICUBIC, box=box))
        n = np.asarray(lm.resize((ow, oh), Image.NEAREST, box=box)).astype(np.int64)
        cases.append({"crop": [left, top, cw, ch], "out": [ow, oh],
                      "bicubic": r.flatten().astype(int).tolist(),
                      "nearest": n.flatten().tolist()})
    return {"h": h, "w": w, "rgb": rgb.flatten().astype(int).tolist(),
            "label": lab.flatten().astype(int).tolist(), "pillow": PIL.__version__,
            "cases": cases}


def main():
    os.makedirs(OUT, exist_ok=True)
    cases = coco_cases()
    with open(os.path.join(OUT, "coco_masks.json"), "w") as f:
        json.dump({"generator": "scripts/make_data_fixtures.py",
                   "pycocotools": pycocotools.__version__ if hasattr(pycocotools, "__version__")
                   else "2.0.x", "numpy": np.__version__, "cases": cases}, f)
    st, tv = soft_target_cases()
    with open(os.path.join(OUT, "soft_targets.json"), "w") as f:
        json.dump({"generator": "scripts/make_data_fixtures.py", "torch": tv,
                   "cases": st}, f)
    with open(os.path.join(OUT, "resize.json"), "w") as f:
        json.dump(resize_cases(), f)
    print(f"wrote {len(cases)} mask cases, {len(st)} soft-target cases to {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
