"""Outputs already in place are kept on cryptographic evidence only when asked to prove them.

A forged output: bytes edited, four more bytes chosen so the file's CRC-32 is the recorded one,
and the modification time set back. `decode --verify` and a decode with `--checksums` must not be
fooled by it (it is made again, and `verify --checksums` then agrees), the tensor manifest is never
rewritten to match it, and a plain rerun of an untouched folder still keeps every output unread.
Legacy, native and additive-delta outputs take different paths; each is covered.
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest

import xorweights
from tests.conftest import legacy_folders, tree
from tests.delta_models import VOCAB, llama_state, perturbed, save_model
from tests.test_half_made_payloads import native_pair
from xorweights.cli import main
from xorweights.outfolder.atomic import BOOKKEEPING_DIR
from xorweights.tensor_manifest import TENSORS_NAME


def run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def forge_crc(data: bytes, at: int, want: int) -> bytes:
    """`data` with the 4 bytes at `at` chosen so that its CRC-32 is `want` (CRC-32 is affine over
    GF(2): solve for the 32 bits of the window)."""
    buf = bytearray(data)
    buf[at : at + 4] = bytes(4)
    c0 = zlib.crc32(buf)
    pivots: dict[int, tuple[int, int]] = {}
    for i in range(32):
        buf[at + i // 8] ^= 1 << (i % 8)
        v, m = zlib.crc32(buf) ^ c0, 1 << i
        buf[at + i // 8] ^= 1 << (i % 8)
        while v:
            h = v.bit_length() - 1
            if h not in pivots:
                pivots[h] = (v, m)
                break
            v, m = v ^ pivots[h][0], m ^ pivots[h][1]
    t, w = want ^ c0, 0
    while t:
        v, m = pivots[t.bit_length() - 1]
        t, w = t ^ v, w ^ m
    buf[at : at + 4] = w.to_bytes(4, "little")
    assert zlib.crc32(buf) == want
    return bytes(buf)


def forge(path: Path, *, fix_crc: bool = True) -> None:
    """Edit bytes in the second half of `path` (a tensor's data, never a header), make the CRC-32
    the old one again (unless not `fix_crc`: an accidental change), and set the times back."""
    st = path.stat()
    data = path.read_bytes()
    mid = len(data) * 3 // 4
    edited = bytearray(data)
    for i in range(mid, mid + 8):
        edited[i] ^= 0x5A
    new = forge_crc(bytes(edited), mid + 8, zlib.crc32(data)) if fix_crc else bytes(edited)
    with open(path, "r+b") as f:  # the same inode, as an editor in place would leave it
        f.write(new)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert path.read_bytes() != data
    assert (zlib.crc32(path.read_bytes()) == zlib.crc32(data)) == fix_crc


@dataclass(frozen=True)
class Case:
    """A payload, how to decode it, the file to forge, and what an untouched decode gives."""

    kind: str
    decode: tuple[object, ...]
    """`decode` arguments before `--out`."""
    target: str
    reference: Path
    """An untouched decode into another folder."""

    def args(self, out: Path, *more: object) -> list[object]:
        return [*self.decode, "--out", out, "--quiet", "--json", *more]


def outputs(folder: Path) -> dict[str, bytes]:
    """The folder's files but the records that differ from folder to folder (stamps)."""
    return {n: b for n, b in tree(folder).items() if not n.startswith(f"{BOOKKEEPING_DIR}/")}


def stamps(folder: Path) -> dict[str, tuple[int, int, int]]:
    return {
        p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_ctime_ns)
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name != TENSORS_NAME
    }


def _legacy(root: Path) -> tuple[tuple[object, ...], str]:
    base, tuned = legacy_folders(root)
    xorweights.encode(tuned, base=base, out=root / "payload", format="oasst")
    return ("decode", root / "payload", "--base", base), "pytorch_model-00001-of-00002.bin"


def _native(root: Path) -> tuple[tuple[object, ...], str]:
    ft, base = native_pair(root)
    xorweights.encode(ft, base=base, out=root / "payload")
    return ("decode", root / "payload", "--base", base), "model-1.safetensors"


def _delta(root: Path, container: str) -> tuple[tuple[object, ...], str]:
    base = llama_state()
    target = {k: v.half() for k, v in perturbed(base, VOCAB, 7).items()}
    save_model(root / "base", base)
    save_model(root / "delta", {k: target[k] - base[k].half() for k in target}, shards=2)
    name = (
        "model-00001-of-00002.safetensors"
        if container == "safetensors"
        else "pytorch_model-00001-of-00002.bin"
    )
    fmt = ("--output-format", container)
    return (
        "decode",
        root / "delta",
        "--base",
        root / "base",
        "--recipe",
        "fastchat",
        *fmt,
        "--max-shard-size",
        "3KB",
    ), name


KINDS = ["legacy", "native", "delta", "delta-bin"]


