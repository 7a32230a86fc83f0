"""What makes two runs' outputs, tables, checkpoints or traced plans the same: digests of
the configuration, the parameters and the code.

Examples
--------
>>> parameters_digest({"a": 1}) == parameters_digest({"a": 1}) != parameters_digest({})
True
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import awkward
import coffea
import dask_awkward
import uproot

from pipeline import __version__
from pipeline.analysis.loading import calibrator_classes
from pipeline.config.models import AnalysisConfig
from pipeline.inputs.datasets import Dataset
from pipeline.outputs.provenance import code_digest


def parameters_digest(params: Any) -> str:
    """A short hash of the resolved parameters (the calibrators' settings, payload paths).

    Examples
    --------
    >>> parameters_digest({"a": 1}) == parameters_digest({"a": 1}) != parameters_digest({})
    True
    """
    from omegaconf import OmegaConf

    resolved = OmegaConf.to_container(params, resolve=True) if OmegaConf.is_config(params) \
        else params
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()
                          ).hexdigest()[:16]


def output_identity(cfg: AnalysisConfig, params: Any) -> dict[str, str]:
    """What makes an output directory's outputs those of one configuration: the analysis
    configuration and the parameters (the datasets, code and chunks may differ between the
    runs that write into it; see :func:`table_identity` for what a resumed table needs)."""
    return {"config": cfg.digest(), "parameters": parameters_digest(params)}


def table_identity(dataset: Dataset, cfg: AnalysisConfig, params: Any) -> dict[str, Any]:
    """What makes two runs write the same tables and histograms: config, parameters,
    calibrew version and code (its sources and the calibrators'), and chunks. A rerun
    resumes a table or the checkpointed chunks only when all are the same."""
    return {"config": cfg.digest(), "parameters": parameters_digest(params),
            "calibrew": __version__, "code": code_digest(calibrator_classes(cfg)),
            "dataset": dataset.name,
            "chunks": [[c.file, c.start, c.stop] for c in dataset.chunks]}


def plan_identity(cfg: AnalysisConfig, params: Any) -> dict[str, str]:
    """What a traced plan depends on besides the dataset's analysis shape: config,
    parameters, calibrew version and code, and the versions of the libraries that trace and
    project (awkward, dask-awkward, coffea, uproot)."""
    return {"config": cfg.digest(), "parameters": parameters_digest(params),
            "calibrew": __version__, "code": code_digest(calibrator_classes(cfg)),
            "libraries": " ".join(f"{m.__name__}-{m.__version__}"
                                  for m in (awkward, dask_awkward, coffea, uproot))}
