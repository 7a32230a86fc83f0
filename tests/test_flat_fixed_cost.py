"""The flat numpy paths that cut the per-chunk fixed cost of eager chunks (the MET's low-pt
jets and its per-event arithmetic, the jet veto map cut, the b-tag shape weight, the weight
products, the manager's reuse of the nominal's events) against the generic awkward path that
typetracers and dask-awkward take, bit for bit, on the real sample."""

from __future__ import annotations

from contextlib import contextmanager

import awkward as ak
import numpy as np
import pytest
from omegaconf import OmegaConf

from pipeline.calibration import (
    CalibratorsManager,
    ElectronsScaleCalibrator,
    JetsCalibrator,
    METCalibrator,
    ops,
)
from pipeline.config.parameters import defaults
from pipeline.corrections import get_correction, reuse
from pipeline.corrections.loader import Evaluator
from pipeline.cuts import JetVetoMap
from pipeline.weights import BtagShapeWeight, _SelectedJets, compute_weights

MC = {"isMC": True, "year": "2022_preEE", "sample": "TTbar", "dataset": "tt"}
SEQUENCE = [JetsCalibrator, ElectronsScaleCalibrator, METCalibrator]
JES = "AK4PFPuppi_JES_Regrouped_AbsoluteUp"
WEIGHTS = ["pileup", "btag_shape", "electron_id", "muon_id_iso"]


@contextmanager
def generic_path(monkeypatch):
    """Make the array adapter answer as for a typetracer: the generic awkward path runs on
    the eager arrays."""
    with monkeypatch.context() as patch:
        patch.setattr(ops, "flat_numpy", lambda columns: None)
        patch.setattr(ops, "flat_positions", lambda array: None)
        patch.setattr(ops, "eager_values", lambda array: array)
        yield


def bits(array) -> bytes:
    """The values of an eager array (any depth) with their dtype and list lengths."""
    array = ak.Array(array)
    counts = ak.num(array, axis=1).tolist() if array.ndim > 1 else []
    flat = ak.to_numpy(ak.flatten(array, axis=None))
    return str(flat.dtype).encode() + repr(counts).encode() + flat.tobytes()


def calibrated(events, sequence=SEQUENCE):
    manager = CalibratorsManager(sequence, events, defaults(), MC)
    return dict(manager.calibration_loop(events, [c.name for c in sequence]))


@pytest.fixture(scope="module")
def flat_and_generic(tt_events):
    """Every variation's calibrated events, on the flat path and on the generic one."""
    flat = calibrated(tt_events)
    with pytest.MonkeyPatch.context() as patch:
        with generic_path(patch):
            generic = calibrated(tt_events)
    assert list(flat) == list(generic) and JES in flat and "met_unclusteredUp" in flat
    return flat, generic


@pytest.mark.parametrize("seed", [1, 2])
def test_list_sums_and_products_equal_awkward(seed):
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 30, size=2000)
    counts[:5] = 0
    values = rng.normal(size=int(counts.sum())) * 10.0 ** rng.integers(-8, 8, int(counts.sum()))
    jagged = ak.unflatten(values, counts)
    assert bits(ops.list_sums(values, counts)) == bits(ak.sum(jagged, axis=1))
    factors = 1 + rng.normal(scale=0.3, size=len(values))
    assert bits(ops.list_products(factors, counts)) == bits(
        ak.prod(ak.unflatten(factors, counts), axis=1))
    float32 = values.astype(np.float32)  # another dtype: awkward's own sum
    assert bits(ops.list_sums(float32, counts)) == bits(
        ak.sum(ak.unflatten(float32, counts), axis=1))


def test_list_counts_and_index_equal_bincount():
    rng = np.random.default_rng(3)
    counts = rng.integers(0, 12, size=3000)
    counts[:4] = 0
    mask = rng.uniform(size=int(counts.sum())) < 0.6
    event = ops.list_index(counts)
    assert event.tolist() == [i for i, n in enumerate(counts) for _ in range(n)]
    expected = np.bincount(event[mask], minlength=len(counts))
    assert ops.list_counts(mask, counts).tolist() == expected.tolist()


