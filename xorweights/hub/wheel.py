"""The wheel of xorweights that a release may carry (`publish(attach_wheel=...)`), so that its card's
install line works for any reader of the repo, gated or not, whatever package index they can reach.
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
from email.parser import HeaderParser
from pathlib import Path

from .._display import quoted
from ..errors import InputError, MissingFileError

logger = logging.getLogger(__name__)

#: The repo folder a release's wheel goes in.
WHEEL_FOLDER = "install"
#: A wheel of xorweights is well under this (the package, its manifests, its metadata).
MAX_WHEEL_BYTES = 64 * 1024 * 1024
_NAME = re.compile(r"xorweights-(?P<version>[^-]+)-[^-]+-[^-]+-[^-]+\.whl")


def check_wheel(path: os.PathLike[str] | str, version: str) -> Path:
    """`path` if it is a wheel of xorweights `version` (its file name and its `METADATA` say so).

    Raises:
        `MissingFileError`: no such file. `InputError`: another package or version, not a wheel,
            or over `MAX_WHEEL_BYTES`.
    """
    wheel = Path(path)
    if not wheel.is_file():
        raise MissingFileError(f"wheel not found: {wheel}", path=wheel)
    m = _NAME.fullmatch(wheel.name)
    if m is None or m["version"] != version:
        raise InputError(
            f"{quoted(wheel.name, 80)}: expected the wheel of xorweights {version} "
            f"(xorweights-{version}-py3-none-any.whl), the version publishing this payload",
            path=wheel,
        )
    if wheel.stat().st_size > MAX_WHEEL_BYTES:
        raise InputError(f"{wheel}: over {MAX_WHEEL_BYTES >> 20} MiB, not a wheel of xorweights", path=wheel)
    try:
        with zipfile.ZipFile(wheel) as z:
            meta = z.read(f"xorweights-{version}.dist-info/METADATA")[: 1 << 20].decode("utf-8")
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError, OSError) as e:
        raise InputError(f"{wheel}: not a wheel of xorweights {version} ({e})", path=wheel) from None
    headers = HeaderParser().parsestr(meta, headersonly=True)
    if headers.get("Name") != "xorweights" or headers.get("Version") != version:
        raise InputError(
            f"{wheel}: its metadata says {headers.get('Name')} {headers.get('Version')}, "
            f"not xorweights {version}",
            path=wheel,
        )
    return wheel
