"""The demo analysis as a small job for the tests that run ``calibrew run``.

The full calibrator chain runs; only the electron and MET variations and the pileup weight's
are carried, which keeps each chunk short.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeline.inputs.datafiles import find_data_file

PROJECT = Path(__file__).resolve().parent.parent


def write_job(tmp: Path, name: str, files: list[str] | None = None, workers: int = 1,
              calibrators: list[str] | None = None, chunksize: int = 20,  # 10 chunks
              job_keys: str = "") -> Path:
    """Write ``<name>.analysis.yaml`` and ``<name>.job.yaml`` into ``tmp``; the job's output
    is ``tmp / name``. The dataset ``tt`` reads ``files`` (default: the demo file) with the
    calibrator sequence ``calibrators`` (default: the demo's); ``job_keys`` are further
    lines of the job file."""
    config = yaml.safe_load((PROJECT / "configs" / "demo.yaml").read_text())
    config["parameters"] = [str(PROJECT / "configs" / p) for p in config["parameters"]]
    if calibrators is not None:
        config["calibrators"] = calibrators
    (spec,) = config["datasets"].values()
    spec["files"] = files or [str(find_data_file("nano_tt_v12.root"))]
    config["datasets"] = {"tt": spec}
    config["variations"] = {"shape": {"common": {"inclusive": [
        "electron_scale_and_smearing", "met_rescaling"]}},
        "weights": {"common": {"inclusive": ["pileup"]}}}
    cfg = tmp / f"{name}.analysis.yaml"
    cfg.write_text(yaml.safe_dump(config))
    job = tmp / f"{name}.job.yaml"
    job.write_text(f"config: {cfg.name}\noutput: {tmp / name}\nchunksize: {chunksize}\n"
                   f"workers: {workers}\n{job_keys}")
    return job
