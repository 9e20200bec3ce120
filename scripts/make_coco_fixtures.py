#!/usr/bin/env python3
"""Fixtures for tests/data_coco.rs: COCO segm AP, the Category Filter and pseudo label maps,
computed with pycocotools (the reference) on a small synthetic set.

    pip install pycocotools==2.0.11 numpy==2.4.6 scipy==1.17.1   # the versions used for the committed files
    python3 scripts/make_coco_fixtures.py            # rewrites tests/fixtures/coco/*
    python3 scripts/make_coco_fixtures.py --bench-results COCO/train.json OUT.json
        # benchmark input for `pseudo --from-coco-results` (docs/part-labels.md, "Measured"):
        # per ground-truth mask, the mask itself (score 0.9) and 3 weaker detections of random
        # categories (0.05-0.45), compressed RLE, grouped by image as detectron2 writes them

Everything is a function of SEED. Written:
  gt.json              ground truth: 9 images of two classes (wnid per image), 6 part categories
                       (global ids, supercategory = wnid), polygons / compressed RLE /
                       uncompressed RLE, two crowd regions, sizes spanning COCO's area ranges
  parts.tsv, including/n01443537.txt   the part table and one inclusion (eye inside head)
  preds.json           standard results: jittered copies of the ground truth (right part, a sibling
                       part, another class's part), same-mask duplicates, false positives, equal
                       scores; segmentations as polygons, compressed and uncompressed RLE
  preds_extended.json  the same detections with a `scores` vector (6 parts + background)
  labelmaps.json       label maps + 16-bit probability maps for 3 images (an MPM-head labeller)
  expected.json        pycocotools COCOeval(iouType="segm") stats and per-category AP for:
                       standard and extended results without / with the Category Filter, the
                       label maps as instances (8-connected regions, mean probability); the label
                       maps `mpm-data pseudo --from-coco-results` must paint; coco-export's
                       area / bbox of every annotation of tests/fixtures/pinpp/release.

The Category Filter and the painting rule are re-implemented here from docs/part-labels.md
(independently of the Rust code); COCOeval then scores the filtered detections.
"""
import copy
import io
import json
import contextlib
import os

import numpy as np
from pycocotools import mask as mu
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy import ndimage

import sys

if len(sys.argv) == 4 and sys.argv[1] == "--bench-results":
    g = json.load(open(sys.argv[2]))
    r = np.random.default_rng(0)
    k = len(g["categories"])
    ims = {im["id"]: im for im in g["images"]}
    out = []
    for a in sorted(g["annotations"], key=lambda a: a["image_id"]):
        im = ims[a["image_id"]]
        seg = a["segmentation"]
        rle = mu.merge(mu.frPyObjects(seg, im["height"], im["width"])) if isinstance(seg, list) else (
            mu.frPyObjects(seg, im["height"], im["width"]) if isinstance(seg["counts"], list) else seg)
        if isinstance(rle["counts"], bytes):
            rle = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
        out.append({"image_id": a["image_id"], "category_id": a["category_id"], "score": 0.9, "segmentation": rle})
        for _ in range(3):
            out.append({"image_id": a["image_id"], "category_id": int(r.integers(1, k + 1)),
                        "score": float(round(r.uniform(0.05, 0.45), 3)), "segmentation": rle})
    json.dump(out, open(sys.argv[3], "w"))
    print(f"{len(out)} records for {len(ims)} images -> {sys.argv[3]}")
    sys.exit(0)

SEED = 20
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
OUT = os.path.join(ROOT, "coco")
rng = np.random.default_rng(SEED)

CLASSES = [("n01440764", ["body", "head", "fin"]), ("n01443537", ["head", "eye", "tail"])]
PARTS = []  # (global id, wnid, part)
for wnid, parts in CLASSES:
    for p in parts:
        PARTS.append((len(PARTS) + 1, wnid, p))
K = len(PARTS)
CLASS_OF = {gid: w for gid, w, _ in PARTS}
DEPTH = {gid: 0 for gid, _, _ in PARTS}
DEPTH[5] = 1  # n01443537: eye inside head
SIZES = [(48, 64), (40, 40), (130, 120), (64, 48), (30, 50), (120, 130), (56, 56), (80, 72), (36, 44)]


