"""Shared fixtures: the real CMS sample files and their events."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest

from pipeline.inputs.datafiles import find_data_file

TT = "nano_tt_v12.root"
DATA = "nano_dimuon.root"
MC_METADATA = {"isMC": True, "year": "2022_preEE", "sample": "TTbar", "dataset": "tt"}


# the benchmark's peers run in their own virtual environments (bench.py starts them):
# pytest's doctest collection, in calibrew's environment, does not import them
collect_ignore_glob = ["benchmarks/peers/pocketcoffea_*.py"]


@pytest.fixture(scope="session")
def tt_file() -> str:
    return str(find_data_file(TT))


@pytest.fixture(scope="session")
def data_file() -> str:
    return str(find_data_file(DATA))


def _eager(path: str):
    from pipeline.inputs.nanoevents import read_eager

    return read_eager(path)


def _lazy(path: str, steps=None):
    from pipeline.inputs.nanoevents import read_lazy

    return read_lazy({path: {"object_path": "Events", "steps": steps or [[0, 200]]}})


@pytest.fixture(scope="session")
def tt_events(tt_file):
    return _eager(tt_file)


@pytest.fixture()
def tt_lazy(tt_file):
    return _lazy(tt_file, steps=[[0, 90], [90, 200]])


@pytest.fixture(scope="session")
def data_events(data_file):
    return _eager(data_file)


@pytest.fixture()
def params():
    from pipeline.config.parameters import defaults

    return defaults()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Preprocessing caches go to a per-session temporary directory, not ~/.cache."""
    cache = tmp_path_factory.getbasetemp() / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    # data files are still found in ../shared/data or CALIBREW_DATA
    yield


@pytest.fixture(scope="session")
def project_root() -> Path:
    return Path(__file__).resolve().parent.parent


SLURM_PARTITION = "local"  # the partition cluster/slurm-local.sh configures


def _start_service(script: list[str]) -> bool:
    """Start a test service with its script (``status`` first: a healthy one is kept);
    whether this call started it. A start that fails fails the test with the script's
    output: it never skips."""
    import subprocess

    if subprocess.run([*script, "status"], capture_output=True, timeout=120).returncode == 0:
        return False
    try:
        run = subprocess.run([*script, "start"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, timeout=900)
        output, failed = run.stdout, run.returncode != 0
    except subprocess.TimeoutExpired as exc:
        output, failed = (exc.output or b"") + b"\n(timed out after 900 s)", True
    if failed:
        text = output.decode(errors="replace")
        pytest.fail(f"{script[-1]} start failed:\n{text}", pytrace=False)
    return True


@pytest.fixture(scope="session")
def slurm_cluster(project_root):
    """A real one-node SLURM cluster on this machine (cluster/slurm-local.sh); yields its partition.

    Started if not already healthy (installs slurm-wlm and munge with apt on first use: root);
    a start that fails fails the test with the script's output, it never skips. Stopped at
    session end only if this fixture started it.
    """
    import subprocess

    script = ["bash", str(project_root / "cluster" / "slurm-local.sh")]
    started = _start_service(script)
    yield SLURM_PARTITION
    if started:
        subprocess.run([*script, "stop"], capture_output=True, timeout=300)


XROOTD_EXPORT = "/tmp/calibrew-xrootd/data"  # the export cluster/xrootd-local.sh serves
XROOTD_URL = "root://127.0.0.1:1094/"


@pytest.fixture(scope="session")
def xrootd_server(project_root, tt_file, data_file):
    """A real XRootD server on 127.0.0.1 (cluster/xrootd-local.sh) serving the sample files;
    yields the base URL of its export, ``root://127.0.0.1:1094//tmp/calibrew-xrootd/data``.

    Started if not already healthy (installs xrootd-server with apt on first use: root); a
    start that fails fails the test with the script's output, it never skips. Stopped at
    session end only if this fixture started it.
    """
    import shutil
    import subprocess

    script = ["bash", str(project_root / "cluster" / "xrootd-local.sh")]
    started = _start_service(script)
    for path in (tt_file, data_file):
        target = Path(XROOTD_EXPORT) / Path(path).name
        if not target.exists() or target.stat().st_size != Path(path).stat().st_size:
            shutil.copyfile(path, target)
    yield XROOTD_URL + XROOTD_EXPORT
    if started:
        subprocess.run([*script, "stop"], capture_output=True, timeout=120)


@pytest.fixture()
def user_modules(tmp_path, monkeypatch) -> Path:
    """A folder of user modules (unique names per test) importable by the client and by the
    workers, fresh processes that inherit ``PYTHONPATH``."""
    folder = tmp_path / "usermods"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(folder), os.environ.get("PYTHONPATH")) if p))
    importlib.invalidate_caches()
    return folder
