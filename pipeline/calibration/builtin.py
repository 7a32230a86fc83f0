"""Imports every built-in calibrator so that each registers under its name."""

from pipeline.calibration.jets import JetsCalibrator

#: The default calibrator sequence: jets first (as seed 000's configuration example).
default_calibrators_sequence = [JetsCalibrator]

__all__ = ["JetsCalibrator", "default_calibrators_sequence"]