def test_met_flat_equals_generic(flat_and_generic):
    flat, generic = flat_and_generic
    for variation, events in generic.items():
        for field in ("pt", "phi"):
            assert bits(flat[variation].PuppiMET[field]) == bits(events.PuppiMET[field]), (
                variation, field)
    assert bits(flat[JES].PuppiMET.pt) != bits(flat["nominal"].PuppiMET.pt)


@pytest.mark.parametrize("pt_min", [15.0, 40.0])
def test_jet_veto_flat_equals_generic(flat_and_generic, monkeypatch, pt_min):
    """The default, and a threshold that leaves out many of the vetoed jets (a jet's veto
    flag taken at another jet's position of its event then shows)."""
    flat, _ = flat_and_generic
    params = OmegaConf.merge(defaults(), {"selections": {"2022_preEE": {
        "jet_veto_map": {"pt_min": pt_min}}}})
    cut = JetVetoMap(params, MC, "preselection.jet_veto")
    with generic_path(monkeypatch):
        generic = JetVetoMap(params, MC, "preselection.jet_veto")
        expected = {v: generic.evaluate(events) for v, events in flat.items()}
    for variation, events in flat.items():  # the re-sorted jets share one lookup
        assert bits(cut.evaluate(events)) == bits(expected[variation]), variation
    assert 0 < int(ak.sum(~expected["nominal"])) < len(expected["nominal"])


@pytest.mark.parametrize("generic", [False, True])
def test_jet_veto_map_looked_up_once_for_the_jet_variations(flat_and_generic, monkeypatch,
                                                            generic):
    """On either path, the cut's one cache serves the variations that leave the jets' eta
    and phi alone, with the results of a fresh cut."""
    flat, generic_events = flat_and_generic
    variations = generic_events if generic else flat
    cut = JetVetoMap(defaults(), MC, "preselection.jet_veto")
    fresh = {}
    lookups = []
    in_map = JetVetoMap._in_map

    def counting(self, eta, phi):
        lookups.append(self)
        return in_map(self, eta, phi)

    with monkeypatch.context() as patch:
        if generic:
            patch.setattr(ops, "flat_positions", lambda array: None)
        for variation, events in variations.items():
            fresh[variation] = JetVetoMap(defaults(), MC, "preselection.jet_veto").evaluate(
                events)
        patch.setattr(JetVetoMap, "_in_map", counting)
        for variation, events in variations.items():
            assert bits(cut.evaluate(events)) == bits(fresh[variation]), variation
    # flat: one lookup per buffer of eta and phi values, which every variation shares;
    # generic: once per layout of the jets (the variations that re-sort them have their own)
    assert lookups.count(cut) == 1 if not generic else 1 < lookups.count(cut) < len(variations)


def test_btag_shape_flat_equals_generic(flat_and_generic, monkeypatch):
    flat, _ = flat_and_generic
    settings = defaults()["event_weights"]["2022_preEE"]["btag_shape"]
    for variation in ("nominal", JES):
        events = flat[variation]
        out = BtagShapeWeight(settings, MC).compute(events, variations=True)
        with generic_path(monkeypatch):
            expected = BtagShapeWeight(settings, MC).compute(events, variations=True)
        assert bits(out.nominal) == bits(expected.nominal)
        assert list(out.variations) == list(expected.variations) and out.variations
        for name, factor in expected.variations.items():
            assert bits(out.variations[name]) == bits(factor), (variation, name)


def test_btag_central_of_every_variation_equals_generic(flat_and_generic, monkeypatch):
    """The central b-tag factors of every variation, the nominal first (a jet whose pt stays
    in its pt bin keeps the nominal's factor), equal the generic path's, bit for bit; and
    the nominal's systematics after them."""
    flat, _ = flat_and_generic
    settings = defaults()["event_weights"]["2022_preEE"]["btag_shape"]
    with generic_path(monkeypatch):
        expected = {v: BtagShapeWeight(settings, MC).compute(events, variations=False).nominal
                    for v, events in flat.items()}
    reuse._recent().clear()
    evaluated = []
    kernels = Evaluator.kernels

    def counting(self, *args):
        evaluated.append(len(args[1]))
        return kernels(self, *args)

    monkeypatch.setattr(Evaluator, "kernels", counting)
    again = {}
    for variation, events in flat.items():
        evaluated.clear()
        out = BtagShapeWeight(settings, MC).compute(events, variations=False)
        assert bits(out.nominal) == bits(expected[variation]), variation
        again[variation] = sum(evaluated)
    selected = again["nominal"]
    assert selected > 100 and len(flat) > 20
    assert all(n < selected / 4 for v, n in again.items() if v != "nominal"), again
    assert again[JES] > 0  # some jets change pt bin
    nominal = BtagShapeWeight(settings, MC).compute(flat["nominal"], variations=True)
    with generic_path(monkeypatch):
        generic = BtagShapeWeight(settings, MC).compute(flat["nominal"], variations=True)
    assert [bits(a) for a in nominal.variations.values()] == [
        bits(a) for a in generic.variations.values()]


