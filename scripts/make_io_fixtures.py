#!/usr/bin/env python3
"""Writes the checkpoint fixtures of tests/io_*.rs into tests/fixtures/io/.

    python3 scripts/make_io_fixtures.py            # regenerate fixtures (needs torch, safetensors)
    python3 scripts/make_io_fixtures.py --check-pth FILE.pth
        # loads FILE with torch.load(weights_only=True) and checks it against the values the
        # Rust test `save_pth_is_read_by_torch` writes (see tests/io_pth.rs)

Every fixture X comes with X.json: the tensors the Rust loader must produce, flattened
(nested dict keys joined with '.'), as {"name": {"dtype": "f32"|"i64", "shape": [...],
"values": [...]}}. Floating tensors are listed as their float32 values, integer and bool tensors
as int64, in row-major (contiguous) order. Tested with torch 2.15, safetensors 0.8.
"""
import argparse
import collections
import json
import os
import pathlib
import pickle
import sys

import torch

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "io"


def expected(obj, prefix="", out=None):
    """Flattened tensors of obj, as the Rust load_pth returns them."""
    out = {} if out is None else out
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        if t.is_floating_point():
            dtype, vals = "f32", t.float().contiguous().reshape(-1).tolist()
        else:
            dtype, vals = "i64", t.long().contiguous().reshape(-1).tolist()
        out[prefix] = {"dtype": dtype, "shape": list(t.shape), "values": vals}
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(k, (str, int)) and not isinstance(k, bool):
                expected(v, f"{prefix}.{k}" if prefix else str(k), out)
    return out


def write_json(name, obj):
    with open(OUT / name, "w") as f:
        json.dump(expected(obj), f, indent=0, sort_keys=True)
        f.write("\n")


def plain_state_dict():
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4))
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(4, 3, 3, 3, generator=g))
        model[1].running_mean.copy_(torch.randn(4, generator=g))
    model[1].num_batches_tracked.fill_(12345678901)
    # A real module state_dict: an OrderedDict carrying `_metadata` (pickled with BUILD).
    sd = model.state_dict()
    base = torch.randn(3, 5, generator=g)
    sd["transposed"] = base.t()                     # non-contiguous view, strides (1, 5)
    shared = torch.arange(20, dtype=torch.float32) * 0.25
    sd["shared.full"] = shared
    sd["shared.window"] = shared[6:12].view(2, 3)   # same storage, offset 6
    sd["shared.every_third"] = shared[1::3]         # offset 1, stride 3
    sd["half"] = torch.tensor([1.0, -2.5, 65504.0, 6e-8, 0.1], dtype=torch.float16)
    sd["bf16"] = (torch.randn(2, 3, generator=g) * 100).to(torch.bfloat16)
    sd["f64"] = torch.tensor([1.0 / 3.0, -1e30], dtype=torch.float64)
    sd["i32"] = torch.tensor([[-7, 2**31 - 1]], dtype=torch.int32)
    sd["u8"] = torch.tensor([0, 200, 255], dtype=torch.uint8)
    sd["mask"] = torch.tensor([True, False, True])
    sd["empty"] = torch.zeros(0, 3)
    sd["scalar_f32"] = torch.tensor(2.5)
    sd["param"] = torch.nn.Parameter(torch.tensor([4.0, 5.0]))  # _rebuild_parameter
    sd["expanded"] = torch.tensor([3.0]).expand(2, 3)           # stride 0
    return sd


class Evil:
    """Pickles as a call to os.system (pickle records it as posix.system on Linux)."""

    def __reduce__(self):
        return (os.system, ("echo pwned-by-checkpoint",))


class EvilEval:
    def __reduce__(self):
        return (eval, ("__import__('os').system('echo pwned')",))


