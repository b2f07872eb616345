"""Checksum manifests of releases, coreutils `md5sum`/`sha256sum` line files, and verification.

A manifest (`checksums/<release>.json`) lists digests per stage: `meta_original` (Meta's files),
`hf_base` (the pinned HF conversion the XOR was made against) and `decoded` (the fine-tuned
result). A line file holds one stage without saying which, so it applies to whichever is asked.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _cancel, _json
from ._atomic import AtomicFile
from ._display import quoted
from ._line_endings import line_ending_hint
from ._paths import CONTROL, check_name
from ._progress import byte_bar
from .constants import (
    ALGORITHMS,
    CHUNK_SIZE,
    HEX_LENGTH,
    MANIFEST_FORMAT,
    MAX_MANIFEST_BYTES,
    STAGES,
    TEMP_PREFIX,
    default_jobs,
)
from .errors import (
    ChecksumMismatchError,
    FormatError,
    InputError,
    MissingFileError,
    UnknownReleaseError,
    UnsafePathError,
)

if TYPE_CHECKING:
    from .hub import HubAccess

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileDigest:
    """Published facts about one file: any of md5, sha256 and size."""

    md5: str | None = None
    sha256: str | None = None
    size: int | None = None

    def algorithms(self) -> tuple[str, ...]:
        """The digest algorithms this entry has a value for."""
        return tuple(a for a in ALGORITHMS if getattr(self, a))

    def get(self, algorithm: str) -> str | None:
        return getattr(self, algorithm) if algorithm in ALGORITHMS else None

    def hexdigests(self) -> dict[str, str]:
        """The digests this entry has, by algorithm."""
        return {a: str(self.get(a)) for a in self.algorithms()}

    def mismatch(self, got: Mapping[str, str]) -> tuple[str, str, str] | None:
        """The first `(algorithm, expected, actual)` where `got` has a digest that differs."""
        for algo in self.algorithms():
            actual = got.get(algo)
            if actual is not None and actual != self.get(algo):
                return algo, str(self.get(algo)), actual
        return None

    def matched_by(self, got: Mapping[str, str]) -> bool:
        """Whether `got` has at least one of these digests, and all it has agree."""
        return self.mismatch(got) is None and any(got.get(a) == self.get(a) for a in self.algorithms())

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in (("md5", self.md5), ("sha256", self.sha256), ("size", self.size)) if v}


@dataclass(frozen=True)
class ChecksumManifest:
    """Digests of a release by stage, with where they came from."""

    release: str
    stages: Mapping[str, Mapping[str, FileDigest]]
    repo_id: str | None = None
    description: str = ""
    sources: Mapping[str, str] = field(default_factory=dict)
    caveats: tuple[str, ...] = ()
    needs: Mapping[str, str] = field(default_factory=dict)
    raw_files: tuple[str, ...] = ()
    unstaged: Mapping[str, FileDigest] | None = None
    """Entries of a line file, which applies to any stage."""
    path: str | None = None
    base_model: str | None = None
    """The base the release was made against, as its publisher named it (informational)."""

    def stage(self, name: str) -> Mapping[str, FileDigest]:
        """Entries of stage `name` (empty when the release publishes none)."""
        if name not in STAGES:
            raise InputError(f"unknown stage {name!r}; expected one of {', '.join(STAGES)}")
        if self.unstaged is not None:
            return self.unstaged
        return self.stages.get(name, {})

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"format": MANIFEST_FORMAT, "release": self.release}
        if self.repo_id:
            doc["repo_id"] = self.repo_id
        if self.description:
            doc["description"] = self.description
        if self.base_model:
            doc["base_model"] = self.base_model
        if self.raw_files:
            doc["raw_files"] = list(self.raw_files)
        if self.needs:
            doc["needs"] = dict(self.needs)
        doc["stages"] = {
            stage: {name: d.to_json() for name, d in sorted(files.items())}
            for stage, files in self.stages.items()
        }
        if self.sources:
            doc["sources"] = dict(self.sources)
        if self.caveats:
            doc["caveats"] = list(self.caveats)
        return doc


# --- loading ---------------------------------------------------------------------------------


def manifests_dir() -> Path:
    """Folder of the bundled manifests: inside the installed package, else the source tree's."""
    bundled = Path(str(resources.files("xorweights"))) / "checksums"
    if bundled.is_dir():
        return bundled
    # Running from a source checkout (editable install or tests): the top-level folder.
    return Path(__file__).resolve().parent.parent / "checksums"


