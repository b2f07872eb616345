"""Whether converted line endings explain a file's wrong digest or size.

git's `core.autocrlf` (and editors, copy tools) turn LF into CRLF in text files on checkout, or
CRLF into LF on commit. Such a file differs from the published one in size and digest. On the
failure path only, `line_ending_hint` hashes the file as it was before either conversion, reading
it in chunks, and says so when that form has the published size or digest.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Mapping
from typing import IO

from .checksum_types import ALGORITHMS
from .hashing import GIT_BLOB, new_hasher

#: A file with a wrong digest or size is checked for converted line endings (CRLF/LF, as git's
#: autocrlf does) only up to this size: the text files of a model folder are smaller.
LINE_ENDING_CHECK_LIMIT = 64 * 1024 * 1024

#: Algorithms a published digest may be given in; `git-sha1` is a git blob id (sha1 over
#: `blob <size>\0` and the bytes).
HINT_ALGORITHMS = (*ALGORITHMS, "sha1", GIT_BLOB)
#: git's test for binary content: a NUL byte among the first this many bytes (never converted).
_SNIFF_BYTES = 8000
_CHUNK_SIZE = 1 << 20

#: Each form the file may be restored to, and the conversion it undoes (as the message names it).
_UNDOES = {"lf": "LF -> CRLF", "crlf": "CRLF -> LF"}


def _segments(f: IO[bytes], chunk_size: int) -> Iterator[bytes]:
    """The file's bytes in pieces that never split a CRLF pair: a trailing CR waits for the next."""
    held = b""
    while chunk := f.read(chunk_size):
        seg = held + chunk
        held = b"\r" if seg.endswith(b"\r") else b""
        yield seg[:-1] if held else seg
    if held:
        yield held


def _restored(seg: bytes, form: str) -> bytes:
    """`lf`: every CRLF pair as LF (undoes LF -> CRLF); `crlf`: every bare LF as CRLF (undoes
    CRLF -> LF; a CRLF pair stays as it is, as git's autocrlf leaves it)."""
    lf = seg.replace(b"\r\n", b"\n")
    return lf if form == "lf" else lf.replace(b"\n", b"\r\n")


def line_ending_hint(
    path: os.PathLike[str] | str,
    expected: Mapping[str, str | None] | None = None,
    *,
    expected_size: int | None = None,
    limit: int = LINE_ENDING_CHECK_LIMIT,
    _chunk_size: int = _CHUNK_SIZE,
) -> str | None:
    """The reason to give when the file at `path`, converted back, is the published one; else None.

    The file is restored both ways: CRLF pairs as LF (it was converted LF -> CRLF) and bare LF as
    CRLF (it was converted CRLF -> LF). A form counts when it differs from the file, has
    `expected_size` (if given) and every digest of `expected` (`md5`, `sha1`, `sha256`,
    `git-sha1`; other keys are ignored); with no digest, the size alone. Files larger than
    `limit`, special files, and anything when no digest or size is given are not read; files git
    takes for binary (a NUL among the first 8000 bytes) only that far. Never raises: an
    unreadable file gets no hint.

    Returns:
        e.g. `line endings were converted (LF -> CRLF), e.g. by git autocrlf; fetch the file again`.
    """
    digests = {a: h.lower() for a, h in (expected or {}).items() if a in HINT_ALGORITHMS and h}
    if not digests and expected_size is None:
        return None
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None
        with open(path, "rb") as f:
            if b"\0" in f.read(_SNIFF_BYTES):
                return None
            f.seek(0)
            size = pairs = newlines = 0
            for seg in _segments(f, _chunk_size):
                size += len(seg)
                if size > limit:  # it grew since the stat
                    return None
                pairs += seg.count(b"\r\n")
                newlines += seg.count(b"\n")
            sizes = {"lf": size - pairs, "crlf": size + newlines - pairs}
            changed = {"lf": pairs > 0, "crlf": newlines > pairs}
            forms = [
                form
                for form in _UNDOES
                if changed[form] and (expected_size is None or sizes[form] == expected_size)
            ]
            if not forms:
                return None
            if digests:
                f.seek(0)
                hashers = {form: {a: new_hasher(a, sizes[form]) for a in digests} for form in forms}
                for seg in _segments(f, _chunk_size):
                    for form in forms:
                        data = _restored(seg, form)
                        for h in hashers[form].values():
                            h.update(data)
                forms = [
                    form
                    for form in forms
                    if all(h.hexdigest() == digests[a] for a, h in hashers[form].items())
                ]
    except OSError:
        return None
    if not forms:
        return None
    return f"line endings were converted ({_UNDOES[forms[0]]}), e.g. by git autocrlf; fetch the file again"
