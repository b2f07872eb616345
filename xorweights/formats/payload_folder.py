"""Finding the payload folder in a download, on disk or in a Hub listing (every format).

A repo keeps its payload at the top or up to three folders down (`name/name/` for sft-6). A
folder holding model files (`xorweights.json`, `*.bin`, `*.safetensors`, `*.pth`, `*.index.json`,
`config.json`, `tokenizer.model`) is a candidate. One candidate is the payload. Among several:
the one chosen by the user (`OWNER/NAME:SUBFOLDER`, `--subfolder`); else the one holding the
most files the checksums name; else the one native payload (its `xorweights.json` names its
files); else the one named like the repo (or the download folder; the top folder is the repo
itself); else an error listing them.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import os
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

from .._display import abridged, quoted
from ..errors import InputError, MissingFileError
from ..outfolder.atomic import STAGING_DIR, TEMP_PREFIX, TEMP_SUFFIX, is_bookkeeping
from ..outfolder.folder import STATE_FILE, STATE_JOURNAL
from ..outfolder.paths import check_folder_inside, check_name, check_regular_file

logger = logging.getLogger(__name__)

#: Files whose presence marks a folder as holding a model or a payload.
MARKERS = (
    "xorweights.json",
    "*.bin",
    "*.safetensors",
    "*.pth",
    "*.index.json",
    "config.json",
    "tokenizer.model",
)

#: How deep below the given folder a payload may sit (the sft-6 repo nests it two levels down).
MAX_DEPTH = 3


@dataclass(frozen=True)
class PayloadHints:
    """What tells the payload folder apart when several folders hold model files."""

    subfolder: str | None = None
    """Chosen by the user (`""`: the top folder); wins over every other rule."""
    names: Collection[str] = ()
    """File names the release's checksums list (a legacy payload's files carry the output names)."""
    repo_name: str | None = None
    """The repo's name (or the download folder's), matched against folder names."""
    choose: str = "`subfolder=SUBFOLDER`"
    """How the user picks one, for the message listing the candidates."""


def left_by_us(name: str) -> bool:
    """A state file or temporary that xorweights itself left beside the files of a folder it wrote
    (now kept in the folder's `.cache/huggingface/xorweights/`; an older version's, or a temporary
    written beside its target)."""
    ours = name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)
    return ours or name in (STATE_FILE, STATE_JOURNAL)


def files_below(root: Path, depth: int = MAX_DEPTH) -> list[str]:
    """Relative POSIX paths of the files up to `depth` folders below `root`; hidden entries skipped.

    Links are followed only where they stay inside `root` (or, in a Hub cache snapshot, its blobs).

    Raises:
        `UnsafePathError`: a linked file or folder leads out of `root`, or an entry is a special file.
    """
    found: list[str] = []
    level = [root]
    for _ in range(depth + 1):
        deeper = []
        for d in level:
            for e in sorted(os.scandir(d), key=lambda e: e.name):
                if e.name.startswith("."):
                    continue
                path = Path(e.path)
                if e.is_dir():
                    check_folder_inside(path, root)
                    deeper.append(path)
                elif check_regular_file(path, root):
                    found.append(path.relative_to(root).as_posix())
        level = deeper
    return found


def find_payload_dir(path: os.PathLike[str] | str, hints: PayloadHints | None = None) -> Path:
    """The folder holding the payload: `path` itself or a folder below it (`find_payload_in_listing`).

    The folder's own name stands for the repo name when `hints` gives none (a download folder).

    Raises:
        `MissingFileError`: `path` does not exist.
        `InputError`: no folder holds payload files, or several do and nothing tells them apart.
    """
    root = Path(path)
    if not root.exists():
        raise MissingFileError(f"payload folder not found: {root}", path=root)
    if not root.is_dir():
        raise InputError(f"payload must be a folder, got a file: {root}", path=root)
    hints = hints or PayloadHints()
    chosen = root / hints.subfolder.strip("/") if hints.subfolder is not None else None
    if chosen is not None and chosen.is_dir() and any(os.scandir(chosen)):
        # Chosen by the user: only that folder is looked at (the rest may hold anything).
        if chosen != root:
            check_name(chosen.relative_to(root).as_posix(), str(root))
            check_folder_inside(chosen, root)
        return chosen
    if hints.repo_name is None:
        hints = dataclasses.replace(hints, repo_name=root.resolve().name)
    sub = find_payload_in_listing(files_below(root), str(root), hints)
    return root / sub if sub else root


def _label(folder: str) -> str:
    return quoted(folder) if folder else "the top folder"


def _like(name: str) -> set[str]:
    name = name.lower()
    return {name, name.removesuffix("-xor")}


def find_payload_in_listing(paths: Iterable[str], where: str, hints: PayloadHints | None = None) -> str:
    """The payload folder among a repo's file paths (`""`: the top); see the module's rules.

    Raises:
        `InputError`: no folder holds payload files, the chosen subfolder holds none, or several
            folders do and nothing tells them apart (the message lists them and how to choose).
        `UnsafePathError`: a path is unsafe or reserved for our own files (`outfolder.paths.check_name`).
    """
    hints = hints or PayloadHints()
    by_dir: dict[str, list[str]] = {}
    for path in paths:
        parts = path.split("/")
        if is_bookkeeping(path) or STAGING_DIR in parts[:-1] or left_by_us(parts[-1]):
            continue  # records of ours or huggingface_hub's (never downloaded), or of an older version
        check_name(path, where)  # also refuses other names reserved for our own files
        folder, _, name = path.rpartition("/")
        if not any(part.startswith(".") for part in path.split("/")):
            by_dir.setdefault(folder, []).append(name)

    def marked(folder: str) -> bool:
        return any(fnmatch.fnmatch(n, pat) for n in by_dir.get(folder, ()) for pat in MARKERS)

    candidates = sorted(d for d in by_dir if d.count("/") < MAX_DEPTH and marked(d))
    if hints.subfolder is not None:
        sub = hints.subfolder.strip("/")
        if sub:
            check_name(sub, where)
        if not by_dir.get(sub):
            listed = abridged(_label(c) for c in candidates)
            raise InputError(
                f"{where} has no files in {_label(sub)}"
                + (f"; folders with model files: {listed}" if candidates else ""),
                path=where,
            )
        return sub
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        if by_dir.get(""):
            return ""
        raise InputError(
            f"no payload files in {where} or {MAX_DEPTH} levels below it (looked for {', '.join(MARKERS)})",
            path=where,
        )
    chosen = _tell_apart(candidates, by_dir, hints)
    if chosen is not None:
        logger.info("payload files found in %s/%s", where, chosen)
        return chosen
    listed = abridged(_label(c) for c in candidates)
    raise InputError(
        f"{where} holds several folders with model files ({listed}); choose the payload with {hints.choose}",
        path=where,
    )


def _tell_apart(candidates: list[str], by_dir: dict[str, list[str]], hints: PayloadHints) -> str | None:
    """The payload among several candidate folders by the checksums, the manifest, or the name."""
    pool = candidates
    if hints.names:  # first: a native payload elsewhere must not outrank the release asked for
        wanted = set(hints.names)
        score = {d: len(wanted.intersection(by_dir[d])) for d in pool}
        best = max(score.values())
        top = [d for d in pool if score[d] == best]
        if best and len(top) == 1:
            return top[0]
        pool = top if best else pool
    native = [d for d in pool if "xorweights.json" in by_dir[d]]
    if len(native) == 1:
        return native[0]
    pool = native or pool
    if hints.repo_name:
        like = _like(hints.repo_name)
        # The top folder is the repo (or the folder passed) itself: named like it.
        named = [d for d in pool if not d or like & _like(d.rpartition("/")[2])]
        if len(named) == 1:
            return named[0]
    return None
