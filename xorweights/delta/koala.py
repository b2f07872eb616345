"""The Koala recipe (EasyLM's `diff_checkpoint`): its delta is one EasyLM streaming checkpoint,
read in HF names and layout (`delta.easylm`); the arithmetic is the fp32 add, stored as bf16."""

from __future__ import annotations

from pathlib import Path

from .._display import abridged
from ..errors import FormatError, InputError, MissingFileError
from ..tensors.store import TensorStore
from .checks import model_config
from .easylm import open_easylm_delta
from .recipes import Recipe, register


def open_koala_delta(path: Path, base_dir: Path) -> TensorStore:
    """Koala's delta: an EasyLM diff file (or the one such file in a folder), in HF names and layout;
    the head count (for q/k) comes from the base's config."""
    config = model_config(base_dir) or {}
    heads = config.get("num_attention_heads", config.get("n_heads"))
    if not isinstance(heads, int) or heads <= 0:
        raise FormatError(
            f"{base_dir}: no head count in config.json or params.json (needed for q/k)", path=base_dir
        )
    return open_easylm_delta(easylm_file(path), heads)


def easylm_file(path: Path) -> Path:
    """`path` itself, or the one EasyLM streaming checkpoint in the folder `path`."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise MissingFileError(f"delta not found: {path}", path=path)
    found = easylm_files(path)
    if len(found) != 1:
        names = abridged(p.name for p in found) or "none"
        raise InputError(f"{path}: give the path of one EasyLM diff file (found: {names})", path=path)
    return found[0]


def easylm_files(folder: Path) -> list[Path]:
    """Files of `folder` that start as an EasyLM record does (a msgpack pair whose key is a list)."""
    found = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith("."):
            with open(p, "rb") as f:
                if f.read(2) in (b"\x92\x96", b"\x92\x93", b"\x92\x94", b"\x92\x92"):
                    found.append(p)
    return found


KOALA = register(
    Recipe(
        "koala",
        "EasyLM diff_checkpoint (Koala)",
        "F32",
        "BF16",
        "refuse",
        open_delta=open_koala_delta,
        from_repo=(
            "{repo} holds several EasyLM diff files (koala_7b_diff_v2, koala_13b_diff_v2, ...): "
            "download the one you want (`hf download {repo} koala_13b_diff_v2 --local-dir koala`) "
            "and give its path"
        ),
    )
)
