"""Every third-party package ``pipeline`` imports is declared in pyproject.toml.

An import found in no declaration works in the development environment (another package pulled
it in) and breaks in a fresh one when that package stops depending on it. A package imported at
module level must be a dependency; one imported only inside a function (or under ``try: ...
except ImportError``) may instead be in an optional extra.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import tomllib
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pipeline"


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them (``PyYAML`` -> ``pyyaml``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Import:
    module: str  # the top-level name imported (``dask`` for ``dask.array``)
    where: str  # file:line
    guarded: bool  # inside a function, or a ``try`` handling ImportError


def _handles_import_error(node: ast.Try) -> bool:
    names = set()
    for handler in node.handlers:
        if handler.type is None:
            return True
        types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        names |= {t.id for t in types if isinstance(t, ast.Name)}
    return bool(names & {"ImportError", "ModuleNotFoundError", "Exception"})


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(source: str, where: str) -> list[Import]:
    """The third-party imports of a module's source (absolute, not stdlib, not ``pipeline``).

    Examples
    --------
    >>> src = "import numpy as np\\ndef f():\\n    import scipy.special\\nimport os\\n"
    >>> [(i.module, i.guarded) for i in imports(src, "m.py")]
    [('numpy', False), ('scipy', True)]
    """
    found: list[Import] = []

    def visit(node: ast.AST, guarded: bool) -> None:
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            top = name.split(".")[0]
            if top != "pipeline" and top not in sys.stdlib_module_names:
                found.append(Import(top, f"{where}:{getattr(node, 'lineno', 0)}", guarded))
        if isinstance(node, ast.If) and _type_checking(node):
            return  # read by type checkers only
        inner = guarded or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        if isinstance(node, ast.Try) and _handles_import_error(node):
            for statement in node.body:
                visit(statement, True)
            for child in [*node.handlers, *node.orelse, *node.finalbody]:
                visit(child, inner)
            return
        for sub in ast.iter_child_nodes(node):
            visit(sub, inner)

    visit(ast.parse(source), False)
    return found


def package_imports() -> list[Import]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        out += imports(path.read_text(), str(path.relative_to(ROOT)))
    return out


def declared() -> tuple[dict[str, Requirement], dict[str, dict[str, Requirement]]]:
    """pyproject's dependencies and, per extra, its optional dependencies (by normalized name)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {normalize(r.name): r for r in map(Requirement, project["dependencies"])}
    extras = {extra: {normalize(r.name): r for r in map(Requirement, requirements)}
              for extra, requirements in project.get("optional-dependencies", {}).items()}
    return core, extras


@functools.cache
def _packages_distributions() -> dict[str, list[str]]:
    return dict(importlib.metadata.packages_distributions())


def distributions(module: str) -> set[str]:
    """The distributions that can provide an import name: those installed that do (e.g.
    ``yaml`` -> ``pyyaml``, ``xgboost`` -> ``xgboost-cpu``), and the import name itself
    (PyTorch is not installed by the test environment)."""
    installed = _packages_distributions().get(module, [])
    return {normalize(module), *map(normalize, installed)}


def undeclared(found: list[Import], core: set[str], optional: set[str]) -> list[str]:
    """The imports no declaration covers, one line each.

    Examples
    --------
    >>> found = [Import("numpy", "a.py:1", False), Import("pandas", "b.py:9", False),
    ...          Import("torch", "c.py:3", True), Import("numba", "d.py:2", False)]
    >>> undeclared(found, core={"numpy"}, optional={"pandas", "torch"})
    ['b.py:9: pandas imported at module level is only in an optional extra', \
'd.py:2: numba is not declared in pyproject.toml']
    """
    problems = []
    for imp in found:
        names = distributions(imp.module)
        if names & core:
            continue
        if names & optional:
            if not imp.guarded:
                problems.append(f"{imp.where}: {imp.module} imported at module level is only "
                                "in an optional extra")
            continue
        problems.append(f"{imp.where}: {imp.module} is not declared in pyproject.toml")
    return problems


def test_every_imported_package_is_declared():
    core, extras = declared()
    optional = {name for requirements in extras.values() for name in requirements}
    found = package_imports()
    assert {imp.module for imp in found} >= {"numpy", "awkward", "dask", "numba"}
    assert undeclared(found, set(core), optional) == []


def test_installed_versions_satisfy_the_declared_bounds():
    """The lower bounds are the versions the suite runs with: an installed package older
    than its declared bound (or a bound above what was tested) shows here."""
    core, extras = declared()
    requirements = [*core.values(), *(r for reqs in extras.values() for r in reqs.values())]
    wrong = []
    for requirement in requirements:
        try:
            installed = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            assert normalize(requirement.name) not in core, f"{requirement.name} not installed"
            continue  # an optional package this environment does not install (torch, xgboost)
        if not requirement.specifier.contains(installed, prereleases=True):
            wrong.append(f"{requirement} but {installed} is installed")
    assert wrong == []


def test_an_undeclared_import_is_found(tmp_path):
    """The scan sees function-level imports and ``try`` guards, and skips ``TYPE_CHECKING``."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "import numba\n"
        "if TYPE_CHECKING:\n    import torch\n"
        "try:\n    import xgboost\nexcept ImportError:\n    xgboost = None\n"
        "class A:\n    def f(self):\n        from scipy.special import erf\n"
        "from . import sibling\n"
        "from pipeline.errors import CalibrewError\n"
    )
    found = imports(source, "m.py")
    assert [(i.module, i.guarded) for i in found] == [
        ("numba", False), ("xgboost", True), ("scipy", True)]
    assert undeclared(found, core={"numpy"}, optional={"xgboost-cpu", "scipy"}) == [
        "m.py:2: numba is not declared in pyproject.toml"]
