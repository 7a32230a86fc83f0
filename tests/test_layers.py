"""The package's structure: the layers of DESIGN.md hold, no import cycle, few deferred imports.

The import-linter contracts in ``pyproject.toml`` say which layer may import which; these
tests run them, and check what import-linter does not: cycles counting the imports placed
inside functions, how many such imports there are (each must say why), and how many modules
sit directly in ``pipeline/``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "pipeline"
#: the most imports of pipeline modules placed inside functions (issue 13)
MAX_DEFERRED = 5
#: the most modules directly in pipeline/ (subpackages not counted)
MAX_TOP_MODULES = 12


@dataclass(frozen=True)
class Import:
    """One import of a pipeline module by a pipeline module."""

    importer: str
    imported: str
    line: int
    deferred: bool  # inside a function
    commented: bool  # a comment on its line or the line above


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def _target(node: ast.Import | ast.ImportFrom, importer: str, is_package: bool,
            known: dict[str, Path]) -> list[str]:
    """The pipeline modules an import statement imports (the most specific known)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            parts = importer.split(".") if is_package else importer.split(".")[:-1]
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join([*parts, *([base] if base else [])])
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                 for alias in node.names]
    out = []
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name.startswith("pipeline") and name:
            out.append(name)
    return out


def imports() -> list[Import]:
    """Every import of a pipeline module in the package, type-checking-only ones left out."""
    known = modules()
    found = []
    for name, path in known.items():
        source = path.read_text()
        lines = source.splitlines()
        tree = ast.parse(source)
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            deferred = type_checking = False
            up: ast.AST = node
            while up in parents:
                up = parents[up]
                deferred |= isinstance(up, (ast.FunctionDef, ast.AsyncFunctionDef))
                type_checking |= isinstance(up, ast.If) and "TYPE_CHECKING" in ast.unparse(up.test)
            if type_checking:
                continue
            here = lines[node.lineno - 1]
            above = lines[node.lineno - 2].strip() if node.lineno > 1 else ""
            commented = "#" in here or above.startswith("#")
            for target in _target(node, name, path.name == "__init__.py", known):
                if target != name:
                    found.append(Import(name, target, node.lineno, deferred, commented))
    return found


def cycles(edges: list[Import]) -> list[list[str]]:
    """The import cycles (strongly connected components of more than one module)."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        graph.setdefault(edge.importer, set()).add(edge.imported)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_import_linter_contracts_hold():
    """The layers and the forbidden imports of pyproject.toml (import-linter)."""
    script = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(script), "--no-cache", "--no-logo"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_no_import_cycle_counting_imports_inside_functions():
    # the root package's lazy names are resolved by importlib, not by import statements
    edges = [e for e in imports() if e.importer != "pipeline"]
    assert cycles(edges) == []


def test_few_deferred_imports_each_saying_why():
    deferred = [e for e in imports() if e.deferred]
    where = [f"{e.importer}:{e.line} imports {e.imported}" for e in deferred]
    assert len(deferred) <= MAX_DEFERRED, where
    uncommented = [f"{e.importer}:{e.line}" for e in deferred if not e.commented]
    assert uncommented == [], f"say why each import is inside a function: {uncommented}"


def test_few_modules_directly_in_the_package():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_MODULES, top


def test_the_checks_can_fail(tmp_path):
    """The cycle finder and the deferred-import scan see what they look for."""
    a = Import("pipeline.a", "pipeline.b", 1, True, False)
    b = Import("pipeline.b", "pipeline.a", 5, False, False)
    assert cycles([a, b]) == [["pipeline.a", "pipeline.b"]]
    assert cycles([a]) == []


@pytest.mark.parametrize("module", ["pipeline.calibration", "pipeline.selection",
                                    "pipeline.weights"])
def test_the_core_imports_no_recipe(module):
    """Registries are filled by the plugins themselves (entry points), not by the core."""
    code = (f"import sys, {module}; "
            "print(sorted(m for m in sys.modules if m.startswith('pipeline.recipes')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, check=True)
    assert result.stdout.strip() == "[]"