def test_btag_jets_taken_at_other_positions(flat_and_generic):
    """Jets whose flavours come from another buffer order than their eta (not known to be
    the same jets across variations) are evaluated in full, with the same bits."""
    flat, _ = flat_and_generic
    settings = defaults()["event_weights"]["2022_preEE"]["btag_shape"]
    weight = BtagShapeWeight(settings, MC)
    jets = flat[JES].Jet
    positions = ops.flat_positions_of([jets[f] for f in
                                       ("pt", "eta", "hadronFlavour", "btagDeepFlavB")])
    counts, values, at = positions[2]
    order = np.random.default_rng(1).permutation(len(values))
    moved = [*positions[:2], (counts, values[order], np.argsort(order)[at]), positions[3]]
    selected = np.ones(len(at), dtype=bool)
    pt = positions[0][1][positions[0][2]]
    assert _SelectedJets(pt, positions[1:], selected).shared
    assert not _SelectedJets(pt, moved[1:], selected).shared
    corr = get_correction(settings["json_path"], settings["correction"])
    out = weight._compute_flat(corr, moved, True)
    expected = weight._compute_flat(corr, positions, True)
    assert bits(out.nominal) == bits(expected.nominal)
    assert [bits(v) for v in out.variations.values()] == [
        bits(v) for v in expected.variations.values()]


def test_weight_products_flat_equal_generic(flat_and_generic, monkeypatch):
    flat, _ = flat_and_generic
    events = flat["nominal"]
    out = compute_weights(events, MC, defaults(), WEIGHTS, WEIGHTS)
    with generic_path(monkeypatch):
        expected = compute_weights(events, MC, defaults(), WEIGHTS, WEIGHTS)
    assert bits(out.nominal) == bits(expected.nominal)
    assert list(out.variations) == list(expected.variations) and len(out.variations) > 10
    for name, total in expected.variations.items():
        assert bits(out.variations[name]) == bits(total), name


def test_variations_from_the_nominal_equal_fresh_ones(tt_events, flat_and_generic):
    """A variation calibrated after the nominal (which reuses the nominal's events after
    the calibrators that change nothing in it) equals one calibrated with every
    calibrator's columns checked and applied anew (the nominal's events forgotten)."""
    flat, _ = flat_and_generic
    manager = CalibratorsManager(SEQUENCE, tt_events, defaults(), MC)
    manager.calibrate(tt_events, "nominal")
    manager._nominal_events = []
    for variation in (JES, "AK4PFPuppi_JERDown", "ele_smearUp", "met_unclusteredUp"):
        fresh = manager.calibrate(tt_events, variation)
        for key in ("Jet.pt", "Jet.original_index", "Jet.eta", "FatJet.pt", "Electron.pt",
                    "Electron.pt_original", "PuppiMET.pt", "PuppiMET.phi"):
            collection, field = key.split(".")
            assert bits(flat[variation][collection][field]) == bits(
                fresh[collection][field]), (variation, key)
    # before the MET nothing changes in its unclustered variation: the nominal's events
    manager = CalibratorsManager(SEQUENCE, tt_events, defaults(), MC)
    nominal = manager.calibrate(tt_events, "nominal")
    unclustered = manager.calibrate(tt_events, "met_unclusteredUp")
    assert unclustered.Jet.layout is nominal.Jet.layout
    assert unclustered.Electron.layout is nominal.Electron.layout
    assert bits(unclustered.PuppiMET.pt) != bits(nominal.PuppiMET.pt)
    assert manager.changed_collections("met_unclusteredUp") == {"PuppiMET"}
