#!/usr/bin/env python3
"""Writes tests/fixtures/hostile/: small hostile and broken inputs for tests/hostile_inputs.rs.

Standard library only (no torch): every pickle is written opcode by opcode, so the files hold
exactly the attack and nothing else. Each file stays a few KB; the bombs are deflated.

  python3 scripts/make_hostile_corpus.py [OUT_DIR]

Payloads that would run code try to create a file named PWNED in the current directory; the
test runs every binary in an empty directory and checks that nothing appeared.
"""
import io
import json
import os
import struct
import sys
import zipfile
import zlib

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(__file__), "..", "tests", "fixtures", "hostile")

PROTO2 = b"\x80\x02"
STOP = b"."
MARK = b"("
TUPLE = b"t"
TUPLE1 = b"\x85"
REDUCE = b"R"
NONE = b"N"
EMPTY_DICT = b"}"
SETITEMS = b"u"
BINPERSID = b"Q"
NEWFALSE = b"\x89"


def glob(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def s(text):
    b = text.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def i(v):
    if 0 <= v < 256:
        return b"K" + bytes([v])
    if 0 <= v < 65536:
        return b"M" + struct.pack("<H", v)
    if -2**31 <= v < 2**31:
        return b"J" + struct.pack("<i", v)
    return b"\x8a\x08" + struct.pack("<q", v)


def int_tuple(vals):
    return MARK + b"".join(i(v) for v in vals) + TUPLE


def storage(key, numel, kind="FloatStorage"):
    return MARK + s("storage") + glob("torch", kind) + s(key) + s("cpu") + i(numel) + TUPLE + BINPERSID


def tensor(key, storage_numel, shape, stride, offset=0):
    return (glob("torch._utils", "_rebuild_tensor_v2") + MARK + storage(key, storage_numel) + i(offset)
            + int_tuple(shape) + int_tuple(stride) + NEWFALSE
            + glob("collections", "OrderedDict") + b")" + REDUCE + TUPLE + REDUCE)


def state_dict(entries):
    """entries: list of (name, pickled value)."""
    body = b"".join(s(n) + v for n, v in entries)
    return PROTO2 + glob("collections", "OrderedDict") + b")" + REDUCE + MARK + body + SETITEMS + STOP


def torch_zip(path, pkl, storages=(), deflate_pkl=False, deflate_storages=False):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(zipfile.ZipInfo("archive/data.pkl"), pkl,
                   compress_type=zipfile.ZIP_DEFLATED if deflate_pkl else zipfile.ZIP_STORED)
        z.writestr("archive/byteorder", b"little")
        for key, data in storages:
            z.writestr(zipfile.ZipInfo(f"archive/data/{key}"), data,
                       compress_type=zipfile.ZIP_DEFLATED if deflate_storages else zipfile.ZIP_STORED)
        z.writestr("archive/version", b"3\n")


def write(name, data):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)


