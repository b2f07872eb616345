"""The package's structure: no import cycle (imports inside functions and under TYPE_CHECKING
counted), no two subpackages importing each other, and a pipeline that knows no format."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "xorweights"


def _modules() -> dict[str, Path]:
    found = {}
    for p in PACKAGE.rglob("*.py"):
        rel = p.relative_to(PACKAGE.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        found[".".join(parts)] = p
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(p.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                targets = [
                    f"{target}.{a.name}" if f"{target}.{a.name}" in mods else target for a in node.names
                ]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            graph[m] |= {t for t in targets if t in mods and t != m}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _subpackage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and (PACKAGE / parts[1]).is_dir() else None


def test_no_import_cycles() -> None:
    assert _cycles(_graph()) == []


def test_no_two_subpackages_import_each_other() -> None:
    pairs = {
        (a, b)
        for m, targets in _graph().items()
        for t in targets
        if (a := _subpackage(m)) and (b := _subpackage(t)) and a != b
    }
    assert sorted((a, b) for a, b in pairs if (b, a) in pairs) == []


def test_the_pipeline_knows_no_format() -> None:
    banned = {"formats", "delta", "hub", "llama", "cli", "codecs"}
    graph = _graph()
    bad = sorted(
        f"{m} -> {t}"
        for m, ts in graph.items()
        if _subpackage(m) == "pipeline"
        for t in ts
        if _subpackage(t) in banned
    )
    assert bad == []
    # nor through the top-level modules it imports (reports, sources, checksums, ...)
    seen, todo = set(), [m for m in graph if _subpackage(m) == "pipeline"]
    while todo:
        m = todo.pop()
        for t in graph[m]:
            if t not in seen and _subpackage(t) != "pipeline":
                seen.add(t)
                todo.append(t)
    assert sorted(t for t in seen if _subpackage(t) in banned) == []


def test_the_checker_sees_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
