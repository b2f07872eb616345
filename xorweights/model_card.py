"""The model card (`README.md`) of a published release: written by `publish`, read back by `decode`.

Card spec (also in the README): a card MUST hold exactly one block opened by the line
`<!-- xorweights-checksums -->` followed by a fenced `json` code block; the JSON is a checksum
manifest (`xorweights-checksums/1`, as in `checksums/`) with the `decoded` stage and, for file-level
payloads, the `hf_base` stage. Everything else in the card is for people and MAY change.

The front matter is written with huggingface_hub's `ModelCardData`: `library_name: xorweights`,
`tags`, `license` (default `other`: the decoded weights fall under the base's license, which the
card says in its prose) and, when the base is named as a Hub repo id, `base_model`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence

from . import _json
from ._display import quoted
from ._units import human_bytes
from .checksums import ChecksumManifest, FileDigest, parse_manifest
from .constants import MAX_MANIFEST_BYTES
from .errors import FormatError, InputError
from .native_manifest import MANIFEST_NAME, NativeManifest
from .raw_storage import RawItem

MARKER = "<!-- xorweights-checksums -->"
_OPENING = re.compile(r"\s*```json\n")
_CLOSING = "\n```"

#: The folder of a published repo that holds the payload (the card sits beside it).
PAYLOAD_FOLDER = "payload"
#: The card's `license` when the publisher names none: the decoded weights fall under the base's.
DEFAULT_LICENSE = "other"
LIBRARY_NAME = "xorweights"
#: A Hub license identifier (`apache-2.0`, `llama3.1`, `cc-by-nc-4.0`, `other`, ...).
_LICENSE = re.compile(r"[a-z0-9](?:[a-z0-9.+-]{0,62}[a-z0-9+])?")


def check_license(license: str) -> str:
    """Return `license` if it is shaped like a Hub license identifier (lowercase, as `apache-2.0`).

    Raises:
        `InputError`: naming the value.
    """
    if not isinstance(license, str) or not _LICENSE.fullmatch(license):
        raise InputError(
            f"license {quoted(license, 60)}: expected a Hub license identifier such as apache-2.0, "
            "llama3.1 or other",
            path=str(license),
        )
    return license


def tags(payload_format: str) -> list[str]:
    """The card's tags: the library, the kind of repo, and the payload format."""
    return list(dict.fromkeys([LIBRARY_NAME, "xor-payload", payload_format]))


def _hub_repo_id(name: str | None) -> str | None:
    """`name` when it is a well-formed Hub repo id (front matter `base_model` must be one)."""
    from .hub import validate_repo_id

    if name is None:
        return None
    try:
        return validate_repo_id(name)
    except InputError:
        return None


def _sum_lines(entries: Mapping[str, FileDigest], algorithm: str) -> str:
    rows = sorted((n, getattr(d, algorithm)) for n, d in entries.items())
    return "\n".join(f"{digest}  {n}" for n, digest in rows if digest)


