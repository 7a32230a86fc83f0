"""calibrew installed from its wheel, not from the checkout: the package data is inside it,
`calibrew sites` lists the built-in profiles from another directory, and the demo job runs
there."""

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


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """The wheel installed into a folder of its own (its dependencies from this
    environment), and the environment that runs it before this one's editable install."""
    target = tmp_path_factory.mktemp("installed")
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-input", "--target",
          str(target), str(wheel)], cwd=target)
    env = {key: value for key, value in os.environ.items()
           if key not in ("CALIBREW_SITES", "PYTHONPATH")}
    env["PYTHONPATH"] = str(target)  # before this environment's editable install
    return target, env


@pytest.mark.slow
def test_calibrew_sites_from_the_installed_wheel_in_another_directory(installed, tmp_path):
    """Run from a directory that is no checkout: the built-in profiles are listed, from the
    installed package."""
    target, env = installed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = _run([sys.executable, str(target / "bin" / "calibrew"), "sites"], cwd=elsewhere,
               env=env)
    builtin = target / "pipeline" / "defaults" / "sites"
    assert f"built-in: {builtin}\n" in out, out  # the installed package's, not the checkout's
    assert "of the checkout" not in out, out
    listed = {line.split()[0] for line in out.splitlines() if line.endswith("  [built-in]")}
    assert listed == set(BUILT_INS), out
    assert "invalid" not in out, out


@pytest.mark.slow
def test_the_demo_job_runs_from_the_installed_wheel_in_another_directory(
        installed, project_root, tmp_path):
    """The README's demo job and config, copied to a directory that is no checkout, run by
    the installed package (one local worker); the data files come from CALIBREW_DATA."""
    from pipeline.inputs.datafiles import find_data_file

    target, env = installed
    elsewhere = tmp_path / "elsewhere"
    for folder in ("jobs", "configs"):
        shutil.copytree(project_root / folder, elsewhere / folder)
    env = {**env, "CALIBREW_DATA": str(find_data_file("nano_tt_v12.root").parent)}
    _run([sys.executable, str(target / "bin" / "calibrew"), "run", "jobs/demo.yaml",
          "--workers", "1", "--no-progress"], cwd=elsewhere, env=env)
    done = elsewhere / "output" / "demo" / "TTto2L2Nu_2022"
    for name in ("histograms.pkl", "summary.json", "features.zarr"):
        assert (done / name).exists(), f"{name} missing in {done}"
    for name in ("histograms.pkl", "histograms.root", "merged.json", "fit/workspace.json"):
        assert (done.parent / name).exists(), f"{name} missing in {done.parent}"
    code = subprocess.run(
        [sys.executable, "-c", "import pipeline; print(pipeline.__file__)"], cwd=elsewhere,
        env=env, capture_output=True, text=True, check=True).stdout
    assert code.startswith(str(target)), code  # the installed package ran, not the checkout
