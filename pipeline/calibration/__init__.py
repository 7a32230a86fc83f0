"""The calibrator API of seed 000 and the built-in calibrators.

Importing any module of this package runs this file, which imports
:mod:`pipeline.calibration.builtin`: whoever uses the registry (:data:`CALIBRATORS`) finds
the built-in calibrators registered. The recipes' calibrators are plugins, found through
their entry points when a config names them.
"""

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
