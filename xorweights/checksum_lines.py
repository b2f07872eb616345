"""coreutils `md5sum`/`sha256sum` line files: read (`parse_sum_lines`) and written (`format_sum_lines`).

A line file holds one stage without saying which; `checksums.load_manifest_file` makes it a
manifest that applies to whichever stage is asked. `xorweights.checksums` re-exports both functions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ._display import quoted
from .errors import ChecksumMismatchError, FormatError
from .outfolder.paths import CONTROL, check_listed_name

_LINE = re.compile(r"^(\\?)([0-9a-fA-F]+) [ *](.*)$")
#: Lone surrogates other than the escapes of bytes 0x80-0xff (`surrogateescape`).
_SURROGATE = re.compile(r"[\ud800-\udc7f\udd00-\udfff]")


def _unescape(name: str) -> str:
    out, i = [], 0
    while i < len(name):
        c = name[i]
        if c == "\\" and i + 1 < len(name):
            nxt = name[i + 1]
            out.append({"n": "\n", "\\": "\\", "r": "\r"}.get(nxt, "\\" + nxt))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def parse_sum_lines(text: str, *, source: str = "<text>") -> tuple[str, dict[str, str]]:
    """Parse `md5sum`/`sha256sum` output (text or `*binary` mode, escaped names).

    Every name must pass `outfolder.paths.check_name`, as a payload's names do: an escaped name that
    unescapes to a newline or carriage return is refused like any other control character.
    A name listed twice with the same digest counts once; with different digests no file can
    pass (`md5sum -c` checks every line), so that is reported as a mismatch straight away. A name
    that is not UTF-8 comes as surrogate escapes (`surrogateescape`), as names on disk do.

    Returns:
        `(algorithm, {name: hexdigest})`; the algorithm is told by the digest length.

    Raises:
        `FormatError`: a malformed line (control characters, escaped or not, and lone surrogates
            included), an unsafe name, mixed algorithms, or no entries.
        `ChecksumMismatchError`: one name listed with two different digests.
    """
    entries: dict[str, str] = {}
    first_line: dict[str, int] = {}
    algorithm: str | None = None
    # Lines end at "\n" only, as coreutils reads them (a CRLF file's "\r" is dropped).
    for lineno, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        where = f"{source}:{lineno}"
        if _SURROGATE.search(line):
            raise FormatError(f"{where}: a lone surrogate that stands for no byte", path=source)
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if CONTROL.search(line):
            raise FormatError(
                f"{where}: control character in the line (names must be escaped as coreutils does): "
                f"{line[:80]!r}",
                path=source,
            )
        m = _LINE.match(line)
        if not m:
            raise FormatError(f"{where}: not a '<digest>  <name>' line: {line[:80]!r}", path=source)
        escaped, digest, name = m.groups()
        algo = {32: "md5", 64: "sha256"}.get(len(digest))
        if algo is None:
            raise FormatError(
                f"{where}: digest of {len(digest)} hex digits is neither md5 nor sha256", path=source
            )
        if algorithm not in (None, algo):
            raise FormatError(f"{where}: mixes {algorithm} and {algo} digests", path=source)
        algorithm = algo
        name = _unescape(name) if escaped else name
        if name.startswith("./"):
            name = name[2:]
        name = check_listed_name(name, where, source)
        digest = digest.lower()
        earlier = entries.setdefault(name, digest)
        if earlier != digest:
            raise ChecksumMismatchError(
                f"{where}: {quoted(name)} is listed again with another {algo} "
                f"({digest}; line {first_line[name]} has {earlier}), so no file can match both",
                path=source,
                expected=earlier,
                actual=digest,
                algorithm=algo,
            )
        first_line.setdefault(name, lineno)
    if algorithm is None:
        raise FormatError(f"{source}: no checksum lines", path=source)
    return algorithm, entries


def format_sum_lines(entries: Mapping[str, str]) -> str:
    """Render `{name: digest}` exactly as coreutils would, sorted by name.

    A name with a backslash, newline or carriage return gets coreutils' escaped form (a leading
    backslash); any other byte is kept as it is, so names that are not UTF-8 (surrogate escapes)
    come out as their own bytes once encoded with `surrogateescape` (see `ChecksumReport.data`).
    """
    lines = []
    for name, digest in sorted(entries.items()):
        if "\\" in name or "\n" in name or "\r" in name:
            esc = name.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
            lines.append(f"\\{digest}  {esc}\n")
        else:
            lines.append(f"{digest}  {name}\n")
    return "".join(lines)
