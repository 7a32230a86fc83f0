"""Every analysis config, job and parameter file shipped in configs/ and jobs/ loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.analysis.loading import calibrator_classes, load_config, load_job, load_parameters

ROOT = Path(__file__).resolve().parent.parent
JOBS = sorted((ROOT / "jobs").glob("*.yaml"))
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if "params" not in p.parts)
PARAMS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if "params" in p.parts)


def test_something_is_shipped():
    assert JOBS and CONFIGS and PARAMS


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_job_loads_with_its_parameters(path):
    job, cfg = load_job(path)
    params = load_parameters([*cfg.parameters, *job.parameters], calibrator_classes(cfg))
    for file in [*cfg.parameters, *job.parameters]:
        assert set(yaml.safe_load(Path(file).read_text())) <= set(params)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads(path):
    cfg = load_config(path)
    assert calibrator_classes(cfg) is not None


@pytest.mark.parametrize("path", PARAMS, ids=lambda p: p.name)
def test_parameter_file_loads(path):
    params = load_parameters([path])
    assert set(yaml.safe_load(path.read_text())) <= set(params)
