"""Failures and resume, on the demo job with a real LocalCluster: an interrupted run
resumes to identical outputs, a killed worker changes nothing, unreadable files are
reported and skipped or failed as asked, an unreachable scheduler fails within a bound."""

from __future__ import annotations

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
import yaml

from pipeline.cli import main
from pipeline.ml import open_table
from pipeline.samples import find_data_file

CHUNKSIZE = 20  # the 200-event demo file in 10 chunks


def write_job(tmp: Path, name: str, files: list[str] | None = None, workers: int = 1) -> Path:
    """The demo analysis, its dataset ``tt`` reading ``files`` (default: the demo file)."""
    project = Path(__file__).resolve().parent.parent
    config = yaml.safe_load((project / "configs" / "demo.yaml").read_text())
    config["parameters"] = [str(project / "configs" / p) for p in config["parameters"]]
    (spec,) = config["datasets"].values()
    spec["files"] = files or [str(find_data_file("nano_tt_v12.root"))]
    config["datasets"] = {"tt": spec}
    # a few variations are enough here (and keep each chunk short): the full calibrator
    # chain runs, the electron and MET variations and the pileup weight's are carried
    config["variations"] = {"shape": {"common": {"inclusive": [
        "electron_scale_and_smearing", "met_rescaling"]}},
        "weights": {"common": {"inclusive": ["pileup"]}}}
    cfg = tmp / f"{name}.analysis.yaml"
    cfg.write_text(yaml.safe_dump(config))
    job = tmp / f"{name}.job.yaml"
    job.write_text(f"config: {cfg.name}\noutput: {tmp / name}\nchunksize: {CHUNKSIZE}\n"
                   f"workers: {workers}\n")
    return job


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
    while time.time() < deadline and len(list(checkpoints.glob("chunk-*.npy"))) < 3:
        time.sleep(0.1)
    if how == signal.SIGINT:
        proc.send_signal(signal.SIGINT)  # Ctrl-C of the client only
    else:
        os.killpg(proc.pid, signal.SIGKILL)  # the client and its workers die at once
    output, _ = proc.communicate(timeout=120)
    if how == signal.SIGINT:
        assert proc.returncode == 130, output
        assert "rerun the same command to resume" in " ".join(output.split())
    kept = sorted(p.name for p in checkpoints.glob("chunk-*.npy"))
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
        while time.time() < deadline and not list(checkpoints.glob("chunk-*.npy")):
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
    table = open_table(tmp_path / "bad" / "tt" / "features.zarr")
    assert table.attrs["skipped_parts"] == list(range(10, 30))
    reference_table = table_columns(reference)
    for key, values in table_columns(tmp_path / "bad").items():
        np.testing.assert_array_equal(values, reference_table[key], err_msg=key)

    # the finished chunks stay checkpointed: once the files are repaired, a rerun computes
    # only the chunks left out and fills the table's missing parts
    checkpoints = tmp_path / "bad" / "tt" / ".chunks"
    assert len(list(checkpoints.glob("chunk-*.npy"))) == 10
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
