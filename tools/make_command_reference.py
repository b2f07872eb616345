"""Write docs/commands.md: the `--help` of every command, rendered by click from the CLI itself.

Usage: python tools/make_command_reference.py [--check]

Each page is rendered at WIDTH columns, the width `xorweights ... --help` uses on any terminal of
80 columns or more (and when its output is not a terminal), so the file is the same on every
machine and each block is exactly what the command prints. With `--check`, nothing is written: the
exit code is 1 when docs/commands.md differs from the CLI. tests/test_docs.py runs the same check.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "commands.md"
#: click's help width on a wide terminal: its default maximum (80) minus 2.
WIDTH = 78

HEADER = """\
# Command reference

Every command's `--help`, as the command prints it. This file is generated from the CLI
(`xorweights/cli/`) by `python tools/make_command_reference.py`; do not edit it by hand:
`tests/test_docs.py` fails when it differs from what the CLI prints.
"""


def pages() -> list[tuple[str, str]]:
    """(command path, help text) of the top-level group and every command below it, in the order
    `--help` lists them; hidden commands left out. Each context is made as click makes it for a
    run (the command's `context_settings`, inherited by its subcommands), at WIDTH columns."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import click

    from xorweights.cli import cli

    found: list[tuple[str, str]] = []

    def visit(command: click.Command, ctx: click.Context) -> None:
        found.append((ctx.command_path, command.get_help(ctx)))
        if isinstance(command, click.Group):
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                if sub is not None and not sub.hidden:
                    visit(sub, sub.context_class(sub, info_name=name, parent=ctx, **sub.context_settings))

    settings = {"terminal_width": WIDTH, "max_content_width": WIDTH, **cli.context_settings}
    visit(cli, cli.context_class(cli, info_name="xorweights", **settings))
    return found


def _anchor(path: str) -> str:
    """The anchor GitHub gives the heading of `path` (a heading `xorweights base convert`)."""
    return path.replace(" ", "-")


def render() -> str:
    """The whole of docs/commands.md."""
    found = pages()
    parts = [HEADER, "\n".join(f"- [`{path}`](#{_anchor(path)})" for path, _ in found) + "\n"]
    for path, text in found:
        parts.append(f"## {path}\n\n```text\n{text.rstrip()}\n```\n")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the file differs; write nothing")
    args = parser.parse_args(argv)
    text = render()
    current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.is_file() else None
    if args.check:
        if current != text:
            print("docs/commands.md differs from the CLI: run python tools/make_command_reference.py")
            return 1
        return 0
    if current != text:
        OUTPUT.parent.mkdir(exist_ok=True)
        OUTPUT.write_text(text, encoding="utf-8", newline="\n")
        print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
