#!/usr/bin/env python3
"""Writes tests/fixtures/io/half_rounding.tsv: f32 inputs and the bf16 / f16 bits PyTorch gives
them with `.to(torch.bfloat16)` / `.to(torch.float16)` (CPU), for the edge cases of rounding:
exact ties (to even, both directions), values just off a tie, subnormals (f32 subnormals for
bf16, f16 subnormals and underflow for f16), signed zeros, infinities, NaNs (quiet, signalling,
negative, with payloads), overflow to infinity, and a spread of ordinary values.

Columns: f32 bits, bf16 bits, f16 bits (hex, no 0x), a note naming the case. The Rust unit tests
in src/io/elements.rs check the host conversion (the `half` crate) against the table, and
tests/kernels_emulated.rs checks the kernels' bf16 `store` against it.

The table is also computed by a NumPy emulation of round-to-nearest-even (bit arithmetic on the
f32 pattern; NumPy's own float16 cast for f16) and the script stops if the two disagree
anywhere except NaNs, so the table does not depend on trusting either alone. NaN rows are
compared as "is a NaN" only: PyTorch's vectorised CPU cast writes 0xffff for every NaN, where
the kernels and `half` keep the sign and the top payload bits (0x7fc0 for the default NaN).

    python3 -m venv /tmp/v && /tmp/v/bin/pip install numpy torch
    /tmp/v/bin/python scripts/make_half_fixtures.py            # rewrites the table
    /tmp/v/bin/python scripts/make_half_fixtures.py --numpy    # without torch: the emulation

Used for the committed table: see the header line it writes.
"""

import argparse
import os
import sys

import numpy as np


def f32_bits(values):
    return np.asarray(values, dtype=np.float32).view(np.uint32)


def cases():
    """(f32 bits, note) for every row."""
    rows = []

    def add(bits, note):
        rows.append((int(bits) & 0xFFFFFFFF, note))

    # Ties: the low 16 bits are exactly 0x8000. Even upper half stays, odd rounds up.
    for hi in [0x3F80, 0x3F81, 0x3F82, 0x3F83, 0x4000, 0x4001, 0xBF80, 0xBF81, 0x7F7F, 0xFF7F,
               0x0080, 0x0081, 0x8080, 0x8081, 0x0000, 0x0001, 0x8001, 0x7F00, 0x7F01]:
        add((hi << 16) | 0x8000, f"bf16 tie {hi:04x}.8000")
    # One ulp either side of a tie.
    for hi in [0x3F80, 0x3F81, 0xC2C7, 0x0080]:
        add((hi << 16) | 0x7FFF, f"bf16 just below tie {hi:04x}")
        add((hi << 16) | 0x8001, f"bf16 just above tie {hi:04x}")
    # Largest finite values: the tie above the largest bf16 rounds to infinity (overflow).
    add(0x7F7FFFFF, "f32 max: bf16 overflow to inf")
    add(0xFF7FFFFF, "-f32 max: bf16 overflow to -inf")
    add(0x7F7F7FFF, "just below bf16 max + half ulp")
    # f32 subnormals (bf16 keeps them: same exponent range as f32).
    for b in [0x00000001, 0x00008000, 0x00018000, 0x00007FFF, 0x000FFFFF, 0x007FFFFF, 0x807FFFFF,
              0x007F8000, 0x80000001, 0x00400000]:
        add(b, f"f32 subnormal {b:08x}")
    # Zeros, infinities.
    add(0x00000000, "+0")
    add(0x80000000, "-0")
    add(0x7F800000, "+inf")
    add(0xFF800000, "-inf")
    # NaNs: quiet, signalling (payload only in the low bits that bf16 drops), negative.
    for b, what in [(0x7FC00000, "quiet"), (0xFFC00000, "negative quiet"),
                    (0x7F800001, "signalling, low payload"), (0x7FA00000, "signalling"),
                    (0xFF800001, "negative signalling, low payload"),
                    (0x7FFFFFFF, "all payload bits"), (0x7FC0FFFF, "quiet with low payload")]:
        add(b, f"nan {what}")
    # f16 edge cases: ties at the f16 mantissa (13 dropped bits), subnormals, underflow, overflow.
    for v in [1.0 + 2.0 ** -11, 1.0 + 3 * 2.0 ** -11, 2048.0 + 1.0, 2048.0 + 3.0,
              -(1.0 + 2.0 ** -11)]:
        add(f32_bits([v])[0], f"f16 tie {v!r}")
    for v in [2.0 ** -24, 2.0 ** -25, 2.0 ** -25 * 1.0000001, 3 * 2.0 ** -25, 2.0 ** -26,
              2.0 ** -14, 2.0 ** -14 * (1 - 2.0 ** -11), 6.0e-8, -6.0e-8, 1.0e-10]:
        add(f32_bits([v])[0], f"f16 subnormal/underflow {v!r}")
    for v in [65504.0, 65519.99, 65520.0, 70000.0, -65520.0, 1.0e10]:
        add(f32_bits([v])[0], f"f16 overflow edge {v!r}")
    # Ordinary values over many binades (deterministic).
    rng = np.random.default_rng(22)
    for b in rng.integers(0, 2 ** 32, size=96, dtype=np.uint64):
        b = int(b)
        if (b >> 23) & 0xFF == 0xFF:  # keep these finite; NaN/inf rows are above
            b &= ~(1 << 30)
        add(b, "random bits")
    for v in rng.normal(0.0, 3.0, size=32).astype(np.float32):
        add(f32_bits([v])[0], "random normal")
    return rows


