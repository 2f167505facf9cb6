"""Check vlmclf's import layers: no import circle between files, no import from a lower layer to
a higher one, and nothing at the top level that the layer table does not name.

    python scripts/check_layers.py [SRC_PACKAGE_DIR]    (default: src/vlmclf)

Every import counts, also one inside a function or under ``if TYPE_CHECKING``: a circle that
only runs lazily is still a circle for the reader. Importing ``a.b.c`` runs ``a/__init__`` and
``a/b/__init__`` first, so an import also points at the packages above its target (except those
the importer sits in itself). Exit status 1 and one line per problem when something is off.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

ROOT = "vlmclf"
BOTTOM = frozenset({"", "records", "spec", "cache", "terminal"})
"""The package's own ``__init__`` (its version), the records every layer shares, the cache
folder's location and the terminal-safe text helper: imported by all, importing nothing above
them."""
_STORED = BOTTOM | {"data", "store", "metrics"}
_MODELS = _STORED | {"models", "organism"}
_RUN = _MODELS | {"methods", "run"}
_ANALYSIS = _RUN | {"report", "analysis"}
ALLOWED: dict[str, frozenset[str]] = {
    "": frozenset(),
    "records": frozenset(),
    "spec": frozenset({"records"}),
    "cache": frozenset(),
    "terminal": frozenset(),
    "data": BOTTOM,
    "store": BOTTOM,
    "metrics": BOTTOM,
    "models": BOTTOM | {"data"},
    "organism": BOTTOM | {"data", "models"},
    "methods": BOTTOM | {"data", "models"},
    "serve": BOTTOM | {"data", "models", "methods"},
    "report": BOTTOM | {"store", "metrics"},
    "run": _MODELS | {"methods"},
    "analysis": _ANALYSIS,
    "paper": _ANALYSIS,
    "commands": _ANALYSIS | {"paper", "serve"},
    "cli": _ANALYSIS | {"paper", "serve", "commands"},
    "api": _ANALYSIS | {"paper", "commands"},
    "__main__": frozenset({"cli"}),
}
"""Each top-level module or package of vlmclf and what it may import besides itself (the
layer table of DESIGN.md: records at the bottom, the command line at the top)."""

Graph = dict[str, set[str]]


def module_files(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file under the package folder."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> Iterable[str]:
    """Every dotted name an import statement in ``tree`` asks for (``from a import b``: a.b)."""
    here = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The module a dotted name lives in (``vlmclf.store.RunStore`` -> ``vlmclf.store``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _with_parents(target: str, importer: str) -> list[str]:
    """``target`` and the packages Python runs on the way to it that ``importer`` is not in."""
    parts = target.split(".")
    chain = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return [name for name in chain if not (importer == name or importer.startswith(name + "."))]


def import_graph(package_dir: Path) -> Graph:
    """Module -> the modules of the package it imports (directly or by running their parents)."""
    modules = module_files(package_dir)
    graph: Graph = defaultdict(set)
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for name in _imported_names(tree, module, path.name == "__init__.py"):
            target = _known(name, modules) if name.split(".")[0] == ROOT else None
            if target is not None and target != module:
                graph[module].update(_with_parents(target, module))
        graph.setdefault(module, set())
    return dict(graph)


def circles(graph: Graph) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        found.append(sorted(group))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return sorted(found)


def unit_of(module: str) -> str:
    """The top-level module or package a module belongs to ('' for the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer_problems(graph: Graph) -> list[str]:
    """Top-level names the table does not know, and imports the table does not allow."""
    problems = []
    for unit in sorted({unit_of(module) for module in graph} - set(ALLOWED)):
        problems.append(f"{ROOT}.{unit}: not in the layer table (scripts/check_layers.py)")
    for module in sorted(graph):
        unit = unit_of(module)
        if unit not in ALLOWED:
            continue
        for target in sorted(graph[module]):
            other = unit_of(target)
            if other != unit and other not in ALLOWED[unit]:
                problems.append(f"{module} imports {target}: {unit or ROOT} may not import {other}")
    return problems


def check(package_dir: Path) -> list[str]:
    """Every problem with the package's imports, one line each (empty: the layers hold)."""
    graph = import_graph(package_dir)
    problems = [f"import circle: {' <-> '.join(group)}" for group in circles(graph)]
    return problems + layer_problems(graph)


def main(argv: list[str]) -> int:
    package_dir = Path(argv[0] if argv else Path(__file__).parents[1] / "src" / ROOT)
    problems = check(package_dir)
    for line in problems:
        print(line)
    print(f"{len(problems)} problem(s) in {package_dir}" if problems else "layers hold")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
