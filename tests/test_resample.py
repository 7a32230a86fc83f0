"""A job's ``resample:``: its datasets' files resampled into larger files, made once."""

from __future__ import annotations

import os

import numpy as np
import pytest
import uproot
from rich.console import Console

from pipeline.analysis.loading import load_job
from pipeline.config.models import ResampleSpec
from pipeline.errors import ConfigError
from pipeline.inputs.datasets import Dataset
from pipeline.run.resample import resample_datasets
from pipeline.run.runner import make_datasets

KEEP = ["Jet_*", "GenJet*", "Rho_*", "genWeight"]


def demo_datasets(project_root, spec: ResampleSpec | None) -> list[Dataset]:
    _, cfg = load_job(project_root / "jobs" / "demo.yaml")
    return make_datasets(cfg, "all", project_root / "configs", 400,
                         resample=None if spec is None else (spec, "jobs/demo.yaml"))


def test_datasets_are_resampled_once(project_root):
    spec = ResampleSpec(events=1000, keep=KEEP)
    (dataset,) = demo_datasets(project_root, spec)
    (path,) = dataset.files
    assert "samples" in path and dataset.entries == 1000
    assert sum(c.entries for c in dataset.chunks) == 1000 and len(dataset.chunks) == 3
    with uproot.open(path) as f:
        tree = f["Events"]
        assert tree.num_entries == 1000
        assert not [k for k in tree.keys() if k.startswith(("Electron", "Muon"))]
        assert len(np.unique(tree["event"].array(library="np"))) == 1000
    made = os.stat(path).st_mtime_ns
    (again,) = demo_datasets(project_root, spec)
    assert again.files == dataset.files and os.stat(path).st_mtime_ns == made  # reused
    (other,) = demo_datasets(project_root, ResampleSpec(events=1000, seed=2, keep=KEEP))
    assert other.files != dataset.files


def test_remote_and_parquet_files_are_refused():
    for file in ("root://localhost//store/tt.root", "/data/events.parquet"):
        dataset = Dataset("remote", [file], {})
        with pytest.raises(ConfigError, match=r"resample.*only local NanoAOD"):
            resample_datasets([dataset], ResampleSpec(events=10), "job.yaml", Console())


def test_the_job_key_is_checked(tmp_path, project_root):
    job = tmp_path / "job.yaml"
    job.write_text(f"config: {project_root / 'configs' / 'demo.yaml'}\noutput: out\n"
                   "resample: {events: 0}\n")
    with pytest.raises(ConfigError, match="resample.events"):
        load_job(job)
