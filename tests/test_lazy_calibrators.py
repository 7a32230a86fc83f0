"""The built-in calibrators and the manager on dask-awkward NanoEvents (the seed's lazy mode).

The same calibrator classes run on an eager chunk and on a lazy collection of the same
events in two partitions; every calibrated column of every variation, computed, equals the
eager one bit for bit (values, dtype and list lengths). The calibrators ask no question about
the mode: :mod:`pipeline.calibration.ops` is the one module of calibration/ that names
dask-awkward.
"""

from __future__ import annotations

import re
from pathlib import Path

import awkward as ak
import dask
import dask_awkward as dak
import numpy as np
from omegaconf import OmegaConf

import pipeline.calibration
from pipeline.calibration import (
    CalibratorsManager,
    PhotonsScaleCalibrator,
    default_calibrators_sequence,
)
from pipeline.config.parameters import defaults
from pipeline.inputs.datafiles import find_data_file
from pipeline.inputs.nanoevents import read_eager, read_lazy

MC = {"isMC": True, "year": "2022_preEE", "sample": "TTbar", "dataset": "tt"}
DATA = {"isMC": False, "year": "2022_preEE", "era": "C", "sample": "Muon", "dataset": "mu"}
JET_FIELDS = ("pt", "mass", "pt_jec", "mass_jec", "pt_raw", "mass_raw", "original_index",
              "eta", "phi")


def lazy_events(path: str, entries: int) -> dak.Array:
    """The file's events as a dask-awkward collection of two partitions."""
    middle = entries // 2 - 7  # partitions of unequal size
    return read_lazy({path: {"object_path": "Events", "steps": [[0, middle],
                                                                [middle, entries]]}})


def calibrated(calibrators, events, params, metadata, keys) -> dict[str, dict[str, object]]:
    """``{variation: {key: column}}`` of every variation of ``calibrators``."""
    manager = CalibratorsManager(calibrators, events, params, metadata)
    names = [c.name for c in calibrators]
    out = {}
    for variation, ev in manager.calibration_loop(events, names):
        out[variation] = {key: ev[key.split(".")[0]][key.split(".")[1]] for key in keys}
    return out


def flat_bytes(array) -> tuple[np.ndarray, list[np.ndarray]]:
    """All values of ``array`` as one numpy array, and its list lengths at every depth."""
    counts = [np.asarray(ak.num(array, axis=axis)) for axis in range(1, array.ndim)]
    return np.asarray(ak.to_numpy(ak.flatten(array, axis=None))), counts


def assert_lazy_equals_eager(calibrators, eager_events, lazy, params, metadata, keys,
                             expected_variations: int) -> None:
    eager = calibrated(calibrators, eager_events, params, metadata, keys)
    graph = calibrated(calibrators, lazy, params, metadata, keys)
    assert list(graph) == list(eager)
    assert len(eager) == expected_variations
    assert all(isinstance(column, dak.Array)
               for columns in graph.values() for column in columns.values())
    (computed,) = dask.compute(graph)
    for variation, columns in eager.items():
        for key, expected in columns.items():
            where = f"{key} in variation {variation!r}"
            got_values, got_counts = flat_bytes(computed[variation][key])
            values, counts = flat_bytes(expected)
            assert all(np.array_equal(a, b) for a, b in zip(got_counts, counts)), where
            assert got_values.dtype == values.dtype, where
            assert got_values.tobytes() == values.tobytes(), (
                f"{where}: lazy and eager differ by up to "
                f"{np.max(np.abs(got_values - values))}")


def few_jet_sources(params):
    """The default parameters with two JES sources per jet type (every code path, less graph)."""
    return OmegaConf.merge(params, {"jets_calibration": {"variations": {"2022_preEE": {
        "AK4PFPuppi": ["JES_Regrouped_Absolute", "JES_Regrouped_FlavorQCD", "JER"],
        "AK8PFPuppi": ["JES_Total", "JER"]}}}})


def test_built_in_sequence_on_mc_lazy_equals_eager(tt_file, tt_events):
    # JEC, JES, JER (sorted by pt), electron smearing and scale, type-1 MET with the low-pt
    # jets and the unclustered energy: nominal and every variation
    keys = ([f"Jet.{f}" for f in JET_FIELDS] + [f"FatJet.{f}" for f in JET_FIELDS]
            + ["Electron.pt", "Electron.pt_original", "PuppiMET.pt", "PuppiMET.phi"])
    variations = 1 + 2 * (3 + 2) + 4 + 2  # jets, electrons (scale, smear), MET unclustered
    assert_lazy_equals_eager(default_calibrators_sequence, tt_events,
                             lazy_events(tt_file, len(tt_events)), few_jet_sources(defaults()),
                             MC, keys, variations)


def test_built_in_sequence_on_data_lazy_equals_eager(data_file, data_events):
    # data: the JEC tag of the run era, the electron scale, no smearing, no variation;
    # nano_dimuon.root is 2018 collision data with PF MET (no RawPuppiMET)
    params = OmegaConf.merge(defaults(), {"met_rescaling": {"2022_preEE": {
        "met": "MET", "raw_met": "RawMET"}}})
    keys = [f"Jet.{f}" for f in JET_FIELDS] + ["Electron.pt", "MET.pt", "MET.phi"]
    assert_lazy_equals_eager(default_calibrators_sequence, data_events,
                             lazy_events(data_file, len(data_events)), params, DATA, keys, 1)


def test_photons_lazy_equals_eager():
    path = str(find_data_file("nano_tt_v15.root"))
    eager = read_eager(path)
    assert_lazy_equals_eager([PhotonsScaleCalibrator], eager, lazy_events(path, len(eager)),
                             defaults(), MC, ["Photon.pt", "Photon.pt_original"], 5)


def test_only_the_adapter_names_dask_awkward():
    """No calibrator branches on the mode: only ops.py of calibration/ names dask-awkward."""
    folder = Path(pipeline.calibration.__file__).parent
    naming = sorted(path.name for path in folder.glob("*.py")
                    if re.search(r"\bdask_awkward\b|\bdak\.", path.read_text()))
    assert naming == ["ops.py"]

