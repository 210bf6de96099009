"""The package's import graph has no cycles.

Every ``import`` of a ``lowlight_cli`` module counts: at top level, inside functions, and under
``TYPE_CHECKING`` (a cycle hidden in a function is still two modules that each need the other).
Relative imports are resolved. The implicit import of a parent package (``lowlight_cli.cli`` when
``lowlight_cli.cli.batch`` is imported) is not an edge; ``from lowlight_cli import __version__``
is one, to the package's ``__init__``. ``importlib.import_module`` counts when its name is a
literal, or an f-string with a literal prefix (an edge to every module under that prefix); a name
held in a variable is not seen.
"""

from __future__ import annotations

import ast
from pathlib import Path

import lowlight_cli

PACKAGE = "lowlight_cli"


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Map each dotted module name under ``root`` (the package's folder) to its file."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of dotted ``name`` that is a module of the package, if any."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that module ``name`` (in ``path``) imports, anywhere in its body."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = name.split(".")
                drop = node.level - 1 if is_package else node.level
                base = ".".join(anchor[: len(anchor) - drop] if drop else anchor)
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            # ``from pkg import sub`` imports the submodule; ``from pkg import name`` the package.
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        elif isinstance(node, ast.Call) and _is_import_module(node.func) and node.args:
            targets = _computed_targets(node.args[0], modules)
        else:
            continue
        for target in targets:
            module = _known(target, modules)
            if module is not None and module != name:
                found.add(module)
    return found


def _is_import_module(func: ast.expr) -> bool:
    """``importlib.import_module`` or a bare ``import_module``."""
    if isinstance(func, ast.Attribute):
        return func.attr == "import_module"
    return isinstance(func, ast.Name) and func.id == "import_module"


def _computed_targets(arg: ast.expr, modules: dict[str, Path]) -> list[str]:
    """Modules an ``import_module(arg)`` can load: a literal name, or for an f-string with a
    literal prefix (``f"lowlight_cli.backends.{key}"``) every module under that prefix."""
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return [arg.value]
    if isinstance(arg, ast.JoinedStr) and arg.values:
        head = arg.values[0]
        if isinstance(head, ast.Constant) and isinstance(head.value, str) and head.value:
            return [m for m in modules if m.startswith(head.value)]
    return []


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the package's modules it imports."""
    modules = module_files(root, package)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cyclic_groups(graph: dict[str, set[str]]) -> list[set[str]]:
    """Groups of two or more modules that all reach each other (Tarjan's strong components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def shortest_cycle(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A shortest cycle ``[a, b, ..., a]`` through the group's first module (breadth first)."""
    start = min(group)
    previous: dict[str, str] = {}
    frontier = [start]
    while start not in previous:
        following = []
        for node in frontier:
            for succ in sorted(graph[node] & group):
                if succ not in previous:
                    previous[succ] = node
                    following.append(succ)
        frontier = following
    path = [start]
    while len(path) == 1 or path[-1] != start:
        path.append(previous[path[-1]])
    return path[::-1]


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per group of :func:`cyclic_groups`; empty when the graph has none."""
    return sorted(shortest_cycle(graph, group) for group in cyclic_groups(graph))


def describe_cycles(graph: dict[str, set[str]]) -> str:
    """Each cyclic group: one cycle, then every import inside the group (one must go)."""
    lines = []
    for group in sorted(cyclic_groups(graph), key=min):
        lines.append("cycle: " + " -> ".join(shortest_cycle(graph, group)))
        lines += [f"  {a} imports {b}" for a in sorted(group) for b in sorted(graph[a] & group)]
    return "\n".join(lines)


def test_lowlight_cli_has_no_import_cycles() -> None:
    graph = import_graph(Path(lowlight_cli.__file__).parent, PACKAGE)
    assert len(graph) > 20, "the package's modules were not found"
    assert not find_cycles(graph), "import cycles:\n" + describe_cycles(graph)


def test_cycles_through_functions_type_checking_and_relative_imports_are_found(
    tmp_path: Path,
) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("VERSION = '1'\n")
    (pkg / "low.py").write_text("def f():\n    from pkg.sub import high\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "high.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .mid import X\n"
    )
    (pkg / "sub" / "mid.py").write_text("from .. import low\nfrom ..sub import top\n")
    (pkg / "sub" / "top.py").write_text("from pkg import VERSION\nimport pkg.low\n")

    graph = import_graph(pkg, "pkg")

    assert graph["pkg.sub.mid"] == {"pkg.low", "pkg.sub.top"}
    assert graph["pkg.sub.top"] == {"pkg", "pkg.low"}
    assert find_cycles(graph) == [["pkg.low", "pkg.sub.high", "pkg.sub.mid", "pkg.low"]]


def test_an_acyclic_package_passes(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("def api():\n    from pkg import engine\n")
    (pkg / "engine.py").write_text("from pkg.errors import E\n")
    (pkg / "errors.py").write_text("class E(Exception): ...\n")

    graph = import_graph(pkg, "pkg")

    assert graph == {"pkg": {"pkg.engine"}, "pkg.engine": {"pkg.errors"}, "pkg.errors": set()}
    assert find_cycles(graph) == []


def test_import_module_with_a_literal_or_a_literal_prefix_is_an_edge(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "backends").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "engine.py").write_text(
        "import importlib\n"
        "def backend(key):\n    return importlib.import_module(f'pkg.backends.{key}')\n"
    )
    (pkg / "backends" / "__init__.py").write_text("")
    (pkg / "backends" / "onnx.py").write_text("def f():\n    from pkg import export\n")
    (pkg / "export.py").write_text(
        "from importlib import import_module\ndef g():\n    import_module('pkg.engine')\n"
    )

    graph = import_graph(pkg, "pkg")

    assert graph["pkg.engine"] == {"pkg.backends.onnx"}
    assert graph["pkg.export"] == {"pkg.engine"}
    assert find_cycles(graph) == [
        ["pkg.backends.onnx", "pkg.export", "pkg.engine", "pkg.backends.onnx"]
    ]
