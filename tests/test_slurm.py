"""The demo job on a real one-node SLURM cluster (cluster/slurm-local.sh) through
dask-jobqueue: its histograms and feature table equal the local run's, bit for bit."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.ml import open_table


def outputs(out, dataset):
    with open(out / dataset / "histograms.pkl", "rb") as fh:
        histograms = pickle.load(fh)
    table = open_table(out / dataset / "features.zarr")
    columns = {f"{v}/{k}": x for v in [None, *table.variations()]
               for k, x in table.to_numpy(variation=v).items()}
    columns["jets"], columns["jets_mask"] = table.padded("jets")
    return histograms, columns


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, project_root):
    out = tmp_path_factory.mktemp("slurm") / "local"
    assert main(["run", str(project_root / "jobs" / "demo.yaml"), "--output", str(out),
                 "--workers", "2", "--no-progress"]) == 0
    return out


def test_demo_on_slurm_equals_the_local_run(slurm_cluster, local_run, tmp_path, project_root,
                                           capsys):
    logs = tmp_path / "logs"
    out = tmp_path / "slurm"
    assert main(["run", str(project_root / "jobs" / "demo.yaml"), "--output", str(out),
                 "--site", "slurm", "--workers", "2", "-o", f"queue={slurm_cluster}",
                 "-o", f"log_directory={logs}", "--no-progress"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "site slurm (slurm): 2 job(s) of 1 core(s)" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["site"]["type"] == "slurm"
    (dataset,) = report["datasets"]
    assert report["datasets"][dataset]["chunks_computed"] == 4
    # the workers ran in SLURM jobs: each job's log shows its worker joining the scheduler
    joined = [p for p in logs.glob("*.err") if "Registered to" in p.read_text()]
    assert joined, f"no SLURM worker log in {logs}: {list(logs.iterdir())}"

    local_hists, local_columns = outputs(local_run, dataset)
    slurm_hists, slurm_columns = outputs(out, dataset)
    assert local_hists.keys() == slurm_hists.keys()
    for name, h in local_hists.items():
        assert h.view(flow=True).tobytes() == slurm_hists[name].view(flow=True).tobytes(), name
    assert local_columns.keys() == slurm_columns.keys()
    for key, values in local_columns.items():
        np.testing.assert_array_equal(values, slurm_columns[key], err_msg=key)
