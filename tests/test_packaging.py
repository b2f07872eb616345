"""The wheel carries the release manifests and the console script; the default install needs no torch."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_the_manifests(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("xorweights-*.whl")
    with zipfile.ZipFile(wheel) as z:
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
