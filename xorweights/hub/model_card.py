"""The model card (`README.md`) of a published release: written by `publish`, read back by `decode`.

Card spec (also in docs/formats.md): a card MUST hold exactly one block opened by the line
`<!-- xorweights-checksums -->` followed by a fenced `json` code block; the JSON is a checksum
manifest (`xorweights-checksums/1`, as in `checksums/`) with the `decoded` stage and, for file-level
payloads, the `hf_base` stage. Everything else in the card is for people and MAY change.

The front matter is written with huggingface_hub's `ModelCardData`: `library_name: xorweights`,
`tags`, `license` (default `other`: the decoded weights fall under the base's license, which the
card says in its prose), with `license: other` the `license_name` and `license_link` of the terms
when the publisher names them (both or neither, as the Hub's card metadata asks), and, when the
base is named as a Hub repo id, `base_model`.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .. import _json
from .._display import quoted
from .._units import human_bytes
from ..checksum_manifests import parse_manifest
from ..checksum_types import MAX_MANIFEST_BYTES, ChecksumManifest, FileDigest
from ..errors import FormatError, InputError, UnsafePathError
from ..formats.native_manifest import MANIFEST_NAME, NativeManifest
from ..formats.raw_storage import RawItem
from ..outfolder.paths import CONTROL, check_name
from .repo_spec import validate_repo_id

logger = logging.getLogger(__name__)

#: The model card at the top of a repo; fetched with the payload (it may hold the checksums).
CARD_NAME = "README.md"
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


#: A URL the card links the license to (or a file of the repo: see `check_license_terms`).
_URL = re.compile(r"https?://[^\s<>`\"']+")


@dataclass(frozen=True)
class License:
    """The card's license: a Hub identifier and, for `other`, the name and link of the terms."""

    id: str = DEFAULT_LICENSE
    name: str | None = None
    """`license_name`: an identifier for terms the Hub does not list (`my-license-1.0`)."""
    link: str | None = None
    """`license_link`: a URL, or a file of the repo (`LICENSE`, `LICENSE.md`)."""


def check_license_terms(license: str | None, name: str | None, link: str | None) -> License:
    """The card's license from the arguments of `publish`, checked against the Hub's card metadata
    rules: `license_name` and `license_link` come together and only with the license `other`.

    Raises:
        `InputError`: naming the value or the option at fault.
    """
    license = check_license(license or DEFAULT_LICENSE)
    if name is None and link is None:
        return License(license)
    if license != DEFAULT_LICENSE:
        raise InputError(
            "`license_name` and `license_link` name terms the Hub does not list, for the license "
            f"other only; the card's license is {license!r}: leave them out",
            path=license,
        )
    if name is None or link is None:
        given, missing = ("license_name", "license_link")
        if name is None:
            given, missing = missing, given
        raise InputError(
            f"`{given}` needs `{missing}` too: the Hub shows a license `other` by its name and link",
            path=str(name or link),
        )
    if not _LICENSE.fullmatch(name):
        raise InputError(
            f"license name {quoted(name, 60)}: expected an identifier such as my-license-1.0 "
            "(lowercase letters, digits, '.', '-', '+')",
            path=name,
        )
    if not _URL.fullmatch(link) and not _repo_file(link):
        raise InputError(
            f"license link {quoted(link, 80)}: expected an http(s) URL or a file of the repo such as LICENSE",
            path=link,
        )
    return License(license, name, link)


def _repo_file(link: str) -> bool:
    try:
        check_name(link, "license_link")
    except UnsafePathError:
        return False
    return ":" not in link


def default_install(version: str) -> str:
    """What `pip install` is given when the publisher names nothing: the version that wrote the
    payload, from the Python Package Index."""
    return f"{LIBRARY_NAME}=={version}"


def check_install_from(spec: str) -> str:
    """Return `spec` if it is one `pip install` argument: a requirement (`xorweights==X.Y.Z`), a URL
    (`git+https://...@vX.Y.Z`, a wheel's) or a path; never an option, never two words.

    Raises:
        `InputError`: naming the value.
    """
    if (
        not isinstance(spec, str)
        or not spec.strip()
        or len(spec) > 1000
        or spec.startswith("-")
        or CONTROL.search(spec)
        or any(c.isspace() for c in spec)
    ):
        raise InputError(
            f"`install_from` {quoted(str(spec), 80)}: expected one pip install argument, such as "
            "xorweights==X.Y.Z, git+https://host/xorweights.git@vX.Y.Z or a wheel's URL",
            path=str(spec),
        )
    return spec


