"""How a release's card says to install xorweights: the wheel the release carries
(`publish(attach_wheel=...)`, which works for any reader of the repo, gated or not, whatever
package index they reach), a source the publisher names (`install_from`), or by default the git
commit this xorweights was installed from, else this version from the package index.
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
from collections.abc import Mapping
from email.parser import HeaderParser
from pathlib import Path

from .._display import quoted
from .._version import installed_from
from ..errors import ChecksumMismatchError, InputError, MissingFileError
from ..hashing import GIT_BLOB, hash_file
from .access import HubFile

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


def install_plan(
    install_from: str | None, attach_wheel: os.PathLike[str] | str | None, version: str
) -> tuple[str | None, dict[str, Path]]:
    """What the card says to `pip install` (None: `xorweights==version` from the package index)
    and the files the release carries for it (a wheel, by repo path).

    Raises:
        `InputError`: both given, a malformed `install_from`, or not a wheel of this version.
    """
    from .model_card import check_install_from

    if install_from is not None and attach_wheel is not None:
        raise InputError("`install_from` and `attach_wheel` both say where to get xorweights: give one")
    if attach_wheel is not None:
        wheel = check_wheel(attach_wheel, version)
        return None, {f"{WHEEL_FOLDER}/{wheel.name}": wheel}
    if install_from is not None:
        return check_install_from(install_from), {}
    return _default_install(version), {}


def _default_install(version: str) -> str | None:
    """What the card says to install when the publisher names nothing: this xorweights from the
    git URL and commit it was installed from, if so; else None (this version from the package
    index), said in a warning to be unproven when it was installed from a local copy."""
    origin = installed_from()
    if origin is None:
        return None
    vcs = origin.get("vcs_info")
    if isinstance(vcs, dict) and vcs.get("vcs") == "git" and isinstance(vcs.get("commit_id"), str):
        return f"xorweights@git+{origin['url']}@{vcs['commit_id']}"
    logger.warning(
        "xorweights %s was installed from %s, not from a package index: the card says `pip install "
        "xorweights==%s`, which works for its readers once that version is on PyPI; to be sure, attach "
        "its wheel (`attach_wheel=`, built with `python -m build`) or name its source (`install_from=`)",
        version,
        origin["url"],
        version,
    )
    return None


def listed_as(got: HubFile | None, local: Path, sha256: str | None = None) -> bool:
    """Whether a listed file is `local` (its size, and its sha256 or git blob id); `sha256`, when
    known, is the local file's (it is then not hashed again)."""
    if got is None or got.size != local.stat().st_size:
        return False
    if got.sha256 is not None:
        return got.sha256 == (sha256 or hash_file(local, ["sha256"])["sha256"])
    return got.blob_id == hash_file(local, [GIT_BLOB])[GIT_BLOB]


def local_sha256(extra: Mapping[str, Path]) -> dict[str, str]:
    """The sha256 of each file a release carries, by repo path (taken once per publish)."""
    return {path: hash_file(local, ["sha256"])["sha256"] for path, local in extra.items()}


def check_attached(
    repo_id: str,
    commit: str,
    listed: Mapping[str, HubFile],
    extra: Mapping[str, Path],
    sha256: Mapping[str, str],
) -> None:
    """Check that each file the release carries (a wheel) is listed at `commit` as it is here
    (`sha256`: each one's, by repo path, `local_sha256`).

    Raises:
        `ChecksumMismatchError`: a file is missing, or listed with another size or digest.
    """
    for path, local in extra.items():
        got = listed.get(path)
        if not listed_as(got, local, sha256[path]):
            want = sha256[path]
            raise ChecksumMismatchError(
                f"{repo_id}@{commit}: {path} is "
                + (f"listed with size {got.size} and sha256 {got.sha256}" if got else "missing")
                + f", but the local file has {local.stat().st_size} bytes and sha256 {want}",
                path=local,
                expected=want,
                actual=got.sha256 if got else None,
                algorithm="sha256",
                stage="payload",
            )
