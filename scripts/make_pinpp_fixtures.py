#!/usr/bin/env python3
"""A tiny PartImageNet++ release, in exactly the released format, with expected label maps.

Writes, under tests/fixtures/pinpp/:
  release/json/<wnid>.json        COCO style, one file per class: info, licenses, images
                                  (file_name "<wnid>/<file>.JPEG" of the IN-1K train set),
                                  annotations (polygons, a compressed RLE string, an uncompressed
                                  RLE with iscrowd 1; bbox and area as COCO writes them),
                                  categories (ids 1-based within the file)
  release/including/<wnid>.txt    "child:parent" part names, one inclusion per line
  release/discarded_data.json     a list of image names
  release/category_name.json      wnid -> class name
  expected.json                   parts.tsv text (DESIGN.md contract C), and per written image
                                  the label map (row-major global part ids) that `mpm-data
                                  labels` must paint; the discarded image

The two classes are the first two wnids of ImageNet-1K with the release's part counts (4 and 4,
assets/pinpp/part_counts.tsv), so their global ids are the full release's ids 1-8.

Expected maps are computed here independently of the Rust code: every polygon is an
axis-aligned box with integer corners, which pycocotools' annToMask fills as the half-open pixel
range [x0, x1) x [y0, y1) (checked against pycocotools in tests/fixtures/data/coco_masks.json);
RLE masks are given by their pixels. Paint order: annotations sorted by (inclusion depth of their
part, JSON index); the later one wins.

Standard library only; deterministic. Run from the repository root:
    python3 scripts/make_pinpp_fixtures.py
    python3 scripts/make_pinpp_fixtures.py --check   # also repaint every kept image with
                                                     # pycocotools' annToMask (needs pycocotools)
                                                     # and compare with expected.json
"""
import json
import os

OUT = os.path.join("tests", "fixtures", "pinpp")
TENCH, GOLDFISH = "n01440764", "n01443537"


def box(x0, y0, x1, y1):
    """A polygon (one ring) for the box and its pixel set."""
    ring = [x0, y0, x1, y0, x1, y1, x0, y1]
    pixels = {(x, y) for x in range(x0, x1) for y in range(y0, y1)}
    return [ring], pixels


def col_major_counts(pixels, h, w):
    """Uncompressed COCO RLE counts (column-major, starting with a run of 0s)."""
    flat = [1 if (x, y) in pixels else 0 for x in range(w) for y in range(h)]
    counts, prev, run = [], 0, 0
    for v in flat:
        if v != prev:
            counts.append(run)
            run, prev = 0, v
        run += 1
    counts.append(run)
    return counts


def rle_string(counts):
    """pycocotools' compressed RLE string (rleToString): LEB128-like 5-bit groups, +48, with
    each count after the second stored as the difference to the count two before."""
    out = []
    for i, c in enumerate(counts):
        x = c - counts[i - 2] if i > 2 else c
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5
            more = (x != -1) if (ch & 0x10) else (x != 0)
            if more:
                ch |= 0x20
            out.append(chr(ch + 48))
    return "".join(out)


def bbox_area(pixels):
    xs = [p[0] for p in pixels]
    ys = [p[1] for p in pixels]
    return [min(xs), min(ys), max(xs) - min(xs) + 1, max(ys) - min(ys) + 1], len(pixels)


def make_class(wnid, categories, images, inclusions):
    """images: list of (file, w, h, [(category id, kind, pixels, segmentation)])."""
    depth = {}
    names = {c["id"]: c["name"] for c in categories}
    parent = {child: par for child, par in inclusions}

    def d(name):
        return 0 if name not in parent else 1 + d(parent[name])

    for cid, n in names.items():
        depth[cid] = d(n)
    rank = {cid: r for r, cid in enumerate(sorted(names))}
    doc_images, doc_anns, maps = [], [], {}
    ann_id = 1
    for image_id, (file, w, h, anns) in enumerate(images, start=1):
        doc_images.append({"id": image_id, "file_name": f"{wnid}/{file}", "height": h,
                           "width": w, "license": 1})
        order = sorted(range(len(anns)), key=lambda i: (depth[anns[i][0]], i))
        grid = [[0] * w for _ in range(h)]
        for i in order:
            cid, _, pixels, _ = anns[i]
            for (x, y) in pixels:
                grid[y][x] = FIRST_ID[wnid] + rank[cid]
        maps[f"{wnid}/{file.rsplit('.', 1)[0]}"] = {"h": h, "w": w,
                                                    "data": [v for row in grid for v in row]}
        for cid, crowd, pixels, seg in anns:
            bb, area = bbox_area(pixels)
            doc_anns.append({"id": ann_id, "image_id": image_id, "category_id": cid,
                             "segmentation": seg, "area": area, "bbox": bb,
                             "iscrowd": crowd})
            ann_id += 1
    doc = {"info": {"description": "PartImageNet++ format fixture (mpm)", "version": "1.0"},
           "licenses": [{"id": 1, "name": "fixture"}],
           "images": doc_images, "annotations": doc_anns, "categories": categories}
    return doc, maps


FIRST_ID = {TENCH: 1, GOLDFISH: 5}