def tags(payload_format: str) -> list[str]:
    """The card's tags: the library, the kind of repo, and the payload format."""
    return list(dict.fromkeys([LIBRARY_NAME, "xor-payload", payload_format]))


def _hub_repo_id(name: str | None) -> str | None:
    """`name` when it is a well-formed Hub repo id (front matter `base_model` must be one)."""
    if name is None:
        return None
    try:
        return validate_repo_id(name)
    except InputError:
        return None


def _sum_lines(entries: Mapping[str, FileDigest], algorithm: str) -> str:
    """coreutils sum lines (`<digest>  <name>`) of the entries that have `algorithm`, by name."""
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
    license: License | str = DEFAULT_LICENSE,
    install_from: str | None = None,
    wheel: str | None = None,
) -> str:
    """The card of a release: front matter, decode command, payload facts, base and decoded checksums.

    `base_model` names the base (a Hub repo id also goes into the front matter); `license` is a
    Hub license identifier (or a `License` with the name and link of terms `other`);
    `install_from` is what `pip install` is given on the card (default: `xorweights==version`,
    from the Python Package Index); `wheel`, the repo path of the wheel the release carries.
    """
    from huggingface_hub import ModelCard

    if not isinstance(license, License):
        license = License(check_license(license))
    install = check_install_from(install_from) if install_from is not None else None
    decoded = checksums.stage("decoded")
    grown = [r for r in raw if r.grown]
    raw = [r for r in raw if not r.grown]
    lines = [
        *_decode_section(repo_id, payload_format, revision=revision, base_model=base_model, raw=raw),
        *_install_section(
            version, install, wheel, repo_id + ("" if revision == "main" else f" --revision {revision}")
        ),  # noqa: E501
        *_license_section(license),
        *_payload_section(payload_format, len(decoded), payload_bytes, version, native, raw, grown),
        *_base_checksums_section(checksums, native),
        "## Decoded checksums",
        "",
        *_sum_blocks(decoded),
        *_checksum_block(checksums),
    ]
    return str(ModelCard(_front_matter(payload_format, base_model, license) + "\n".join(lines)))


def _install_section(version: str, install: str | None, wheel: str | None, repo: str) -> list[str]:
    """`## Install`: the version that wrote the payload, and where that one comes from (`wheel`:
    its wheel's path in the repo, `repo` being `owner/name` with `--revision R` when not main)."""
    if wheel is not None:
        return [
            "## Install",
            "",
            f"This payload was written by xorweights {version}, whose wheel this repo holds "
            f"(`{wheel}`). Download it (a gated repo needs your token, as for the payload) and install it:",
            "",
            "```bash",
            f"hf download {repo} {shlex.quote(wheel)} --local-dir .",
            f"pip install {shlex.quote('./' + wheel)}",
            "```",
            "",
        ]
    if install is None:
        where = (
            f"This payload was written by xorweights {version}. The command installs that version from the "
            "Python Package Index (PyPI):"
        )
        spec = default_install(version)
    else:
        where = (
            f"This payload was written by xorweights {version}. The publisher names where to get it; "
            "the command installs from there:"
        )
        spec = install
    return ["## Install", "", where, "", "```bash", f"pip install {shlex.quote(spec)}", "```", ""]


def _raw_bytes(items: Sequence[RawItem]) -> str:
    """The total size of stored-raw items, for people."""
    return human_bytes(sum(r.nbytes for r in items))


