"""calibrew: calibrated, systematically varied outputs from CMS NanoAOD on Dask.

The import package is ``pipeline``; the command line is ``calibrew``. The names in
``__all__`` are the public API: run a job, load a job or an analysis configuration, write a
calibrator, read a finished feature table, catch calibrew's errors. Other modules are
internal and may move between releases.

``import pipeline`` is cheap (the command line's start-up, workers unpickling a task): the
names are imported on first use (:pep:`562`), so that ``import pipeline`` imports neither
Dask nor coffea.

Examples
--------
>>> import pipeline
>>> sorted(name for name in pipeline.__all__ if name.startswith("load_"))
['load_config', 'load_job', 'load_merged', 'load_parameters']
>>> issubclass(pipeline.ConfigError, pipeline.CalibrewError)
True

Running a job, then reading its table::

    import pipeline

    result = pipeline.run_job("jobs/demo.yaml", site="local", workers=2)
    table = pipeline.open_table("output/demo/TTto2L2Nu_2022/features.zarr")
    ht = table.to_numpy(["ht"])["ht"]
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("calibrew")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

# Public name -> the module defining it, imported on first access. A module moved inside the
# package changes here only; tests/test_public_api.py pins the names.
_LAZY: dict[str, str] = {
    # running a job
    "run_job": "pipeline.run.runner",
    "merge_job": "pipeline.run.runner",
    "load_merged": "pipeline.outputs.merged",
    "RunOptions": "pipeline.run.runner",
    "RunResult": "pipeline.run.runner",
    "make_datasets": "pipeline.run.runner",
    "make_sample": "pipeline.inputs.make_sample",
    # looking at the results
    "plot_output": "pipeline.outputs.plot",
    "describe_table": "pipeline.outputs.inspect_table",
    "print_table": "pipeline.outputs.inspect_table",
    "derive_correction": "pipeline.recipes.derive",
    # what users write
    "load_job": "pipeline.analysis.loading",
    "load_config": "pipeline.analysis.loading",
    "AnalysisConfig": "pipeline.config.models",
    "JobSpec": "pipeline.config.models",
    "load_parameters": "pipeline.analysis.loading",
    # the calibration API (seed 000) and the weights
    "NOMINAL": "pipeline.calibration",
    "Calibrator": "pipeline.calibration",
    "CalibratorsManager": "pipeline.calibration",
    "get_calibrator": "pipeline.calibration",
    "Weight": "pipeline.weights",
    "Cut": "pipeline.cuts",
    # readers of finished feature tables
    "open_table": "pipeline.ml",
    "Table": "pipeline.ml",
    "TableStream": "pipeline.ml",
    "torch_dataset": "pipeline.ml",
    "xgboost_iterator": "pipeline.ml",
    # errors
    "CalibrewError": "pipeline.errors",
    "ConfigError": "pipeline.errors",
    "UnknownNameError": "pipeline.errors",
    "CalibrationError": "pipeline.errors",
    "InputFileError": "pipeline.errors",
    "UnreadableInputError": "pipeline.errors",
    "ExpressionError": "pipeline.errors",
    "SiteError": "pipeline.errors",
    "ChunkError": "pipeline.errors",
    "OutputError": "pipeline.errors",
    "OutputLockedError": "pipeline.errors",
    "OutputConflictError": "pipeline.errors",
    "TableError": "pipeline.ml",
}

__all__ = [
    "NOMINAL",
    "AnalysisConfig",
    "CalibrationError",
    "Calibrator",
    "CalibratorsManager",
    "CalibrewError",
    "ChunkError",
    "ConfigError",
    "Cut",
    "ExpressionError",
    "InputFileError",
    "JobSpec",
    "OutputConflictError",
    "OutputError",
    "OutputLockedError",
    "RunOptions",
    "RunResult",
    "SiteError",
    "Table",
    "TableError",
    "TableStream",
    "UnknownNameError",
    "UnreadableInputError",
    "Weight",
    "__version__",
    "derive_correction",
    "describe_table",
    "get_calibrator",
    "load_config",
    "load_job",
    "load_merged",
    "load_parameters",
    "make_datasets",
    "make_sample",
    "merge_job",
    "open_table",
    "plot_output",
    "print_table",
    "run_job",
    "torch_dataset",
    "xgboost_iterator",
]

if TYPE_CHECKING:  # what the lazy names are, for type checkers and editors
    from pipeline.analysis.loading import load_config, load_job, load_parameters
    from pipeline.calibration import NOMINAL, Calibrator, CalibratorsManager, get_calibrator
    from pipeline.config.models import AnalysisConfig, JobSpec
    from pipeline.cuts import Cut
    from pipeline.errors import (
        CalibrationError,
        CalibrewError,
        ChunkError,
        ConfigError,
        ExpressionError,
        InputFileError,
        OutputConflictError,
        OutputError,
        OutputLockedError,
        SiteError,
        UnknownNameError,
        UnreadableInputError,
    )
    from pipeline.inputs.make_sample import make_sample
    from pipeline.ml import (
        Table,
        TableError,
        TableStream,
        open_table,
        torch_dataset,
        xgboost_iterator,
    )
    from pipeline.outputs.inspect_table import describe_table, print_table
    from pipeline.outputs.merged import load_merged
    from pipeline.outputs.plot import plot_output
    from pipeline.recipes.derive import derive_correction
    from pipeline.run.runner import RunOptions, RunResult, make_datasets, merge_job, run_job
    from pipeline.weights import Weight


def __getattr__(name: str) -> Any:
    """Import a public name on first access (:pep:`562`); later accesses find it bound."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
