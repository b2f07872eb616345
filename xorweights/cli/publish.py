"""`xorweights publish`: upload a payload to the Hugging Face Hub with a generated model card."""

from __future__ import annotations

from pathlib import Path

import click

from ._errors import EXIT_OK
from ._group import EXAMPLES, cli
from ._options import allow_raw_option, jobs_option, json_option, quiet_option
from ._render import emit_json, print_publish


@cli.command("publish", epilog=f"Example: {EXAMPLES['publish']}")
@click.argument("payload", type=click.Path(path_type=Path))
@click.argument("repo_id")
@click.option("--private", is_flag=True, help="Create the repo private.")
@click.option("--revision", default=None, help="Branch to commit to (created if missing) [default: main].")
@click.option(
    "--checksums",
    default=None,
    help="For a file-level (oasst) payload: the manifest written by `encode --manifest`.",
)
@click.option("--message", default=None, help="Commit message.")
@click.option(
    "--base-name",
    default=None,
    metavar="NAME",
    help="The base model named on the card (a Hub repo id becomes its base_model) "
    "[default: what `encode --base-name` recorded].",
)
@click.option(
    "--license",
    "license_id",
    default=None,
    metavar="ID",
    help="The card's Hub license identifier, e.g. apache-2.0 [default: other, the base's terms apply].",
)
@click.option(
    "--license-name",
    default=None,
    metavar="NAME",
    help="With --license other: the release's terms by name (an identifier, e.g. my-license-1.0); "
    "needs --license-link.",
)
@click.option(
    "--license-link",
    default=None,
    metavar="URL",
    help="With --license other: where the terms are (an http(s) URL, or a file of the repo such as "
    "LICENSE); needs --license-name.",
)
@click.option(
    "--install-from",
    default=None,
    metavar="SPEC",
    help="What the card tells readers to pip install (a requirement, a git URL or a wheel's URL) "
    "[default: xorweights==THIS_VERSION from PyPI].",
)
@click.option(
    "--attach-wheel",
    type=click.Path(path_type=Path),
    default=None,
    metavar="WHEEL",
    help="Commit this xorweights version's wheel (python -m build) to the repo's install/ folder; the "
    "card then says to download and install it, which works for every reader (instead of --install-from).",
)
@allow_raw_option
@jobs_option
@quiet_option
@json_option
def publish_cmd(
    payload: Path,
    repo_id: str,
    private: bool,
    revision: str | None,
    checksums: str | None,
    message: str | None,
    base_name: str | None,
    license_id: str | None,
    license_name: str | None,
    license_link: str | None,
    install_from: str | None,
    attach_wheel: Path | None,
    allow_raw: tuple[str, ...],
    jobs: int | None,
    quiet: bool,
    as_json: bool,
) -> int:
    """Upload an encoded PAYLOAD folder to REPO_ID with a generated model card.

    The card holds the install and decode commands (the xorweights version that wrote the
    payload, and where to get it), the base and decoded checksums and the payload format;
    `xorweights decode REPO_ID` reads its checksums back. Publishing again is safe: an unchanged
    release makes no commit, and a changed one deletes the earlier payload's files it no longer
    has. Uses HF_TOKEN and HF_ENDPOINT.
    """
    from ..hub import publish

    report = publish(
        payload,
        repo_id,
        private=private,
        revision=revision,
        checksums=checksums,
        commit_message=message,
        allow_raw=allow_raw,
        jobs=jobs,
        progress=not quiet,
        base_name=base_name,
        license=license_id,
        license_name=license_name,
        license_link=license_link,
        install_from=install_from,
        attach_wheel=attach_wheel,
    )
    if as_json:
        emit_json(report.to_dict())
    elif not quiet:
        print_publish(report)
    return EXIT_OK
