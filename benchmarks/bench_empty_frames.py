"""Time a frame reader over a payload file padded with frames of no element (no writer makes one).

Usage: python benchmarks/bench_empty_frames.py [--counts 1000,200000] [--workers 2]

Each run reads one stored frame (a header) and then `count` empty frames with `FrameReader`, as a
decode does, and prints the wall time and how it ended (refused, or read to the end). A reader
that refuses the first empty frame takes the same time whatever the count.
"""

from __future__ import annotations

import argparse
import io
import time

from xorweights.errors import FormatError
from xorweights.formats import delta_frames
from xorweights.formats.frame_stream import FrameReader, Span, write_frames


def run(count: int, workers: int) -> tuple[float, str]:
    first = io.BytesIO()
    write_frames(io.BytesIO(b"header!!"), io.BytesIO(bytes(8)), [Span(8, delta_frames.STORED)], first)
    empty = delta_frames.encode_frame(b"", b"", delta_frames.STORED, 1, "", delta_frames.compressor())
    payload = io.BytesIO(first.getvalue() + empty * count)
    started = time.perf_counter()
    try:
        with FrameReader(payload, io.BytesIO(bytes(8)), "p", workers=workers) as reader:
            while reader.readinto(bytearray(1 << 20)):
                pass
        how = "read to the end"
    except FormatError as e:
        how = f"refused: {str(e)[:60]}"
    return time.perf_counter() - started, how


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="1000,200000")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    for count in (int(c) for c in args.counts.split(",")):
        wall, how = run(count, args.workers)
        print(f"{count:>8} empty frames: {wall * 1000:9.1f} ms  {how}")


if __name__ == "__main__":
    main()
