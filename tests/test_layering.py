"""The import graph of addsr has no cycle, between modules or between packages: no module imports one that sits above
it (for example a network module importing the pipeline that uses it). Read from the ``import`` statements, those
inside functions included; imports only for type checkers (``if TYPE_CHECKING:``) are left out."""

from __future__ import annotations

import ast
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SOURCE / "addsr"


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imported_modules(name: str, path: Path) -> set[str]:
    """The addsr modules that ``name`` imports (``from package import module`` counts as the module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - child.level + 1] if child.level else []
                target = ".".join(base + ([child.module] if child.module else []))
                found.update(f"{target}.{alias.name}" if f"{target}.{alias.name}" in MODULES else target
                             for alias in child.names)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return {module for module in found if module in MODULES and module != name}


def package_of(module: str) -> str:
    """``addsr.training.runner`` -> ``addsr.training``; top-level modules stand for themselves."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 or (PACKAGE / parts[-1]).is_dir() else module


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle a depth-first search meets (none for a layered graph)."""
    state, stack, found = {}, [], []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for successor in sorted(graph.get(node, ())):
            if state.get(successor) == "open":
                found.append(stack[stack.index(successor):] + [successor])
            elif successor not in state:
                visit(successor)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


GRAPH = {name: imported_modules(name, path) for name, path in MODULES.items()}


def test_the_reader_sees_relative_and_package_imports():
    assert "addsr.model_folder" in GRAPH["addsr.pipeline"]
    assert "addsr.models" in GRAPH["addsr.pipeline"]  # from .models import UNet
    assert "addsr.training.config" in GRAPH["addsr.training.runner"]


def test_no_module_imports_one_that_imports_it():
    assert cycles(GRAPH) == []


def test_no_package_imports_one_that_imports_it():
    packages: dict[str, set[str]] = {}
    for module, imported in GRAPH.items():
        packages.setdefault(package_of(module), set()).update(
            package_of(other) for other in imported if package_of(other) != package_of(module))
    assert cycles(packages) == []
