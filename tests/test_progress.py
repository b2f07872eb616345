"""Progress on stderr: bars on a terminal only, plain throttled lines elsewhere, binary units,
silenced by `--quiet` and the environment."""

from __future__ import annotations

import fcntl
import inspect
import io
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from tests.conftest import random_bytes
from xorweights import _progress
from xorweights._units import human_bytes, human_duration, human_rate

MiB = 1024 * 1024
SILENCERS = ("XORWEIGHTS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS", "TQDM_DISABLE")
SIZE = r"\d+(?:\.\d)? (?:B|KiB|MiB|GiB)"
RATE = r"(?:\d+(?:\.\d+)?) (?:B|KiB|MiB|GiB)/s"
#: A plain line of the `checksum` command over the 48 MiB folder below.
PLAIN = re.compile(rf"^md5sum: ({SIZE}) / 48\.0 MiB \((\d+)%\), {RATE}(?:, about \d+ (?:s|min) left)?$")
#: The CLI with the plain-line interval set (argv: interval, then the command line).
WITH_INTERVAL = (
    "import sys; import xorweights._progress as p; p.PLAIN_INTERVAL = float(sys.argv[1]); "
    "sys.argv = ['xorweights', *sys.argv[2:]]; from xorweights.cli import main; main()"
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 MiB in two files: three 16 MiB hashing chunks each, so several progress updates."""
    d = tmp_path_factory.mktemp("progress")
    (d / "a.bin").write_bytes(random_bytes(32 * MiB, 1))
    (d / "b.bin").write_bytes(random_bytes(16 * MiB, 2))
    return d


def loud_env(**extra: str) -> dict[str, str]:
    """The environment with no progress switch set (the test suite silences progress by default)."""
    env = {k: v for k, v in os.environ.items() if k not in SILENCERS and not k.startswith("TQDM_")}
    return {**env, **extra}


def cli(args: list[object], env: dict[str, str], *, interval: float | None = None, stderr: object) -> int:
    """Run the real command in a child process, stderr into `stderr` (a file or a pty fd)."""
    head = ["-m", "xorweights.cli"] if interval is None else ["-c", WITH_INTERVAL, str(interval)]
    return subprocess.run(
        [sys.executable, *head, *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        env=env,
        timeout=120,
    ).returncode


def cli_to_file(
    tmp_path: Path, args: list[object], env: dict[str, str], *, interval: float | None = None
) -> str:
    err = tmp_path / "stderr.txt"
    with open(err, "wb") as f:
        assert cli(args, env, interval=interval, stderr=f) == 0, err.read_text()
    return err.read_bytes().decode()


def cli_on_pty(args: list[object], env: dict[str, str], *, interval: float | None = None) -> str:
    """Run the command with stderr on a pseudo-terminal 120 columns wide; returns what it wrote there."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    head = ["-m", "xorweights.cli"] if interval is None else ["-c", WITH_INTERVAL, str(interval)]
    child = subprocess.Popen(
        [sys.executable, *head, *map(str, args)], stdout=subprocess.DEVNULL, stderr=slave, env=env
    )
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if not select.select([master], [], [], 1)[0]:
                if child.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(master)
        assert child.wait(timeout=30) == 0, out
    return out.decode()


# --- a file, a pipe, a CI log ------------------------------------------------------------------


def test_short_work_off_a_terminal_prints_nothing_and_no_carriage_return(
    folder: Path, tmp_path: Path
) -> None:
    err = cli_to_file(tmp_path, ["checksum", folder], loud_env())
    assert "\r" not in err
    assert "md5sum" not in err and "%|" not in err  # under 30 s: not a single line
    assert err == ""


def test_long_work_off_a_terminal_prints_plain_lines_in_binary_units(folder: Path, tmp_path: Path) -> None:
    """The 30-second interval set to 0: every update may print, as work of hours would every 30 s."""
    err = cli_to_file(tmp_path, ["checksum", folder, "--jobs", "2"], loud_env(), interval=0)
    assert "\r" not in err and "MB/s" not in err and "%|" not in err
    lines = err.splitlines()
    assert len(lines) >= 3, err
    for line in lines:
        assert PLAIN.match(line), line
    percents = [int(PLAIN.match(line).group(2)) for line in lines]  # type: ignore[union-attr]
    assert percents == sorted(percents) and percents[-1] == 100
    assert PLAIN.match(lines[-1]).group(1) == "48.0 MiB"  # type: ignore[union-attr]


def test_plain_lines_come_at_most_once_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(_progress, "_clock", lambda: now[0])
    monkeypatch.delenv("XORWEIGHTS_DISABLE_PROGRESS_BARS")
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    total = 60 * 1024 * MiB
    with _progress.byte_bar(total, "decode", enabled=True) as bar:
        for t in (1, 10, 29.9):  # under 30 s: nothing
            now[0] = 1000 + t
            bar.update(100 * MiB)
        assert err.getvalue() == ""
        now[0] = 1030
        bar.update(12 * 1024 * MiB - 300 * MiB)  # 12 GiB in 30 s
        assert err.getvalue() == "decode: 12.0 GiB / 60.0 GiB (20%), 410 MiB/s, about 2 min left\n"
        now[0] = 1059
        bar.update(MiB)
        assert err.getvalue().count("\n") == 1  # 29 s after the last line
        now[0] = 1060
        bar.update(MiB)
        assert err.getvalue().count("\n") == 2
    assert "\r" not in err.getvalue()


# --- silenced ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("XORWEIGHTS_DISABLE_PROGRESS_BARS", "1"),
        ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
        ("HF_HUB_DISABLE_PROGRESS_BARS", "yes"),
        ("HF_HUB_DISABLE_PROGRESS_BARS", "On"),
        ("TQDM_DISABLE", "1"),
        ("TQDM_DISABLE", "True"),
        ("--quiet", ""),
    ],
)
@pytest.mark.parametrize("terminal", [False, True], ids=["file", "terminal"])
def test_quiet_and_each_switch_silence_bars_and_lines(
    folder: Path, tmp_path: Path, variable: str, value: str, terminal: bool
) -> None:
    args: list[object] = ["checksum", folder]
    if variable == "--quiet":
        args.append("--quiet")
        env = loud_env()
    else:
        env = loud_env(**{variable: value})
    if terminal:
        err = cli_on_pty(args, {**env, "TQDM_MININTERVAL": "0"})
    else:
        err = cli_to_file(tmp_path, args, env, interval=0)
    assert err == ""


