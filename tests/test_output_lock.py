"""One run per output directory, and one configuration's outputs per directory: a second
run into a directory in use is refused naming the first (pid, host), a stale lock of a dead
run is taken over, and a directory holding another configuration's outputs is refused
unless ``--force``."""

from __future__ import annotations

import errno
import json
import os
import pickle
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from demo_job import with_datasets

from pipeline.cli import main
from pipeline.errors import OutputLockedError
from pipeline.inputs.datafiles import find_data_file
from pipeline.outputs.lock import LOCK_FILE, OutputLock

HOLD = """
import os, sys
from pipeline.outputs.lock import OutputLock
lock = OutputLock(sys.argv[1], "first.job.yaml")
lock.acquire()
print("locked", flush=True)
if sys.argv[2] == "die":
    os._exit(0)  # ends without releasing it, as a killed run would
sys.stdin.read()  # holds it until the test closes stdin
lock.release()
"""


def write_job(tmp: Path, name: str, output: Path, jet_bins: int = 30,
              tables: bool = True) -> Path:
    """The demo analysis on the demo file in 2 chunks, few variations; ``jet_bins`` makes
    another configuration; without its feature table if not ``tables``."""
    project = Path(__file__).resolve().parent.parent
    config = yaml.safe_load((project / "configs" / "demo.yaml").read_text())
    config["parameters"] = [str(project / "configs" / p) for p in config["parameters"]]
    (spec,) = config["datasets"].values()
    spec["files"] = [str(find_data_file("nano_tt_v12.root"))]
    with_datasets(config, {"tt": spec})
    config["variations"] = {"shape": {"common": {"inclusive": ["met_rescaling"]}},
                            "weights": {"common": {"inclusive": []}}}
    config["histograms"]["jet_pt"]["axes"][0]["bins"] = jet_bins
    if not tables:
        del config["tables"]
    cfg = tmp / f"{name}.analysis.yaml"
    cfg.write_text(yaml.safe_dump(config))
    job = tmp / f"{name}.job.yaml"
    job.write_text(f"config: {cfg.name}\noutput: {output}\nchunksize: 100\nworkers: 1\n")
    return job


def hold_lock(folder: Path, how: str) -> subprocess.Popen:
    """Another process that takes the lock of ``folder``: it holds it (``"hold"``) or dies
    holding it (``"die"``)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), how],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    return proc


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_a_second_run_into_a_directory_in_use_is_refused_naming_the_first(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text('{"status": "complete"}\n')  # a run's earlier output
    before = snapshot(out)
    first = hold_lock(out, "hold")
    try:
        job = write_job(tmp_path, "second", out)
        assert main(["run", str(job), "--no-progress"]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert f"output directory {out} is in use by another calibrew run" in err
        assert f"pid {first.pid} on host {socket.gethostname()}" in err
        assert "first.job.yaml" in err and "Traceback" not in err
        after = snapshot(out)
        assert after.pop(LOCK_FILE)  # the first run's lock, and nothing else changed
        assert after == {k: v for k, v in before.items() if k != LOCK_FILE}
    finally:
        assert first.stdin is not None
        first.stdin.close()
        first.wait(timeout=60)
    assert not (out / LOCK_FILE).exists()  # the first removed its lock as it ended


def test_a_stale_lock_of_a_dead_run_is_taken_over(tmp_path):
    out = tmp_path / "out"
    dead = hold_lock(out, "die")
    assert dead.wait(timeout=60) == 0
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == dead.pid  # left behind
    assert main(["run", str(write_job(tmp_path, "after", out)), "--no-progress"]) == 0
    assert json.loads((out / "report.json").read_text())["status"] == "complete"
    assert not (out / LOCK_FILE).exists()


@pytest.mark.parametrize("tables", [False, True], ids=["histograms", "with-table"])
def test_a_directory_of_another_configuration_is_refused_unless_forced(tmp_path, capsys,
                                                                       tables):
    """Without tables, the other configuration's histograms were silently overwritten; a
    table of another configuration was refused, and could only be removed by hand."""
    out = tmp_path / "out"
    first = write_job(tmp_path, "first", out, jet_bins=30, tables=tables)
    assert main(["run", str(first), "--no-progress"]) == 0
    before = snapshot(out)

    other = write_job(tmp_path, "other", out, jet_bins=60, tables=tables)
    assert main(["run", str(other), "--no-progress"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"output directory {out} holds the outputs of another configuration" in err
    assert str(first) in err and "--force" in err and "Traceback" not in err
    assert snapshot(out) == before  # nothing changed

    assert main(["run", str(other), "--no-progress", "--force"]) == 0
    with open(out / "tt" / "histograms.pkl", "rb") as fh:
        assert len(pickle.load(fh)["jet_pt"].axes["pt"]) == 60  # the other's outputs now
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "complete" and report["job"]["config"] == "other.analysis.yaml"
    if tables:  # replaced by the other configuration's
        from pipeline.ml import open_table

        table = open_table(out / "tt" / "features.zarr")
        assert table.attrs["provenance"]["config_digest"] == report["config_digest"]
    # the same configuration again: no --force needed
    assert main(["run", str(other), "--no-progress"]) == 0


@pytest.fixture()
def no_flock(monkeypatch):
    """A file system without flock (some parallel file systems): the lock's content is
    the lock."""
    import fcntl

    def unsupported(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", unsupported)


def test_without_flock_the_lock_file_names_the_holder(tmp_path, no_flock):
    folder = tmp_path / "out"
    folder.mkdir()
    lock_file = folder / LOCK_FILE
    alive = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        lock_file.write_text(json.dumps({"pid": alive.pid, "host": socket.gethostname(),
                                         "started": time.time(), "job": "live.yaml"}))
        with pytest.raises(OutputLockedError, match=rf"pid {alive.pid} on host "):
            OutputLock(folder).acquire()
    finally:
        assert alive.stdin is not None
        alive.stdin.close()
        alive.wait(timeout=60)
    # the same process, now dead: its stale lock is taken over
    with OutputLock(folder, "mine.yaml") as lock:
        assert lock.holder()["pid"] == os.getpid()
    assert not lock_file.exists()
    # a lock of another host cannot be checked: refused, saying how to remove it
    lock_file.write_text(json.dumps({"pid": 1, "host": "elsewhere.example", "job": "x"}))
    with pytest.raises(OutputLockedError, match=rf"on host elsewhere\.example.*remove "
                                                rf"{lock_file}"):
        OutputLock(folder).acquire()
