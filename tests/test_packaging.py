"""The package as published: `python -m build` makes an sdist and a wheel that `twine check` passes,
the wheel built from the sdist equals the one built from the tree, the version comes from one place;
the wheel carries the release manifests and the console script; the default install needs no torch."""

from __future__ import annotations

import email
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import xorweights
from xorweights.hub import model_card

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`python -m build` (the sdist, then the wheel built from it) and a wheel built from the tree,
    with the hatchling installed here (no download: `--no-isolation`)."""
    out = tmp_path_factory.mktemp("dist")
    _run(sys.executable, "-m", "build", "--no-isolation", "--outdir", out / "release", ROOT)
    _run(sys.executable, "-m", "build", "--no-isolation", "--wheel", "--outdir", out / "tree", ROOT)
    (sdist,) = (out / "release").glob("xorweights-*.tar.gz")
    (wheel,) = (out / "release").glob("xorweights-*.whl")
    (tree_wheel,) = (out / "tree").glob("xorweights-*.whl")
    return {"sdist": sdist, "wheel": wheel, "tree_wheel": tree_wheel, "dir": out / "release"}


def _members(wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as z:
        return {n: z.read(n) for n in z.namelist()}


def test_the_wheel_from_the_sdist_equals_the_wheel_from_the_tree(dist: dict[str, Path]) -> None:
    from_sdist, from_tree = _members(dist["wheel"]), _members(dist["tree_wheel"])
    assert sorted(from_sdist) == sorted(from_tree)
    assert [n for n in from_sdist if from_sdist[n] != from_tree[n]] == []
    with tarfile.open(dist["sdist"]) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    assert {"pyproject.toml", "README.md", "xorweights/__init__.py", "checksums/pygmalion-7b.json"} <= names


def test_twine_check_passes_on_both(dist: dict[str, Path]) -> None:
    done = _run(sys.executable, "-m", "twine", "check", "--strict", dist["sdist"], dist["wheel"])
    assert done.stdout.count("PASSED") == 2, done.stdout


def test_one_version_in_the_metadata_the_package_and_the_command(dist: dict[str, Path]) -> None:
    with zipfile.ZipFile(dist["wheel"]) as z:
        (meta,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = email.message_from_bytes(z.read(meta))
    assert metadata["Name"] == "xorweights" and metadata["Requires-Python"] == ">=3.10"
    assert metadata["Version"] == xorweights.__version__ != "0+unknown"
    assert dist["wheel"].name == f"xorweights-{xorweights.__version__}-py3-none-any.whl"
    assert metadata["Description-Content-Type"] == "text/markdown"
    assert metadata.get_payload() == (ROOT / "README.md").read_text(encoding="utf-8")
    shown = _run(sys.executable, "-m", "xorweights.cli", "--version").stdout
    assert shown == f"xorweights, version {xorweights.__version__}\n"
    # The version lives in pyproject.toml alone: the package reads it from its installed metadata.
    literal = f'"{xorweights.__version__}"'
    assert [p.name for p in (ROOT / "xorweights").rglob("*.py") if literal in p.read_text()] == []


def test_the_cards_default_install_line_names_this_wheel(dist: dict[str, Path]) -> None:
    """What a published card tells its reader to run, by default, installs the wheel built here."""
    requirement = model_card.default_install(xorweights.__version__)
    done = _run(
        sys.executable,
        "-m",
        "pip",
        "--isolated",  # no pip configuration: only the folder built here is looked in
        "install",
        "--dry-run",
        "--ignore-installed",
        "--no-deps",
        "--no-index",
        "--find-links",
        dist["dir"],
        "--quiet",
        "--report",
        "-",
        requirement,
    )
    (chosen,) = json.loads(done.stdout)["install"]
    assert chosen["download_info"]["url"] == dist["wheel"].as_uri()


def test_wheel_ships_the_manifests(dist: dict[str, Path]) -> None:
    with zipfile.ZipFile(dist["wheel"]) as z:
        names = set(z.namelist())
        entry_points = next(z.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    shipped = {
        n.removeprefix("xorweights/checksums/") for n in names if n.startswith("xorweights/checksums/")
    }
    in_tree = {str(p.relative_to(ROOT / "checksums")) for p in (ROOT / "checksums").rglob("*.json")}
    assert shipped == in_tree
    assert len([n for n in shipped if "/" not in n]) == 4  # the XOR releases
    assert len([n for n in shipped if n.startswith("deltas/")]) == 24  # the additive-delta registry
    assert "xorweights = xorweights.cli:main" in entry_points
    assert "xorweights/py.typed" in names


def test_torch_is_not_imported_by_the_library() -> None:
    code = "import sys, xorweights, xorweights.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_demo_runs_without_torch(tmp_path: Path) -> None:
    """The demo, `load_state_dict` step included, with torch made unimportable."""
    code = (
        "import sys; sys.modules['torch'] = None\n"  # `import torch` now raises ImportError
        "from xorweights.cli import main\n"
        f"sys.exit(main(['demo', '--size-mb', '32', '--quiet', '--json', '--workdir', {str(tmp_path)!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] and report["native"]["load"]["equal"]
    assert (tmp_path / "payload" / "xorweights.json").is_file()


def test_a_release_can_carry_its_wheel_and_the_card_installs_it(dist, native_release, hub, tmp_path) -> None:
    """`publish(attach_wheel=...)`: the wheel built here goes to `install/`, is checked in the
    listing after the commit, and the card's two commands (download it from the repo, install it)
    work for a reader: the download through huggingface_hub, the install resolved by pip."""
    from huggingface_hub import ModelCard, hf_hub_download

    from tests.hubserver import TOKEN

    wheel = dist["wheel"]
    kw = {"endpoint": hub.url, "token": TOKEN}
    report = xorweights.publish(native_release["payload"], "me/with-wheel", attach_wheel=wheel, **kw)
    path = f"install/{wheel.name}"
    assert path in report.files and report.install == path
    card = ModelCard(report.card).text
    assert f"hf download me/with-wheel {path} --local-dir ." in card and f"pip install ./{path}" in card

    got = Path(hf_hub_download("me/with-wheel", path, local_dir=tmp_path / "reader", **kw))
    assert got.read_bytes() == wheel.read_bytes()
    pip = [sys.executable, "-m", "pip", "--isolated", "install", "--dry-run", "--ignore-installed"]
    done = _run(*pip, "--no-deps", "--no-index", "--quiet", "--report", "-", got)
    (chosen,) = json.loads(done.stdout)["install"]
    assert (
        chosen["metadata"]["name"] == "xorweights" and chosen["metadata"]["version"] == xorweights.__version__
    )

    again = xorweights.publish(native_release["payload"], "me/with-wheel", attach_wheel=wheel, **kw)
    assert again.unchanged  # the wheel is part of what an unchanged release holds
    with pytest.raises(xorweights.InputError, match="give one"):
        xorweights.publish(native_release["payload"], "me/x", attach_wheel=wheel, install_from="x==1", **kw)
    other = tmp_path / "xorweights-9.9.9-py3-none-any.whl"
    other.write_bytes(wheel.read_bytes())
    with pytest.raises(xorweights.InputError, match="the version publishing this payload"):
        xorweights.publish(native_release["payload"], "me/x", attach_wheel=other, **kw)
