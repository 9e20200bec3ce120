#!/usr/bin/env python3
"""Writes the checkpoint-layout fixtures of tests/zoo_layouts.rs into tests/fixtures/zoo/.

    pip install torch==2.15.0 safetensors==0.8.0 numpy      # versions used for the committed files
    python3 scripts/make_zoo_fixtures.py                       # rewrite tests/fixtures/zoo/*

Each case is a SMALL checkpoint (ResNet-50 structure at base width 1, 10 classes, random
weights and batch-norm statistics) saved the way one family of published adversarially trained
ResNet-50s is saved, plus `<case>.expected.safetensors` holding `input` [2, 3, 32, 32] in [0, 1]
and `logits` [2, 10]: what the PyTorch model of that family returns in eval mode, with the
family's own input normalisation. The layouts were learnt from each project's public code:

* `robustness_lib.pt` - MadryLab `robustness` (Salman et al. 2020, Engstrom et al. 2019):
  `torch.save({'model': AttackerModel.state_dict(), 'optimizer', 'schedule', 'epoch', 'amp'})`
  under DataParallel, so keys `module.normalizer.new_{mean,std}` ([3, 1, 1] buffers),
  `module.model.*` and the attacker's copy `module.attacker.{normalize,model}.*`. The
  normalisation here is deliberately not ImageNet's, so a loader that ignored the buffers fails.
* `robustbench_seq.pt` - RobustBench's ImageNet wrapper `normalize_model()`:
  `nn.Sequential(normalize=ImageNormalizer(mean, std), model=resnet50)`, keys
  `normalize.{mean,std}` ([1, 3, 1, 1]) + `model.*` (again a non-ImageNet normalisation).
* `robustbench_bare.pt` - a RobustBench-style file holding only the wrapped model (`model.*`,
  no `normalize.*`): the normalisation lives in RobustBench's model-zoo code, not in the file,
  so the engine must refuse it without `--mean/--std`; expected logits use ImageNet's.
* `ares_resnet50_gelu.pth` - ARES 2.0 / timm: a plain state dict with torchvision/timm names,
  GELU activations, ImageNet normalisation (ARES' model zoo applies it outside the file).
* `timm_train_relu.pth` - a timm training checkpoint (`state_dict`, `state_dict_ema`, `args` as
  an argparse.Namespace, `epoch`, `metric`); the EMA weights are the evaluated ones.
* `bai2021_gelu_gbn.pth` - Bai et al. 2021 ("Are Transformers More Robust Than CNNs?"),
  ResNet-50-GELU evaluated with `--sing singgbn --pretrain-bs 4096 --forward-time 8`: every
  BatchNorm is an `EightBN`: eight affine-free ghost BNs `bn0..bn7` whose `proxy_bn` keeps
  running statistics over 2C channels (virtual2actual ratio 2), followed by `aff.bnconv`, a
  depthwise 1x1 conv with bias. In eval mode only `bn0` runs, with the first C entries of its
  running statistics (`sync_stats=False`), then `aff`. Inputs are normalised with mean = std =
  0.5. Saved as `{'model': state_dict, 'args': Namespace, 'epoch'}`.
* `transform_*.png` - torchvision's eval transforms on a 90x70 image: `Resize(64)` (Pillow
  bilinear) + `CenterCrop(56)`, and `CenterCrop(48)` alone (RobustBench's Res256Crop224 and
  Crop288 at small sizes).
* `mpm_release.pth` - the paper's own released MPM checkpoints (timm training checkpoints of
  the MPM; `eval.py` evaluates `state_dict_ema`), ImageNet normalisation.

Written from the projects' public code; no code was copied.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import mpm_reference as R  # noqa: E402

OUT = os.path.join(HERE, "..", "tests", "fixtures", "zoo")
WIDTH = 1
CLASSES = 10
IMAGENET = (R.IMAGENET_MEAN, R.IMAGENET_STD)


def randomise(model: nn.Module, g: torch.Generator) -> None:
    """Random weights and BN statistics (fresh BNs would make every BN an identity)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 / p[0].numel()) ** 0.5)
            elif name.endswith("weight"):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None:
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                m.num_batches_tracked.fill_(1234)


def resnet(act: str, norm, g) -> R.ResNet:
    m = R.ResNet("resnet50", WIDTH, act, CLASSES, with_fc=True)
    randomise(m, g)
    m.mean = torch.tensor(norm[0]).view(1, 3, 1, 1)
    m.std = torch.tensor(norm[1]).view(1, 3, 1, 1)
    return m.eval()


