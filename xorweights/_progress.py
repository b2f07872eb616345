"""Progress on stderr, as the Hugging Face tools show it.

On a terminal, a tqdm bar labelled in binary units (`1.20 GiB / 60.1 GiB [..., 412 MiB/s]`).
Anywhere else (a CI log, a file, a pipe) no carriage returns: at most one plain line every
`PLAIN_INTERVAL` seconds, so work shorter than that prints nothing. `--quiet` (callers pass
`enabled=False`), `XORWEIGHTS_DISABLE_PROGRESS_BARS`, `HF_HUB_DISABLE_PROGRESS_BARS` and
`TQDM_DISABLE` silence both.

`byte_bar` serves this package; `tqdm_class` gives huggingface_hub the same behaviour for its
downloads (`hf_hub_download(tqdm_class=...)`).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
import time
from typing import Any

from ._env import env_flag
from ._units import human_bytes, human_duration, human_rate

#: Silences all progress output (same effect as `--quiet`).
ENV_DISABLE_PROGRESS_BARS = "XORWEIGHTS_DISABLE_PROGRESS_BARS"

#: huggingface_hub's switch for its bars; a true value (as `is_true`) silences ours too.
ENV_HF_DISABLE_PROGRESS_BARS = "HF_HUB_DISABLE_PROGRESS_BARS"

#: tqdm's own switch; as tqdm reads it, any non-empty value silences every bar.
ENV_TQDM_DISABLE = "TQDM_DISABLE"

logger = logging.getLogger(__name__)

#: Off a terminal, seconds between plain progress lines (and before the first one).
PLAIN_INTERVAL = 30.0
_clock = time.monotonic

_BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_bin} / {total_bin} [{elapsed}<{remaining}, {rate_bin}]"
_BAR_FORMAT_NO_TOTAL = "{desc}: {n_bin} [{elapsed}, {rate_bin}]"


def progress_disabled() -> bool:
    """Whether the environment silences progress (read now, not at import)."""
    return (
        env_flag(ENV_DISABLE_PROGRESS_BARS)
        or env_flag(ENV_HF_DISABLE_PROGRESS_BARS)
        or bool(os.environ.get(ENV_TQDM_DISABLE))  # tqdm's own rule: any non-empty value
    )


def show_progress(enabled: bool = True) -> bool:
    """Whether progress shows at all: asked for (`enabled`, i.e. not `--quiet`) and not silenced."""
    return enabled and not progress_disabled()


def stderr_is_terminal() -> bool:
    """Whether stderr is a terminal (bars) rather than a file, pipe or log (plain lines)."""
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError, OSError):  # closed, detached or replaced stream
        return False


def bars_shown(enabled: bool = True) -> bool:
    """Whether a bar that redraws itself (huggingface_hub's own, on uploads and older clients'
    downloads) may show: progress asked for and not silenced, and stderr a terminal."""
    return show_progress(enabled) and stderr_is_terminal()


def plain_line(
    desc: str, n: float, total: float | None, seconds: float, *, moved: float | None = None, unit: str = "B"
) -> str:
    """One progress line, no carriage return, e.g.
    `decode: 12.3 GiB / 60.1 GiB (20%), 412 MiB/s, about 2 min left`.

    `n` of `total` done after `seconds`, of which `moved` (default `n`) in these seconds (less when
    resumed); other units than bytes print plain counts.
    """
    head = f"{desc}: " if desc else ""
    if unit != "B":
        return head + (f"{n:g} / {total:g} {unit} ({int(100 * n / total)}%)" if total else f"{n:g} {unit}")
    moved = n if moved is None else moved
    if not total:
        return f"{head}{human_bytes(n)}, {human_rate(moved, seconds)}"
    line = f"{head}{human_bytes(n)} / {human_bytes(total)} ({int(100 * n / total)}%)"
    line += f", {human_rate(moved, seconds)}"
    if moved > 0 and seconds > 0 and total > n:
        line += f", about {human_duration((total - n) * seconds / moved)} left"
    return line


@functools.cache
def _classes() -> tuple[type[Any], type[Any]]:
    """The tqdm classes (made on first use: importing this module does not import tqdm)."""
    from tqdm.std import tqdm as std_tqdm

    class ProgressTqdm(std_tqdm):  # type: ignore[misc]
        """A tqdm that follows this module's rules: a bar on a terminal, plain lines elsewhere,
        silent when disabled. Byte counts (`unit="B"`) are labelled in binary units.

        Subclasses may override `update`; it must be called for the count and the lines.
        """

        enabled = True

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.pop("name", None)  # huggingface_hub's bar group, for its own tqdm only
            on = type(self).enabled and not progress_disabled()
            tty = on and stderr_is_terminal()
            self._plain = on and not tty
            self._count_lock = threading.Lock()
            self._desc = str(kwargs.get("desc", args[1] if len(args) > 1 else None) or "")
            self._unit = str(kwargs.get("unit", "it"))
            if self._unit == "B":
                kwargs.update(unit_scale=True, unit_divisor=1024, bar_format=_BAR_FORMAT)
            kwargs.update(disable=not tty, file=sys.stderr, dynamic_ncols=True)
            super().__init__(*args, **kwargs)
            self._start = self._last = _clock()
            self._initial = self.n

        def update(self, n: float | None = 1) -> bool | None:
            with self._count_lock:  # tqdm's own count is not thread-safe
                if not self._plain:
                    return super().update(n)  # type: ignore[no-any-return]
                self.n += n or 0
                now = _clock()
                if now - self._last < PLAIN_INTERVAL:
                    return False
                self._last = now
                seconds, moved = now - self._start, self.n - self._initial
                _write(plain_line(self._desc, self.n, self.total, seconds, moved=moved, unit=self._unit))
                return True

        @property
        def format_dict(self) -> dict[str, Any]:
            d: dict[str, Any] = super().format_dict
            if self._unit != "B":  # also when closed: a bar left in place (`leave`) is drawn once more
                return d
            n, total, elapsed, rate = d["n"], d["total"], d["elapsed"], d["rate"]
            if rate is None and elapsed:
                rate = (n - d["initial"]) / elapsed
            d.update(
                n_bin=human_bytes(n),
                total_bin=human_bytes(total) if total else "?",
                rate_bin=human_rate(rate, 1.0) if rate is not None else "?",
                bar_format=_BAR_FORMAT if total else _BAR_FORMAT_NO_TOTAL,
            )
            if not d.get("ncols"):  # a terminal reporting no width: tqdm would drop `bar_format`
                d["ncols"] = None
            return d

    class SilentTqdm(ProgressTqdm):
        """Never shows anything (`--quiet`)."""

        enabled = False

    # A thread lock, not tqdm's default multiprocessing one (which may start a helper process).
    ProgressTqdm.set_lock(threading.RLock())
    return ProgressTqdm, SilentTqdm


def tqdm_class(enabled: bool = True) -> type[Any]:
    """A tqdm class following the rules of `byte_bar`, e.g. for `hf_hub_download(tqdm_class=...)`.

    `enabled=False` gives one that never shows. Either may be subclassed; a subclass overriding
    `update` must call it.
    """
    shown, silent = _classes()
    return shown if enabled else silent


def _write(line: str) -> None:
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # stderr gone: progress is not worth failing for
        logger.debug("progress line not written: %s", line)


class _NullBar:
    """Stands in for a bar when progress is off."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _NullBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def byte_bar(total: int | None, desc: str, *, enabled: bool) -> Any:
    """A byte counter shown as this module says, or a no-op when disabled by the caller or the
    environment.

    Thread-safe: several jobs may share one bar.
    """
    if not show_progress(enabled):
        return _NullBar()
    return tqdm_class()(total=total, desc=desc, unit="B", leave=False)