def main():
    os.makedirs(OUT, exist_ok=True)
    p = lambda n: os.path.join(OUT, n)

    # --- checkpoints (.pth): code execution attempts -------------------------------------
    evil = PROTO2 + glob("posix", "system") + s("touch PWNED") + TUPLE1 + REDUCE + STOP
    torch_zip(p("evil_system.pth"), evil)
    evil_builtin = (PROTO2 + glob("builtins", "exec") + s("open('PWNED','w')") + TUPLE1 + REDUCE
                    + STOP)
    torch_zip(p("evil_exec.pth"), evil_builtin)
    # Hidden inside a state dict value, next to a real tensor.
    hidden = state_dict([
        ("conv1.weight", tensor("0", 4, [4], [1])),
        ("x", glob("subprocess", "Popen") + s("touch PWNED") + TUPLE1 + REDUCE),
    ])
    torch_zip(p("evil_in_state_dict.pth"), hidden, [("0", b"\0" * 16)])
    # Legacy format (magic, protocol, sys info, object) with the payload as the object.
    legacy = (PROTO2 + b"\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19" + STOP
              + PROTO2 + i(1001) + STOP
              + PROTO2 + EMPTY_DICT + STOP
              + evil)
    write("evil_legacy.pth", legacy)

    # --- stack and memory attacks --------------------------------------------------------
    # ~50,000 nested torch._tensor._rebuild_from_type_v2 calls (the reported stack overflow).
    links = 50_000
    chain = (PROTO2 + glob("torch._tensor", "_rebuild_from_type_v2") + b"q\x00"
             + glob("torch", "Tensor") + b"q\x01" + b"00" + b"h\x00"
             + (MARK + b"h\x00h\x01") * links
             + MARK + glob("torch._utils", "_rebuild_parameter") + b"h\x01" + NONE + TUPLE1 + NONE + TUPLE
             + (NONE + TUPLE) * links + REDUCE + STOP)
    torch_zip(p("deep_rebuild_chain.pth"), chain, deflate_pkl=True)
    # A million nested lists.
    depth = 1_000_000
    torch_zip(p("deep_lists.pth"), PROTO2 + b"]" * depth + b"a" * (depth - 1) + STOP,
              deflate_pkl=True)
    # Memo flood (MEMOIZE needs protocol 4).
    torch_zip(p("memo_flood.pth"), b"\x80\x04" + NONE + b"\x94" * 3_000_000 + STOP,
              deflate_pkl=True)
    # A deflated data.pkl of 80 MiB (NONE, POP, ...).
    torch_zip(p("pickle_bomb.pth"), PROTO2 + NONE + b"0N" * (40 << 20) + STOP, deflate_pkl=True)
    # Stride-0 views of 2^28 elements over a 1-element storage, eight of them.
    bc = state_dict([(f"w{k}", tensor("0", 1, [1 << 14, 1 << 14], [0, 0])) for k in range(8)])
    torch_zip(p("broadcast_bomb.pth"), bc, [("0", b"\0" * 4)])
    # A 64 MiB storage deflated to ~64 KB.
    n = 16 << 20
    torch_zip(p("storage_bomb.pth"), state_dict([("fc.weight", tensor("0", n, [n], [1]))]),
              [("0", b"\0" * (4 * n))], deflate_storages=True)
    # A storage claiming 2^40 elements over a 16-byte record.
    torch_zip(p("huge_numel.pth"),
              state_dict([("fc.weight", tensor("0", 1 << 40, [1 << 20, 1 << 20], [1 << 20, 1]))]),
              [("0", b"\0" * 16)])
    # A view past the end of its storage.
    torch_zip(p("view_out_of_bounds.pth"),
              state_dict([("fc.weight", tensor("0", 4, [4], [1], offset=100))]),
              [("0", b"\0" * 16)])

    # A state dict that does not fit the model (ResNet-18 width 4 has no 'fc.weight' of 2^24
    # values) whose misfit tensor is a deflated 64 MiB storage: the model check, made on the
    # names and shapes alone, must refuse it before that storage is opened.
    torch_zip(p("misfit_bomb.pth"),
              state_dict([("conv1.weight", tensor("0", 4 * 3 * 7 * 7, [4, 3, 7, 7], [147, 49, 7, 1])),
                          ("fc.weight", tensor("1", n, [n], [1]))]),
              [("0", b"\0" * (4 * 4 * 3 * 7 * 7)), ("1", b"\0" * (4 * n))],
              deflate_storages=True)
    # A timm-style training checkpoint whose optimiser state is a storage bomb: loading the
    # model's 'state_dict' must not open, read or count it.
    def pdict(entries):
        return EMPTY_DICT + MARK + b"".join(k + v for k, v in entries) + SETITEMS
    momentum = pdict([(s("momentum_buffer"), tensor("1", n, [n], [1]))])
    ckpt = (PROTO2 + pdict([
        (s("epoch"), i(3)),
        (s("state_dict"), state_dict([("fc.bias", tensor("0", 2, [2], [1]))])[2:-1]),
        (s("optimizer"), pdict([(s("state"), pdict([(i(0), momentum)]))])),
    ]) + STOP)
    torch_zip(p("optimizer_bomb.pth"), ckpt,
              [("0", struct.pack("<2f", 0.5, -0.5)), ("1", b"\0" * (4 * n))],
              deflate_storages=True)

    # --- broken files ---------------------------------------------------------------------
    good = state_dict([("fc.weight", tensor("0", 4, [2, 2], [2, 1]))])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", good)
        z.writestr("archive/data/0", b"\0" * 16)
    whole = buf.getvalue()
    write("truncated.pth", whole[: len(whole) // 2])
    write("random_bytes.pth", bytes((k * 73 + 11) % 256 for k in range(2048)))
    write("empty.pth", b"")

    # --- safetensors -----------------------------------------------------------------------
    def st(header, data=b""):
        h = json.dumps(header).encode()
        return struct.pack("<Q", len(h)) + h + data
    write("header_too_large.safetensors", struct.pack("<Q", 1 << 62) + b"{}")
    write("offsets_past_end.safetensors",
          st({"input": {"dtype": "F32", "shape": [1, 3, 8, 8], "data_offsets": [0, 1 << 30]}}))
    write("shape_overflow.safetensors",
          st({"input": {"dtype": "F32", "shape": [1 << 40, 1 << 40], "data_offsets": [0, 16]}},
             b"\0" * 16))
    write("not_json.safetensors", struct.pack("<Q", 8) + b"{nonsens" + b"\0" * 8)

    # --- images ----------------------------------------------------------------------------
    # A PNG header claiming 100000 x 100000 RGB pixels with one tiny IDAT.
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    write("huge_dims.png", png)
    write("truncated.png", png[:30])
    # A JPEG cut after its header.
    write("truncated.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
          + b"\xff\xdb\x00\x43\x00" + bytes(range(64)))
    write("garbage.jpg", b"\xff\xd8" + bytes((k * 31) % 256 for k in range(1024)))

    # --- list files and configs ---------------------------------------------------------------
    write("list_binary.txt", b"\x00\xff\xfe junk \x00\n\x01\x02\n")
    write("list_escapes.txt", b"../../../../etc/passwd 0\n/abs/path.jpg 1\n")
    write("config_nan.toml", b"lr = nan\n")
    write("config_negative.toml", b"min_lr = -5.0\nmomentum = -0.5\n")
    write("config_huge.toml", b"width = 100000\ninput_size = 1000000\n")
    write("config_garbage.toml", b"\x00\x01[[[ = = \n")
    write("config_unknown_key.toml", b"no_such_key = 3\n")


if __name__ == "__main__":
    main()
