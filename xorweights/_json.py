"""One strict reader for every JSON text that comes from outside.

`loads` refuses, with a `FormatError` naming the source: invalid UTF-8, lone surrogates (escaped
or not), duplicate keys, nesting deeper than the interpreter's recursion limit, `NaN`/`Infinity`
and numbers that overflow a float, integers longer than `MAX_INT_DIGITS` digits, and anything `json` itself
refuses. The stdlib reader accepts all of those silently (or raises untyped errors).
"""

from __future__ import annotations

import json
import re
from typing import Any

from ._display import quoted
from .errors import FormatError

#: JSON files of a model folder larger than this are not parsed (the largest, a tokenizer.json, is a
#: few tens of MiB): a plausibility check leaves them unchecked, the legacy raw rule takes them as not JSON.
MAX_JSON_FILE_BYTES = 64 * 1024 * 1024

#: Longest integer accepted, in digits (sizes and offsets need 20 at most).
MAX_INT_DIGITS = 40

_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")


class _Refused(ValueError):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _Refused(f"duplicate key {quoted(k)}")
        out[k] = v
    return out


def _constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number")


def _float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _Refused(f"number {text[:20]}... overflows")
    return value


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _Refused(f"integer of {len(text)} digits is too long")
    return int(text)


def _check_strings(value: Any) -> None:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if _LONE_SURROGATE.search(v):
                raise _Refused("a string holds a lone surrogate (not valid Unicode)")
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)


def loads(data: bytes | str, source: str) -> Any:
    """Parse JSON strictly; `source` names the file in errors.

    Raises:
        `FormatError`: anything outside strict JSON of bounded depth and size (see the module).
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as e:
        raise FormatError(f"{source}: not valid UTF-8 (byte {e.start})", path=source) from None
    try:
        value = json.loads(
            text,
            object_pairs_hook=_pairs,
            parse_constant=_constant,
            parse_float=_float,
            parse_int=_int,
        )
        _check_strings(value)
    except json.JSONDecodeError as e:
        raise FormatError(
            f"{source}: invalid JSON ({e.msg.removesuffix(' at')} at line {e.lineno})", path=source
        ) from None
    except RecursionError:
        raise FormatError(f"{source}: JSON nested too deeply", path=source) from None
    except ValueError as e:  # _Refused, int() limits, surrogates
        raise FormatError(f"{source}: invalid JSON ({e})", path=source) from None
    return value
