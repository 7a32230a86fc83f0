"""Remote input against a real XRootD server (cluster/xrootd-local.sh on 127.0.0.1): a run
over ``root://`` URLs equals the local run bit for bit; folders and globs, local and
remote; coffea fileset JSON datasets; an unreachable server is retried then named."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import demo_job
import numpy as np
import pytest
import uproot
import yaml

from pipeline.cli import main
from pipeline.config.models import AnalysisConfig, DatasetSpec, JobSpec, RemoteSpec, validate
from pipeline.errors import ConfigError, InputFileError
from pipeline.inputs.datasets import Dataset, count_entries, preprocess, resolve_files
from pipeline.inputs.filesets import dataset_from_spec, fileset_files
from pipeline.inputs.remote import xrootd_environment
from pipeline.ml import open_table
from pipeline.run.checkpoints import saved_chunks

METADATA = {"sample": "TTbar", "year": "2022_preEE", "isMC": True}
TT = "nano_tt_v12.root"


def write_job(tmp: Path, name: str, files: list[str], chunksize: int = 50) -> Path:
    """The demo job of tests/demo_job.py over ``files``, with short remote timeouts."""
    return demo_job.write_job(tmp, name, files, chunksize=chunksize,
                              job_keys="remote: {timeout_s: 10, retries: 1}\n")


def histogram_bytes(out: Path) -> dict[str, bytes]:
    with open(out / "tt" / "histograms.pkl", "rb") as fh:
        histograms = pickle.load(fh)
    return {name: h.view(flow=True).tobytes() for name, h in histograms.items()}


def table_columns(out: Path) -> dict[str, np.ndarray]:
    table = open_table(out / "tt" / "features.zarr")
    return {f"{v}/{k}": x for v in [None, *table.variations()]
            for k, x in table.to_numpy(variation=v).items()}


def test_server_serves_the_sample_files(xrootd_server, tt_file):
    with uproot.open(f"{xrootd_server}/{TT}") as remote, uproot.open(tt_file) as local:
        assert remote.file.uuid == local.file.uuid
        np.testing.assert_array_equal(remote["Events"]["genWeight"].array(library="np"),
                                      local["Events"]["genWeight"].array(library="np"))


@pytest.mark.slow
def test_run_over_xrootd_equals_the_local_run(xrootd_server, tt_file, tmp_path):
    local, remote = tmp_path / "local", tmp_path / "remote"
    assert main(["run", str(write_job(tmp_path, "local", [tt_file])), "--no-progress"]) == 0
    assert main(["run", str(write_job(tmp_path, "remote", [f"{xrootd_server}/{TT}"])),
                 "--no-progress"]) == 0
    report = json.loads((remote / "report.json").read_text())
    assert report["datasets"]["tt"]["files"] == [f"{xrootd_server}/{TT}"]
    assert report["datasets"]["tt"]["chunks"] == 4
    a, b = histogram_bytes(local), histogram_bytes(remote)
    assert a.keys() == b.keys() and "jet_pt" in a
    for name in a:
        assert a[name] == b[name], name  # bit for bit
    ta, tb = table_columns(local), table_columns(remote)
    assert ta.keys() == tb.keys()
    for key in ta:
        np.testing.assert_array_equal(ta[key], tb[key], err_msg=key)


def test_remote_folder_and_glob(xrootd_server):
    everything = resolve_files([f"{xrootd_server}/"])
    assert everything == sorted(everything)
    assert {f"{xrootd_server}/{TT}", f"{xrootd_server}/nano_dimuon.root"} <= set(everything)
    assert all(f.endswith(".root") for f in everything)
    assert resolve_files([f"{xrootd_server}/nano_tt_*.root"]) == [f"{xrootd_server}/{TT}"]
    # an explicit file listed again after a glob that matched it is read once
    assert resolve_files([f"{xrootd_server}/nano_tt*", f"{xrootd_server}/{TT}"]) == [
        f"{xrootd_server}/{TT}"]
    with pytest.raises(InputFileError, match=r"datasets\.tt\.files\[0\].*matches no file"):
        resolve_files([f"{xrootd_server}/nothing_*.root"], dataset="tt")
    with pytest.raises(InputFileError, match="only be in the file name"):
        resolve_files([f"{xrootd_server}/*/nano_tt_v12.root"])


def test_local_folder_and_glob(tmp_path, tt_file, data_file):
    (tmp_path / "sub").mkdir()
    for name, source in [("b.root", tt_file), ("a.root", data_file), ("sub/c.root", tt_file)]:
        (tmp_path / name).write_bytes(Path(source).read_bytes())
    (tmp_path / "notes.txt").write_text("not a ROOT file")
    assert resolve_files([f"{tmp_path}/"]) == [str(tmp_path / "a.root"),
                                                str(tmp_path / "b.root")]
    # relative to the config's folder; recursive globs are not expanded by '*'
    assert resolve_files(["*/*.root", "b.*"], base=tmp_path) == [
        str(tmp_path / "sub" / "c.root"), str(tmp_path / "b.root")]
    with pytest.raises(InputFileError, match=r"datasets\.tt\.files\[1\]\): 'x\*\.root' matches"):
        resolve_files(["a.root", "x*.root"], base=tmp_path, dataset="tt")
    with pytest.raises(InputFileError, match="matches no file .a folder gives its .root"):
        resolve_files([f"{tmp_path / 'sub' / 'empty'}/"])


def test_remote_entries_are_counted_once_and_cached(xrootd_server, monkeypatch):
    url = f"{xrootd_server}/{TT}"
    ds = preprocess(Dataset("tt", [url], {}), chunksize=50)
    assert [(c.start, c.stop) for c in ds.chunks] == [(0, 50), (50, 100), (100, 150),
                                                      (150, 200)]
    import pipeline.inputs.scanning as module

    def fail(*args, **kwargs):
        raise AssertionError("file was opened again")

    monkeypatch.setattr(module.uproot, "open", fail)
    assert count_entries(url) == 200  # keyed by URL, size and the server's mtime


def test_unreachable_server_is_retried_then_named(tmp_path):
    url = "root://127.0.0.1:1//store/nano_tt_v12.root"  # nothing listens on port 1
    remote = RemoteSpec(timeout_s=2, retries=2)
    with pytest.raises(InputFileError, match=r"root://127\.0\.0\.1:1//store/nano_tt_v12\.root "
                       r"\(3 attempt\(s\), timeout 2 s\)"):
        count_entries(url, remote=remote)
    with pytest.raises(InputFileError, match="root://127.0.0.1:1//store/ .3 attempt"):
        resolve_files(["root://127.0.0.1:1//store/"], remote=remote)


def test_missing_remote_file_is_named(xrootd_server):
    url = f"{xrootd_server}/nope.root"
    with pytest.raises(InputFileError, match=f"cannot read remote file {url} .*no such file"):
        count_entries(url, remote=RemoteSpec(retries=0))


def coffea_fileset(tmp_path: Path, xrootd_server: str, tt_file: str) -> Path:
    """A fileset in coffea's dataset_tools format: a local relative file, a remote one with
    preprocessed steps, a remote glob; and a second dataset."""
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "tt_local.root").write_bytes(Path(tt_file).read_bytes())
    fileset = {
        "TTbar": {
            "files": {
                "samples/tt_local.root": "Events",
                f"{xrootd_server}/{TT}": {"object_path": "Events", "steps": [[0, 100],
                                                                             [100, 200]],
                                           "num_entries": 200, "uuid": "x"},
                f"{xrootd_server}/nano_tt*.root": "Events",
            },
            "metadata": {"is_mc": True},
            "form": None,
        },
        "DoubleMuon": {"files": {f"{xrootd_server}/nano_dimuon.root": "Events"}},
    }
    path = tmp_path / "fileset.json"
    path.write_text(json.dumps(fileset))
    return path


def test_coffea_fileset_as_a_dataset_source(tmp_path, xrootd_server, tt_file):
    coffea_fileset(tmp_path, xrootd_server, tt_file)
    spec = DatasetSpec.model_validate({"fileset": "fileset.json#TTbar", "metadata": METADATA})
    ds = preprocess(dataset_from_spec("tt", spec, tmp_path, RemoteSpec(retries=0)), 100)
    local = str((tmp_path / "samples" / "tt_local.root").resolve())
    assert ds.files == [local, f"{xrootd_server}/{TT}"]  # the glob adds nothing new
    assert ds.tree == "Events" and ds.entries == 400 and len(ds.chunks) == 4
    assert ds.metadata["dataset"] == "tt" and ds.metadata["sample"] == "TTbar"
    # without '#entry', the entry named like the config's dataset
    spec = DatasetSpec.model_validate({"fileset": "fileset.json", "metadata": METADATA})
    assert dataset_from_spec("DoubleMuon", spec, tmp_path).files == [
        f"{xrootd_server}/nano_dimuon.root"]


def test_fileset_errors_name_the_json_and_entry(tmp_path):
    path = tmp_path / "fs.json"
    with pytest.raises(InputFileError, match=f"dataset 'tt': fileset {path} not found"):
        fileset_files("fs.json", "tt", tmp_path)
    path.write_text("{not json")
    with pytest.raises(InputFileError, match="fs.json cannot be read"):
        fileset_files("fs.json", "tt", tmp_path)
    path.write_text(json.dumps({"a": {"files": {"x.root": "Events"}}, "b": {"files": {}}}))
    with pytest.raises(InputFileError, match=r"entry 'tt' not found \(entries: a, b\)"):
        fileset_files("fs.json", "tt", tmp_path)
    with pytest.raises(InputFileError, match="entry 'b' has no 'files' mapping"):
        fileset_files("fs.json#b", "tt", tmp_path)
    path.write_text(json.dumps({"tt": {"files": {"x.root": "Events", "y.root": "Runs"}}}))
    with pytest.raises(InputFileError, match="reads several trees .Events, Runs."):
        fileset_files("fs.json", "tt", tmp_path)
    path.write_text(json.dumps({"tt": {"files": {"x.root": {"steps": [[0, 1]]}}}}))
    with pytest.raises(InputFileError, match="file x.root: no tree"):
        fileset_files("fs.json", "tt", tmp_path)


def test_config_keys(tmp_path):
    with pytest.raises(ValueError, match="either 'files'"):
        DatasetSpec.model_validate({"files": ["a.root"], "fileset": "f.json",
                                    "metadata": METADATA})
    with pytest.raises(ValueError, match="either 'files'"):
        DatasetSpec.model_validate({"metadata": METADATA})
    # a dataset without a fileset dumps (and so digests) as before the key existed
    cfg = AnalysisConfig.model_validate({"datasets": {"tt": {"files": ["a.root"],
                                                             "metadata": METADATA}}})
    assert "fileset" not in cfg.model_dump()["datasets"]["tt"]
    job = JobSpec.model_validate({"config": "c.yaml", "output": "out"})
    assert job.remote == RemoteSpec(timeout_s=30, retries=3)
    with pytest.raises(ConfigError, match=r"remote\.timeout_s"):
        validate(JobSpec, {"config": "c.yaml", "output": "o", "remote": {"timeout_s": 0}},
                 "job.yaml")


@pytest.mark.slow
def test_server_stopped_mid_run_is_named_then_the_rerun_resumes(xrootd_server, tt_file,
                                                                 tmp_path, project_root):
    """The server goes away after a few chunks: the run fails naming the remote file (after
    the job's chunk retries); the server back, the rerun resumes the checkpointed chunks and
    the outputs equal an uninterrupted local run's bit for bit."""
    local = write_job(tmp_path, "local", [tt_file], chunksize=20)
    job = write_job(tmp_path, "remote", [f"{xrootd_server}/{TT}"], chunksize=20)
    checkpoints = tmp_path / "remote" / "tt" / ".chunks"
    script = ["bash", str(project_root / "cluster" / "xrootd-local.sh")]
    # the workers' XRootD client: connect once and give up after the job's timeout (its
    # defaults wait up to 5 x 120 s for a server that is down)
    env = {**os.environ, **xrootd_environment(RemoteSpec(timeout_s=10))}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(job), "--no-progress",
                             "--retries", "1"], cwd=project_root, text=True, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and len(saved_chunks(checkpoints)) < 2:
            time.sleep(0.05)
        subprocess.run([*script, "stop"], check=True, capture_output=True, timeout=120)
        output, _ = proc.communicate(timeout=600)
    finally:
        proc.kill()
        started = subprocess.run([*script, "start"], capture_output=True, text=True, timeout=300)
        assert started.returncode == 0, started.stdout + started.stderr
    assert proc.returncode == 2, output
    assert f"{xrootd_server}/{TT}" in " ".join(output.split())
    failed = json.loads((tmp_path / "remote" / "report.json").read_text())
    assert failed["status"] == "failed"
    assert {f["file"] for f in failed["chunks_failed"]} == {f"{xrootd_server}/{TT}"}
    kept = len(saved_chunks(checkpoints))
    assert 2 <= kept < 10

    assert main(["run", str(local), "--no-progress"]) == 0
    assert main(["run", str(job), "--no-progress"]) == 0
    summary = json.loads((tmp_path / "remote" / "report.json").read_text())["datasets"]["tt"]
    assert (summary["chunks_resumed"], summary["chunks_computed"]) == (kept, 10 - kept)
    assert histogram_bytes(tmp_path / "local") == histogram_bytes(tmp_path / "remote")
    ta, tb = table_columns(tmp_path / "local"), table_columns(tmp_path / "remote")
    assert ta.keys() == tb.keys()
    for key in ta:
        np.testing.assert_array_equal(ta[key], tb[key], err_msg=key)



@pytest.mark.slow
def test_run_over_a_fileset_equals_the_local_run(xrootd_server, tt_file, tmp_path):
    """A job whose dataset is an entry of a coffea fileset JSON (one remote file) gives the
    histograms of the same file listed locally."""
    (tmp_path / "fileset.json").write_text(json.dumps(
        {"ttbar": {"files": {f"{xrootd_server}/{TT}": "Events"}}}))
    local = write_job(tmp_path, "local", [tt_file])
    job = write_job(tmp_path, "fileset", [tt_file])
    config = tmp_path / "fileset.analysis.yaml"
    analysis = yaml.safe_load(config.read_text())
    del analysis["datasets"]["tt"]["files"]
    analysis["datasets"]["tt"]["fileset"] = "fileset.json#ttbar"
    config.write_text(yaml.safe_dump(analysis))
    assert main(["run", str(local), "--no-progress"]) == 0
    assert main(["run", str(job), "--no-progress"]) == 0
    report = json.loads((tmp_path / "fileset" / "report.json").read_text())
    assert report["datasets"]["tt"]["files"] == [f"{xrootd_server}/{TT}"]
    assert histogram_bytes(tmp_path / "local") == histogram_bytes(tmp_path / "fileset")
