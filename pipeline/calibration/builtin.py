"""Imports every built-in calibrator so that each registers under its name."""

from pipeline.calibration.egamma import ElectronsScaleCalibrator, PhotonsScaleCalibrator
from pipeline.calibration.jets import JetsCalibrator
from pipeline.calibration.met import METCalibrator

#: The default calibrator sequence (seed 000): jets, electrons and photons, then the MET,
#: which propagates the calibrated jets.
default_calibrators_sequence = [
    JetsCalibrator,
    ElectronsScaleCalibrator,
    PhotonsScaleCalibrator,
    METCalibrator,
]

__all__ = [
    "ElectronsScaleCalibrator",
    "JetsCalibrator",
    "METCalibrator",
    "PhotonsScaleCalibrator",
    "default_calibrators_sequence",
]