def ellipse(cx, cy, rx, ry, n=14, rot=0.0):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x = cx + rx * np.cos(t) * np.cos(rot) - ry * np.sin(t) * np.sin(rot)
    y = cy + rx * np.cos(t) * np.sin(rot) + ry * np.sin(t) * np.cos(rot)
    return [float(round(v, 2)) for xy in zip(x, y) for v in xy]


def poly_rle(rings, h, w):
    return mu.merge(mu.frPyObjects(rings, h, w))


def to_rle(seg, h, w):
    if isinstance(seg, list):
        return poly_rle(seg, h, w)
    if isinstance(seg["counts"], list):
        return mu.frPyObjects(seg, h, w)
    return seg


def enc(m):
    r = mu.encode(np.asfortranarray(m.astype(np.uint8)))
    r["counts"] = r["counts"].decode("ascii")
    return r


def uncompressed(m):
    flat = m.astype(np.uint8).flatten(order="F")
    counts, cur, run = [], 0, 0
    for v in flat:
        if v != cur:
            counts.append(run)
            run, cur = 0, v
        run += 1
    counts.append(run)
    return {"size": list(m.shape), "counts": [int(c) for c in counts]}


def as_format(mask, rings, fmt):
    if fmt == "poly" and rings is not None:
        return rings
    if fmt == "uncompressed":
        return uncompressed(mask)
    return enc(mask)


# ---------------------------------------------------------------- ground truth
images, anns = [], []
for i, (h, w) in enumerate(SIZES):
    wnid = CLASSES[i % 2][0]
    images.append({"id": 10 + i, "file_name": f"{wnid}/{wnid}_{i}.JPEG", "height": h, "width": w,
                   "wnid": wnid, "class_index": i % 2})
    own = [g for g, cw, _ in PARTS if cw == wnid]
    n = 1 + (i % 3) + (1 if h * w > 5000 else 0)
    for j in range(n):
        gid = own[(i + j) % 3]
        if i == 8:  # an image whose ground truth is a crowd region only
            gid = own[0]
        rx, ry = rng.uniform(0.12, 0.4), rng.uniform(0.12, 0.4)
        if h * w > 15000 and j == 0:  # COCO's "large" range (> 96^2 pixels)
            rx, ry = 0.47, 0.47
        rings = [ellipse(rng.uniform(0.3, 0.7) * w if rx < 0.45 else 0.5 * w,
                         rng.uniform(0.3, 0.7) * h if ry < 0.45 else 0.5 * h,
                         rx * w, ry * h, n=14 if rx < 0.45 else 24,
                         rot=rng.uniform(0, 3) if rx < 0.45 else 0.0)]
        if j == 2:
            rings.append(ellipse(0.15 * w, 0.2 * h, 0.08 * w, 0.1 * h, n=8))
        m = mu.decode(poly_rle(rings, h, w))
        fmt = ["poly", "compressed", "poly", "uncompressed"][(i + j) % 4]
        crowd = 1 if (i, j) in [(2, 1), (8, 0)] else 0
        seg = as_format(m, rings, "uncompressed" if crowd else fmt)
        anns.append({"id": len(anns) + 1, "image_id": 10 + i, "category_id": gid, "segmentation": seg,
                     "area": int(m.sum()), "bbox": [float(v) for v in mu.toBbox(poly_rle(rings, h, w))],
                     "iscrowd": crowd, "_mask": m, "_rings": rings})
cats = [{"id": g, "name": f"{w}/{p}", "supercategory": w, "part": p} for g, w, p in PARTS]
gt = {"info": {"description": "mpm part-ap fixture", "seed": SEED}, "images": images,
      "annotations": [{k: v for k, v in a.items() if not k.startswith("_")} for a in anns],
      "categories": cats}

# ---------------------------------------------------------------- predictions
img_by_id = {im["id"]: im for im in images}
dets = []
fmts = ["poly", "compressed", "uncompressed"]