def known_releases() -> list[ChecksumManifest]:
    """Every bundled release manifest, sorted by release name."""
    return sorted((load_manifest_file(p) for p in manifests_dir().glob("*.json")), key=lambda m: m.release)


#: Largest size a manifest may state (sizes are int64 on every platform we read files on).
_MAX_SIZE = 2**63 - 1


def _check_hex(value: Any, algorithm: str, where: str, source: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(f"[0-9a-fA-F]{{{HEX_LENGTH[algorithm]}}}", value):
        raise FormatError(
            f"{where}: {algorithm} must be {HEX_LENGTH[algorithm]} hex digits, got {quoted(value)}",
            path=source,
        )
    return value.lower()


def _parse_entry(value: Any, where: str, source: str) -> FileDigest:
    if not isinstance(value, dict):
        raise FormatError(f"{where}: expected an object with md5/sha256/size", path=source)
    unknown = set(value) - {"md5", "sha256", "size"}
    if unknown:
        shown = ", ".join(quoted(k, 40) for k in sorted(unknown)[:5])
        raise FormatError(f"{where}: unknown keys {shown}", path=source)
    size = value.get("size")
    if size is not None and (type(size) is not int or not 0 <= size <= _MAX_SIZE):
        raise FormatError(f"{where}: size must be a non-negative integer (int64)", path=source)
    md5 = value.get("md5")
    sha = value.get("sha256")
    if md5 is None and sha is None:
        raise FormatError(f"{where}: needs md5 or sha256", path=source)
    return FileDigest(
        md5=None if md5 is None else _check_hex(md5, "md5", where, source),
        sha256=None if sha is None else _check_hex(sha, "sha256", where, source),
        size=size,
    )


def _check_name(name: Any, where: str, source: str) -> str:
    """Names in manifests are relative paths inside a folder, as `_paths.check_name` has them, but
    control characters are allowed (shown as `_` in errors): coreutils escapes them in its lines,
    and such a name simply matches no payload file, since payload names may not hold them."""
    if not isinstance(name, str):
        raise FormatError(f"{where}: bad file name {quoted(name)}", path=source)
    try:
        check_name(CONTROL.sub("_", name), where)
    except UnsafePathError as e:
        raise FormatError(e.message, path=source) from None
    return name


def parse_manifest(doc: Any, source: str) -> ChecksumManifest:
    """Validate a decoded JSON manifest; raises `FormatError` naming `source` on any defect.

    A native payload's `xorweights.json` is read too: its sha256 per output file is the `decoded` stage.
    """
    if isinstance(doc, dict) and doc.get("format") == "xorweights":
        from .native_manifest import parse_manifest as parse_native

        return parse_native(doc, source).to_checksums(
            Path(source).parent.name or source,
            f"decoded sha256 from the native payload manifest {source}",
            path=source,
        )
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        raise FormatError(
            f'{source}: not a checksum manifest (expected "format": "{MANIFEST_FORMAT}")', path=source
        )
    release = doc.get("release")
    if not isinstance(release, str) or not release:
        raise FormatError(f'{source}: missing "release"', path=source)
    stages_doc = doc.get("stages", {})
    if not isinstance(stages_doc, dict):
        raise FormatError(f'{source}: "stages" must be an object', path=source)
    stages: dict[str, dict[str, FileDigest]] = {}
    for stage, files in stages_doc.items():
        if stage not in STAGES:
            raise FormatError(
                f"{source}: unknown stage {quoted(stage)}; expected one of {', '.join(STAGES)}", path=source
            )
        if not isinstance(files, dict):
            raise FormatError(f"{source}: stage {stage!r} must map file names to digests", path=source)
        stages[stage] = {
            _check_name(n, f"{source} [{stage}]", source): _parse_entry(
                v, f"{source} [{stage}] {quoted(n)}", source
            )
            for n, v in files.items()
        }

    def _strs(key: str) -> tuple[str, ...]:
        v = doc.get(key, [])
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise FormatError(f'{source}: "{key}" must be a list of strings', path=source)
        return tuple(v)

    def _strmap(key: str) -> dict[str, str]:
        v = doc.get(key, {})
        if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
            raise FormatError(f'{source}: "{key}" must map names to strings', path=source)
        return dict(v)

    def _str(key: str) -> str | None:
        v = doc.get(key)
        if v is not None and not isinstance(v, str):
            raise FormatError(f'{source}: "{key}" must be a string', path=source)
        return v

    repo_id = _str("repo_id")
    base_model = _str("base_model")
    if base_model is not None:
        from .native_manifest import BASE_MODEL_RULE, is_base_model

        if not is_base_model(base_model):
            raise FormatError(
                f'{source}: "base_model" {quoted(base_model, 60)}: expected {BASE_MODEL_RULE}', path=source
            )
    return ChecksumManifest(
        release=release,
        repo_id=repo_id,
        base_model=base_model,
        description=_str("description") or "",
        stages=stages,
        sources=_strmap("sources"),
        caveats=_strs("caveats"),
        needs=_strmap("needs"),
        raw_files=_strs("raw_files"),
        path=source,
    )


def load_manifest_file(path: os.PathLike[str] | str) -> ChecksumManifest:
    """Read a JSON manifest or a coreutils line file (told apart by content).

    Raises:
        `MissingFileError`: no such file.
        `InputError`: the file cannot be read.
        `FormatError`: anything malformed (strict JSON, see `_json`; lines, see `parse_sum_lines`).
        `ChecksumMismatchError`: a line file lists one name with two different digests.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise FormatError(
                f"{path}: {size} bytes is too large for a checksum file (limit {MAX_MANIFEST_BYTES})",
                path=path,
            )
        raw = path.read_bytes()
    except FileNotFoundError:
        raise MissingFileError(f"checksum file not found: {path}", path=path) from None
    except OSError as e:
        raise InputError(f"cannot read checksum file {path}: {e.strerror}", path=path) from e
    if raw.lstrip().startswith(b"{"):
        return parse_manifest(_json.loads(raw, str(path)), str(path))
    # Names are bytes to coreutils: one that is not UTF-8 is kept as os.fsdecode gives it on disk.
    algorithm, entries = parse_sum_lines(raw.decode("utf-8", "surrogateescape"), source=str(path))
    digests = {n: FileDigest(**{algorithm: h}) for n, h in entries.items()}
    return ChecksumManifest(release=path.name, stages={}, unstaged=digests, path=str(path))


def bundled_release(name: str) -> ChecksumManifest | None:
    """The bundled manifest a release name or repo id names (`-xor` optional, any case); a repo
    id matches only the release published under that id."""
    key = name.strip().rstrip("/").lower()
    for m in known_releases():
        if "/" in key:
            names = {m.repo_id.lower().removesuffix("-xor")} if m.repo_id else set()
        else:
            names = {m.release.lower()}
            if m.repo_id:
                names.add(m.repo_id.split("/")[-1].lower().removesuffix("-xor"))
        if key in names or key.removesuffix("-xor") in names:
            return m
    return None


def load_checksums(
    spec: os.PathLike[str] | str, *, access: HubAccess | None = None, revision: str | None = None
) -> ChecksumManifest:
    """Resolve `--checksums`: a file, a known release (name or repo id, `-xor` optional), or any
    Hub repo `owner/name[@revision]` whose model card holds a checksum block (`access`: how to
    reach it; `revision`: the repo's branch, tag or commit, as `owner/name@revision` does).

    Raises:
        `UnknownReleaseError`: `spec` is neither a file, a known release nor shaped like a repo id.
        `HubError`: a repo id that is not a known release, and its card cannot be read or has no
            checksum block.
    """
    if isinstance(spec, os.PathLike) or Path(spec).is_file():
        if revision is not None:
            raise InputError(f"--revision applies to a Hub repo id, not to the file {spec}", path=spec)
        return load_manifest_file(spec)
    name, _, rev = str(spec).partition("@")
    found = bundled_release(name)
    if found is not None:
        if rev or revision:
            logger.warning("%s: the bundled manifest %s applies to every revision", spec, found.release)
        return found
    from . import hub  # the Hub client loads only for a repo id

    if hub.is_repo_spec(str(spec)):
        return hub.remote_checksums(str(spec), access, revision=revision)
    raise UnknownReleaseError(
        f"no checksum file or known release named {quoted(str(spec))}; known releases: "
        + ", ".join(m.release for m in known_releases()),
        path=str(spec),
    )


# --- coreutils line files -----------------------------------------------------------------------

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

    A name listed twice with the same digest counts once; with different digests no file can
    pass (`md5sum -c` checks every line), so that is reported as a mismatch straight away. A name
    that is not UTF-8 comes as surrogate escapes (`surrogateescape`), as names on disk do.

    Returns:
        `(algorithm, {name: hexdigest})`; the algorithm is told by the digest length.

    Raises:
        `FormatError`: a malformed line (control characters and lone surrogates included), mixed
            algorithms, or no entries.
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
        name = _check_name(name, where, source)
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


# --- hashing and verification ------------------------------------------------------------------


def git_blob_hasher(size: int) -> Any:
    """sha1 begun with git's blob header: fed the `size` bytes of a file, its hexdigest is the file's
    git blob id (what the Hub lists for files not in LFS)."""
    return hashlib.sha1(b"blob %d\0" % size)


def hash_file(
    path: os.PathLike[str] | str,
    algorithms: Iterable[str],
    *,
    chunk_size: int = CHUNK_SIZE,
    on_progress: Any = None,
) -> dict[str, str]:
    """Digests of a file, all algorithms in one read."""
    hs = {a: hashlib.new(a) for a in algorithms}
    buf = bytearray(chunk_size)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            _cancel.check()
            for h in hs.values():
                h.update(view[:n])
            if on_progress is not None:
                on_progress(n)
    return {a: h.hexdigest() for a, h in hs.items()}


def hash_files(
    paths: Mapping[str, Path], algorithms: Sequence[str], *, jobs: int, progress: bool, desc: str
) -> Iterator[tuple[str, dict[str, str]]]:
    """Digests of several files, `jobs` at once, under one byte progress bar; yields in order."""
    total = sum(p.stat().st_size for p in paths.values())
    with byte_bar(total, desc, enabled=progress) as bar:

        def work(name: str) -> tuple[str, dict[str, str]]:
            return name, hash_file(paths[name], algorithms, on_progress=bar.update)

        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool, _cancel.guard(pool):
            yield from pool.map(work, paths)


def list_files(root: os.PathLike[str] | str) -> list[str]:
    """Relative POSIX names of the regular files below `root`, skipping hidden ones and our temps."""
    root = Path(root)
    names = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            if f.startswith(".") or f.startswith(TEMP_PREFIX):
                continue
            p = Path(dirpath, f)
            if p.is_file():
                names.append(p.relative_to(root).as_posix())
    return sorted(names)


@dataclass(frozen=True)
class Mismatch:
    """One file whose digest (or size) differs from the published value."""

    name: str
    algorithm: str
    expected: str
    actual: str
    hint: str | None = None
    """A likely cause, when one is proven (line endings converted, see `_line_endings`)."""


@dataclass(frozen=True)
class VerifyReport:
    """Result of checking a folder against one stage of a manifest."""

    folder: str
    stage: str
    release: str
    checked: tuple[str, ...]
    matched: tuple[str, ...]
    mismatches: tuple[Mismatch, ...]
    missing: tuple[str, ...]
    extra: tuple[str, ...]
    digests: Mapping[str, Mapping[str, str]]

    @property
    def ok(self) -> bool:
        """True when every listed file is present and matches."""
        return not self.mismatches and not self.missing and bool(self.checked)

    def to_dict(self) -> dict[str, Any]:
        return {
            "folder": self.folder,
            "stage": self.stage,
            "release": self.release,
            "ok": self.ok,
            "checked": list(self.checked),
            "matched": list(self.matched),
            "mismatches": [m.__dict__ for m in self.mismatches],
            "missing": list(self.missing),
            "extra": list(self.extra),
            "digests": {k: dict(v) for k, v in self.digests.items()},
        }


def verify(
    folder: os.PathLike[str] | str,
    checksums: os.PathLike[str] | str | ChecksumManifest,
    *,
    stage: str = "decoded",
    jobs: int | None = None,
    progress: bool = False,
) -> VerifyReport:
    """Check every file a manifest stage lists against the files in `folder`.

    Args:
        folder: the folder holding the files.
        checksums: a release name or repo id, a manifest or line file, or a loaded manifest.
        stage: `decoded`, `hf_base` or `meta_original`.
        jobs: files hashed at once (default: number of cores).
        progress: show progress on stderr (a bar on a terminal, else a line every 30 s).

    Returns:
        `VerifyReport`; its `ok` is false on any mismatch or missing file.

    Raises:
        `MissingFileError`: `folder` does not exist.
        `InputError`: the manifest has no entries for `stage`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError(f"folder not found: {folder}", path=folder)
    manifest = checksums if isinstance(checksums, ChecksumManifest) else load_checksums(checksums)
    entries = manifest.stage(stage)
    if not entries:
        raise InputError(
            f"{manifest.release} publishes no {stage} checksums"
            + (f" (it has: {', '.join(manifest.stages)})" if manifest.stages else ""),
            path=manifest.path,
        )
    present = set(list_files(folder))
    missing = sorted(n for n in entries if n not in present)
    extra = sorted(present - set(entries))
    todo = sorted(n for n in entries if n in present)

    mismatches: list[Mismatch] = []
    sized: list[str] = []
    for name in todo:
        want = entries[name].size
        actual_size = (folder / name).stat().st_size
        if want is not None and actual_size != want:
            mismatches.append(Mismatch(name, "size", str(want), str(actual_size)))
        else:
            sized.append(name)

    algorithms = sorted({a for n in sized for a in entries[n].algorithms()})
    digests = dict(
        hash_files(
            {n: folder / n for n in sized}, algorithms, jobs=jobs or default_jobs(), progress=progress,
            desc=f"verify {stage}",
        )
    )  # fmt: skip
    for name in sized:
        for algo, actual in digests[name].items():
            expected = entries[name].get(algo)
            if expected and expected != actual:
                mismatches.append(Mismatch(name, algo, expected, actual))
    bad = {m.name for m in mismatches}
    hints = {
        n: line_ending_hint(folder / n, entries[n].hexdigests(), expected_size=entries[n].size) for n in bad
    }
    mismatches = [replace(m, hint=hints[m.name]) for m in mismatches]
    logger.info("verified %d file(s) in %s against %s %s", len(todo), folder, manifest.release, stage)
    return VerifyReport(
        folder=str(folder),
        stage=stage,
        release=manifest.release,
        checked=tuple(todo),
        matched=tuple(n for n in todo if n not in bad),
        mismatches=tuple(sorted(mismatches, key=lambda m: m.name)),
        missing=tuple(missing),
        extra=tuple(extra),
        digests=digests,
    )


@dataclass(frozen=True)
class ChecksumReport:
    """Digests of every file in a folder, as `checksum` computed them."""

    folder: str
    algorithm: str
    entries: Mapping[str, str]
    output: str | None = None

    def lines(self) -> str:
        """The report as `md5sum`/`sha256sum` lines."""
        return format_sum_lines(self.entries)

    def data(self) -> bytes:
        """The lines as the bytes `md5sum` writes: each name as its bytes on disk, UTF-8 or not."""
        return self.lines().encode("utf-8", "surrogateescape")


def checksum(
    folder: os.PathLike[str] | str,
    *,
    algorithm: str = "md5",
    output: os.PathLike[str] | str | None = None,
    jobs: int | None = None,
    progress: bool = False,
) -> ChecksumReport:
    """Hash every file below `folder`; optionally write the lines to `output` (atomically).

    The lines are what `md5sum`/`sha256sum` print when run inside `folder`, so
    `cd folder && md5sum -c FILE` accepts them.

    Raises:
        `InputError`: unknown algorithm.
        `MissingFileError`: `folder` does not exist.
    """
    if algorithm not in ALGORITHMS:
        raise InputError(f"unknown algorithm {algorithm!r}; expected one of {', '.join(ALGORITHMS)}")
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError(f"folder not found: {folder}", path=folder)
    names = list_files(folder)
    if output is not None:
        out_path = Path(output).resolve()
        names = [n for n in names if (folder / n).resolve() != out_path]
    total = sum((folder / n).stat().st_size for n in names)
    with byte_bar(total, f"{algorithm}sum", enabled=progress) as bar:
        with ThreadPoolExecutor(max_workers=jobs or default_jobs()) as pool, _cancel.guard(pool):
            digests = dict(
                pool.map(
                    lambda n: (n, hash_file(folder / n, [algorithm], on_progress=bar.update)[algorithm]),
                    names,
                )
            )
    report = ChecksumReport(
        folder=str(folder),
        algorithm=algorithm,
        entries=digests,
        output=None if output is None else str(output),
    )
    if output is not None:
        with AtomicFile(output) as f:
            f.write(report.data())
            f.commit()
    return report
