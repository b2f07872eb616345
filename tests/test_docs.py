"""The documentation stays true to the code: docs/commands.md is what `--help` prints, the README stays
short and keeps the set-up commands `.ci/run` relies on, and every relative link in README.md and
docs/*.md points at a file that exists (and at a heading of it, when it names one)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

from xorweights.cli import main

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_LINES = 300
INSTALL_AND_DEMO = (
    "python3 -m venv .venv && . .venv/bin/activate && python -m pip install . && xorweights demo"
)
REGENERATE = "docs/commands.md differs from the CLI's --help: run python tools/make_command_reference.py"


def _load_tool() -> ModuleType:
    path = ROOT / "tools" / "make_command_reference.py"
    spec = importlib.util.spec_from_file_location("make_command_reference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


tool = _load_tool()
PAGES = dict(tool.pages())


def test_command_reference_is_generated_from_the_cli() -> None:
    written = (DOCS / "commands.md").read_text(encoding="utf-8")
    assert written == tool.render(), REGENERATE


def test_command_reference_covers_every_command_and_option() -> None:
    """Every command and every visible option is in the reference (the README's old table lacked
    `--max-shard-size`)."""
    text = (DOCS / "commands.md").read_text(encoding="utf-8")
    for path in ("decode", "encode", "publish", "verify", "checksum", "releases", "demo", "base convert"):
        assert f"## xorweights {path}\n" in text, path
    assert "--max-shard-size" in PAGES["xorweights decode"]
    assert "--download-dir" not in text  # hidden: an old name of --local-dir


@pytest.mark.parametrize("path", sorted(PAGES))
def test_each_page_is_what_help_prints(
    path: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command itself, on a wide terminal, prints exactly the reference's page."""
    monkeypatch.setenv("COLUMNS", "200")
    code = main([*path.split()[1:], "--help"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.rstrip("\n") == PAGES[path].rstrip("\n"), REGENERATE


def test_readme_is_short() -> None:
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_README_LINES, (
        f"README.md: {lines} lines, at most {MAX_README_LINES}: move detail to docs/"
    )


def test_readme_keeps_the_set_up_commands() -> None:
    """The install-and-demo command and the test command (`.ci/run` is the README's test command)."""
    text = README.read_text(encoding="utf-8")
    assert INSTALL_AND_DEMO in text
    assert "\nbash .ci/run " in text
    assert (ROOT / ".ci" / "run").is_file()


def _pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


_FENCED = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
_INLINE_LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'(][^)]*)?\)")
_REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


def links(text: str) -> list[str]:
    """The targets of a Markdown page's links and images, outside code."""
    prose = _CODE_SPAN.sub("", _FENCED.sub("", text))
    return _INLINE_LINK.findall(prose) + _REFERENCE.findall(prose)


def test_links_are_found() -> None:
    text = '[a](docs/a.md) ![i](img/x.png "t") `[no](code.md)`\n```\n[no](fenced.md)\n```\n[r]: ./b.md\n'
    assert links(text) == ["docs/a.md", "img/x.png", "./b.md"]


_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.M)


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces to
    hyphens, `-1`, `-2`, ... after a repeated one."""
    found: set[str] = set()
    count: dict[str, int] = {}
    for heading in _HEADING.findall(_FENCED.sub("", text)):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        n = count.get(slug, 0)
        found.add(f"{slug}-{n}" if n else slug)
        count[slug] = n + 1
    return found


def test_anchors_are_made_as_github_makes_them() -> None:
    text = "# A `b` (c)\n```\n# not a heading\n```\n## The card's block\n## Twice\n## Twice\n"
    assert anchors(text) == {"a-b-c", "the-cards-block", "twice", "twice-1"}


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files_and_headings(page: Path) -> None:
    broken = []
    for target in links(page.read_text(encoding="utf-8")):
        if _SCHEME.match(target):
            continue  # a URL
        path, _, fragment = target.partition("#")
        linked = page.parent / path.split("?", 1)[0] if path else page
        if not linked.exists():
            broken.append(target)
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked.read_text("utf-8")):
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: links to missing files or headings: {broken}"


def test_readme_links_every_docs_page() -> None:
    linked = {(ROOT / t.split("#", 1)[0]).resolve() for t in links(README.read_text(encoding="utf-8"))}
    unlinked = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"
