"""The legacy OpenAssistant XOR payload format (`oasst`), file by file.

Spec (also in docs/formats.md): every payload file is the byte-wise XOR of the fine-tuned file and
the same-named base file, exactly as long as the fine-tuned file (base zero-padded or truncated);
`added_tokens.json` is stored raw, or XOR-ed when the encoder's base held one (`raw_rule`); a
payload file MAY be a gzip stream of that XOR, recognised by its first bytes. This module finds
the payload folder and plans which file is made how.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from .._display import abridged, shown
from .._json import MAX_JSON_FILE_BYTES
from .._json import loads as json_loads
from ..errors import (
    BaseMismatchError,
    ChecksumMismatchError,
    FormatError,
    InputError,
    IOFailure,
    MissingFileError,
    NotAPayloadError,
    RawStorageError,
)
from ..llama.base import GeneratedSource
from ..model_files import TORCH_SUFFIXES, WEIGHT_SUFFIXES
from ..outfolder.atomic import TEMP_PREFIX
from ..outfolder.paths import (
    check_name,
    check_not_escaping_link,
    check_regular_file,
    is_regular,
    read_bounded,
)
from ..pipeline import FileSource, Source, Step, output_digests
from ..pipeline.job import converted
from . import plausible
from .delta_frames import starts_with_frame
from .gzip_stream import GZIP_MAGIC, check_gzip_head
from .legacy_source import PayloadSource
from .native_manifest import MANIFEST_NAME
from .payload_folder import left_by_us
from .raw_storage import copy_refusal

if TYPE_CHECKING:
    from ..llama.base import GeneratedBase

#: Without a published size, a gzip payload may inflate to at most twice its base plus this.
INFLATE_SLACK = 64 * 1024 * 1024

#: Files the legacy script first copies raw, then XORs over that copy when the base holds one
#: (stock LLaMA has no such file, so the OA releases carry it raw); see `formats.oasst.raw_rule`.
LEGACY_RAW_FILES = ("added_tokens.json",)

logger = logging.getLogger(__name__)


Action = Literal["xor", "copy"]


def payload_names(folder: Path) -> list[str]:
    """Names of the regular files in `folder`; hidden ones, ours and subfolders skipped.

    Raises:
        `UnsafePathError`: an unsafe or reserved name, a link out of `folder`, or a special file.
    """
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except NotADirectoryError:
        raise InputError(f"not a folder: {folder}", path=folder) from None
    except FileNotFoundError:
        raise MissingFileError(f"folder not found: {folder}", path=folder) from None
    except PermissionError:
        raise InputError(f"cannot list folder {folder}: permission denied", path=folder) from None
    names = []
    for e in entries:
        hidden = e.name.startswith(".") and not e.name.casefold().startswith(TEMP_PREFIX)
        if hidden or left_by_us(e.name) or e.is_dir():
            continue
        check_name(e.name, str(folder))
        if check_regular_file(folder / e.name, folder):
            names.append(e.name)
    return names


def is_raw(name: str, raw_patterns: Iterable[str] = ()) -> bool:
    """Whether `name` needs no base counterpart: stored raw, or XOR-ed only when the base has one."""
    return name in LEGACY_RAW_FILES or any(fnmatch.fnmatch(name, p) for p in raw_patterns)


def follows_raw_rule(name: str, raw_patterns: Iterable[str] = ()) -> bool:
    """Whether `name` is made by `raw_rule` (not listed as raw outright by `raw_patterns`)."""
    return name in LEGACY_RAW_FILES and not any(fnmatch.fnmatch(name, p) for p in raw_patterns)


def raw_rule(name: str) -> str:
    """The rule for a file of `LEGACY_RAW_FILES`, in words (for messages)."""
    return (
        f"a payload {name} that parses as JSON is taken as stored, any other is XOR-ed with the "
        f"base's {name} when the base has one (the published script copies {name} raw, then XORs it "
        "over that copy when its base holds the file)"
    )


def parses_as_json(path: Path) -> bool:
    """Whether the file is strict JSON (files over 64 MiB are not read and count as not JSON)."""
    try:
        json_loads(read_bounded(path, MAX_JSON_FILE_BYTES, "a JSON file"), str(path))
    except FormatError:  # FileTooLargeError included
        return False
    except MissingFileError:
        raise
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}", path=path) from e
    return True


def raw_rule_action(source: Path, base: Path, *, encoding: bool) -> Action:
    """How a file of `LEGACY_RAW_FILES` is made, as `raw_rule` says.

    Encoding does what the published script does: XOR when the base has the file, else copy.
    Decoding cannot know which base the payload was made against: a payload file that parses as
    JSON is copied, any other is XOR-ed when the base has the file (`decode` lets a published
    digest overrule this).
    """
    if not is_regular(base):
        return "copy"
    if encoding:
        return "xor"
    return "copy" if parses_as_json(source) else "xor"


def plan(
    source_dir: Path,
    base_dir: Path,
    *,
    raw_patterns: Iterable[str] = (),
    generated: GeneratedBase | None = None,
    only: Collection[str] | None = None,
    encoding: bool = False,
    remote: Mapping[str, Source] | None = None,
) -> list[Step]:
    """Plan every output of a decode (or encode): XOR with the same-named base file, or copy.

    `only` limits the plan to those names (a Hub download lists its payload files); `remote`
    gives payload files read from elsewhere than `source_dir` (the Hub, as they are decoded). Files of
    `LEGACY_RAW_FILES` follow `raw_rule_action`, with the base folder's own file (never a
    generated one).

    Raises:
        `MissingFileError`: base files are missing; the message names all of them.
        `InputError`: the base folder is unusable or there is nothing to do.
    """
    if not base_dir.exists():
        raise MissingFileError(f"base folder not found: {base_dir}", path=base_dir)
    if not base_dir.is_dir():
        raise InputError(f"base must be a folder, got a file: {base_dir}", path=base_dir)
    raw_patterns = tuple(raw_patterns)
    remote = remote or {}
    names = sorted({n for n in [*payload_names(source_dir), *remote] if only is None or n in only})
    if not names:
        raise InputError(f"no files to process in {source_dir}", path=source_dir)
    skipped = [e.name for e in os.scandir(source_dir) if e.is_dir() and not e.name.startswith(".")]
    for d in skipped:
        logger.warning("ignoring subfolder %s of %s (payloads are flat)", d, source_dir)

    steps: list[Step] = []
    missing: list[str] = []
    for name in names:
        data: Source
        if name in remote:
            data = remote[name]
        else:
            check_not_escaping_link(source_dir / name, source_dir)
            data = FileSource(source_dir / name)
        if follows_raw_rule(name, raw_patterns):
            action = raw_rule_action(source_dir / name, base_dir / name, encoding=encoding)
            if encoding and action == "copy":
                _refuse_unknown_raw(source_dir / name)
            logger.info("%s: %s", name, "XOR-ed with the base's" if action == "xor" else "stored raw")
            steps.append(Step(name, data, FileSource(base_dir / name) if action == "xor" else None))
        elif is_raw(name, raw_patterns):
            steps.append(Step(name, data))
        elif generated is not None and generated.opener(name) is not None:
            steps.append(Step(name, data, GeneratedSource(generated, name)))
        elif not is_regular(base_dir / name):
            missing.append(name)
        else:
            steps.append(Step(name, data, FileSource(base_dir / name)))
    if missing:
        raise MissingFileError(
            f"base file{'s' if len(missing) > 1 else ''} missing in {base_dir}: "
            + abridged(missing)
            + f" (every payload file except {', '.join(LEGACY_RAW_FILES)} needs its base counterpart)",
            path=base_dir / missing[0],
        )
    return steps


def _refuse_unknown_raw(source: Path) -> None:
    """Refuse to copy a file of `LEGACY_RAW_FILES` as it is unless it is known to hold no weights
    (text within its size bound, as `raw_storage.copy_refusal` says)."""
    why = copy_refusal(source, source.name)
    if why is not None:
        raise RawStorageError(
            f"refusing to store {shown(source.name)} in the clear: the base has no file of its name to "
            f"XOR it with, and {why}; give the base that file, or use the native format "
            "(`format='xorweights'`) with `allow_raw`",
            path=source,
            items=[source.name],
            nbytes=source.stat().st_size,
        )


def unmasked_tail(source: Path, base: Path) -> int:
    """The bytes of a fine-tuned weight file past the end of its base file, which the legacy
    format stores unmasked (0 for other files); the encode's report names them."""
    tail = source.stat().st_size - base.stat().st_size
    return tail if tail > 0 and source.name.lower().endswith(WEIGHT_SUFFIXES) else 0