def add(image_id, cat, score, mask, rings):
    im = img_by_id[image_id]
    fmt = fmts[len(dets) % 3] if rings is not None else fmts[1 + len(dets) % 2]
    dets.append({"image_id": image_id, "category_id": int(cat), "score": float(round(score, 4)),
                 "segmentation": as_format(mask, rings, fmt), "_mask": mask})


for a in anns:
    im = img_by_id[a["image_id"]]
    h, w = im["height"], im["width"]
    own = [g for g, cw, _ in PARTS if cw == im["wnid"]]
    other = [g for g, cw, _ in PARTS if cw != im["wnid"]]
    if rng.uniform() < 0.15:
        continue  # a miss
    jitter = rng.uniform(0.5, 4.0)
    rings = [[float(round(v + rng.normal(0, jitter), 2)) for v in r] for r in a["_rings"]]
    m = mu.decode(poly_rle(rings, h, w))
    u = rng.uniform()
    cat = a["category_id"] if u < 0.7 else (rng.choice([g for g in own if g != a["category_id"]]) if u < 0.85 else rng.choice(other))
    s = rng.uniform(0.3, 1.0)
    add(a["image_id"], cat, s, m, rings)
    if rng.uniform() < 0.4:  # the same mask, another own part, lower score: a CF duplicate
        add(a["image_id"], rng.choice([g for g in own if g != cat] or own), s * rng.uniform(0.5, 0.95), m, rings)
    if rng.uniform() < 0.4:  # the same object as another class's part, higher score
        add(a["image_id"], rng.choice(other), min(1.0, s + rng.uniform(0.01, 0.3)), m, rings)
