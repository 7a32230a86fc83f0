"""The flat numpy path of eager chunks (random numbers, JER factors) against the generic
awkward path that typetracers and dask-awkward take, bit for bit, on the real sample."""

from __future__ import annotations

from contextlib import contextmanager

import awkward as ak
import numpy as np
import pytest

from pipeline import rng
from pipeline.calibration import CalibratorsManager, JetsCalibrator, ops

MC = {"isMC": True, "year": "2022_preEE", "sample": "TTbar", "dataset": "tt"}


@contextmanager
def generic_path(monkeypatch):
    """Make the array adapter answer as for a typetracer: the calibrators take their generic
    awkward path on the eager arrays."""
    with monkeypatch.context() as patch:
        patch.setattr(ops, "eager_counts", lambda collection: None)
        patch.setattr(ops, "flat_numpy", lambda columns: None)
        yield


def same(a, b) -> bool:
    """Same list lengths and the same values bit for bit (float64 or float32)."""
    return (ak.num(a, axis=1).tolist() == ak.num(b, axis=1).tolist()
            and np.array_equal(ak.to_numpy(ak.flatten(a)), ak.to_numpy(ak.flatten(b))))


def events_variants(events):
    """The sample, and the sample with events without jets, with jets whose generator jet
    is out of range, and without any generator jet in the chunk."""
    few_jets = ak.with_field(events, events.Jet[events.Jet.pt > 60], "Jet")
    few_gen = ak.with_field(few_jets, events.GenJet[:, :1], "GenJet")
    no_gen = ak.with_field(few_jets, events.GenJet[events.GenJet.pt < 0], "GenJet")
    return {"sample": events, "few_jets": few_jets, "few_gen": few_gen, "no_gen": no_gen}


def test_variants_have_the_edge_cases(tt_events):
    variants = events_variants(tt_events)
    assert ak.any(ak.num(variants["few_jets"].Jet) == 0)
    index = variants["few_gen"].Jet.genJetIdx
    assert ak.any(index < 0) and ak.any(index >= ak.num(variants["few_gen"].GenJet))
    assert ak.sum(ak.num(variants["no_gen"].GenJet)) == 0


@pytest.mark.parametrize("variant", ["sample", "few_jets"])
def test_object_normal_flat_equals_generic(tt_events, variant):
    events = events_variants(tt_events)[variant]
    assert ops.eager_counts(events.Jet) is not None  # the flat path is the one tested
    flat = ops.object_normal(events, events.Jet, "jer:AK4PFPuppi")
    assert same(flat, rng.object_normal(events, events.Jet, "jer:AK4PFPuppi"))
    assert not same(flat, rng.object_normal(events, events.Jet, "jer:AK8PFPuppi"))


def jer_factors(events):
    """The calibrator's JER factors of the AK4 and AK8 jets of ``events``."""
    from pipeline.config.parameters import defaults

    calibrator = JetsCalibrator(defaults(), MC)
    out = {}
    for jet_type, coll in (("AK4PFPuppi", "Jet"), ("AK8PFPuppi", "FatJet")):
        jets = events[coll]
        settings = calibrator._settings(jet_type)
        # JEC-like pt and mass as float64, as the calibrator has them
        pt, mass = jets.pt * (1 - jets.rawFactor) * 1.1, jets.mass * 1.0
        out[jet_type] = calibrator._jer_factors(events, jets, jet_type, settings, pt, mass)
    return out


@pytest.mark.parametrize("variant", ["sample", "few_jets", "few_gen", "no_gen"])
def test_jer_factors_flat_equal_generic(tt_events, monkeypatch, variant):
    events = events_variants(tt_events)[variant]
    flat = jer_factors(events)
    with generic_path(monkeypatch):
        expected = jer_factors(events)
    for jet_type, factors in expected.items():
        assert set(flat[jet_type]) == {"nominal", "up", "down"}
        for key, values in factors.items():
            assert same(flat[jet_type][key], values), (jet_type, key)
        # the factors differ between the systematics: the comparison can fail
        assert not same(factors["up"], factors["down"]) or variant == "no_gen"


def calibrated(events):
    from pipeline.config.parameters import defaults

    manager = CalibratorsManager([JetsCalibrator], events, defaults(), MC)
    return dict(manager.calibration_loop(events, ["jet_calibration"]))


def test_jet_calibration_flat_equals_generic(tt_events, monkeypatch):
    flat = calibrated(tt_events)
    with generic_path(monkeypatch):
        expected = calibrated(tt_events)
    assert list(flat) == list(expected) and len(expected) > 1
    for variation, events in expected.items():
        for coll in ("Jet", "FatJet"):
            for field in ("pt", "mass", "pt_jec", "original_index"):
                assert same(flat[variation][coll][field], events[coll][field]), (
                    variation, coll, field)
