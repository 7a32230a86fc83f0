"""The demo analysis as a small job for the tests that run ``calibrew run``.

The full calibrator chain runs; only the electron and MET variations and the pileup weight's
are carried, which keeps each chunk short.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeline.inputs.datafiles import find_data_file

PROJECT = Path(__file__).resolve().parent.parent


def with_datasets(config: dict, datasets: dict) -> dict:
    """The demo config (as a dict) with ``datasets`` in place of its one, all of them in its
    ttbar process."""
    config["datasets"] = datasets
    config["processes"]["ttbar"]["datasets"] = list(datasets)
    return config


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
    with_datasets(config, {"tt": spec})
    config["variations"] = {"shape": {"common": {"inclusive": [
        "electron_scale_and_smearing", "met_rescaling"]}},
        "weights": {"common": {"inclusive": ["pileup"]}}}
    cfg = tmp / f"{name}.analysis.yaml"
    cfg.write_text(yaml.safe_dump(config))
    job = tmp / f"{name}.job.yaml"
    job.write_text(f"config: {cfg.name}\noutput: {tmp / name}\nchunksize: {chunksize}\n"
                   f"workers: {workers}\n{job_keys}")
    return job


def write_large_histogram_job(tmp: Path, name: str, files: list[str], chunksize: int,
                              bins: int, workers: int = 2) -> Path:
    """Write a synthetic job into ``tmp`` (output ``tmp / name``): one dataset per file
    (``big0``, ``big1``, ...), no calibrator, one category and one 2D histogram of
    ``bins x bins`` bins (with its variances: 36 MB per chunk at 1500 bins), so that the
    histograms' size and the number of chunks can be chosen apart from the physics."""
    metadata = {"sample": "TTbar", "year": "2022_preEE", "isMC": True}
    config = {
        "datasets": {f"big{i}": {"files": [file], "metadata": metadata}
                     for i, file in enumerate(files)},
        "calibrators": [],
        "categories": {"inclusive": "True"},
        "histograms": {"jet_eta_pt": {"axes": [
            {"expr": "Jet.eta", "name": "eta", "bins": bins, "start": -5, "stop": 5},
            {"expr": "Jet.pt", "name": "pt", "bins": bins, "start": 0, "stop": 500}]}},
    }
    (tmp / f"{name}.analysis.yaml").write_text(yaml.safe_dump(config))
    job = tmp / f"{name}.job.yaml"
    job.write_text(f"config: {name}.analysis.yaml\noutput: {tmp / name}\n"
                   f"chunksize: {chunksize}\nworkers: {workers}\n")
    return job
