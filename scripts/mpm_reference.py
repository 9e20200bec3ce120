"""PyTorch reference implementation of the PartImageNet++ (ECCV 2024) models and losses.

This module is the ground truth that the Rust `mpm` engine is tested against
(`tests/fixtures/make_fixtures.py` writes parity cases with it).  It follows
/work/shared/DESIGN.md sections 1 and 3A:

* ResNet-18/34/50 and ResNeXt-50 (``resnext50_<G>x<W>d``), torchvision v1.5 structure and parameter names (stride on the 3x3
  conv of the bottleneck), configurable base width (64 = standard), activation exact
  GELU (``nn.GELU()``, erf form) or ReLU.  Input is in [0, 1]; the model normalises
  with the ImageNet mean/std itself (non-persistent buffers, not in the state_dict).
* ``MPM``: the Multi-scale Part-supervised Model (names ``segmenter.*``, ``cp{1,2,3}``,
  ``segmenter_head{1,2,3}``, ``up_layer{1,2}``, ``classifer.2``).
* ``TwoStage``: the two-stage part model baseline (names ``segmenter.*``,
  ``segmenter_head.{1,2}``, ``classifer.{1,2,5,6,8}``).
* Losses: timm ``LabelSmoothingCrossEntropy`` semantics, the soft-target focal loss,
  the total loss, and the soft segmentation-target construction.

Written from the paper, DESIGN.md and PyTorch/timm semantics; it is not a copy of
the authors' code.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ARCH_BLOCKS = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}


def arch_blocks(arch: str):
    """(block kind, blocks per stage, groups, width per group).  ``resnext50_<G>x<W>d`` is
    torchvision's ResNeXt-50 (32x4d: groups 32, width per group 4): the ResNet-50 bottleneck
    with a grouped 3x3 of inner width ``int(planes * W / 64) * G``."""
    if arch in ARCH_BLOCKS:
        kind, blocks = ARCH_BLOCKS[arch]
        return kind, blocks, 1, 64
    if arch.startswith("resnext50_") and arch.endswith("d") and "x" in arch:
        g, w = arch[len("resnext50_"):-1].split("x")
        return "bottleneck", (3, 4, 6, 3), int(g), int(w)
    raise ValueError(f"unknown architecture {arch!r}")


def make_act(act: str) -> nn.Module:
    if act == "gelu":
        return nn.GELU()  # approximate='none': exact erf form
    if act == "relu":
        return nn.ReLU()
    raise ValueError(f"unknown activation {act!r}")


# --------------------------------------------------------------------------- ResNet


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, act: str):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = make_act(act)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = make_act(act)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, 0, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, act: str,
                 groups: int = 1, base_width: int = 64):
        super().__init__()
        out = planes * self.expansion
        width = int(planes * (base_width / 64.0)) * groups  # torchvision's rule
        self.conv1 = nn.Conv2d(inplanes, width, 1, 1, 0, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.act1 = make_act(act)
        # v1.5: stride here; ResNeXt: grouped
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.act2 = make_act(act)
        self.conv3 = nn.Conv2d(width, out, 1, 1, 0, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.act3 = make_act(act)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, out, 1, stride, 0, bias=False), nn.BatchNorm2d(out)
            )

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act3(out + identity)


class ResNet(nn.Module):
    """torchvision-named ResNet taking [0,1] input.  ``with_fc=False`` drops avgpool/fc
    (used as the ``segmenter`` of the part models)."""

    def __init__(self, arch: str = "resnet50", width: int = 64, act: str = "gelu",
                 num_classes: int = 1000, with_fc: bool = True):
        super().__init__()
        kind, blocks, groups, base_width = arch_blocks(arch)
        block = BasicBlock if kind == "basic" else Bottleneck
        extra = {} if kind == "basic" else dict(groups=groups, base_width=base_width)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.act1 = make_act(act)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = width
        for i, n in enumerate(blocks):
            planes = width * (2 ** i)
            stride = 1 if i == 0 else 2
            layers = []
            for j in range(n):
                layers.append(block(inplanes, planes, stride if j == 0 else 1, act, **extra))
                inplanes = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.num_features = inplanes  # width * 8 * expansion
        if with_fc:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(inplanes, num_classes)
        else:
            self.fc = None

    def normalize(self, x):
        return (x - self.mean) / self.std

    def forward_stages(self, x) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[0,1] input -> (layer2 out, layer3 out, layer4 out)."""
        x = self.normalize(x)
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x2 = self.layer2(x)
        x3 = self.layer3(x2)
        x4 = self.layer4(x3)
        return x2, x3, x4

    def forward(self, x):
        x4 = self.forward_stages(x)[2]
        assert self.fc is not None, "ResNet built without fc"
        return self.fc(torch.flatten(self.avgpool(x4), 1))


# --------------------------------------------------------------------------- part models


