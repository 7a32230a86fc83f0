"""The calibrator API of seed 000 and the built-in calibrators."""

from pipeline.calibration.builtin import (
    ElectronsScaleCalibrator,
    JetsCalibrator,
    METCalibrator,
    PhotonsScaleCalibrator,
    default_calibrators_sequence,
)
from pipeline.calibration.calibrator import CALIBRATORS, Calibrator, get_calibrator
from pipeline.calibration.manager import NOMINAL, CalibratorsManager

__all__ = [
    "CALIBRATORS",
    "NOMINAL",
    "Calibrator",
    "CalibratorsManager",
    "ElectronsScaleCalibrator",
    "JetsCalibrator",
    "METCalibrator",
    "PhotonsScaleCalibrator",
    "default_calibrators_sequence",
    "get_calibrator",
]
