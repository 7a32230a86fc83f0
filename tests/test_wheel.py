"""calibrew installed from its wheel, not from the checkout: the package data is inside it
and `calibrew sites` lists the built-in profiles from another directory."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

BUILT_INS = ["htcondor", "local", "lxplus-htcondor", "scheduler", "slurm", "slurm-hpc"]
TIMEOUT_S = 300  # a bound, not an expectation: each step takes seconds


def _can_build_without_isolation() -> bool:
    """Whether this environment's setuptools builds wheels itself (70.1 and later, or with
    the ``wheel`` package); otherwise pip builds in an isolated environment with the
    build requirements of pyproject.toml, from the configured package index."""
    import setuptools

    major, minor = (int(part) for part in setuptools.__version__.split(".")[:2])
    return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(project_root, tmp_path_factory) -> Path:
    """A wheel built from a copy of the project's sources (nothing is written into the
    checkout)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(project_root / name, source / name)
    shutil.copytree(project_root / "pipeline", source / "pipeline",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    isolation = [] if not _can_build_without_isolation() else ["--no-build-isolation"]
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-input", *isolation,
          "-w", str(tmp / "dist"), str(source)], cwd=tmp)
    (built,) = (tmp / "dist").glob("calibrew-*.whl")
    return built


@pytest.mark.slow
def test_the_wheel_holds_the_builtin_site_profiles(wheel, project_root):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for name in BUILT_INS:
            member = f"pipeline/defaults/sites/{name}.yaml"
            assert member in names, f"{member} is not in {wheel.name}"
            source = project_root / "pipeline" / "defaults" / "sites" / f"{name}.yaml"
            assert archive.read(member) == source.read_bytes()
    assert "pipeline/defaults/jets_calibration.yaml" in names  # the default parameters


@pytest.mark.slow
def test_calibrew_sites_from_the_installed_wheel_in_another_directory(wheel, tmp_path):
    """The wheel installed into a folder of its own (its dependencies from this
    environment), run from a directory that is no checkout: the built-in profiles are
    listed, from the installed package."""
    target, elsewhere = tmp_path / "installed", tmp_path / "elsewhere"
    elsewhere.mkdir()
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-input", "--target",
          str(target), str(wheel)], cwd=tmp_path)
    env = {key: value for key, value in os.environ.items()
           if key not in ("CALIBREW_SITES", "PYTHONPATH")}
    env["PYTHONPATH"] = str(target)  # before this environment's editable install
    out = _run([sys.executable, str(target / "bin" / "calibrew"), "sites"], cwd=elsewhere,
               env=env)
    builtin = target / "pipeline" / "defaults" / "sites"
    assert f"built-in: {builtin}\n" in out, out  # the installed package's, not the checkout's
    assert "of the checkout" not in out, out
    listed = {line.split()[0] for line in out.splitlines() if line.endswith("  [built-in]")}
    assert listed == set(BUILT_INS), out
    assert "invalid" not in out, out