@pytest.mark.parametrize(("variable", "value"), [("HF_HUB_DISABLE_PROGRESS_BARS", "0"), ("TQDM_DISABLE", "")])
def test_a_switch_read_as_off_does_not_silence(
    folder: Path, tmp_path: Path, variable: str, value: str
) -> None:
    """The switches are read as their own tools read them: `HF_HUB_DISABLE_PROGRESS_BARS=0` and an
    empty `TQDM_DISABLE` leave progress on."""
    err = cli_to_file(tmp_path, ["checksum", folder], loud_env(**{variable: value}), interval=0)
    assert err and PLAIN.match(err.splitlines()[-1]), err


# --- a terminal ----------------------------------------------------------------------------------


def test_on_a_terminal_a_tqdm_bar_shows_binary_units(folder: Path) -> None:
    # TQDM_MININTERVAL=0: tqdm redraws on every update, so the short run shows its rate.
    err = cli_on_pty(["checksum", folder, "--jobs", "1"], loud_env(TQDM_MININTERVAL="0"))
    frames = [f for f in err.split("\r") if f.strip()]
    assert frames and all(f.startswith("md5sum: ") for f in frames), err
    bar = re.compile(rf"\d+%\|.*\| {SIZE} / 48\.0 MiB \[[\d:]+<[\d:?]+, {RATE}\]")
    assert any(bar.search(f) for f in frames), err
    assert "MiB/s" in err
    assert "MB/s" not in err and not re.search(r"\d[kMG]B\b|\d[kMG]/", err)  # no decimal labels
    assert not PLAIN.search(err.replace("\r", "\n"))  # a bar, not plain lines


# --- huggingface_hub's downloads ------------------------------------------------------------------


