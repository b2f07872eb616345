"""A compressed payload file padded with frames of no element (which no writer makes) is refused at
the first of them: the reader's work does not grow with their number."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest

import xorweights
from tests.test_compressed_payloads import pair
from xorweights.errors import FormatError
from xorweights.formats import delta_frames
from xorweights.formats.frame_stream import FrameReader, Span, write_frames

EMPTY = delta_frames.encode_frame(b"", b"", delta_frames.STORED, 1, "", delta_frames.compressor())


@pytest.mark.parametrize("count", [1, 1000, 200_000])
def test_the_reader_stops_at_the_first_empty_frame(count: int) -> None:
    """Whatever their number, the reader reads one empty frame's head past the first frame."""
    first = io.BytesIO()
    write_frames(io.BytesIO(b"header!!"), io.BytesIO(bytes(8)), [Span(8, delta_frames.STORED)], first)
    payload = io.BytesIO(first.getvalue() + EMPTY * count)
    reader = FrameReader(payload, io.BytesIO(bytes(8)), "p.safetensors")
    with pytest.raises(FormatError, match=r"p.safetensors: frame 1: a frame of no bytes, which no writer"):
        while reader.readinto(bytearray(1 << 16)):
            pass
    head = delta_frames.head_size(EMPTY[:2])
    assert payload.tell() == len(first.getvalue()) + head  # its planes, and the frames after, unread
    assert reader.consumed() == payload.tell()


def test_a_payload_of_empty_frames_is_refused_in_one_line(tmp_path: Path) -> None:
    """End to end, with the manifest updated to match the padded file: one error, no output."""
    base, ft, _ = pair(tmp_path)
    payload = tmp_path / "payload"
    xorweights.encode(ft, base=base, out=payload)
    target = payload / "model.safetensors"
    data = target.read_bytes()
    cut = delta_frames.parse_head(data[:40], "t").size  # after the header's frame
    data = data[:cut] + EMPTY * 20_000 + data[cut:]
    target.write_bytes(data)
    doc = json.loads((payload / "xorweights.json").read_text())
    entry = next(f for f in doc["files"] if f["name"] == "model.safetensors")
    entry.update(payload_size=len(data), payload_sha256=hashlib.sha256(data).hexdigest())
    (payload / "xorweights.json").write_text(json.dumps(doc))
    with pytest.raises(FormatError, match=r"model.safetensors: frame 1 .*a frame of no bytes") as info:
        xorweights.decode(payload, base=base, out=tmp_path / "out")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out" / "model.safetensors").exists()