def save_case(name: str, ckpt, x, logits, meta, fname):
    torch.save(ckpt, os.path.join(OUT, fname))
    save_file({"input": x.contiguous(), "logits": logits.detach().contiguous()},
              os.path.join(OUT, f"{name}.expected.safetensors"))
    meta["file"] = fname
    return meta


# ------------------------------------------------------------------ Bai et al. 2021 (EightBN)


class GhostBnEval(nn.Module):
    """Eval-mode behaviour of Bai et al.'s affine-free ghost BN: running statistics of a
    proxy BatchNorm over ratio*C channels, of which the first C are used."""

    def __init__(self, c: int, ratio: int = 2):
        super().__init__()
        self.c, self.ratio = c, ratio
        self.proxy_bn = nn.BatchNorm2d(c * ratio, affine=False)

    def forward(self, x):
        rm = self.proxy_bn.running_mean.reshape(self.ratio, self.c)[0]
        rv = self.proxy_bn.running_var.reshape(self.ratio, self.c)[0]
        return F.batch_norm(x, rm, rv, None, None, False, 0.0, self.proxy_bn.eps)


class DepthwiseAffine(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.bnconv = nn.Conv2d(c, c, 1, groups=c, bias=True)

    def forward(self, x):
        return self.bnconv(x)


class EightBnEval(nn.Module):
    """bn0..bn7 (eval runs bn0, the default bn_type) then the depthwise affine."""

    def __init__(self, c: int):
        super().__init__()
        for k in range(8):
            setattr(self, f"bn{k}", GhostBnEval(c))
        self.aff = DepthwiseAffine(c)

    def forward(self, x):
        return self.aff(self.bn0(x))


def to_eight_bn(module: nn.Module, g: torch.Generator) -> None:
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            c = child.num_features
            e = EightBnEval(c)
            with torch.no_grad():
                for k in range(8):
                    bn = getattr(e, f"bn{k}").proxy_bn
                    bn.running_mean.copy_(0.1 * torch.randn(2 * c, generator=g))
                    bn.running_var.copy_(0.5 + torch.rand(2 * c, generator=g))
                    bn.num_batches_tracked.fill_(777 + k)
                e.aff.bnconv.weight.copy_((0.5 + torch.rand(c, generator=g)).view(c, 1, 1, 1))
                e.aff.bnconv.bias.copy_(0.1 * torch.randn(c, generator=g))
            setattr(module, name, e)
        else:
            to_eight_bn(child, g)


# ------------------------------------------------------------------ cases


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(17)
    x = torch.rand(2, 3, 32, 32, generator=g)
    cases = collections.OrderedDict()

    # robustness library (Salman et al. 2020 / Engstrom et al. 2019)
    norm = ((0.45, 0.40, 0.50), (0.20, 0.30, 0.25))
    m = resnet("relu", norm, g)
    sd = collections.OrderedDict()
    for prefix in ("module.normalizer.", "module.attacker.normalize."):
        sd[prefix + "new_mean"] = torch.tensor(norm[0]).view(3, 1, 1)
        sd[prefix + "new_std"] = torch.tensor(norm[1]).view(3, 1, 1)
    for k, v in m.state_dict().items():
        sd["module.model." + k] = v
        sd["module.attacker.model." + k] = v
    ckpt = {"model": sd, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "momentum": 0.9}]},
            "schedule": None, "epoch": 90, "amp": None}
    cases["robustness_lib"] = save_case(
        "robustness_lib", ckpt, x, m(x),
        dict(layout="robustness-library", act="relu", mean=norm[0], std=norm[1]),
        "robustness_lib.pt")

    # RobustBench normalize_model() wrapper, with its buffers
    norm = ((0.5, 0.45, 0.4), (0.25, 0.2, 0.3))
    m = resnet("relu", norm, g)
    sd = collections.OrderedDict()
    sd["normalize.mean"] = torch.tensor(norm[0]).view(1, 3, 1, 1)
    sd["normalize.std"] = torch.tensor(norm[1]).view(1, 3, 1, 1)
    for k, v in m.state_dict().items():
        sd["model." + k] = v
    cases["robustbench_seq"] = save_case(
        "robustbench_seq", sd, x, m(x),
        dict(layout="robustbench", act="relu", mean=norm[0], std=norm[1]), "robustbench_seq.pt")

    # the wrapped model alone: normalisation not in the file
    m = resnet("relu", IMAGENET, g)
    sd = collections.OrderedDict(("model." + k, v) for k, v in m.state_dict().items())
    cases["robustbench_bare"] = save_case(
        "robustbench_bare", sd, x, m(x),
        dict(layout="robustbench-model-only", act="relu", mean=IMAGENET[0], std=IMAGENET[1],
             needs_flags=True), "robustbench_bare.pt")

    # ARES 2.0 / timm plain state dict, GELU
    m = resnet("gelu", IMAGENET, g)
    cases["ares_resnet50_gelu"] = save_case(
        "ares_resnet50_gelu", m.state_dict(), x, m(x),
        dict(layout="torchvision/timm", act="gelu", mean=IMAGENET[0], std=IMAGENET[1]),
        "ares_resnet50_gelu.pth")

    # timm training checkpoint: the EMA is evaluated
    raw = resnet("relu", IMAGENET, g)
    ema = resnet("relu", IMAGENET, g)
    ckpt = {"epoch": 94, "arch": "resnet50", "state_dict": raw.state_dict(),
            "state_dict_ema": ema.state_dict(), "metric": 66.9,
            "args": argparse.Namespace(model="resnet50", mean=IMAGENET[0], std=IMAGENET[1])}
    cases["timm_train_relu"] = save_case(
        "timm_train_relu", ckpt, x, ema(x),
        dict(layout="torchvision/timm", act="relu", mean=IMAGENET[0], std=IMAGENET[1]),
        "timm_train_relu.pth")

    # Bai et al. 2021 ResNet-50-GELU with EightBN
    m = R.ResNet("resnet50", WIDTH, "gelu", CLASSES, with_fc=True)
    randomise(m, g)
    to_eight_bn(m, g)
    m.mean = torch.full((1, 3, 1, 1), 0.5)
    m.std = torch.full((1, 3, 1, 1), 0.5)
    m.eval()
    ckpt = {"model": m.state_dict(), "epoch": 110,
            "args": argparse.Namespace(model="resnet50", activation="gelu", pretrain_bs=4096)}
    cases["bai2021_gelu_gbn"] = save_case(
        "bai2021_gelu_gbn", ckpt, x, m(x),
        dict(layout="bai2021-ghost-bn", act="gelu", mean=(0.5,) * 3, std=(0.5,) * 3),
        "bai2021_gelu_gbn.pth")

    # the paper's released MPM checkpoints
    seg = 5
    raw = R.MPM("resnet50", WIDTH, "gelu", CLASSES, seg, 3, True)
    ema = R.MPM("resnet50", WIDTH, "gelu", CLASSES, seg, 3, True)
    randomise(raw, g)
    randomise(ema, g)
    ema.eval()
    ckpt = {"epoch": 79, "arch": "resnet50", "state_dict": raw.state_dict(),
            "state_dict_ema": ema.state_dict(), "metric": 39.1,
            "args": argparse.Namespace(model="resnet50", partmodel_type="MPM")}
    cases["mpm_release"] = save_case(
        "mpm_release", ckpt, x, ema.classify(x),
        dict(layout="mpm", act="gelu", mean=IMAGENET[0], std=IMAGENET[1], head="mpm",
             seg_classes=seg), "mpm_release.pth")

    # Eval transforms: torchvision's Resize (Pillow bilinear, RobustBench's Res256Crop224 at a
    # small size) + CenterCrop, and CenterCrop alone (Crop288 at a small size), on a 90x70
    # image with edges and noise (so antialiasing and rounding show).
    import numpy as np
    from PIL import Image
    import torchvision.transforms as T
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:70, 0:90]
    img = np.stack([(xx * 2.8) % 256, (yy * 3.6) % 256, ((xx + yy) * 7) % 256], -1)
    img = np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)
    src = Image.fromarray(img)
    src.save(os.path.join(OUT, "transform_src.png"))
    T.Compose([T.Resize(64), T.CenterCrop(56)])(src).save(
        os.path.join(OUT, "transform_bilinear_64_56.png"))
    T.CenterCrop(48)(src).save(os.path.join(OUT, "transform_crop_48.png"))

    meta = {"torch": torch.__version__, "width": WIDTH, "num_classes": CLASSES,
            "input": [2, 3, 32, 32], "cases": cases}
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    for name in sorted(os.listdir(OUT)):
        print(f"{name}: {os.path.getsize(os.path.join(OUT, name))} bytes")


if __name__ == "__main__":
    main()