def main_fixtures():
    OUT.mkdir(parents=True, exist_ok=True)
    sd = plain_state_dict()
    torch.save(sd, OUT / "plain.pth")
    write_json("plain.json", sd)

    # Legacy (pre-1.6) format: sequential pickles + raw storages.
    legacy = collections.OrderedDict((k, sd[k]) for k in
                                     ["0.weight", "1.num_batches_tracked", "transposed", "shared.full",
                                      "shared.window", "half", "bf16", "mask"])
    torch.save(legacy, OUT / "legacy.pth", _use_new_zipfile_serialization=False)
    write_json("legacy.json", legacy)

    # timm / paper style training checkpoint.
    g = torch.Generator().manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.BatchNorm2d(2))
    dp = {f"module.{k}": v for k, v in net.state_dict().items()}
    with torch.no_grad():
        for v in net.parameters():
            v.copy_(torch.randn(v.shape, generator=g))
    ema = {f"module.{k}": v.clone() * 0.5 if v.is_floating_point() else v.clone()
           for k, v in net.state_dict().items()}
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(2, 3, 4, 4, generator=g)).sum().backward()
    opt.step()
    ckpt = {
        "epoch": 7,
        "arch": "resnet18",
        "state_dict": dp,
        "state_dict_ema": ema,
        "optimizer": opt.state_dict(),
        "args": argparse.Namespace(lr=0.1, epochs=100, output=pathlib.PosixPath("/tmp/run"),
                                   model="resnet18", betas=(0.9, 0.999)),
        "metric": 71.25,
        "big": 2**70,
        "version": 2,
    }
    try:
        import numpy as np
        ckpt["best_np"] = np.float64(0.5)
    except ImportError:
        pass
    torch.save(ckpt, OUT / "timm.pth")
    write_json("timm.json", ckpt)

    # Malicious pickles: torch.save happily writes them; a safe loader must refuse them.
    torch.save({"w": torch.ones(2), "payload": Evil()}, OUT / "malicious_system.pth")
    torch.save({"w": torch.ones(2), "payload": EvilEval()}, OUT / "malicious_eval.pth")

    # safetensors with every convertible dtype and metadata.
    from safetensors.torch import save_file
    st = {
        "f32": torch.randn(2, 2, generator=g),
        "f16": torch.tensor([0.5, -1.0, 3.0e-5], dtype=torch.float16),
        "bf16": torch.tensor([1.5, -300.0], dtype=torch.bfloat16),
        "f64": torch.tensor([0.1], dtype=torch.float64),
        "i32": torch.tensor([-1, 5], dtype=torch.int32),
        "i16": torch.tensor([-300], dtype=torch.int16),
        "i8": torch.tensor([-128, 127], dtype=torch.int8),
        "u8": torch.tensor([255], dtype=torch.uint8),
        "bool": torch.tensor([True, False]),
        "module.num_batches_tracked": torch.tensor(9, dtype=torch.int64),
    }
    save_file(st, str(OUT / "dtypes.safetensors"), metadata={"format": "pt", "note": "mpm fixture"})
    write_json("dtypes.json", st)
    save_file({"ok": torch.ones(1), "f8": torch.zeros(2, dtype=torch.float8_e4m3fn)},
              str(OUT / "float8.safetensors"))
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(list(OUT.iterdir()))} files, {total} bytes into {OUT}")


def check_pth(path):
    """Checks the file the Rust test `save_pth_is_read_by_torch` wrote."""
    sd = torch.load(path, weights_only=True)
    assert isinstance(sd, dict), type(sd)
    assert list(sd.keys()) == ["a.weight", "b.scalar", "c.long", "d.empty", "e.big"], list(sd.keys())
    a = sd["a.weight"]
    assert a.dtype == torch.float32 and a.shape == (2, 3, 4), (a.dtype, a.shape)
    assert torch.equal(a, torch.arange(24, dtype=torch.float32).view(2, 3, 4) * 0.5 - 3), a
    assert sd["b.scalar"].shape == () and sd["b.scalar"].item() == 1.25
    c = sd["c.long"]
    assert c.dtype == torch.int64 and c.tolist() == [-5, 0, 2**40], c
    assert sd["d.empty"].shape == (0, 2)
    assert sd["e.big"].shape == (70000,) and sd["e.big"][69999].item() == 69999.0
    print(f"torch.load(weights_only=True) OK: {path}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--check-pth":
        check_pth(sys.argv[2])
    else:
        main_fixtures()
