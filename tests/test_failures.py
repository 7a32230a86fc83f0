"""Failures and resume, on the demo job with a real LocalCluster: an interrupted run
resumes to identical outputs, a killed worker changes nothing, unreadable files are
reported and skipped or failed as asked, an unreachable scheduler fails within a bound,
a cluster that fails to close loses no output; errors after planning (a calibrator's, a
missing branch, an output directory that cannot be written, a full disk) are one message
naming what failed, with exit code 2, not retried and losing nothing."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import psutil
import pytest
import uproot
from demo_job import write_job

from pipeline.cli import main
from pipeline.inputs.datafiles import find_data_file
from pipeline.ml import open_table
from pipeline.outputs.merged import load_merged
from pipeline.run.checkpoints import saved_chunks


def histograms(out: Path) -> dict:
    with open(out / "tt" / "histograms.pkl", "rb") as fh:
        return pickle.load(fh)


def assert_same_histograms(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].axes == b[name].axes, name
        va, vb = a[name].view(flow=True), b[name].view(flow=True)
        assert va.tobytes() == vb.tobytes(), name  # bit for bit


def table_columns(out: Path) -> dict[str, np.ndarray]:
    table = open_table(out / "tt" / "features.zarr")
    return {f"{v}/{k}": x for v in [None, *table.variations()]
            for k, x in table.to_numpy(variation=v).items()}


def assert_same_tables(a: Path, b: Path) -> None:
    ta, tb = table_columns(a), table_columns(b)
    assert ta.keys() == tb.keys()
    for key in ta:
        np.testing.assert_array_equal(ta[key], tb[key], err_msg=key)


def report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run on one worker."""
    tmp = tmp_path_factory.mktemp("failures")
    assert main(["run", str(write_job(tmp, "reference")), "--no-progress"]) == 0
    return tmp / "reference"


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "sigkill"])
def test_interrupted_run_resumes_to_identical_outputs(reference, tmp_path, project_root, how):
    job = write_job(tmp_path, "interrupted")
    checkpoints = tmp_path / "interrupted" / "tt" / ".chunks"
    # Ctrl-C's default action, even when the tests run in the background of a shell without
    # job control (which starts them with SIGINT ignored, an ignored signal passing to the
    # run; Python then never raises KeyboardInterrupt)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(job), "--no-progress"],
                            cwd=project_root, start_new_session=True, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while time.time() < deadline and len(saved_chunks(checkpoints)) < 3:
        time.sleep(0.1)
    if how == signal.SIGINT:
        proc.send_signal(signal.SIGINT)  # Ctrl-C of the client only
    else:
        os.killpg(proc.pid, signal.SIGKILL)  # the client and its workers die at once
    output, _ = proc.communicate(timeout=120)
    if how == signal.SIGINT:
        assert proc.returncode == 130, output
        assert "rerun the same command to resume" in " ".join(output.split())
    kept = saved_chunks(checkpoints)
    assert 3 <= len(kept) < 10, kept
    assert not (tmp_path / "interrupted" / "tt" / "histograms.pkl").exists()
    # after Ctrl-C the user asks to start again (--fresh); after the kill, the run resumes
    fresh = how == signal.SIGINT
    assert main(["run", str(job), "--no-progress", *(["--fresh"] if fresh else [])]) == 0
    summary = report(tmp_path / "interrupted")["datasets"]["tt"]
    assert summary["chunks_resumed"] == (0 if fresh else len(kept))
    assert summary["chunks_computed"] == (10 if fresh else 10 - len(kept))
    assert summary["events"] == 200
    assert not checkpoints.exists()  # removed once the outputs are written
    assert_same_histograms(histograms(reference), histograms(tmp_path / "interrupted"))
    assert_same_tables(reference, tmp_path / "interrupted")


def _worker_processes() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True)
            if "spawn_main" in " ".join(p.cmdline())]


