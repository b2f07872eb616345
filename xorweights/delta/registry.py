"""The known additive-delta releases: `checksums/deltas/<name>.json`, one per release.

An entry (format `xorweights-delta-release/1`) names the Hub repo, the recipe that recovers it,
the base it was made against and, where the publisher gave one, the integrity sum of the
recovered weights with its tolerance.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import _json
from ..checksum_manifests import manifests_dir
from ..checksum_types import MAX_MANIFEST_BYTES
from ..errors import FormatError
from ..outfolder.paths import read_bounded
from .recipes import RECIPES

DELTA_FORMAT = "xorweights-delta-release/1"


@dataclass(frozen=True)
class ModelSum:
    """A published sum of every recovered weight: the value (or the repo file holding it) and the
    tolerance its publisher checks it with."""

    value: float | None = None
    file: str | None = None
    """A file of the delta's repo holding the value (AlpacaFarm's `model_sum.txt`)."""
    atol: float = 0.0
    rtol: float = 0.0


@dataclass(frozen=True)
class DeltaRelease:
    """One published delta and how it is recovered."""

    name: str
    repo_id: str
    recipe: str
    base: str
    """The base it was made against, in words."""
    description: str = ""
    model_sum: ModelSum | None = None
    source: str = ""
    """Where the recipe and the figures come from."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "release": self.name,
            "repo_id": self.repo_id,
            "kind": "additive delta",
            "recipe": self.recipe,
            "base": self.base,
            "description": self.description,
            "source": self.source,
            "model_sum": None if self.model_sum is None else self.model_sum.__dict__,
        }


def _parse(doc: Any, source: str) -> DeltaRelease:
    if not isinstance(doc, dict) or doc.get("format") != DELTA_FORMAT:
        raise FormatError(f"{source}: not a {DELTA_FORMAT} entry", path=source)
    try:
        recipe = doc["recipe"]
        if recipe not in RECIPES:
            raise FormatError(f"{source}: unknown recipe {recipe!r}", path=source)
        total = doc.get("model_sum")
        model_sum = None
        if total is not None:
            model_sum = ModelSum(
                value=None if "value" not in total else float(total["value"]),
                file=None if "file" not in total else str(total["file"]),
                atol=float(total.get("atol", 0.0)),
                rtol=float(total.get("rtol", 0.0)),
            )
        return DeltaRelease(
            name=str(doc["release"]),
            repo_id=str(doc["repo_id"]),
            recipe=recipe,
            base=str(doc["base"]),
            description=str(doc.get("description", "")),
            model_sum=model_sum,
            source=str(doc.get("source", "")),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise FormatError(f"{source}: malformed delta release entry ({e})", path=source) from None


@functools.cache
def delta_releases() -> tuple[DeltaRelease, ...]:
    """Every bundled delta release, by name."""
    folder = manifests_dir() / "deltas"
    found = [
        _parse(_json.loads(read_bounded(p, MAX_MANIFEST_BYTES, "a delta release entry"), str(p)), str(p))
        for p in sorted(folder.glob("*.json"))
    ]
    return tuple(sorted(found, key=lambda r: r.name))


def find_delta_release(repo_or_name: str | Path) -> DeltaRelease | None:
    """The release whose repo id (case-insensitive) or name is `repo_or_name`, else None."""
    key = str(repo_or_name).split("@", 1)[0].split(":", 1)[0].strip("/").lower()
    for r in delta_releases():
        if key in (r.repo_id.lower(), r.name.lower()):
            return r
    return None
