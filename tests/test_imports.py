"""kldiv's modules import one another without a circle, not even through a function-local import.

A circle hidden in a function (``def compile(self): from kldiv.estimator import ...``)
still ties two layers together: neither can be read, tested or replaced alone.
Imports under ``if TYPE_CHECKING:`` are annotations, not dependencies, and are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import kldiv

ROOT = Path(kldiv.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for f in sorted(ROOT.rglob("*.py")):
        parts = f.relative_to(ROOT.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


class _Imports(ast.NodeVisitor):
    def __init__(self, package: str):
        self.package, self.found = package, set()

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
            for stmt in node.orelse:
                self.visit(stmt)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found.update(a.name for a in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if node.level:
            base = self.package.split(".")[: len(self.package.split(".")) - node.level + 1]
            module = ".".join(base + ([module] if module else []))
        self.found.add(module)
        self.found.update(f"{module}.{a.name}" for a in node.names)  # a submodule imported by name


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        v = _Imports(package)
        v.visit(ast.parse(path.read_text(), str(path)))
        # a package's __init__ re-exports its submodules: importing it is not a dependency of theirs
        graph[name] = {m for m in v.found if m in modules and m != name and not name.startswith(m + ".")}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return path[path.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        path.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_import_circles_among_kldivs_modules():
    graph = _graph()
    assert {"kldiv.algebra", "kldiv.estimator", "kldiv.planner", "kldiv.densities.base"} <= set(graph)
    assert "kldiv.estimator" in graph["kldiv.algebra"]  # Game.compile builds the runtime...
    cycle = _cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_circle_through_a_local_import():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
    tree = ast.parse("def f():\n    from kldiv.algebra import KL\nif TYPE_CHECKING:\n    import kldiv.planner\n")
    v = _Imports("kldiv")
    v.visit(tree)
    assert "kldiv.algebra" in v.found and "kldiv.planner" not in v.found