def test_killed_worker_changes_nothing(reference, tmp_path):
    """SIGKILL a worker mid-run: its chunks are recomputed elsewhere, outputs identical."""
    job = write_job(tmp_path, "lost", workers=2)
    checkpoints = tmp_path / "lost" / "tt" / ".chunks"
    killed: list[int] = []

    def kill_one() -> None:
        deadline = time.time() + 300
        while time.time() < deadline and not saved_chunks(checkpoints):
            time.sleep(0.05)
        workers = _worker_processes()
        if workers:
            workers[0].kill()
            killed.append(workers[0].pid)

    killer = threading.Thread(target=kill_one)
    killer.start()
    assert main(["run", str(job), "--no-progress"]) == 0
    killer.join()
    assert killed, "no worker process found to kill"
    summary = report(tmp_path / "lost")["datasets"]["tt"]
    assert summary["chunks_computed"] == 10 and summary["chunks_failed"] == []
    assert summary["chunks_retried"], "the killed worker's chunk was not retried"
    assert_same_histograms(histograms(reference), histograms(tmp_path / "lost"))
    assert_same_tables(reference, tmp_path / "lost")


def _corrupt_basket(source: str, target: Path, branch: str = "Jet_pt") -> None:
    """Copy ``source`` and overwrite the compressed payload of one basket of ``branch``."""
    shutil.copy(source, target)
    with uproot.open(source) as handle:
        b = handle["Events"][branch]
        seek = int(b.member("fBasketSeek")[0])
        size = int(b.member("fBasketBytes")[0])
    with open(target, "r+b") as fh:
        fh.seek(seek + size // 2)
        fh.write(bytes(range(256)) * 4)


def test_file_that_cannot_be_opened_is_reported_and_skipped_or_fails(reference, tmp_path,
                                                                     capsys):
    good = str(find_data_file("nano_tt_v12.root"))
    garbage = tmp_path / "garbage.root"
    garbage.write_bytes(b"not a ROOT file\n" * 256)
    job = write_job(tmp_path, "garbage", files=[good, str(garbage)])
    assert main(["run", str(job), "--no-progress"]) == 2  # default: fail, naming the file
    err = capsys.readouterr().err
    assert "garbage.root" in err and "cannot read input file" in err
    failed = report(tmp_path / "garbage")
    assert failed["status"] == "failed" and "garbage.root" in failed["error"]
    assert not (tmp_path / "garbage" / "tt").exists()  # nothing else written

    assert main(["run", str(job), "--no-progress", "--on-bad-file", "skip"]) == 0
    out = capsys.readouterr().out
    assert "skipped" in out and "garbage.root" in out
    done = report(tmp_path / "garbage")
    assert done["status"] == "complete"
    (bad,) = done["files_unreadable"]
    assert bad["file"] == str(garbage) and bad["dataset"] == "tt"
    assert_same_histograms(histograms(reference), histograms(tmp_path / "garbage"))


def test_unreadable_chunks_are_reported_and_skipped_or_fail(reference, tmp_path, capsys):
    """A truncated copy (opens, its baskets are gone) and a copy with a corrupted basket."""
    good = str(find_data_file("nano_tt_v12.root"))
    truncated = tmp_path / "truncated.root"
    truncated.write_bytes(Path(good).read_bytes()[: Path(good).stat().st_size // 2])
    corrupted = tmp_path / "corrupted.root"
    _corrupt_basket(good, corrupted)
    job = write_job(tmp_path, "bad", files=[good, str(truncated), str(corrupted)])
    assert main(["run", str(job), "--no-progress", "--retries", "0"]) == 2
    err = capsys.readouterr().err
    assert "unreadable input" in err and "entries [" in err and "--on-bad-file skip" in err
    failed = report(tmp_path / "bad")
    assert failed["status"] == "failed"
    assert failed["chunks_failed"][0]["file"] in (str(truncated), str(corrupted))
    assert not (tmp_path / "bad" / "tt" / "histograms.pkl").exists()

    assert main(["run", str(job), "--no-progress", "--on-bad-file", "skip",
                 "--retries", "1"]) == 0
    out = capsys.readouterr().out
    assert "left out" in out and "truncated.root" in out and "corrupted.root" in out
    summary = report(tmp_path / "bad")["datasets"]["tt"]
    failures = {f["chunk"]: f for f in summary["chunks_failed"]}
    assert sorted(failures) == list(range(10, 30))  # every chunk of the two bad copies
    assert {f["file"] for f in failures.values()} == {str(truncated), str(corrupted)}
    assert all(f["attempts"] == 2 and f["unreadable_input"] for f in failures.values())
    assert {f["chunk"] for f in summary["chunks_retried"]} >= set(failures)
    assert summary["events"] == 200  # the good file's events only
    assert_same_histograms(histograms(reference), histograms(tmp_path / "bad"))
    # the merged result is normalised to the events processed, and says so
    results = report(tmp_path / "bad")["results"]
    assert any("'tt': 20 chunk(s) left out" in note for note in results["notes"])
    assert "20 chunk(s) left out" in out
    merged = load_merged(tmp_path / "bad")
    scale = 98.04 * 1000 * 7.9804 / summary["sum_genweights"]  # xsec x lumi / sum of weights
    np.testing.assert_allclose(merged.histograms["jet_pt"][{"process": "ttbar"}].values(),
                               scale * histograms(reference)["jet_pt"].values(), rtol=1e-12)
    table = open_table(tmp_path / "bad" / "tt" / "features.zarr")
    assert table.attrs["skipped_parts"] == list(range(10, 30))
    reference_table = table_columns(reference)
    for key, values in table_columns(tmp_path / "bad").items():
        np.testing.assert_array_equal(values, reference_table[key], err_msg=key)

    # the finished chunks stay checkpointed: once the files are repaired, a rerun computes
    # only the chunks left out and fills the table's missing parts
    checkpoints = tmp_path / "bad" / "tt" / ".chunks"
    assert len(saved_chunks(checkpoints)) == 10
    for copy in (truncated, corrupted):
        shutil.copy(good, copy)
    assert main(["run", str(job), "--no-progress"]) == 0
    summary = report(tmp_path / "bad")["datasets"]["tt"]
    assert (summary["chunks_resumed"], summary["chunks_computed"]) == (10, 20)
    assert summary["chunks_failed"] == [] and summary["events"] == 600
    table = open_table(tmp_path / "bad" / "tt" / "features.zarr")
    assert table.attrs["skipped_parts"] == [] and table.rows == 3 * len(reference_table[
        "None/event"])
    cutflow = histograms(tmp_path / "bad")["cutflow"][:, "events"].values()
    np.testing.assert_array_equal(cutflow,
                                  3 * histograms(reference)["cutflow"][:, "events"].values())
    np.testing.assert_allclose(histograms(tmp_path / "bad")["jet_pt"].values(flow=True),
                               3 * histograms(reference)["jet_pt"].values(flow=True),
                               rtol=1e-12)


def test_unreachable_scheduler_fails_within_the_timeout(tmp_path, capsys):
    job = write_job(tmp_path, "unreachable")
    start = time.perf_counter()
    code = main(["run", str(job), "--no-progress", "--site", "scheduler",
                 "-o", "address=tcp://127.0.0.1:9", "-o", "connect_timeout=3"])
    elapsed = time.perf_counter() - start
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in err
    assert "connect_timeout" in err
    assert elapsed < 60  # the graphs are built first; the connection gives up after 3 s


def test_dashboard_performance_report_and_bytes_read(tmp_path):
    """Fetch the dashboard from the running scheduler during a run; the run saves Dask's
    performance report and reports the bytes it read."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    job = write_job(tmp_path, "dashboard")
    seen: dict[str, str] = {}

    def fetch() -> None:
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    text = r.read().decode()
                if 'task_prefix_name="calibrew-chunk-tt"' in text:
                    seen["metrics"] = text
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status",
                                                timeout=5) as r:
                        seen["status"] = r.read().decode()
                    return
            except OSError:
                pass
            time.sleep(0.2)

    watcher = threading.Thread(target=fetch)
    watcher.start()
    html = tmp_path / "perf.html"
    assert main(["run", str(job), "--no-progress", "-o", f"dashboard_address=127.0.0.1:{port}",
                 "--performance-report", str(html)]) == 0
    watcher.join()
    assert "metrics" in seen, "the dashboard never listed the run's chunk tasks"
    assert "dask_scheduler_tasks" in seen["metrics"]
    assert "Dask" in seen["status"] or "bokeh" in seen["status"].lower()
    assert html.exists() and "calibrew-chunk" in html.read_text(errors="replace")

    summary = report(tmp_path / "dashboard")["datasets"]["tt"]
    assert summary["events_per_s"] > 0
    # bytes read: the compressed baskets of the branches the graph reads; the file has one
    # basket per branch, so each of the 10 chunks fetches all of them
    with uproot.open(find_data_file("nano_tt_v12.root")) as handle:
        one_pass = sum(handle["Events"][b].compressed_bytes for b in summary["columns_read"])
    assert {"Jet_pt", "Electron_pt", "PuppiMET_pt", "genWeight"} <= set(summary["columns_read"])
    assert summary["bytes_read"] == 10 * one_pass
    assert summary["bytes_per_event"] == summary["bytes_read"] / 200


def test_a_cluster_that_fails_to_close_loses_no_output(reference, tmp_path, monkeypatch,
                                                       capsys):
    """Under load, closing the LocalCluster timed out (distributed's nanny join) after every
    chunk was computed: the outputs are written before the cluster closes, and a close that
    fails is a warning."""
    from pipeline import sites

    close = sites.Session.close

    def close_timing_out(self):
        close(self)  # the cluster does close (no process is left behind by the test)...
        raise TimeoutError("nanny join timed out")  # ...but reports as under load

    monkeypatch.setattr(sites.Session, "close", close_timing_out)
    job = write_job(tmp_path, "closing")
    assert main(["run", str(job), "--no-progress"]) == 0
    captured = capsys.readouterr()
    text = " ".join((captured.out + captured.err).split())
    assert "warning" in text and "TimeoutError: nanny join timed out" in text
    assert "Traceback" not in text
    done = report(tmp_path / "closing")
    assert done["status"] == "complete"
    for path in done["outputs"]:
        assert Path(path).exists(), path
    assert (tmp_path / "closing" / "tt" / "summary.json").exists()
    assert_same_histograms(histograms(reference), histograms(tmp_path / "closing"))
    assert_same_tables(reference, tmp_path / "closing")


def _user_module(tmp_path: Path, monkeypatch, name: str, source: str) -> None:
    """A user's module, importable by the client and by the workers (PYTHONPATH)."""
    folder = tmp_path / "user_modules"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(folder), os.environ.get("PYTHONPATH")) if p))


RAISING_CALIBRATOR = """
import os

import awkward as ak

from pipeline.calibration import Calibrator


class RaisesOnData(Calibrator):
    name = "test_raises_on_data"
    has_variations = False
    calibrated_collections = ["Jet.pt"]

    def initialize(self, events):
        self._variations = []

    def calibrate(self, events, orig, variation, already_applied_calibrators=None):
        pt = events.Jet.pt
        if ak.backend(pt) != "typetracer":  # planning passes, every chunk fails
            with open(os.environ["CALIBREW_TEST_CALLS"], "a") as log:
                log.write(f"{int(events.event[0])}\\n")
            raise ValueError("no scale for this run")
        return {"Jet.pt": pt}
"""


def test_a_calibrator_that_raises_is_named_and_not_retried(tmp_path, monkeypatch, capsys):
    _user_module(tmp_path, monkeypatch, "raising_calibrator", RAISING_CALIBRATOR)
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("CALIBREW_TEST_CALLS", str(calls))
    job = write_job(tmp_path, "raising",
                    calibrators=["default", "raising_calibrator:RaisesOnData"])
    assert main(["run", str(job), "--no-progress", "--retries", "2"]) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert "Traceback" not in captured.out + err
    assert "calibrator 'test_raises_on_data' failed in calibrate() of variation 'nominal': " \
           "ValueError: no scale for this run (raised at raising_calibrator.py:" in err
    tt = find_data_file("nano_tt_v12.root").resolve()  # messages name resolved paths
    assert f"dataset 'tt', file {tt}, entries [" in err
    failed = report(tmp_path / "raising")
    assert failed["status"] == "failed" and "test_raises_on_data" in failed["error"]
    (chunk,) = failed["chunks_failed"]
    assert chunk["attempts"] == 1 and not chunk["unreadable_input"]
    # a deterministic error is not computed again: no chunk entered the calibrator twice
    # (with --retries 2, each would have been tried three times)
    starts = calls.read_text().split()
    assert starts and len(starts) == len(set(starts)), starts


INIT_RAISING_CALIBRATOR = """
from pipeline.calibration import Calibrator


class RaisesInInitialize(Calibrator):
    name = "test_raises_in_initialize"
    has_variations = False
    calibrated_collections = ["Jet.pt"]

    def initialize(self, events):
        table = {"2018": 1.0}
        self.scale = table[self.year]

    def calibrate(self, events, orig, variation, already_applied_calibrators=None):
        return {"Jet.pt": events.Jet.pt * self.scale}
"""


def test_errors_found_while_planning_name_calibrator_column_dataset_and_file(
        tmp_path, monkeypatch, capsys):
    """A branch a built-in calibrator needs is missing from the file (nano_dy.root has no
    FatJet_genJetAK8Idx); a user calibrator raises in initialize(). Nothing is written."""
    dy = str(find_data_file("nano_dy.root").resolve())  # messages name resolved paths
    job = write_job(tmp_path, "dy", files=[dy])
    assert main(["run", str(job), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "calibrator 'jet_calibration'" in err and "FatJet_genJetAK8Idx" in err
    assert f"dataset 'tt', file {dy}" in err
    assert not (tmp_path / "dy").exists()  # nothing written, not even the directory

    _user_module(tmp_path, monkeypatch, "init_raising_calibrator", INIT_RAISING_CALIBRATOR)
    job = write_job(tmp_path, "init", calibrators=[
        "default", "init_raising_calibrator:RaisesInInitialize"])
    assert main(["run", str(job), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "calibrator 'test_raises_in_initialize' failed in initialize(): KeyError: " \
           "'2022_preEE' (raised at init_raising_calibrator.py:" in err
    assert "dataset 'tt', file " + str(find_data_file("nano_tt_v12.root").resolve()) in err
    assert not (tmp_path / "init").exists()


@contextlib.contextmanager
def _read_only_directory(folder: Path, monkeypatch):
    """A directory that cannot be written: by its mode, or (root ignores modes) a
    read-only tmpfs mounted on it; where root cannot mount, writing is refused by the
    kernel's own error raised from os.open for paths below it."""
    folder.mkdir()
    folder.chmod(0o555)
    try:
        (folder / "probe").touch()
    except PermissionError:
        try:
            yield folder  # an ordinary user: the mode is enough
        finally:
            folder.chmod(0o755)
        return
    (folder / "probe").unlink()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                      capture_output=True).returncode == 0:
        try:
            yield folder
        finally:
            subprocess.run(["umount", str(folder)], check=True)
        return
    real_open = os.open

    def refusing(path, *args, **kwargs):
        if str(path).startswith(str(folder) + os.sep):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(os, "open", refusing)
        yield folder


def test_an_output_directory_that_cannot_be_written_is_named(tmp_path, monkeypatch, capsys):
    job = write_job(tmp_path, "unwritable")
    a_file = tmp_path / "a_file"
    a_file.write_text("the user's file\n")
    assert main(["run", str(job), "--no-progress", "--output", str(a_file)]) == 2
    err = capsys.readouterr().err
    assert f"output directory {a_file} is a file" in err and "Traceback" not in err
    assert main(["run", str(job), "--no-progress", "--output", str(a_file / "out")]) == 2
    err = capsys.readouterr().err
    assert f"cannot create output directory {a_file / 'out'}" in err
    assert "Traceback" not in err
    assert a_file.read_text() == "the user's file\n"  # left as it was

    with _read_only_directory(tmp_path / "read_only", monkeypatch) as folder:
        assert main(["run", str(job), "--no-progress", "--output", str(folder)]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert f"cannot write into output directory {folder}" in err
        assert "Traceback" not in err


def test_a_full_disk_is_named_and_loses_no_computed_chunk(reference, tmp_path, monkeypatch,
                                                          capsys):
    """The disk fills up as the outputs are written (simulated: writing the dataset's
    histograms raises ENOSPC as the kernel would): the file is named, the computed chunks
    are kept, and a rerun once there is space writes the outputs without computing again."""
    write_bytes = Path.write_bytes

    def full_disk(path, data):
        if path.name.startswith(".histograms.pkl"):  # its temporary file (atomic_path)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return write_bytes(path, data)

    job = write_job(tmp_path, "full")
    with monkeypatch.context() as patch:
        patch.setattr(Path, "write_bytes", full_disk)
        assert main(["run", str(job), "--no-progress"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "Traceback" not in err
    assert f"cannot write {tmp_path / 'full' / 'tt' / 'histograms.pkl'}" in err
    assert "No space left on device" in err and "rerun the same command" in err
    checkpoints = tmp_path / "full" / "tt" / ".chunks"
    assert len(saved_chunks(checkpoints)) == 10  # nothing computed is lost
    assert report(tmp_path / "full")["status"] == "failed"

    assert main(["run", str(job), "--no-progress"]) == 0
    summary = report(tmp_path / "full")["datasets"]["tt"]
    assert (summary["chunks_resumed"], summary["chunks_computed"]) == (10, 0)
    assert_same_histograms(histograms(reference), histograms(tmp_path / "full"))
    assert_same_tables(reference, tmp_path / "full")