# --- decode checks -----------------------------------------------------------------------------


def refuse_plain_payload(payload_dir: Path, raw: Sequence[str], only: Collection[str] | None) -> None:
    """Refuse a legacy payload whose weight files are valid model files as they are (never XOR-ed).

    Raises:
        `NotAPayloadError`: naming the first such file.
    """
    weights = (".safetensors", *TORCH_SUFFIXES)
    for entry in sorted(os.scandir(payload_dir), key=lambda e: e.name):
        name = entry.name
        if not name.endswith(weights) or is_raw(name, raw) or (only is not None and name not in only):
            continue
        if not check_regular_file(Path(entry.path), payload_dir):  # Hub cache files are links: followed
            continue
        try:
            plain = plausible.problem(Path(entry.path), name) is None
            with open(entry.path, "rb") as f:
                framed = name.endswith(".safetensors") and starts_with_frame(f.read(16))
        except OSError as e:
            raise IOFailure("reading", entry.path, e) from e
        if framed:
            raise FormatError(
                f"payload file {entry.path} holds delta frames (a compressed native payload), but "
                f"{payload_dir} has no {MANIFEST_NAME}: download or copy it too",
                path=entry.path,
            )
        if plain:
            raise NotAPayloadError(
                f"payload file {entry.path} is a valid {plausible.kind(name)} as it is, so it was not "
                f"XOR-ed: {payload_dir} looks like a model (an additive delta? give `recipe`; or a native "
                f"payload missing its {MANIFEST_NAME}), not an XOR payload",
                path=entry.path,
            )