def render(
    repo_id: str,
    checksums: ChecksumManifest,
    *,
    payload_format: str,
    version: str,
    payload_bytes: int,
    native: NativeManifest | None = None,
    raw: Sequence[RawItem] = (),
    revision: str = "main",
    base_model: str | None = None,
    license: str = DEFAULT_LICENSE,
) -> str:
    """The card of a release: front matter, decode command, payload facts, base and decoded checksums.

    `base_model` names the base (a Hub repo id also goes into the front matter); `license` is a
    Hub license identifier.
    """
    from huggingface_hub import ModelCard, ModelCardData

    check_license(license)
    name = repo_id.split("/")[-1]
    out_dir = name.removesuffix("-xor")
    decoded = checksums.stage("decoded")
    grown = [r for r in raw if r.grown]
    raw = [r for r in raw if not r.grown]
    raw_bytes = human_bytes(sum(r.nbytes for r in raw))
    base = f"the base model `{base_model}`" if base_model else "the base"
    lines = [
        f"# {name}",
        "",
        f"An XOR payload of fine-tuned weights: each file is the fine-tuned bytes XOR-ed with {base},",
        "which they were made from. It is of no use without that base"
        + (
            f", except for the {len(raw)} fine-tuned items ({raw_bytes}) stored raw (see *Payload*)."
            if raw
            else "."
        )
        + " With it, xorweights rebuilds the",
        "fine-tuned files byte for byte and checks every one against the checksums on this card.",
        "",
        "## Decode",
        "",
        "```bash",
        "pip install xorweights",
        f"xorweights decode {repo_id}{'' if revision == 'main' else '@' + revision} --base /path/to/base "
        f"--out {out_dir}",
        "```",
        "",
    ]
    if payload_format == "xorweights":
        lines += [
            "`--base` is a folder holding the base model in any layout: safetensors or `.bin`, any sharding,",
            "fp16, bf16 or fp32. Each base tensor is checked against its sha256 before anything is written.",
        ]
    else:
        lines += [
            "`--base` is a folder holding the base files named as in the payload, byte for byte as listed",
            "under *Base checksums*; each is checked in the same pass.",
        ]
    lines += [
        "",
        "## License",
        "",
        "The base model is not in this repo: get it under its own license. The decoded weights derive",
        "from it, so its terms apply to them"
        + (
            " (the front matter's `license: other`)."
            if license == DEFAULT_LICENSE
            else f", as well as this release's `{license}`."
        ),
        "",
        "## Payload",
        "",
        f"- format: `{payload_format}`"
        + (
            f" (tensor-level XOR; `{PAYLOAD_FOLDER}/{MANIFEST_NAME}` lists every tensor)"
            if payload_format == "xorweights"
            else " (file-level XOR, as the OpenAssistant releases)"
        ),
        f"- files: {len(decoded)} in `{PAYLOAD_FOLDER}/`, {human_bytes(payload_bytes)}",
        *(
            [
                f"- stored raw: {sum(r.tensor is not None for r in raw)} tensors and "
                f"{sum(r.tensor is None for r in raw)} files, {raw_bytes}, with no base counterpart "
                f"(allowed by name: {', '.join(f'`{p}`' for p in native.allow_raw) or 'none recorded'}); "
                "these are readable without the base"
            ]
            if native is not None and raw
            else ["- stored raw: nothing; every fine-tuned weight is XOR-ed with the base"]
            if native is not None
            else []
        ),
        *(
            [
                f"- new vocabulary rows, unmasked: {len(grown)} tensors, "
                f"{human_bytes(sum(r.nbytes for r in grown))} (rows past the base's)"
            ]
            if grown
            else []
        ),
        f"- written by: xorweights {version}",
        "",
        "## Base checksums",
        "",
    ]
    if native is not None:
        lines.append(f"sha256 of each of the {len(native.base_tensors)} base tensors the payload uses")
        lines += ["", "<details>", "", "```text"]
        lines += [f"{t.sha256}  {t.name}" for t in sorted(native.base_tensors.values(), key=lambda t: t.name)]
        lines += ["```", "", "</details>", ""]
        files = {f.base_file.name: f.base_file for f in native.files if f.base_file is not None}
        if files:
            lines += ["Base files XOR-ed whole:", "", "```text"]
            lines += [f"{b.sha256}  {n}" for n, b in sorted(files.items())]
            lines += ["```", ""]
    else:
        base = checksums.stage("hf_base")
        for algorithm in ("sha256", "md5"):
            if any(getattr(d, algorithm) for d in base.values()):
                lines += [f"{algorithm}:", "", "```text", _sum_lines(base, algorithm), "```", ""]
    lines += ["## Decoded checksums", ""]
    for algorithm in ("sha256", "md5"):
        if any(getattr(d, algorithm) for d in decoded.values()):
            lines += [f"{algorithm}:", "", "```text", _sum_lines(decoded, algorithm), "```", ""]
    doc = checksums.to_json()
    lines += [
        "## Checksums for xorweights",
        "",
        "Read by `xorweights decode` to verify the decoded files; do not edit.",
        "",
        MARKER,
        "```json",
        json.dumps(doc, indent=1, sort_keys=False),
        "```",
        "",
    ]
    data = ModelCardData(
        base_model=_hub_repo_id(base_model),
        license=license,
        library_name=LIBRARY_NAME,
        tags=tags(payload_format),
    )
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)))


def parse(text: str, source: str) -> ChecksumManifest | None:
    """The checksums a card holds (None: it holds no xorweights block).

    Raises:
        `FormatError`: the block is there but malformed, or appears twice.
    """
    if len(text) > MAX_MANIFEST_BYTES:
        raise FormatError(f"{source}: {len(text)} characters is too large for a model card", path=source)
    blocks = _blocks(text)
    if not blocks:
        if MARKER in text:
            raise FormatError(f"{source}: {MARKER} is not followed by a ```json block", path=source)
        return None
    if len(blocks) > 1:
        raise FormatError(f"{source}: {len(blocks)} checksum blocks; expected one", path=source)
    try:
        doc = _json.loads(blocks[0], source)
    except FormatError as e:
        reason = e.message.removeprefix(f"{source}: ")
        raise FormatError(f"{source}: checksum block is not valid JSON ({reason})", path=source) from None
    manifest = parse_manifest(doc, source)
    if not manifest.stage("decoded"):
        raise FormatError(f"{source}: checksum block has no decoded checksums", path=source)
    return manifest


def _blocks(text: str) -> list[str]:
    """The JSON of every `MARKER` + fenced json block, first closing fence wins; linear time."""
    blocks: list[str] = []
    pos = 0
    while (at := text.find(MARKER, pos)) != -1:
        pos = at + len(MARKER)
        opening = _OPENING.match(text, pos)
        if opening is None:
            continue
        end = text.find(_CLOSING, opening.end())
        if end == -1:
            break  # no later block can close either
        blocks.append(text[opening.end() : end])
        pos = end + len(_CLOSING)
    return blocks
