"""Names from inputs, made safe to print: nothing reaches a terminal or a log raw.

`shown` leaves ordinary names alone and escapes, as `\\n`, `\\t`, `\\xNN` or `\\uNNNN`: C0 and C1
control characters, DEL, line and paragraph separators, bidirectional overrides, and the bytes of a
name that is not valid UTF-8 (`os.scandir` hands them over as surrogate escapes). A name that needs
any escape also gets its backslashes doubled, so the escaped form is unambiguous.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

_SIMPLE = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}
#: What a terminal would act on, and surrogate escapes (bytes of a name that is not UTF-8).
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_UNSAFE_OR_BACKSLASH = re.compile(_UNSAFE.pattern[:-1] + "\\\\]")


def _escape(m: re.Match[str]) -> str:
    c = m.group()
    if c in _SIMPLE:
        return _SIMPLE[c]
    code = ord(c)
    if code < 0x80:
        return f"\\x{code:02x}"
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}"


def needs_escape(name: str) -> bool:
    """Whether `name` holds anything `shown` would escape."""
    return _UNSAFE.search(name) is not None


def escaped(name: str) -> str:
    """`name` with every unsafe character and every backslash escaped (always unambiguous)."""
    return _UNSAFE_OR_BACKSLASH.sub(_escape, name)


def shown(name: object) -> str:
    """`name` as it may be printed: unchanged when harmless, else `escaped`."""
    text = str(name)
    return escaped(text) if needs_escape(text) else text


#: How many names a message lists before "and N more".
SHOWN = 5


def abridged(names: Iterable[object], limit: int = SHOWN) -> str:
    """The first `limit` names, each `shown`, then how many more: `a, b, c and 59997 more`
    (a message names a few, never thousands)."""
    items = list(names)
    first = ", ".join(shown(n) for n in items[:limit])
    return first + (f" and {len(items) - limit} more" if len(items) > limit else "")


def quoted(value: object, limit: int = 80) -> str:
    """A short, quoted, one-line form of an untrusted value for an error message."""
    if not isinstance(value, str):
        return f"a JSON {type(value).__name__}" if isinstance(value, (dict, list)) else repr(value)
    return f"'{shown(value[:limit])}'" + ("..." if len(value) > limit else "")


def json_safe(doc: Any) -> Any:
    """`doc` with every string that is not valid Unicode (surrogate escapes) replaced by `shown`."""
    if isinstance(doc, str):
        return shown(doc) if re.search("[\ud800-\udfff]", doc) else doc
    if isinstance(doc, dict):
        return {json_safe(k): json_safe(v) for k, v in doc.items()}
    if isinstance(doc, (list, tuple)):
        return [json_safe(v) for v in doc]
    return doc