class SeparableConv2d(nn.Module):
    """Depthwise kxk (no bias) followed by a pointwise 1x1 (no bias)."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, padding: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cin, kernel_size, 1, padding, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, 1, 0, bias=False)

    def forward(self, x):
        return self.pointwise(self.conv1(x))


def _gelu_sep(cin: int, cout: int) -> nn.Sequential:
    # Heads and up layers always use GELU, whatever the backbone activation.
    return nn.Sequential(nn.GELU(), SeparableConv2d(cin, cout, 3, 1))


def upsample_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class MPM(nn.Module):
    """Multi-scale Part-supervised Model.

    forward(x) -> (logits, segs) where ``segs`` lists the used levels' seg logits,
    highest resolution first: levels=3 -> [seg3 (layer2 res), seg2 (layer3 res),
    seg1 (layer4 res)], levels=2 -> [seg2, seg1], levels=1 -> [seg1].
    cp1..cp3 are always evaluated (as the reference does), so in train mode all three
    compact BNs update their running statistics whatever ``levels`` is."""

    def __init__(self, arch: str = "resnet50", width: int = 64, act: str = "gelu",
                 num_classes: int = 1000, seg_classes: int = 3311, levels: int = 3,
                 top_down: bool = True):
        super().__init__()
        assert levels in (1, 2, 3)
        self.levels = levels
        self.top_down = top_down
        self.segmenter = ResNet(arch, width, act, with_fc=False)
        nf = self.segmenter.num_features
        f = nf // 4
        self.num_features = f
        self.cp1 = nn.Sequential(nn.Conv2d(nf, f, 1, 1, 0, bias=False), nn.BatchNorm2d(f))
        self.cp2 = nn.Sequential(nn.Conv2d(nf // 2, f // 2, 1, 1, 0, bias=False), nn.BatchNorm2d(f // 2))
        self.cp3 = nn.Sequential(nn.Conv2d(nf // 4, f // 4, 1, 1, 0, bias=False), nn.BatchNorm2d(f // 4))
        self.segmenter_head1 = _gelu_sep(f, seg_classes)
        self.up_layer1 = _gelu_sep(f, f // 2)
        self.segmenter_head2 = _gelu_sep(f // 2, seg_classes)
        self.up_layer2 = _gelu_sep(f // 2, f // 4)
        self.segmenter_head3 = _gelu_sep(f // 4, seg_classes)
        self.classifer = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(nf, num_classes))

    def classify(self, x) -> torch.Tensor:
        """Logits only: the inference model (bypass layers dropped), as used by attacks."""
        return self.classifer(self.segmenter.forward_stages(x)[2])

    def forward(self, x) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        x2, x3, x4 = self.segmenter.forward_stages(x)
        c3, c2, c1 = self.cp3(x2), self.cp2(x3), self.cp1(x4)
        logits = self.classifer(x4)
        seg1 = self.segmenter_head1(c1)
        if self.top_down:
            m2 = upsample_to(self.up_layer1(c1), c2) + c2
            seg2 = self.segmenter_head2(m2)
            m3 = upsample_to(self.up_layer2(m2), c3) + c3
            seg3 = self.segmenter_head3(m3)
        else:
            seg2 = self.segmenter_head2(c2)
            seg3 = self.segmenter_head3(c3)
        segs = [seg3, seg2, seg1][3 - self.levels:]
        return logits, segs


class TwoStage(nn.Module):
    """Two-stage part model (Sitawarin et al.), as in the PIN++ reference.

    forward(x) -> (logits, [seg]) with seg at layer4 resolution."""

    def __init__(self, arch: str = "resnet50", width: int = 64, act: str = "gelu",
                 num_classes: int = 1000, seg_classes: int = 3311, pool: int = 4):
        super().__init__()
        self.segmenter = ResNet(arch, width, act, with_fc=False)
        nf = self.segmenter.num_features
        self.segmenter_head = nn.Sequential(nn.GELU(), nn.BatchNorm2d(nf), SeparableConv2d(nf, seg_classes, 3, 1))
        self.classifer = nn.Sequential(
            nn.AdaptiveAvgPool2d((pool, pool)),          # 0
            nn.Conv2d(seg_classes, nf // 4, pool),       # 1 (bias)
            nn.BatchNorm2d(nf // 4),                     # 2
            nn.GELU(),                                   # 3
            nn.Flatten(),                                # 4
            nn.Linear(nf // 4, nf),                      # 5
            nn.BatchNorm1d(nf),                          # 6
            nn.GELU(),                                   # 7
            nn.Linear(nf, num_classes),                  # 8
        )

    def forward(self, x):
        x4 = self.segmenter.forward_stages(x)[2]
        seg = self.segmenter_head(x4)
        logits = self.classifer(F.softmax(seg, dim=1))
        return logits, [seg]


def build_model(arch: str, act: str, num_classes: int, head: Optional[str] = None,
                seg_classes: int = 3311, levels: int = 3, top_down: bool = True,
                width: int = 64) -> nn.Module:
    if head is None or head == "none":
        return ResNet(arch, width, act, num_classes, with_fc=True)
    if head == "mpm":
        return MPM(arch, width, act, num_classes, seg_classes, levels, top_down)
    if head == "twostage":
        return TwoStage(arch, width, act, num_classes, seg_classes)
    raise ValueError(head)


def forward_any(model: nn.Module, x) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """(logits, segs) for any model; segs is [] for the plain ResNet."""
    out = model(x)
    if isinstance(out, tuple):
        return out
    return out, []


# --------------------------------------------------------------------------- losses


def ce_smooth(logits: torch.Tensor, target: torch.Tensor, smoothing: float = 0.1) -> torch.Tensor:
    """timm LabelSmoothingCrossEntropy: (1-s)*nll + s*mean_c(-log p_c), mean over batch.
    Identical to soft-target CE with on = 1-s+s/C, off = s/C (the reference's mixup path)."""
    logp = F.log_softmax(logits, dim=-1)
    nll = -logp.gather(-1, target.view(-1, 1)).squeeze(-1)
    smooth = -logp.mean(dim=-1)
    return ((1.0 - smoothing) * nll + smoothing * smooth).mean()


def soft_focal_level(z: torch.Tensor, t: torch.Tensor, weight: Optional[torch.Tensor],
                     gamma: float = 2.0) -> torch.Tensor:
    """One level: z, t [N,S,h,w]; per pixel l = -sum_c t_c log_softmax_c(z), p = exp(-l)
    (no detach), loss = (1-p)^gamma * l * weight_n; mean over all N*h*w pixels."""
    l = -(t * F.log_softmax(z, dim=1)).sum(dim=1)  # [N,h,w]
    p = torch.exp(-l)
    loss = (1.0 - p) ** gamma * l
    if weight is not None:
        loss = loss * weight.view(-1, 1, 1)
    return loss.mean()


def soft_focal_loss(segs: Sequence[torch.Tensor], targets: Sequence[torch.Tensor],
                    weight: Optional[torch.Tensor], gamma: float = 2.0) -> torch.Tensor:
    """Mean over the used levels of ``soft_focal_level`` (segs[i] pairs with targets[i])."""
    assert len(segs) == len(targets) and len(segs) > 0
    losses = [soft_focal_level(z, t, weight, gamma) for z, t in zip(segs, targets)]
    return sum(losses) / len(losses)


def total_loss(logits, segs, target, seg_targets, seg_weight, lam: float = 1.0,
               gamma: float = 2.0, smoothing: float = 0.1) -> torch.Tensor:
    """L = CE_smooth + lambda * L_seg (L_seg omitted for a plain ResNet: segs == [])."""
    loss = ce_smooth(logits, target, smoothing)
    if len(segs) > 0:
        loss = loss + lam * soft_focal_loss(segs, seg_targets, seg_weight, gamma)
    return loss


# --------------------------------------------------------------------------- targets


def one_hot_smooth(labels: torch.Tensor, num_classes: int, smoothing: float = 0.1) -> torch.Tensor:
    """labels [N,h,w] int -> [N,S,h,w] f32 with on = 1-s+s/S, off = s/S."""
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    oh = torch.full((*labels.shape, num_classes), off, dtype=torch.float32)
    oh.scatter_(-1, labels.long().unsqueeze(-1), on)
    return oh.permute(0, 3, 1, 2).contiguous()


def soft_seg_targets(label_map: torch.Tensor, num_seg: int,
                     sizes: Sequence[Tuple[int, int]], smoothing: float = 0.1) -> List[torch.Tensor]:
    """label_map [N,H,W] int (0 = background) -> list of soft targets, one per size.

    sizes[0]: nearest resize of the label map (F.interpolate mode='nearest', i.e.
    src = floor(dst * in/out)), one-hot with smoothing over S; every later size: bilinear
    (align_corners=False) resize of the sizes[0] soft map."""
    lm = F.interpolate(label_map.float().unsqueeze(1), size=tuple(sizes[0]), mode="nearest")
    first = one_hot_smooth(lm.squeeze(1).round().long(), num_seg, smoothing)
    out = [first]
    for s in sizes[1:]:
        out.append(F.interpolate(first, size=tuple(s), mode="bilinear", align_corners=False))
    return out


def mpm_seg_targets(label_map: torch.Tensor, num_seg: int, levels: int = 3,
                    sizes: Sequence[Tuple[int, int]] = ((28, 28), (14, 14), (7, 7)),
                    smoothing: float = 0.1, reference_style: bool = False) -> List[torch.Tensor]:
    """Soft targets for the used levels, highest resolution first (matches MPM.forward).

    DESIGN.md (default): nearest to sizes[0] (28x28), bilinear from it to 14x14 and 7x7,
    then keep the last ``levels`` entries.
    ``reference_style=True``: what the authors' configs do for SV1/SV2 (their
    ``output_size`` is [[14,14],[7,7]] for SV2 and [[7,7]] for SV1/two-stage): the
    nearest resize goes straight to the highest *used* size."""
    used = list(sizes)[3 - levels:] if len(sizes) == 3 else list(sizes)[-levels:]
    if reference_style:
        return soft_seg_targets(label_map, num_seg, used, smoothing)
    full = soft_seg_targets(label_map, num_seg, sizes, smoothing)
    return full[len(full) - levels:]