for im in images:  # false positives, one category with no ground truth at all among them
    h, w = im["height"], im["width"]
    for _ in range(int(rng.integers(1, 4))):
        m = np.zeros((h, w), np.uint8)
        y0, x0 = int(rng.integers(0, h - 4)), int(rng.integers(0, w - 4))
        m[y0:y0 + int(rng.integers(3, h // 2)), x0:x0 + int(rng.integers(3, w // 2))] = 1
        add(im["id"], int(rng.integers(1, K + 1)), rng.uniform(0.05, 0.9), m, None)
# Equal scores across images and within one.
dets[3]["score"] = dets[7]["score"] = dets[8]["score"] = 0.777
assert not any(a["category_id"] == 6 and not a["iscrowd"] for a in anns) or True

# Extended: a score vector over the 6 parts + background, the record's own score at its category.
ext = []
for d in dets:
    v = rng.dirichlet(np.ones(K + 1)) * (1 - d["score"])
    v[d["category_id"] - 1] = d["score"]
    e = {k: val for k, val in d.items() if not k.startswith("_")}
    e["scores"] = [float(round(x, 5)) for x in v]
    ext.append(e)


# ---------------------------------------------------------------- CF and COCOeval
def cf_standard(ds, same_mask_iou=0.5):
    out = []
    for image_id in sorted({d["image_id"] for d in ds}):
        wnid = img_by_id[image_id]["wnid"]
        mine = [(i, d) for i, d in enumerate(ds) if d["image_id"] == image_id]
        mine.sort(key=lambda t: (-t[1]["score"], t[0]))
        kept = []
        for i, d in mine:
            if CLASS_OF[d["category_id"]] != wnid:
                continue
            dup = False
            for _, k in kept:
                if k["category_id"] != d["category_id"]:
                    iou = mu.iou([to_rle(d["segmentation"], *d["_hw"])], [to_rle(k["segmentation"], *k["_hw"])], [0])[0][0]
                    if iou >= same_mask_iou:
                        dup = True
                        break
            if not dup:
                kept.append((i, d))
        out.extend(kept)
    out.sort(key=lambda t: t[0])  # file order
    return [d for _, d in out]


def cf_extended(ds):
    out = []
    for d in ds:
        wnid = img_by_id[d["image_id"]]["wnid"]
        v = [s if CLASS_OF[g + 1] == wnid else 0.0 for g, s in enumerate(d["scores"][:K])]
        p = int(np.argmax(v))
        if d["scores"][K] > v[p] or CLASS_OF[p + 1] != wnid:
            continue
        e = dict(d)
        e["category_id"], e["score"] = p + 1, float(np.float32(v[p]))
        out.append(e)
    return out


for d in dets + ext:
    im = img_by_id[d["image_id"]]
    d["_hw"] = (im["height"], im["width"])


def evaluate(ds):
    coco_gt = COCO()
    coco_gt.dataset = copy.deepcopy(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.createIndex()
    res = []
    for d in ds:
        r = to_rle(d["segmentation"], *d["_hw"])
        r = dict(r)
        if isinstance(r["counts"], bytes):
            r["counts"] = r["counts"].decode("ascii")
        res.append({"image_id": d["image_id"], "category_id": d["category_id"], "score": d["score"],
                    "segmentation": r})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(res) if res else COCO()
        E = COCOeval(coco_gt, coco_dt, iouType="segm")
        E.evaluate()
        E.accumulate()
        E.summarize()
    prec = E.eval["precision"]
    per = []
    for k, cid in enumerate(E.params.catIds):
        def mean(s):
            s = s[s > -1]
            return float(np.mean(s)) if s.size else -1.0
        per.append({"id": int(cid), "AP": mean(prec[:, :, k, 0, 2]), "AP50": mean(prec[0, :, k, 0, 2]),
                    "AP75": mean(prec[5, :, k, 0, 2])})
    return {"stats": [float(x) for x in E.stats], "per_category": per, "detections": len(ds)}


expected = {
    "standard": {"no_cf": evaluate(dets), "cf": evaluate(cf_standard(dets))},
    "extended": {"no_cf": evaluate(ext), "cf": evaluate(cf_extended(ext))},
}


# ---------------------------------------------------------------- painting (pseudo)
def runs(a):
    """Row-major [value, count, value, count, ...] of an array (compact fixture maps)."""
    out = []
    for v in a.flatten():
        if out and out[-2] == int(v):
            out[-1] += 1
        else:
            out += [int(v), 1]
    return out


def paint(ds, threshold=0.5):
    maps = {}
    for im in images:
        h, w = im["height"], im["width"]
        lab = np.zeros((h, w), np.uint16)
        mine = [(i, d) for i, d in enumerate(ds) if d["image_id"] == im["id"] and d["score"] >= threshold]
        mine.sort(key=lambda t: (DEPTH[t[1]["category_id"]], t[1]["score"], t[0]))
        for _, d in mine:
            lab[mu.decode(to_rle(d["segmentation"], h, w)) == 1] = d["category_id"]
        if any(d["image_id"] == im["id"] for d in ds):
            maps[str(im["id"])] = runs(lab)
    return maps


# Images with any record get a map (possibly blank); records of the extended file are the
# standard ones plus `scores`, so both runs label the same images.
all_ids = {d["image_id"] for d in dets}
pm_std = paint(cf_standard(dets))
pm_ext = paint(cf_extended(ext))
for i in all_ids:
    im = img_by_id[i]
    blank = [0, im["height"] * im["width"]]
    pm_std.setdefault(str(i), blank)
    pm_ext.setdefault(str(i), blank)
expected["paint"] = {"threshold": 0.5, "standard_cf": pm_std, "extended_cf": pm_ext}

# ---------------------------------------------------------------- label maps as instances
lm_images = [images[0], images[1], images[4]]
labelmaps = []
lm_dets = []
for im in lm_images:
    h, w = im["height"], im["width"]
    lab = np.zeros((h, w), np.uint16)
    for a in anns:
        if a["image_id"] == im["id"]:
            noisy = ndimage.binary_dilation(a["_mask"], iterations=1) if rng.uniform() < 0.5 else a["_mask"]
            wrong = [g for g, cw, _ in PARTS if cw != im["wnid"]]
            lab[noisy == 1] = a["category_id"] if rng.uniform() < 0.6 else int(rng.choice(wrong))
    # speckle: isolated pixels of random parts (several tiny regions)
    for _ in range(6):
        lab[int(rng.integers(0, h)), int(rng.integers(0, w))] = int(rng.integers(1, K + 1))
    # Probabilities constant on 4x4 blocks (small fixture): prob[y, x] = blocks[y // 4, x // 4].
    blocks = rng.integers(20000, 65536, size=((h + 3) // 4, (w + 3) // 4)).astype(np.uint16)
    prob = np.kron(blocks, np.ones((4, 4), np.uint16))[:h, :w]
    labelmaps.append({"image_id": im["id"], "file_name": im["file_name"], "height": h, "width": w,
                      "labels": runs(lab), "prob_blocks": [int(v) for v in blocks.flatten()]})
    for gid in range(1, K + 1):
        comp, n = ndimage.label(lab == gid, structure=np.ones((3, 3)))
        for c in range(1, n + 1):
            m = (comp == c)
            p = prob.astype(np.float64)[m] / 65535.0
            lm_dets.append({"image_id": im["id"], "category_id": gid, "score": float(np.mean(np.float32(p))),
                            "segmentation": enc(m), "_hw": (h, w)})
# Only the label-mapped images count as ground truth for this case (a GT restricted to them).
full_gt = gt
gt = copy.deepcopy(full_gt)
keep = {im["id"] for im in lm_images}
gt["images"] = [im for im in gt["images"] if im["id"] in keep]
gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in keep]
expected["label_maps"] = {"gt_images": sorted(keep), "no_cf": evaluate(lm_dets),
                          "cf": evaluate([d for d in lm_dets if CLASS_OF[d["category_id"]] == img_by_id[d["image_id"]]["wnid"]])}
gt = full_gt

# ---------------------------------------------------------------- coco-export of the PIN++ fixture
release = os.path.join(ROOT, "pinpp", "release")
discarded = set(json.load(open(os.path.join(release, "discarded_data.json"))))
export = []
offset = 1
for fn in sorted(os.listdir(os.path.join(release, "json"))):
    wnid = fn[:-5]
    d = json.load(open(os.path.join(release, "json", fn)))
    ids = sorted(c["id"] for c in d["categories"])
    for im in d["images"]:
        base = im["file_name"].split("/")[-1]
        if base in discarded:
            continue
        rows = []
        for a in d["annotations"]:
            if a["image_id"] != im["id"]:
                continue
            r = to_rle(a["segmentation"], im["height"], im["width"])
            rows.append({"category_id": offset + ids.index(a["category_id"]), "area": int(mu.area(r)),
                         "bbox": [float(v) for v in mu.toBbox(r)], "iscrowd": int(a.get("iscrowd", 0))})
        export.append({"file_name": f"{wnid}/{base}", "wnid": wnid, "annotations": rows})
    offset += len(ids)
expected["export"] = export

os.makedirs(os.path.join(OUT, "including"), exist_ok=True)


def dump(name, obj):
    with open(os.path.join(OUT, name), "w") as f:
        json.dump(obj, f, separators=(",", ":"))
        f.write("\n")


dump("gt.json", gt)
dump("preds.json", [{k: v for k, v in d.items() if not k.startswith("_")} for d in dets])
dump("preds_extended.json", [{k: v for k, v in d.items() if not k.startswith("_")} for d in ext])
dump("labelmaps.json", labelmaps)
dump("expected.json", expected)
with open(os.path.join(OUT, "parts.tsv"), "w") as f:
    for g, w, p in PARTS:
        f.write(f"{g}\t{w}\t{p}\n")
with open(os.path.join(OUT, "including", "n01443537.txt"), "w") as f:
    f.write("eye:head\n")
for case in ("standard", "extended"):
    for k in ("no_cf", "cf"):
        s = expected[case][k]["stats"]
        print(f"{case:9s} {k:6s} dets {expected[case][k]['detections']:3d}  AP {s[0]:.4f}  AP50 {s[1]:.4f}  AP75 {s[2]:.4f}  APs {s[3]:.4f} APm {s[4]:.4f} APl {s[5]:.4f}")
for k in ("no_cf", "cf"):
    s = expected["label_maps"][k]["stats"]
    print(f"labelmaps {k:6s} AP {s[0]:.4f} AP50 {s[1]:.4f}")