@pytest.fixture(params=KINDS)
def case(request: pytest.FixtureRequest, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Case:
    kind = request.param
    root = tmp_path / "in"
    root.mkdir()
    if kind == "legacy":
        decode, target = _legacy(root)
    elif kind == "native":
        decode, target = _native(root)
    else:
        decode, target = _delta(root, "bin" if kind == "delta-bin" else "safetensors")
    c = Case(kind, decode, target, tmp_path / "reference")
    code, _, err = run(capsys, *c.args(c.reference))
    assert code == 0, err
    assert (c.reference / target).is_file()
    return c


def _kept(stdout: str) -> dict[str, bool]:
    return {f["name"]: f["kept"] for f in json.loads(stdout)["files"]}


def test_verify_makes_a_forged_output_again(case: Case, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert run(capsys, *case.args(out))[0] == 0
    forge(out / case.target)
    before = stamps(out)
    code, stdout, err = run(capsys, *case.args(out, "--verify"))
    assert code == 0, err
    kept = _kept(stdout)
    assert not kept[case.target] and all(kept[n] for n in kept if n != case.target)
    assert outputs(out) == outputs(case.reference)  # the tensor manifest included: of the remade file
    after = stamps(out)
    assert after[case.target] != before[case.target]
    assert all(after[n] == before[n] for n in before if n != case.target)  # the others were not rewritten


def test_a_decode_with_checksums_agrees_with_verify(case: Case, tmp_path: Path, capsys) -> None:
    if case.kind.startswith("delta"):
        claimed = tmp_path / "claimed.json"
        claimed.write_bytes((case.reference / TENSORS_NAME).read_bytes())
    else:
        claimed = tmp_path / "claimed.sha256"
        code, _, err = run(capsys, "checksum", case.reference, "-a", "sha256", "-o", claimed, "--quiet")
        assert code == 0, err
    out = tmp_path / "out"
    assert run(capsys, *case.args(out))[0] == 0
    forge(out / case.target)
    code, stdout, _ = run(capsys, "verify", out, "--checksums", claimed, "--quiet")
    assert code == 1, stdout  # the forgery is there to find
    code, stdout, err = run(capsys, *case.args(out, "--checksums", claimed))
    assert code == 0, err
    assert not _kept(stdout)[case.target]
    code, stdout, _ = run(capsys, "verify", out, "--checksums", claimed, "--quiet")
    assert code == 0, stdout
    assert outputs(out) == outputs(case.reference)


def test_a_plain_rerun_keeps_an_untouched_folder_unread(case: Case, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert run(capsys, *case.args(out))[0] == 0
    before = stamps(out)
    code, stdout, err = run(capsys, *case.args(out))
    assert code == 0, err
    assert all(_kept(stdout).values())
    assert stamps(out) == before  # not one output rewritten, nor even touched
    assert outputs(out) == outputs(case.reference)


def test_a_plain_rerun_makes_an_accidentally_changed_output_again(case: Case, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert run(capsys, *case.args(out))[0] == 0
    forge(out / case.target, fix_crc=False)
    code, stdout, err = run(capsys, *case.args(out))
    assert code == 0, err
    assert not _kept(stdout)[case.target]
    assert outputs(out) == outputs(case.reference)


@pytest.mark.parametrize("kind", ["native", "delta", "delta-bin"])
def test_a_plain_rerun_makes_a_forged_output_again_where_a_sha256_is_recorded(
    kind: str, tmp_path: Path, capsys
) -> None:
    """Native outputs have the payload's sha256, a delta's weight files the tensor manifest's: a
    rerun that finds the stamps changed proves them, and never rewrites the manifest to match."""
    root = tmp_path / "in"
    root.mkdir()
    decode, target = (
        _native(root) if kind == "native" else _delta(root, "bin" if kind == "delta-bin" else "safetensors")
    )
    c = Case(kind, decode, target, tmp_path / "reference")
    assert run(capsys, *c.args(c.reference))[0] == 0
    out = tmp_path / "out"
    assert run(capsys, *c.args(out))[0] == 0
    forge(out / target)
    code, stdout, err = run(capsys, *c.args(out))
    assert code == 0, err
    assert not _kept(stdout)[target]
    assert outputs(out) == outputs(c.reference)


def test_a_forged_legacy_output_survives_only_a_plain_rerun(tmp_path: Path, capsys) -> None:
    """The documented limit of the fast path: with no published digest, a legacy output's record
    holds a CRC-32, which detects accidents, not forgeries; `--verify` is the proof."""
    root = tmp_path / "in"
    root.mkdir()
    decode, target = _legacy(root)
    c = Case("legacy", decode, target, tmp_path / "reference")
    assert run(capsys, *c.args(c.reference))[0] == 0
    out = tmp_path / "out"
    assert run(capsys, *c.args(out))[0] == 0
    forge(out / target)
    forged = (out / target).read_bytes()
    code, stdout, _ = run(capsys, *c.args(out))
    assert code == 0 and _kept(stdout)[target] and (out / target).read_bytes() == forged
    code, stdout, _ = run(capsys, *c.args(out, "--verify"))
    assert code == 0 and not _kept(stdout)[target]
    assert outputs(out) == outputs(c.reference)


def test_verify_keeps_the_tensor_manifest_of_the_remade_file(tmp_path: Path, capsys) -> None:
    root = tmp_path / "in"
    root.mkdir()
    decode, target = _delta(root, "safetensors")
    c = Case("delta", decode, target, tmp_path / "reference")
    out = tmp_path / "out"
    assert run(capsys, *c.args(out))[0] == 0
    manifest = (out / TENSORS_NAME).read_bytes()
    forge(out / target)
    code, _, err = run(capsys, *c.args(out, "--verify"))
    assert code == 0, err
    assert (out / TENSORS_NAME).read_bytes() == manifest
    assert json.loads(manifest)["tensors"]  # a manifest with digests, not an empty one
