#!/usr/bin/env python3
"""Fixture for `mpm-eval human-metrics` (contract E): a tiny synthetic model-vs-human data set
and the metrics the benchmark's OWN analysis code computes on it.

    python3 -m venv /tmp/mvh && /tmp/mvh/bin/pip install "pandas<2" "numpy<2" matplotlib seaborn tqdm
    git clone https://github.com/bethgelab/model-vs-human /tmp/model-vs-human   # or any checkout
    /tmp/mvh/bin/python scripts/make_eval_fixtures.py --mvh /tmp/model-vs-human \
        --out tests/fixtures/eval_human

Writes OUT/raw-data/<dataset>/<dataset>_subject-0K_session_1.csv (human observers),
OUT/model-csv/<dataset>_<model>_session-1.csv (two models) and OUT/expected.json (contract E's
layout plus a "humans" entry). The expected values come from the benchmark's
`modelvshuman.plotting.plot.get_raw_benchmark_df`, `format_benchmark_df` and
`get_mean_over_datasets` (the functions behind its benchmark tables), run on a copy of the
files laid out as the benchmark expects (`$MODELVSHUMANDIR/raw-data/<dataset>/*.csv`). The
package's `__init__` files import its model zoo (torch, tensorflow); the script loads only the
analysis modules by stubbing the parent packages. pandas < 2: the code uses DataFrame.append.

The synthetic data exercises: conditions that pandas retypes (`0.90` -> `0.9`, `true` ->
`True`, integer conditions), excluded conditions, datasets without conditions, ImageNet-style
and plain image names (image ids), trials in a different order in each file, `Session` vs
`session` headers, a model name with an underscore, human observers who disagree.
"""
import argparse
import importlib
import json
import os
import random
import shutil
import sys
import tempfile
import types

CATEGORIES = ["airplane", "bear", "bicycle", "bird", "boat", "bottle", "car", "cat", "chair",
              "clock", "dog", "elephant", "keyboard", "knife", "oven", "truck"]

# dataset -> (abbreviation, conditions as the files write them, header of the session column)
DATASETS = {
    "uniform-noise": ("nse", ["0.00", "0.03", "0.05", "0.10", "0.20", "0.35", "0.60", "0.90"], "Session"),
    "false-colour": ("fc", ["true", "false"], "Session"),
    "low-pass": ("lp", ["0", "1", "3", "5", "7", "10", "15", "40"], "Session"),
    "contrast": ("cop", ["c100", "c50", "c30", "c15", "c10", "c05", "c03", "c01"], "Session"),
    "edge": ("edg", None, "session"),
    "cue-conflict": ("s5n", None, "session"),
}
HUMANS = ["subject-01", "subject-02", "subject-03"]
MODELS = {"tiny_resnet": 0.55, "model-b": 0.8}  # name -> base accuracy


def make_images(rng, dataset, abbr, conditions):
    """(image name, condition, category) for every stimulus of the dataset."""
    out = []
    conds = conditions or ["0"]
    for ci, cond in enumerate(conds):
        for k in range(3):
            cat = rng.choice(CATEGORIES)
            if dataset in ("edge",):
                tail = f"{cat}{ci * 3 + k + 1}.png"
            elif dataset == "cue-conflict":
                tail = f"{cat}{ci * 3 + k + 1}-{rng.choice(CATEGORIES)}{k + 1}.png"
            else:
                tail = f"n0{rng.randrange(1000000, 9999999)}_{rng.randrange(100, 99999)}.png"
            out.append((f"_{abbr}_s01_{cond}_{cat}_10_{tail}", cond, cat))
    return out


def decide(rng, cat, p):
    if rng.random() < p:
        return cat
    return rng.choice([c for c in CATEGORIES if c != cat])


def write_csv(path, header_session, subj, rows):
    with open(path, "w") as f:
        f.write(f"subj,{header_session},trial,rt,object_response,category,condition,imagename\n")
        for t, (resp, cat, cond, name) in enumerate(rows, 1):
            f.write(f"{subj},1,{t},0.5,{resp},{cat},{cond},{t:04d}{name}\n")


def generate(out, seed):
    rng = random.Random(seed)
    for d in ("raw-data", "model-csv"):
        shutil.rmtree(os.path.join(out, d), ignore_errors=True)
    for dataset, (abbr, conditions, sess) in DATASETS.items():
        images = make_images(rng, dataset, abbr, conditions)
        hdir = os.path.join(out, "raw-data", dataset)
        os.makedirs(hdir, exist_ok=True)
        for h, subj in enumerate(HUMANS):
            order = images[:]
            rng.shuffle(order)
            rows = []
            for name, cond, cat in order:
                # Harder conditions (later in the list) are answered worse.
                level = (conditions or ["0"]).index(cond)
                p = max(0.1, 0.95 - 0.1 * level - 0.05 * h)
                rows.append((decide(rng, cat, p), cat, cond, name))
            write_csv(os.path.join(hdir, f"{dataset}_{subj}_session_1.csv"), sess, subj, rows)
        mdir = os.path.join(out, "model-csv")
        os.makedirs(mdir, exist_ok=True)
        for m, base in MODELS.items():
            order = images[:]
            rng.shuffle(order)
            rows = [(decide(rng, cat, base), cat, cond, name) for name, cond, cat in order]
            write_csv(os.path.join(mdir, f"{dataset}_{m.replace('_', '-')}_session-1.csv"),
                      "session", m, rows)


