"""Options shared by the commands: quiet/verbose, JSON, jobs, Hub access and downloads, raw storage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ._group import set_quiet, set_verbosity


def _set_verbosity(ctx: click.Context, _param: click.Parameter, count: int) -> int:
    """`-v` before or after the subcommand: each one lowers the log level by a step (at most -vv)."""
    if count:
        state = ctx.ensure_object(dict)
        state["verbose"] = state.get("verbose", 0) + count
        set_verbosity(state["verbose"])
    return count


def _merge_quiet(ctx: click.Context, _param: click.Parameter, quiet: bool) -> bool:
    """`-q` before or after the subcommand."""
    state = ctx.ensure_object(dict)
    state["quiet"] = bool(quiet or state.get("quiet"))
    if state["quiet"]:
        set_quiet()
    return state["quiet"]


_verbose = click.option(
    "-v", "--verbose", count=True, expose_value=False, callback=_set_verbosity, help="More log output."
)
_quiet = click.option(
    "--quiet",
    "-q",
    is_flag=True,
    callback=_merge_quiet,
    help="Print nothing on success (--json still prints).",
)


def quiet_option(f: Any) -> Any:
    """`-q/--quiet` (passed as `quiet`) and `-v/--verbose`, accepted after the subcommand too. A quiet
    command prints nothing when it succeeds: no progress, no report, no note (its `--json` report, or
    the data it exists to print, still)."""
    return _quiet(_verbose(f))


json_option = click.option("--json", "as_json", is_flag=True, help="Print a JSON report on stdout.")
jobs_option = click.option(
    "--jobs",
    "-j",
    type=click.IntRange(min=1),
    default=None,
    help="Files processed at once [default: cores, at most 4].",
)

_revision = click.option(
    "--revision", default=None, help="For a repo id: its branch, tag or commit [default: main]."
)


def _non_empty(_ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise click.BadParameter("is empty", param=param)
    return value


_token = click.option(
    "--token",
    default=None,
    callback=_non_empty,
    help="Hugging Face access token [default: HF_TOKEN or the saved login].",
)
_cache_dir = click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Hugging Face cache folder [default: HF_HUB_CACHE, HF_HOME/hub].",
)


def hub_options(f: Any) -> Any:
    """`--revision`, `--token`, `--cache-dir`, named as `hf download` names them."""
    return _revision(_token(_cache_dir(f)))


def download_options(f: Any) -> Any:
    """`hub_options`, `--local-dir` (hidden alias `--download-dir`), `--force-download`, `--subfolder`."""
    f = click.option(
        "--subfolder",
        default=None,
        help="The payload folder, when several folders hold model files (also OWNER/NAME:SUBFOLDER).",
    )(f)
    f = click.option(
        "--force-download",
        is_flag=True,
        help="For a repo id (payload or --base): download every file again, even when the cache has it.",
    )(f)
    f = click.option("--download-dir", type=click.Path(path_type=Path), default=None, hidden=True)(f)
    f = click.option(
        "--local-dir",
        type=click.Path(path_type=Path),
        default=None,
        help="For a repo id: download into this folder instead of the Hugging Face cache.",
    )(f)
    return hub_options(f)


allow_raw_option = click.option(
    "--allow-raw",
    "allow_raw",
    multiple=True,
    metavar="PATTERN",
    help="Allow fine-tuned tensors (or files that may hold weights) with no base counterpart, named by "
    "this fnmatch pattern, to be stored unmasked (repeatable). Anything else stored raw is refused.",
)


class RegistryChoice(click.Choice):
    """A choice among what a registry holds when the command line is read (a recipe or format
    registered after this module was imported is offered too)."""

    def __init__(self, names: Any) -> None:
        self._names = names
        super().__init__(())

    @property  # type: ignore[override]
    def choices(self) -> tuple[str, ...]:
        return tuple(self._names())

    @choices.setter
    def choices(self, _value: Any) -> None:
        pass


def payload_formats() -> tuple[str, ...]:
    """The payload formats (codecs that encode)."""
    from ..codecs import encodable

    return encodable()


def compress_modes() -> tuple[str, ...]:
    """Every `--compress` mode of any format, in registry order."""
    from ..codecs import CODECS

    return tuple(dict.fromkeys(m for c in CODECS.values() for m in c.compress_modes))


def recipes() -> tuple[str, ...]:
    """The registered recipes."""
    from ..delta.recipes import RECIPES

    return tuple(RECIPES)
