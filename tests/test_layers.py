"""The import graph keeps DESIGN's layers: every arrow goes down (or stays within a layer), no
modules import each other in a circle, and the special rules hold (heads know no backbone, data
knows no model, evaluation never imports report, backbones know no data set).

The graph is read from the source with ``ast``: every ``import`` and ``from ... import``
statement counts, at module level, inside functions and under ``TYPE_CHECKING`` alike.
``focusshot/__init__.py`` is the package's facade: it may (lazily) import anything, and it stands
on the API's layer, so only the command line (and the API's own layer) may import it.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "focusshot"
PACKAGE = "focusshot"

#: DESIGN's layers, from the top; a module may import its own layer and those below it.
#: Keys are the top-level modules and packages of ``src/focusshot``.
#: ``__init__`` is the facade, ``focusshot/__init__.py``.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("cli", "__main__"),  # the command line
    # the Python API and its commands (export_onnx, update: the classifier file's export and update)
    ("api", "auto", "explain", "classifier", "export_onnx", "update", "__init__"),
    ("report",),
    ("evaluation", "embedding"),  # embedding: batched extraction over files (the API's and zero-shot's)
    ("methods",),
    ("training",),
    ("adapters",),
    ("heads",),
    ("backbones",),
    ("attention",),
    ("data",),
    # leaf utilities
    ("numerics", "options", "option_types", "distributed", "versions", "locking", "graph_mode", "deadlines"),
)
#: Special rules beyond the order of layers: (importer, never reached). DESIGN's three, and the
#: issue's "world-clip's pretraining data reaches it as an argument, not an import of data".
NEVER: tuple[tuple[str, str], ...] = (
    ("heads", "backbones"),
    *(("data", model) for model in ("backbones", "attention", "methods", "heads", "adapters", "training")),
    ("evaluation", "report"),
    ("backbones", "data"),
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@functools.cache
def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """``(imported focusshot module, line)`` for every import statement in the file."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            targets = [
                f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # ``import focusshot.a.b.name`` -> the module
                target = target.rpartition(".")[0]
            if target and (target == PACKAGE or target.startswith(PACKAGE + ".")):
                yield target, node.lineno


@functools.cache
def _graph() -> dict[str, dict[str, int]]:
    """module -> {imported module: line of its first import there}."""
    modules = _modules()
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges: dict[str, int] = {}
        for target, line in _imports(name, path, modules):
            if target != name:
                edges[target] = min(line, edges.get(target, line))
        graph[name] = edges
    return graph


def _top(module: str) -> str:
    """The top-level module or package a module belongs to (its key in :data:`LAYERS`)."""
    return module.split(".")[1] if module != PACKAGE else "__init__"


def _layer(module: str) -> int:
    """The layer index (0 = top)."""
    top = _top(module)
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{module}: {top!r} has no place in LAYERS")


def _where(module: str, line: int) -> str:
    path = _modules()[module]
    return f"{path.relative_to(SRC.parents[1])}:{line}"


def _components(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components of ``graph`` (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                out.append(sorted(component))
    return out


def test_every_top_level_module_has_a_layer() -> None:
    placed = [name for names in LAYERS for name in names]
    assert len(placed) == len(set(placed)), "a name stands in two layers"
    found = sorted(
        p.stem if p.is_file() else p.name
        for p in SRC.iterdir()
        if p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists())
    )
    missing = [name for name in found if name not in placed]
    assert not missing, f"top-level modules without a place in LAYERS (and in DESIGN's list): {missing}"
    stale = [name for name in placed if name not in found]
    assert not stale, f"LAYERS names modules that do not exist: {stale}"


def test_imports_never_climb_to_a_higher_layer() -> None:
    graph = _graph()
    upward = [
        f"{_where(module, line)}: {module} ({_top(module)}) imports {target} ({_top(target)})"
        for module, edges in sorted(graph.items())
        if module != PACKAGE  # the facade may import anything
        for target, line in sorted(edges.items())
        if _layer(target) < _layer(module)
    ]
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def test_no_import_cycles() -> None:
    graph = _graph()
    cycles = [c for c in _components(graph) if len(c) > 1]
    lines = []
    for component in cycles:
        members = set(component)
        lines.append("cycle: " + ", ".join(component))
        lines.extend(
            f"  {_where(m, line)}: {m} -> {t}"
            for m in component
            for t, line in sorted(graph[m].items())
            if t in members
        )
    assert not cycles, "modules that import each other in a circle:\n" + "\n".join(lines)


@pytest.mark.parametrize(("importer", "imported"), NEVER, ids=[f"{a}-not-{b}" for a, b in NEVER])
def test_special_rules(importer: str, imported: str) -> None:
    """DESIGN's rules beyond the order of layers, followed through every module in between."""
    graph = _graph()
    bad = []
    for module in sorted(m for m in graph if _top(m) == importer):
        seen, todo = {module: [module]}, [module]
        while todo:  # breadth-first: the shortest chain to each reachable module
            current = todo.pop(0)
            if _top(current) == imported:
                continue  # reached: the chain ends here
            for target in sorted(graph[current]):
                if target not in seen and target != PACKAGE:  # the facade is no route
                    seen[target] = [*seen[current], target]
                    todo.append(target)
        bad.extend(" -> ".join(chain) for target, chain in seen.items() if _top(target) == imported)
    assert not bad, f"{importer} reaches {imported}:\n" + "\n".join(bad)


def test_the_graph_reader_sees_every_kind_of_import(tmp_path) -> None:
    """The reader itself: module-level, function-level, ``TYPE_CHECKING`` and relative imports, a
    submodule imported by name, and a name imported from a package, are all arrows."""
    package = tmp_path / "focusshot" / "data"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "world.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "import focusshot.heads.base\n"
        "from . import sources\n"
        "from .labelled import Box\n"
        "from focusshot.backbones import create_backbone\n"
        "if TYPE_CHECKING:\n"
        "    from focusshot.methods.base import Method\n"
        "def f():\n"
        "    from ..evaluation import metrics\n"
    )
    names = ["heads.base", "data.sources", "data.labelled", "backbones", "methods.base", "evaluation.metrics"]
    names = [f"focusshot.{name}" for name in [*names, "data"]]
    modules = {name: Path() for name in names}
    found = {target for target, _ in _imports("focusshot.data.world", package / "world.py", modules)}
    assert found == set(names) - {"focusshot.data"}
    assert _components({"a": {"b": 1}, "b": {"a": 1}, "c": {"a": 1}}) == [["a", "b"], ["c"]]
