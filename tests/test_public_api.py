"""The public API: names other scripts import. Changing them is a breaking change."""

import pipeline
import pipeline.calibration


def test_calibration_api():
    assert sorted(pipeline.calibration.__all__) == sorted([
        "CALIBRATORS", "NOMINAL", "Calibrator", "CalibratorsManager", "JetsCalibrator",
        "ElectronsScaleCalibrator", "PhotonsScaleCalibrator", "METCalibrator",
        "default_calibrators_sequence", "get_calibrator",
    ])
    for name in pipeline.calibration.__all__:
        assert hasattr(pipeline.calibration, name)


def test_calibrator_class_contract():
    cls = pipeline.calibration.Calibrator
    for attribute in ("name", "has_variations", "isMC_only", "calibrated_collections"):
        assert hasattr(cls, attribute)
    import inspect

    params = list(inspect.signature(cls.calibrate).parameters)
    assert params == ["self", "events", "events_original_collections", "variation",
                      "already_applied_calibrators"]
    assert list(inspect.signature(pipeline.calibration.CalibratorsManager.calibration_loop)
                .parameters)[:3] == ["self", "events", "variations_for_calibrators"]


def test_version_and_entry_points():
    assert pipeline.__version__
    from pipeline.config.parameters import defaults

    assert "jets_calibration" in defaults()


def test_ml_reader_api():
    import pipeline.ml

    assert sorted(pipeline.ml.__all__) == sorted([
        "Table", "TableError", "TableStream", "open_table", "torch_dataset", "xgboost_iterator",
    ])
    for name in pipeline.ml.__all__:
        assert hasattr(pipeline.ml, name)


# The names of ``pipeline``: what a user imports. Adding one is a decision, removing or
# renaming one is a breaking change; both show here.
PUBLIC = [
    "__version__",
    "run_job", "RunOptions", "RunResult", "make_datasets", "make_sample",
    "plot_output", "merge_job", "load_merged", "describe_table", "print_table",
    "derive_correction",
    "load_job", "load_config", "AnalysisConfig", "JobSpec", "load_parameters",
    "NOMINAL", "Calibrator", "CalibratorsManager", "get_calibrator", "Weight", "Cut",
    "open_table", "Table", "TableStream", "torch_dataset", "xgboost_iterator",
    "CalibrewError", "ConfigError", "UnknownNameError", "CalibrationError", "InputFileError",
    "UnreadableInputError", "ExpressionError", "SiteError", "ChunkError", "OutputError",
    "OutputLockedError", "OutputConflictError", "TableError",
]


def test_package_api_is_pinned():
    assert sorted(pipeline.__all__) == sorted(PUBLIC)
    assert len(set(pipeline.__all__)) == len(pipeline.__all__)
    # each name but the version is imported on first use, from the module named for it
    assert set(pipeline._LAZY) == set(pipeline.__all__) - {"__version__"}


def test_package_names_resolve_to_their_definitions():
    import pipeline.calibration
    import pipeline.config.models
    import pipeline.errors
    import pipeline.ml
    import pipeline.run.runner

    for name in pipeline.__all__:
        assert getattr(pipeline, name) is not None, name
        assert name in dir(pipeline)
    # the same objects as the modules' (not copies): isinstance and except clauses work
    assert pipeline.run_job is pipeline.run.runner.run_job
    assert pipeline.Calibrator is pipeline.calibration.Calibrator
    assert pipeline.open_table is pipeline.ml.open_table
    assert pipeline.TableError is pipeline.ml.TableError
    assert pipeline.ConfigError is pipeline.errors.ConfigError
    assert pipeline.load_job is pipeline.analysis.loading.load_job
    for name in pipeline.__all__:
        if isinstance(getattr(pipeline, name), type) and name.endswith("Error"):
            assert issubclass(getattr(pipeline, name), pipeline.CalibrewError), name
    namespace: dict[str, object] = {}
    exec("from pipeline import *", namespace)
    assert set(PUBLIC) <= set(namespace)


def test_unknown_package_name_is_an_attribute_error():
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'run_jobs'"):
        pipeline.run_jobs  # noqa: B018
    with pytest.raises(ImportError):
        exec("from pipeline import run_jobs", {})


def test_import_pipeline_is_cheap():
    """``import pipeline`` (CLI start-up, worker unpickling) imports neither Dask nor coffea."""
    import subprocess
    import sys

    code = ("import sys, pipeline; "
            "print(' '.join(sorted(m for m in ('dask', 'distributed', 'coffea', 'awkward', "
            "'dask_awkward', 'numba', 'zarr', 'pydantic', 'numpy') if m in sys.modules)))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=120).stdout.split()
    assert loaded == []
    code = "import sys, pipeline; pipeline.ConfigError; print('dask' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=120).stdout.strip() == "False"