def test_hub_download_bars_follow_the_same_rules(hub, tmp_path: Path, monkeypatch, capsys) -> None:
    from huggingface_hub import hf_hub_download

    from tests.hubserver import TOKEN

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "w.bin").write_bytes(random_bytes(24 * MiB, 3))
    hub.state.add_folder("org/progress", repo)
    monkeypatch.delenv("XORWEIGHTS_DISABLE_PROGRESS_BARS")
    monkeypatch.setattr(_progress, "PLAIN_INTERVAL", 0.0)
    if "tqdm_class" not in inspect.signature(hf_hub_download).parameters:
        # An older huggingface_hub has no hook for our bar; its own redraws with \r, so it is off
        # unless stderr is a terminal.
        from xorweights.hub import access as hub_access
        from xorweights.hub import download as hub_download

        access = hub_access.HubAccess(endpoint=hub.url, cache_dir=tmp_path / "c0", token=TOKEN)
        kw = hub_download.download_kwargs(access, progress=True)
        root = hub_download.download_files(hub_access.hf_lib(), "org/progress", "main", ["w.bin"], **kw)
        assert (root / "w.bin").stat().st_size == 24 * MiB
        assert capsys.readouterr().err == ""
        return
    counted: list[float] = []

    def download(enabled: bool, cache: str) -> None:
        class Counting(_progress.tqdm_class(enabled=enabled)):  # as hub/download.py's stoppable bar
            def update(self, n: float | None = 1) -> bool | None:
                counted.append(n or 0)
                return super().update(n)

        hf_hub_download(
            "org/progress",
            "w.bin",
            endpoint=hub.url,
            cache_dir=tmp_path / cache,
            token=TOKEN,
            tqdm_class=Counting,
        )

    download(True, "c1")
    err = capsys.readouterr().err
    assert sum(counted) == 24 * MiB
    assert "\r" not in err
    lines = err.splitlines()  # named as huggingface_hub names the file (here the end of its URL)
    assert len(lines) >= 2 and "w.bin: 24.0 MiB / 24.0 MiB (100%), " in lines[-1], err
    assert all(re.fullmatch(rf".*w\.bin: {SIZE} / 24\.0 MiB \(\d+%\), {RATE}.*", line) for line in lines), err

    counted.clear()
    download(False, "c2")
    assert sum(counted) == 24 * MiB  # `update` still runs (hub/download.py stops downloads from it) ...
    assert capsys.readouterr().err == ""  # ... but nothing shows


def test_a_download_on_a_terminal_shows_its_bar_to_the_end(hub, tmp_path: Path) -> None:
    """huggingface_hub's download bars stay in place when done (`leave`): drawn once more after close."""
    from tests.conftest import encoded_release
    from tests.hubserver import TOKEN

    payload, base, _, expected = encoded_release(tmp_path / "r", {"w.bin": 3 * MiB}, release="pty", seed=5)
    hub.state.add_folder("org/pty", payload)
    env = loud_env(HF_ENDPOINT=hub.url, HF_TOKEN=TOKEN, HF_HOME=str(tmp_path / "hf"), TQDM_MININTERVAL="0")
    shown = cli_on_pty(["decode", "org/pty", "--base", base, "--out", tmp_path / "o"], env)  # exit 0
    assert "Traceback" not in shown and "w.bin" in shown and "MiB" in shown
    assert (tmp_path / "o" / "w.bin").read_bytes() == expected["w.bin"]


# --- units ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_bytes", "seconds", "shown"),
    [
        (412 * MiB, 1, "412 MiB/s"),
        (412 * MiB * 10, 10, "412 MiB/s"),
        (41.2 * MiB, 1, "41.2 MiB/s"),
        (4.12 * MiB, 1, "4.12 MiB/s"),
        (0.4 * MiB, 1, "410 KiB/s"),  # a slow gzip encode: not "0 MB/s"
        (1000 * 1024, 1, "0.98 MiB/s"),  # never four digits
        (300 * 1024, 7.5, "40.0 KiB/s"),
        (1, 4, "0.25 B/s"),
        (0, 3, "0 B/s"),
        (1.5 * 1024**3, 1, "1.50 GiB/s"),
        (5 * 1024**4, 1, "5.00 TiB/s"),
        (100, 0, "-"),
    ],
)
def test_human_rate(n_bytes: float, seconds: float, shown: str) -> None:
    assert human_rate(n_bytes, seconds) == shown


@pytest.mark.parametrize("rate", [1e-3, 0.5, 3, 999, 1023, 1024, 5e5, 1e6, 1.048e6, 3e8, 5e9, 7e12])
def test_human_rate_never_rounds_a_rate_to_zero_or_to_a_decimal_unit(rate: float) -> None:
    shown = human_rate(rate, 1)
    number, unit = shown.split(" ")
    assert float(number) > 0 and unit in ("B/s", "KiB/s", "MiB/s", "GiB/s", "TiB/s")
    assert len(number.replace(".", "").lstrip("0")) <= 3


def test_human_bytes_and_duration() -> None:
    assert human_bytes(12 * 1024**3 + 300 * MiB) == "12.3 GiB"
    assert [human_duration(s) for s in (0.2, 40, 89, 120, 3000, 5400, 9000)] == [
        "1 s",
        "40 s",
        "89 s",
        "2 min",
        "50 min",
        "1.5 h",
        "2.5 h",
    ]
