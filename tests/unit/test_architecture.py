"""The house's shape, checked at every ``make test`` (docs/architecture.md):

- no import cycle between modules of ``edge_gateway/``, counting imports under ``if TYPE_CHECKING:`` and
  imports inside functions (a cycle hidden from the interpreter is still a tangle for the reader);
- no module of ``edge_gateway/`` over 500 lines (the house style aims at ~400: past it a module holds two
  concerns);
- at most 6 modules at the top of ``edge_gateway/``: everything else lives in a room named for its part;
- rooms import only the rooms below them (``FLOORS``), but for the exceptions docs/architecture.md states.

The checker is tested on packages made for the purpose, so it is known to find what it looks for.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "edge_gateway"
MAX_LINES = 500
MAX_TOP_LEVEL_MODULES = 6

# From the ground up (docs/architecture.md): a room may import its own floor and the floors below it.
FLOORS = ["ground", "util", "config", "buffer", "sources", "gxp", "publish", "observe", "control", "runtime", "roof"]
GROUND = {"edge_gateway", "edge_gateway.model", "edge_gateway.errors"}
ROOF = {"edge_gateway.cli", "edge_gateway.__main__"}
# The stated exceptions: each protocol's settings beside its reader; the IQ report reads the saved config.
UPWARD = {
    ("edge_gateway.config.model", "edge_gateway.sources.modbus.config"),
    ("edge_gateway.config.model", "edge_gateway.sources.opcua.config"),
    ("edge_gateway.gxp.iq", "edge_gateway.control.desired"),
}


def module_name(path: Path, root: Path) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def _imported(node: ast.AST, current: str, is_package: bool) -> Iterator[tuple[str, list[str]]]:
    """(module, names) for every import statement anywhere in ``node`` (TYPE_CHECKING and functions too)."""
    for n in ast.walk(node):
        if isinstance(n, ast.Import):
            for alias in n.names:
                yield alias.name, []
        elif isinstance(n, ast.ImportFrom):
            if n.level:
                base = current.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (n.level - 1)]
                target = ".".join(base + ([n.module] if n.module else []))
            else:
                target = n.module or ""
            yield target, [a.name for a in n.names]


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports (``from pkg import mod`` counts as ``pkg.mod``)."""
    known = modules(root)
    graph: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for target, names in _imported(tree, name, path.name == "__init__.py"):
            hits = {f"{target}.{n}" for n in names if f"{target}.{n}" in known}
            if not hits and target in known:
                hits = {target}
            graph[name] |= hits - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_edge_gateway_has_no_import_cycle() -> None:
    found = cycles(import_graph(ROOT))
    assert found == [], "import cycles (give the consumer a narrow Protocol instead): " + "; ".join(
        " <-> ".join(c) for c in found
    )


def test_no_module_is_over_500_lines() -> None:
    sizes = {
        str(p.relative_to(ROOT.parent)): len(p.read_text(encoding="utf-8").splitlines()) for p in ROOT.rglob("*.py")
    }
    too_long = {path: n for path, n in sizes.items() if n > MAX_LINES}
    assert too_long == {}, f"modules over {MAX_LINES} lines (split them by concern): {too_long}"


def test_the_top_level_holds_at_most_6_modules() -> None:
    top = sorted(p.name for p in ROOT.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, f"too many modules at the top of edge_gateway/: {top}"


def floor(module: str) -> int:
    if module in GROUND:
        return 0
    if module in ROOF:
        return len(FLOORS) - 1
    return FLOORS.index(module.split(".")[1])


def test_rooms_import_only_the_floors_below_them() -> None:
    upward = sorted(
        f"{a} -> {b}"
        for a, targets in import_graph(ROOT).items()
        for b in targets
        if floor(b) > floor(a) and (a, b) not in UPWARD
    )
    assert upward == [], "imports that run up a floor (see docs/architecture.md): " + "; ".join(upward)


# --- the checker itself ---------------------------------------------------------------------------------


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for rel, text in {"__init__.py": "", **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.mark.parametrize(
    "b_imports_a",
    [
        "from pkg.a import A",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import A",
        "def f():\n    from pkg import a",
        "from . import a",
    ],
    ids=["plain", "type-checking", "in-a-function", "relative"],
)
def test_the_checker_finds_a_cycle_however_it_is_written(tmp_path: Path, b_imports_a: str) -> None:
    root = _package(tmp_path, {"a.py": "from pkg.sub.b import B\nA = 1\n", "sub/__init__.py": "", "sub/b.py": ""})
    assert cycles(import_graph(root)) == []
    (root / "sub" / "b.py").write_text(b_imports_a.replace("from . import a", "from .. import a") + "\nB = 2\n")
    assert cycles(import_graph(root)) == [["pkg.a", "pkg.sub.b"]]


def test_the_checker_finds_a_longer_cycle_and_ignores_outside_imports(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "a.py": "import json\nfrom pkg import b\n",
            "b.py": "from pkg.c import x\n",
            "c.py": "import pkg.a\nx = 1\n",
            "d.py": "from pkg import a\n",
        },
    )
    assert cycles(import_graph(root)) == [["pkg.a", "pkg.b", "pkg.c"]]