def _decode_section(
    repo_id: str, payload_format: str, *, revision: str, base_model: str | None, raw: Sequence[RawItem]
) -> list[str]:
    """The title, what the payload is, and `## Decode`: the command and what `--base` must hold."""
    name = repo_id.split("/")[-1]
    base = f"the base model `{base_model}`" if base_model else "the base"
    except_raw = (
        f", except for the {len(raw)} fine-tuned items ({_raw_bytes(raw)}) stored raw (see *Payload*)."
    )
    lines = [
        f"# {name}",
        "",
        f"An XOR payload of fine-tuned weights: each file is the fine-tuned bytes XOR-ed with {base},",
        "which they were made from. It is of no use without that base"
        + (except_raw if raw else ".")
        + " With it, xorweights rebuilds the",
        "fine-tuned files byte for byte and checks every one against the checksums on this card.",
        "",
        "## Decode",
        "",
        "With xorweights installed (see *Install*):",
        "",
        "```bash",
        f"xorweights decode {repo_id}{'' if revision == 'main' else '@' + revision} --base /path/to/base "
        f"--out {name.removesuffix('-xor')}",
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
    return [*lines, ""]


def _license_section(license: License) -> list[str]:
    """`## License`: the base's terms apply to the decoded weights (and the release's own, if named)."""
    if license.name is not None:
        terms = f", as well as this release's `{license.name}` ({license.link})."
    elif license.id == DEFAULT_LICENSE:
        terms = " (the front matter's `license: other`)."
    else:
        terms = f", as well as this release's `{license.id}`."
    return [
        "## License",
        "",
        "The base model is not in this repo: get it under its own license. The decoded weights derive",
        "from it, so its terms apply to them" + terms,
        "",
    ]


def _payload_section(
    payload_format: str,
    files: int,
    payload_bytes: int,
    version: str,
    native: NativeManifest | None,
    raw: Sequence[RawItem],
    grown: Sequence[RawItem],
) -> list[str]:
    """`## Payload`: the format, the files, what is stored unmasked, and the xorweights that wrote it."""
    if payload_format == "xorweights":
        kind = f" (tensor-level XOR; `{PAYLOAD_FOLDER}/{MANIFEST_NAME}` lists every tensor)"
    else:
        kind = " (file-level XOR, as the OpenAssistant releases)"
    lines = [
        "## Payload",
        "",
        f"- format: `{payload_format}`{kind}",
        f"- files: {files} in `{PAYLOAD_FOLDER}/`, {human_bytes(payload_bytes)}",
    ]
    if native is not None and raw:
        allowed = ", ".join(f"`{p}`" for p in native.allow_raw) or "none recorded"
        lines.append(
            f"- stored raw: {sum(r.tensor is not None for r in raw)} tensors and "
            f"{sum(r.tensor is None for r in raw)} files, {_raw_bytes(raw)}, with no base counterpart "
            f"(allowed by name: {allowed}); these are readable without the base"
        )
    elif native is not None:
        lines.append("- stored raw: nothing; every fine-tuned weight is XOR-ed with the base")
    if grown:
        lines.append(
            f"- new vocabulary rows, unmasked: {len(grown)} tensors, {_raw_bytes(grown)} "
            "(rows past the base's)"
        )
    return [*lines, f"- written by: xorweights {version}", ""]


def _base_checksums_section(checksums: ChecksumManifest, native: NativeManifest | None) -> list[str]:
    """`## Base checksums`: a native payload's base tensors (and base files XOR-ed whole), else the
    sum lines of the `hf_base` stage."""
    lines = ["## Base checksums", ""]
    if native is None:
        return lines + _sum_blocks(checksums.stage("hf_base"))
    algorithms = sorted({t.algorithm for t in native.base_tensors.values()}) or ["sha256"]
    lines.append(
        f"{'/'.join(algorithms)} of each of the {len(native.base_tensors)} base tensors the payload uses"
    )
    lines += ["", "<details>", "", "```text"]
    lines += [f"{t.digest}  {t.name}" for t in sorted(native.base_tensors.values(), key=lambda t: t.name)]
    lines += ["```", "", "</details>", ""]
    files = {f.base_file.name: f.base_file for f in native.files if f.base_file is not None}
    if files:
        lines += ["Base files XOR-ed whole:", "", "```text"]
        lines += [f"{b.sha256}  {n}" for n, b in sorted(files.items())]
        lines += ["```", ""]
    return lines


def _sum_blocks(entries: Mapping[str, FileDigest]) -> list[str]:
    """A fenced block of sum lines for each algorithm (sha256, md5) that any entry has."""
    lines: list[str] = []
    for algorithm in ("sha256", "md5"):
        if any(getattr(d, algorithm) for d in entries.values()):
            lines += [f"{algorithm}:", "", "```text", _sum_lines(entries, algorithm), "```", ""]
    return lines


def _checksum_block(checksums: ChecksumManifest) -> list[str]:
    """The section `decode` reads: `MARKER` and the checksum manifest as a fenced json block."""
    return [
        "## Checksums for xorweights",
        "",
        "Read by `xorweights decode` to verify the decoded files; do not edit.",
        "",
        MARKER,
        "```json",
        json.dumps(checksums.to_json(), indent=1, sort_keys=False),
        "```",
        "",
    ]


def _front_matter(payload_format: str, base_model: str | None, license: License) -> str:
    """The card's YAML front matter, written by huggingface_hub's `ModelCardData`."""
    from huggingface_hub import ModelCardData

    data = ModelCardData(
        base_model=_hub_repo_id(base_model),
        license=license.id,
        license_name=license.name,
        license_link=license.link,
        library_name=LIBRARY_NAME,
        tags=tags(payload_format),
    )
    return f"---\n{data.to_yaml()}\n---\n\n"


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