def numpy_bf16(bits):
    """Round to nearest even on the bit pattern, NaN -> quiet NaN (upper half | 0x40)."""
    u = np.asarray(bits, dtype=np.uint64)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF
    quiet = ((u >> 16) | 0x40) & 0xFFFF
    return np.where(nan, quiet, rounded).astype(np.uint16)


def numpy_f16(bits):
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(bits, dtype=np.uint32).view(np.float32).astype(np.float16).view(np.uint16)


def torch_bits(bits):
    import torch

    x = torch.from_numpy(np.asarray(bits, dtype=np.uint32).view(np.float32).copy())
    b = x.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    h = x.to(torch.float16).view(torch.int16).numpy().view(np.uint16)
    return b, h, f"PyTorch {torch.__version__} (CPU), .to(torch.bfloat16) / .to(torch.float16)"


def is_nan16(b, exp_mask, man_mask):
    return (b & exp_mask) == exp_mask and (b & man_mask) != 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--numpy", action="store_true", help="use the NumPy emulation (no torch)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests",
                                                  "fixtures", "io", "half_rounding.tsv"))
    a = ap.parse_args()
    rows = cases()
    bits = [r[0] for r in rows]
    nb, nh = numpy_bf16(bits), numpy_f16(bits)
    if a.numpy:
        tb, th, source = nb, nh, f"NumPy {np.__version__} emulation of round-to-nearest-even"
    else:
        tb, th, source = torch_bits(bits)
        mismatches = []
        for i, (f, note) in enumerate(rows):
            for got, want, em, mm, what in [(tb[i], nb[i], 0x7F80, 0x007F, "bf16"),
                                            (th[i], nh[i], 0x7C00, 0x03FF, "f16")]:
                if is_nan16(int(want), em, mm) and is_nan16(int(got), em, mm):
                    continue
                if got != want:
                    mismatches.append(f"{f:08x} {note}: {what} torch {got:04x} numpy {want:04x}")
        if mismatches:
            sys.exit("torch and the NumPy emulation disagree:\n" + "\n".join(mismatches))
    with open(a.out, "w") as f:
        f.write(f"# f32 -> bf16 / f16 bits by {source}. Made by scripts/make_half_fixtures.py\n")
        f.write("# f32_bits\tbf16_bits\tf16_bits\tcase\n")
        for i, (b, note) in enumerate(rows):
            f.write(f"{b:08x}\t{int(tb[i]):04x}\t{int(th[i]):04x}\t{note}\n")
    print(f"wrote {len(rows)} rows to {a.out} ({source})")


if __name__ == "__main__":
    main()