def main():
    # Tench: ids listed out of order and not contiguous (1, 3, 5, 7 -> ranks 0..3 -> ids 1..4);
    # the eye lies in the head and is listed before it, so only the inclusion rule paints it.
    tench_cats = [{"id": 5, "name": "eye", "supercategory": TENCH},
                  {"id": 1, "name": "body", "supercategory": TENCH},
                  {"id": 7, "name": "tail", "supercategory": TENCH},
                  {"id": 3, "name": "head", "supercategory": TENCH}]
    body, body_px = box(0, 1, 5, 5)
    head, head_px = box(4, 0, 8, 4)
    eye, eye_px = box(5, 1, 7, 3)
    tail_px = {(x, y) for x in (0, 1) for y in (4, 5)}
    tail_rle = {"size": [6, 9], "counts": rle_string(col_major_counts(tail_px, 6, 9))}
    tench_images = [
        # 9 x 6: body, then eye (inside head, listed first), head over the body, tail as RLE.
        ("n01440764_10026.JPEG", 9, 6,
         [(1, 0, body_px, body), (5, 0, eye_px, eye), (3, 0, head_px, head),
          (7, 0, tail_px, tail_rle)]),
        # Listed in discarded_data.json: no label map.
        ("n01440764_10027.JPEG", 9, 6, [(1, 0, body_px, body)]),
        # No annotation at all: an all-background map (segmentation weight 0 in training).
        ("n01440764_10029.JPEG", 7, 5, []),
    ]
    # Goldfish: ids 1..4 in order; two overlapping boxes (the later one wins) and a crowd
    # annotation as uncompressed RLE.
    gold_cats = [{"id": i + 1, "name": n, "supercategory": GOLDFISH}
                 for i, n in enumerate(["body", "fin", "tail", "head"])]
    a, a_px = box(0, 0, 3, 4)
    b, b_px = box(2, 0, 5, 4)
    fin_px = {(4, y) for y in range(4)}
    fin = {"size": [4, 5], "counts": col_major_counts(fin_px, 4, 5)}
    gold_images = [("n01443537_1021.JPEG", 5, 4,
                    [(1, 0, a_px, a), (4, 0, b_px, b), (2, 1, fin_px, fin)])]

    os.makedirs(os.path.join(OUT, "release", "json"), exist_ok=True)
    os.makedirs(os.path.join(OUT, "release", "including"), exist_ok=True)
    maps = {}
    for wnid, cats, images, inc in [(TENCH, tench_cats, tench_images, [("eye", "head")]),
                                    (GOLDFISH, gold_cats, gold_images, [])]:
        doc, m = make_class(wnid, cats, images, inc)
        maps.update(m)
        with open(os.path.join(OUT, "release", "json", f"{wnid}.json"), "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
        if inc:
            with open(os.path.join(OUT, "release", "including", f"{wnid}.txt"), "w") as f:
                f.write("".join(f"{c}:{p}\n" for c, p in inc))
    del maps[f"{TENCH}/n01440764_10027"]
    with open(os.path.join(OUT, "release", "discarded_data.json"), "w") as f:
        json.dump(["n01440764_10027.JPEG"], f)
        f.write("\n")
    with open(os.path.join(OUT, "release", "category_name.json"), "w") as f:
        json.dump({TENCH: "tench", GOLDFISH: "goldfish"}, f, indent=1)
        f.write("\n")
    parts = []
    for wnid, cats in [(TENCH, tench_cats), (GOLDFISH, gold_cats)]:
        for r, c in enumerate(sorted(cats, key=lambda c: c["id"])):
            parts.append(f"{FIRST_ID[wnid] + r}\t{wnid}\t{c['name']}\n")
    expected = {"parts_tsv": "".join(parts), "maps": maps,
                "discarded": [f"{TENCH}/n01440764_10027"]}
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")


def check_with_pycocotools():
    """Repaints every kept image from the written files with pycocotools and compares."""
    import sys
    from pycocotools.coco import COCO

    with open(os.path.join(OUT, "expected.json")) as f:
        expected = json.load(f)
    rel = os.path.join(OUT, "release")
    first, bad = 1, 0
    for wnid in sorted(os.listdir(os.path.join(rel, "json"))):
        wnid = wnid[:-len(".json")]
        coco = COCO(os.path.join(rel, "json", f"{wnid}.json"))
        ids = sorted(coco.getCatIds())
        names = {c["id"]: c["name"] for c in coco.loadCats(ids)}
        parent = {}
        inc = os.path.join(rel, "including", f"{wnid}.txt")
        if os.path.exists(inc):
            for line in open(inc):
                if line.strip():
                    c, p = line.strip().split(":")
                    parent[c] = p

        def depth(n):
            return 0 if n not in parent else 1 + depth(parent[n])

        for img in coco.loadImgs(coco.getImgIds()):
            key = img["file_name"].rsplit(".", 1)[0]
            if key not in expected["maps"]:
                continue
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
            order = sorted(range(len(anns)),
                           key=lambda i: (depth(names[anns[i]["category_id"]]), i))
            grid = [0] * (img["height"] * img["width"])
            for i in order:
                m = coco.annToMask(anns[i])
                gid = first + ids.index(anns[i]["category_id"])
                for y in range(img["height"]):
                    for x in range(img["width"]):
                        if m[y, x]:
                            grid[y * img["width"] + x] = gid
            same = grid == expected["maps"][key]["data"]
            bad += not same
            print(f"{key}: {'same' if same else 'DIFFERENT'} as pycocotools")
        first += len(ids)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    import sys
    main()
    if "--check" in sys.argv:
        check_with_pycocotools()
