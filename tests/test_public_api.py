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
    from pipeline.parameters import defaults

    assert "jets_calibration" in defaults()


def test_ml_reader_api():
    import pipeline.ml

    assert sorted(pipeline.ml.__all__) == sorted([
        "Table", "TableError", "TableStream", "open_table", "torch_dataset", "xgboost_iterator",
    ])
    for name in pipeline.ml.__all__:
        assert hasattr(pipeline.ml, name)