def require_gzip(steps: Sequence[Step]) -> None:
    """Refuse, before anything is written, an XOR-ed payload file that is not gzip.

    Raises:
        `FormatError`: naming the first such file.
    """
    for step in steps:
        path = step.data.path
        if step.base is None or path is None:
            continue
        try:
            with open(path, "rb") as f:
                head = f.read(len(GZIP_MAGIC))
        except OSError as e:
            raise IOFailure("reading", path, e) from e
        check_gzip_head(path, head)


def check_base_sizes(steps: Sequence[Step], release: str) -> None:
    """Cheap checks first: each base file's size, where the release publishes it.

    Raises:
        `BaseMismatchError`: naming the file, both sizes and the likely cause.
    """
    for step in steps:
        want, base = step.expect_base, step.base
        if base is None or base.path is None or want is None or want.size is None:
            continue
        size = base.path.stat().st_size
        if size != want.size:
            cause = converted(base, want) or "the base must be the byte-exact output of the pinned conversion"
            raise BaseMismatchError(
                f"base file {base.path}: {size} bytes, but {release} hf_base expects {want.size}; {cause}",
                path=base.path,
                expected=str(want.size),
                actual=str(size),
                algorithm="size",
                stage="hf_base",
            )


def generated_base(
    payload_dir: Path, base_dir: Path, raw: Sequence[str], mode: str, remote: Collection[str] = ()
) -> GeneratedBase | None:
    """The generated base to decode against, or None to use the base folder's files.

    Raises:
        `InputError`: an unknown mode, or `generate` and no LLaMA weights in `base_dir`.
    """
    from ..llama.base import GeneratedBase

    if mode not in ("auto", "files", "generate"):
        raise InputError(f"unknown base mode {mode!r}; expected auto, files or generate")
    if mode == "files" or not base_dir.is_dir():
        return None
    if not GeneratedBase.looks_like(base_dir):
        if mode == "generate":
            raise InputError(f"{base_dir} holds no LLaMA weights to generate a base from", path=base_dir)
        return None
    if mode == "auto":
        here = [e.name for e in os.scandir(payload_dir) if e.is_file()]
        needed = [n for n in [*here, *remote] if not is_raw(n, raw)]
        if all(is_regular(base_dir / n) for n in needed if not n.startswith(".")):
            return None
    logger.info("generating the base from the LLaMA weights in %s", base_dir)
    return GeneratedBase(base_dir)


def settle_by_digest(
    step: Step,
    raw: Sequence[str],
    out_dir: Path,
    base_dir: Path,
    release: str,
    remake: Callable[[Step], Step],
) -> Step:
    """Make a file under the raw rule (`added_tokens.json`) the way its published digest says.

    Without a digest, `raw_rule_action` has decided. With one, each reading is tried (the rule's
    first): as stored, and XOR-ed with the base's file of that name when there is one; the one
    whose output matches wins. `remake` gives a reading its sources as the decode reads them.

    Raises:
        `ChecksumMismatchError`: no reading matches (before anything is written); the message
            names the rule.
    """
    want = step.expect_out
    if want is None or not follows_raw_rule(step.name, raw):
        return step
    base_file = base_dir / step.name
    readings = [step]
    if step.base is not None:
        readings.append(remake(replace(step, base=None)))
    elif is_regular(base_file):
        readings.append(remake(replace(step, base=FileSource(base_file))))
    tried: list[tuple[Step, dict[str, str]]] = []
    for reading in readings:
        got = output_digests(_trial(reading), want.algorithms(), out_dir / step.name)
        if want.matched_by(got):
            if reading is not step:
                logger.info("%s: %s matches the published digest", step.name, _reading(reading))
            return reading
        tried.append((reading, got))
    algo = want.algorithms()[0]
    expected = want.get(algo)
    gives = "; ".join(f"{_reading(r)} gives {got.get(algo)}" for r, got in tried)
    if len(tried) == 1:
        gives += f"; the base has no {step.name} to XOR with"
    hint = converted(step.data, want)  # the file as stored is one of the readings
    source = step.data.label
    cause = (
        f"Payload file {source}: {hint}" if hint else f"The payload file or the base's {step.name} is wrong"
    )
    raise ChecksumMismatchError(
        f"decoded {step.name}: {release} decoded expects {algo} {expected}, but no reading of payload "
        f"file {source} gives it ({gives}). Rule: {raw_rule(step.name)}. {cause} (nothing written)",
        path=step.data.path,
        expected=expected,
        actual=tried[0][1].get(algo),
        algorithm=algo,
        stage="decoded",
    )


def _trial(step: Step) -> Step:
    """A reading as tried: a gzip payload may inflate to twice its base plus slack (a reading
    that overshoots the published size is ruled out by its digest, not by the cap)."""
    if not isinstance(step.data, PayloadSource):
        return step
    base = step.base.size() if step.base is not None else 0
    return replace(step, data=replace(step.data, inflate_limit=INFLATE_SLACK + 2 * (base or 0)))


def _reading(step: Step) -> str:
    return f"XOR-ed with {step.base.label}" if step.base is not None else "as stored"
