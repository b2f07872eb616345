"""An independent implementation of the published legacy `xor_codec.py`, for golden bytes.

It follows the published algorithm step by step and shares no code with xorweights: 4 KiB
blocks, `numpy.pad` of a short base block, truncation of a long one, `gzip` level 9 with the file
name in the header, `added_tokens.json` copied raw first and then XOR-ed over that copy like
every other file when the base holds one (a base without it raises, and the raw copy stays), and
errors per file swallowed. The only departure is a fixed gzip `mtime` (the script stamps the
current time), so outputs compare.
"""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import numpy

BLOCK = 4096
FIXED_MTIME = 0


def _xor_blocks(fp_out, fp_payload, fp_base, block_size=BLOCK):
    while True:
        buf1 = numpy.array(bytearray(fp_payload.read(block_size)), dtype=numpy.uint8)
        buf2 = numpy.array(bytearray(fp_base.read(block_size)), dtype=numpy.uint8)
        padding = len(buf1) - len(buf2)
        if padding > 0:
            buf2 = numpy.pad(buf2, (0, padding), "constant", constant_values=(0,))
        if padding < 0:
            buf2 = buf2[: len(buf1)]
        fp_out.write(numpy.bitwise_xor(buf1, buf2))
        if len(buf1) < block_size:
            break


def xor_uncompressed(dst, src_payload, src_base):
    with open(src_payload, "rb") as fp_payload, open(src_base, "rb") as fp_base:
        with open(dst, "wb") as fp:
            _xor_blocks(fp, fp_payload, fp_base)


def xor_encode(dst, src_payload, src_base):
    with open(src_payload, "rb") as fp_payload, open(src_base, "rb") as fp_base:
        # gzip.open(dst, "wb") with the timestamp pinned.
        with gzip.GzipFile(dst, "wb", compresslevel=9, mtime=FIXED_MTIME) as fp:
            _xor_blocks(fp, fp_payload, fp_base)


def xor_decode(dst, src_payload, src_base):
    with gzip.open(src_payload, "rb") as fp_payload, open(src_base, "rb") as fp_base:
        with open(dst, "wb") as fp:
            _xor_blocks(fp, fp_payload, fp_base)


def xor_dir(dst, src_payload, src_base, decode=True, compress=False):
    """The legacy folder loop; returns the names whose processing raised (and was swallowed)."""
    xor = (xor_decode if decode else xor_encode) if compress else xor_uncompressed
    Path(dst).mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(src_payload) / "added_tokens.json", Path(dst) / "added_tokens.json")
    failed = []
    for path in os.listdir(src_payload):
        try:
            xor(f"{dst}/{path}", f"{src_payload}/{path}", f"{src_base}/{path}")
        except Exception:
            failed.append(path)
    return failed
