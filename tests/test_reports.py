"""Every report the library returns has `to_dict()`: JSON-serialisable, holding each of its fields
under the field's own name, with the field's value in JSON form (a nested report or manifest as its
own `to_dict()` or `to_json()`, tuples as lists, durations rounded to milliseconds).

The reports are found by walking the package: a new `...Report` dataclass without `to_dict()`, or
one whose `to_dict()` leaves a field out, fails here. Each is made by a real run on small files.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import pkgutil
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

import xorweights
from tests.conftest import encoded_release, legacy_folders
from tests.hubserver import TOKEN

GOLDEN = Path(__file__).resolve().parent / "golden"

#: `DemoReport.to_dict()` groups its steps by format: where each of those fields is.
NESTED = {
    "DemoReport": {
        "encode": ("native", "encode"),
        "base_copy": ("native", "base_copy"),
        "decode": ("native", "decode"),
        "verify": ("native", "verify"),
        "load": ("native", "load"),
        "legacy_encode": ("legacy", "encode"),
        "legacy_decode": ("legacy", "decode"),
        "legacy_verify": ("legacy", "verify"),
    }
}


def report_classes() -> dict[str, type]:
    """Every public dataclass named `...Report` defined in the package (the CLI and `__main__` left out:
    they define none, and importing them runs or arms the command line)."""
    found: dict[str, type] = {}
    for info in pkgutil.walk_packages(xorweights.__path__, "xorweights."):
        if info.name.startswith("xorweights.cli") or info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (
                name.endswith("Report")
                and not name.startswith("_")
                and isinstance(obj, type)
                and dataclasses.is_dataclass(obj)
                and obj.__module__ == info.name
            ):
                found[name] = obj
    return found


def json_form(value: Any) -> Any:
    """A field's value as its report's JSON holds it."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "to_json"):
        return value.to_json()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: json_form(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: json_form(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [json_form(v) for v in value]
    return value


def check_round_trip(report: Any) -> None:
    cls = type(report).__name__
    doc = json.loads(json.dumps(report.to_dict(), allow_nan=False))  # strict JSON, nothing lost in it
    for f in dataclasses.fields(report):
        where: tuple[str, ...] = NESTED.get(cls, {}).get(f.name, (f.name,))
        got: Any = doc
        for key in where:
            assert isinstance(got, dict) and key in got, f"{cls}.to_dict() lacks {f.name}"
            got = got[key]
        want = json_form(getattr(report, f.name))
        if f.name.endswith("seconds"):
            want = round(want, 3)
        assert got == json.loads(json.dumps(want)), f"{cls}.{f.name}"


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Any]]:
    """Reports of real runs, by class name (several where a field is set only sometimes)."""
    from xorweights.demo import run_demo
    from xorweights.llama.base import convert_base

    root = tmp_path_factory.mktemp("reports")
    payload, base, manifest, _ = encoded_release(
        root / "legacy", {"pytorch_model.bin": 60_000, "config.json": 300}, release="rel", seed=3
    )
    base2, tuned = legacy_folders(root / "pair")
    out: dict[str, list[Any]] = {}

    def add(r: Any) -> Any:
        out.setdefault(type(r).__name__, []).append(r)
        return r

    add(xorweights.encode(tuned, base=base2, out=root / "oasst-payload", format="oasst", with_checksums=True))
    decoded = add(xorweights.decode(payload, base=base, out=root / "decoded", checksums=manifest))
    for f in decoded.files:
        add(f)
    add(xorweights.verify(root / "decoded", manifest))
    add(xorweights.checksum(root / "decoded", algorithm="sha256"))
    add(xorweights.checksum(root / "decoded", output=root / "decoded.md5"))
    demo = add(run_demo(root / "demo", size_mb=4))
    for r in (demo.encode, demo.decode, demo.base_copy, demo.load, demo.verify):
        add(r)
    shutil.copy(GOLDEN / "tokenizers" / "bpe-1000" / "tokenizer.model", root / "tokenizer.model")
    shutil.copytree(GOLDEN / "llama-tiny-1shard" / "meta", root / "meta")
    add(convert_base(root / "meta", root / "converted"))
    return out


def test_every_report_class_is_found(reports) -> None:
    classes = report_classes()
    exported = {n for n in xorweights.__all__ if n.endswith("Report")}
    assert exported <= set(classes), exported - set(classes)
    assert {"ChecksumReport", "BaseReport", "DemoReport", "LoadReport", "BaseCopyReport"} <= set(classes)


@pytest.mark.parametrize("name", sorted(report_classes()))
def test_to_dict_is_json_and_holds_every_field(reports, hub, tmp_path: Path, name: str) -> None:
    cls = report_classes()[name]
    assert callable(getattr(cls, "to_dict", None)), f"{name} has no to_dict()"
    made = list(reports.get(name, []))
    if name == "PublishReport":
        native = next(r for r in reports["EncodeReport"] if r.native_manifest is not None)
        made.append(xorweights.publish(native.out_dir, "me/reports", endpoint=hub.url, token=TOKEN))
    assert made, f"no run made a {name}: add one to the `reports` fixture"
    for report in made:
        check_round_trip(report)


def test_optional_fields_are_set_in_some_run(reports) -> None:
    """The fields that are None in some runs are filled in others, so that their form is checked."""
    encodes = reports["EncodeReport"]
    assert any(r.manifest is not None for r in encodes) and any(
        r.native_manifest is not None for r in encodes
    )
    assert any(r.output is not None for r in reports["ChecksumReport"])
    assert any(r.release is not None for r in reports["DecodeReport"])