def load_benchmark(mvh):
    """The benchmark's analysis modules, without its package __init__ (model zoo imports)."""
    src = os.path.join(mvh, "modelvshuman")
    for name in ["modelvshuman", "modelvshuman.plotting", "modelvshuman.datasets",
                 "modelvshuman.helper"]:
        mod = types.ModuleType(name)
        mod.__path__ = [os.path.join(src, *name.split(".")[1:])]
        sys.modules[name] = mod
    utils = types.ModuleType("modelvshuman.utils")
    utils.load_dataset = None  # only plot.get_datasets uses it
    sys.modules["modelvshuman.utils"] = utils
    plot = importlib.import_module("modelvshuman.plotting.plot")
    analyses = importlib.import_module("modelvshuman.plotting.analyses")
    dm = importlib.import_module("modelvshuman.plotting.decision_makers")
    experiments = importlib.import_module("modelvshuman.datasets.experiments")
    return plot, analyses, dm, experiments


def expected(out, mvh):
    tmp = tempfile.mkdtemp()
    os.environ["MODELVSHUMANDIR"] = tmp
    plot, analyses, dm, experiments = load_benchmark(mvh)
    for dataset in DATASETS:
        dst = os.path.join(tmp, "raw-data", dataset)
        shutil.copytree(os.path.join(out, "raw-data", dataset), dst)
        for f in os.listdir(os.path.join(out, "model-csv")):
            if f.startswith(dataset + "_"):
                shutil.copy(os.path.join(out, "model-csv", f), dst)

    def decision_makers(df):
        out = [dm.DecisionMaker(name_pattern=m, df=df, plotting_name=m) for m in MODELS]
        out.append(dm.DecisionMaker(name_pattern="subject-*", df=df, plotting_name="humans"))
        return out

    names = list(DATASETS)
    metric_names = ["accuracy difference", "observed consistency", "error consistency"]
    keys = {"accuracy difference": "accuracy_difference",
            "observed consistency": "observed_consistency",
            "error consistency": "error_consistency"}

    def consistency(dataset_names):
        ds = experiments.get_experiments(dataset_names)
        raw = plot.get_raw_benchmark_df(datasets=ds, metric_names=metric_names,
                                        decision_maker_fun=decision_makers, include_humans=True)
        any_df = plot.ph.get_experimental_data(ds[0])
        f = plot.format_benchmark_df(df=raw, decision_makers=decision_makers(any_df),
                                     metric_names=metric_names, include_humans=True)
        return {row["plotting_name"]: {keys[m]: float(row[m]) for m in metric_names}
                for _, row in f.iterrows()}

    def ood(dataset_names):
        ds = experiments.get_experiments(dataset_names)
        f = plot.get_mean_over_datasets(colname="OOD accuracy",
                                        metric_fun=analyses.SixteenClassAccuracy(),
                                        metric_name="16-class-accuracy", datasets=ds,
                                        decision_maker_fun=decision_makers)
        return {row["plotting_name"]: float(row["OOD accuracy"]) for _, row in f.iterrows()}

    result = {"models": {m: {"datasets": {}, "mean": {}} for m in MODELS},
              "humans": {"datasets": {}, "mean": {}}}

    def put(target, c, o):
        for who in list(MODELS) + ["humans"]:
            slot = result["humans"] if who == "humans" else result["models"][who]
            dst = slot["mean"] if target is None else slot["datasets"].setdefault(target, {})
            dst.update(c[who])
            dst["ood_accuracy"] = o[who]

    for d in names:
        put(d, consistency([d]), ood([d]))
    put(None, consistency(names), ood(names))
    shutil.rmtree(tmp)
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mvh", required=True, help="a checkout of bethgelab/model-vs-human")
    ap.add_argument("--out", default="tests/fixtures/eval_human")
    ap.add_argument("--seed", type=int, default=16)
    a = ap.parse_args()
    generate(a.out, a.seed)
    res = expected(a.out, a.mvh)
    with open(os.path.join(a.out, "expected.json"), "w") as f:
        json.dump(res, f, indent=1, sort_keys=True)
        f.write("\n")
    print(json.dumps(res["models"], indent=1)[:2000])


if __name__ == "__main__":
    main()
