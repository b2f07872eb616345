"""The library names options as its Python API does; only the CLI turns those words into flags."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import xorweights
from xorweights.cli import main
from xorweights.cli._group import _flags, as_flags

PACKAGE = Path(xorweights.__file__).parent
#: A flag outside a backquoted command line (`hf download ... --local-dir x` quotes a command).
_FLAG = re.compile(r"(?<![\w-])--[a-z]")
_QUOTED = re.compile(r"`[^`]*`")
#: Text that is the command line a user types (the model card shows how to decode).
_COMMAND_TEXT = {"hub/model_card.py"}


def _messages(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    docstrings = {  # docstrings, and the strings under attributes that document them
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def test_no_library_message_names_a_flag() -> None:
    found = [
        f"{p.relative_to(PACKAGE)}:{line}: {text!r}"
        for p in sorted(PACKAGE.rglob("*.py"))
        if p.relative_to(PACKAGE).parts[0] != "cli" and str(p.relative_to(PACKAGE)) not in _COMMAND_TEXT
        for line, text in _messages(p)
        if _FLAG.search(_QUOTED.sub(lambda m: "" if " " in m.group(0) else m.group(0), text))
    ]
    assert found == []


@pytest.mark.parametrize(
    ("library", "cli"),
    [
        ("refusing to overwrite (use `force=True`)", "refusing to overwrite (use --force)"),
        ('decode with `payload_compression="none"`', "decode with --payload-compression none"),
        ("(try `format='auto'`)", "(try --format auto)"),
        ("pass `with_checksums=True` too", "pass --manifest too"),
        ("or `subfolder=SUBFOLDER`", "or --subfolder SUBFOLDER"),
        ("choose another `out`", "choose another --out"),
        (
            "`not_an_option` stays, `hf download x --local-dir y` too",
            "`not_an_option` stays, `hf download x --local-dir y` too",
        ),
    ],
)
def test_the_cli_words_options_as_flags(library: str, cli: str) -> None:
    assert as_flags(library) == cli


def test_every_flag_a_message_names_exists() -> None:
    named = {
        m.group(1)
        for p in PACKAGE.rglob("*.py")
        for _line, text in _messages(p)
        for m in re.finditer(r"`([a-z][a-z_]*)(?:=[^`]*)?`", text)
    }
    flags = _flags()
    words = {"format": "fmt", "with_checksums": "manifest"}
    options = {n for n in named if words.get(n, n) in flags}
    assert {"force", "out", "payload_compression", "allow_raw", "recipe", "stream", "subfolder"} <= options


def test_an_error_line_names_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    payload, base = tmp_path / "payload", tmp_path / "base"
    payload.mkdir()
    base.mkdir()
    (payload / "config.json").write_text("{}")
    (base / "config.json").write_text("{}")
    assert main(["decode", str(payload), "--base", str(base), "--out", str(base)]) == 2
    err = capsys.readouterr().err
    assert "--out must differ from the base folder" in err and "`out`" not in err
    with pytest.raises(xorweights.InputError, match="`out` must differ from the base folder"):
        xorweights.decode(payload, base=base, out=base)
