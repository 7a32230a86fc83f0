"""Seed 001: gen-reco matching, the linear e/gamma correction fit, its payload and calibrator.

References are written independently: plain-Python double loops over the events for the
matching, ``numpy.polyfit`` and known injected coefficients for the fit, direct arithmetic
for the payload, direct correctionlib calls per electron for the calibrator.
"""

from __future__ import annotations

import gzip
import json
import math

import awkward as ak
import correctionlib
import dask
import numpy as np
import pytest

from pipeline.calibration import Calibrator, CalibratorsManager, ElectronsScaleCalibrator
from pipeline.calibration.calibrator import CALIBRATORS
from pipeline.config.parameters import defaults
from pipeline.errors import ConfigError
from pipeline.inputs.datafiles import find_data_file
from pipeline.inputs.nanoevents import read_eager
from pipeline.recipes.egamma import (
    DEFAULT_CORRECTION,
    DerivedEnergyCorrection,
    best_match_index,
    correction_abs_eta,
    correction_payload,
    fit_inputs,
    fit_linear_correction,
    match_table,
    write_correction_payload,
)

MC = {"isMC": True, "year": "2022_preEE", "sample": "TTbar", "dataset": "tt"}
MAX_DR = 0.1
FILES = ["nano_tt_v12.root", "nano_dy.root"]


@pytest.fixture(scope="module")
def dy_events():
    return read_eager(str(find_data_file("nano_dy.root")))


@pytest.fixture()
def events_by_file(tt_events, dy_events):
    return {"nano_tt_v12.root": tt_events, "nano_dy.root": dy_events}


def gen_electrons(events):
    gen = events.GenPart
    return gen[(abs(gen.pdgId) == 11) & (gen.status == 1)]


def reference_match(gen, reco, max_dr):
    """Plain-Python double loop: highest-pT reco object with deltaR <= max_dr, else None."""
    out, near_edge, multi, closest_differs = [], 0, 0, 0
    for g_event, r_event in zip(gen.tolist(), reco.tolist()):
        row = []
        for g in g_event:
            best, best_pt, candidates = None, -math.inf, []
            for j, r in enumerate(r_event):
                dphi = (g["phi"] - r["phi"] + math.pi) % (2 * math.pi) - math.pi
                dr = math.hypot(g["eta"] - r["eta"], dphi)
                near_edge += abs(dr - max_dr) < 1e-5
                if dr <= max_dr:
                    candidates.append((dr, j))
                    if r["pt"] > best_pt:
                        best, best_pt = j, r["pt"]
            multi += len(candidates) > 1
            closest_differs += bool(candidates) and min(candidates)[1] != best
            row.append(best)
        out.append(row)
    return out, {"near_edge": near_edge, "multi": multi, "closest_differs": closest_differs}


def typetracer(array):
    return ak.Array(array.layout.to_typetracer(forget_length=True))


# --- matching ---------------------------------------------------------------------------------


@pytest.mark.parametrize("file", FILES)
@pytest.mark.parametrize("max_dr", [MAX_DR, 0.8])
def test_best_match_index_against_double_loop(events_by_file, file, max_dr):
    events = events_by_file[file]
    gen, reco = gen_electrons(events), events.Electron
    got = best_match_index(gen, reco, max_dr)
    expected, stats = reference_match(gen, reco, max_dr)
    # float32 (awkward) and float64 (reference) deltaR could disagree at the cone's edge only
    assert stats["near_edge"] == 0
    assert str(got.type.content) == "var * ?int64"
    assert got.tolist() == expected
    n_matched = sum(j is not None for row in expected for j in row)
    n_unmatched = sum(j is None for row in expected for j in row)
    assert n_matched >= 10 and n_unmatched >= 10  # both outcomes are exercised
    assert ak.all(ak.num(got) == ak.num(gen))  # every generator object is kept
    if file == "nano_tt_v12.root":  # (the 40 DY events have no such case)
        # several candidates, and the highest-pT one is not always the closest
        assert stats["multi"] > 0 and stats["closest_differs"] > 0


def test_best_match_index_by_hand():
    gen = ak.Array([
        [{"eta": 0.0, "phi": math.pi - 0.01}, {"eta": 1.0, "phi": 0.0}],
        [],
        [{"eta": -2.0, "phi": 0.0}],
        [{"eta": 0.5, "phi": 0.0}],
    ])
    reco = ak.Array([
        # across the phi = +-pi boundary at deltaR 0.02; a higher-pT one at deltaR 0.05
        [{"pt": 40.0, "eta": 0.0, "phi": -math.pi + 0.01},
         {"pt": 60.0, "eta": 0.05, "phi": math.pi - 0.01},
         {"pt": 90.0, "eta": 1.5, "phi": 0.0}],
        [{"pt": 10.0, "eta": 0.0, "phi": 0.0}],
        [],
        # deltaR exactly 0.25, 0.125 and 0 (binary fractions); equal pT: the first wins
        [{"pt": 30.0, "eta": 0.75, "phi": 0.0}, {"pt": 30.0, "eta": 0.5, "phi": 0.125},
         {"pt": 10.0, "eta": 0.5, "phi": 0.0}],
    ])
    expected = {
        0.03: [[0, None], [], [None], [2]],
        0.1: [[1, None], [], [None], [2]],
        0.125: [[1, None], [], [None], [1]],  # the cone edge is inside
        0.25: [[1, None], [], [None], [0]],
        0.6: [[1, 2], [], [None], [0]],
    }
    for max_dr, indices in expected.items():
        assert best_match_index(gen, reco, max_dr).tolist() == indices, max_dr


@pytest.mark.parametrize("file", FILES)
def test_best_match_index_on_typetracers(events_by_file, file):
    events = events_by_file[file]
    gen, reco = gen_electrons(events), events.Electron
    eager = best_match_index(gen, reco, MAX_DR)
    traced = best_match_index(typetracer(gen), typetracer(reco), MAX_DR)
    assert ak.backend(traced) == "typetracer"
    assert traced.layout.form == eager.layout.form


def test_best_match_index_lazy_equals_eager(tt_events, tt_lazy):
    lazy = best_match_index(gen_electrons(tt_lazy), tt_lazy.Electron, MAX_DR)
    (computed,) = dask.compute(lazy)
    eager = best_match_index(gen_electrons(tt_events), tt_events.Electron, MAX_DR)
    assert computed.tolist() == eager.tolist()


def test_match_table_keeps_unmatched_with_flag(tt_events):
    gen, reco = gen_electrons(tt_events), tt_events.Electron
    eta_sc = correction_abs_eta(reco, "Electron")
    table = match_table(gen, reco, MAX_DR, reco_eta=eta_sc)
    index = best_match_index(gen, reco, MAX_DR)
    assert ak.all(ak.num(table) == ak.num(gen))
    assert ak.all(table.gen_pt == gen.pt)
    assert table.matched.tolist() == (~ak.is_none(index, axis=1)).tolist()
    pairs = []
    for i_event, row in enumerate(table.tolist()):
        for i_gen, (entry, j) in enumerate(zip(row, index[i_event].tolist())):
            if j is None:
                assert entry["reco_pt"] is None and entry["reco_eta"] is None
            else:
                ele = reco[i_event, j]
                eta_sc = abs(np.float32(ele.eta) + np.float32(ele.deltaEtaSC))
                assert entry["reco_pt"] == ele.pt and entry["reco_eta"] == eta_sc
                pairs.append((eta_sc, gen[i_event, i_gen].pt, ele.pt))
    assert len(pairs) > 50
    for got, expected in zip(fit_inputs(table), zip(*pairs)):
        np.testing.assert_array_equal(got, np.array(expected, dtype=np.float64))


# --- fit ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def matched_pairs(tt_events, dy_events):
    """|supercluster eta|, gen pt and reco pt of the matched electrons of both files."""
    parts = []
    for events in (tt_events, dy_events):
        reco = events.Electron
        table = match_table(gen_electrons(events), reco, MAX_DR,
                            reco_eta=correction_abs_eta(reco, "Electron"))
        parts.append(fit_inputs(table))
    out = tuple(np.concatenate(column) for column in zip(*parts))
    assert len(out[0]) >= 100 and np.ptp(out[0]) > 1.5
    return out


@pytest.mark.parametrize(("a0", "b0"), [(1.5, -0.75), (-3.0, 2.25)])
def test_fit_recovers_injected_offset(matched_pairs, a0, b0):
    abs_eta, gen_pt, _ = matched_pairs
    exact = gen_pt - (a0 + b0 * abs_eta)
    a, b = fit_linear_correction(abs_eta, gen_pt, exact)
    assert a == pytest.approx(a0, abs=1e-9) and b == pytest.approx(b0, abs=1e-9)
    # small deterministic noise, amplitude 0.01 GeV: the coefficients move by far less
    noise = 0.01 * np.sin(np.arange(len(gen_pt)) * 1.7)
    a, b = fit_linear_correction(abs_eta, gen_pt, exact + noise)
    assert a == pytest.approx(a0, abs=5e-3) and b == pytest.approx(b0, abs=5e-3)
    assert (a, b) != pytest.approx((a0, b0), abs=1e-9)  # the noise did reach the fit


def test_fit_agrees_with_polyfit_on_real_pairs(matched_pairs):
    abs_eta, gen_pt, reco_pt = matched_pairs
    a, b = fit_linear_correction(abs_eta, gen_pt, reco_pt)
    slope, intercept = np.polyfit(abs_eta, gen_pt - reco_pt, 1)
    assert a == pytest.approx(intercept, rel=1e-9, abs=1e-9)
    assert b == pytest.approx(slope, rel=1e-9, abs=1e-9)
    # weighted: sum w r^2 is polyfit's sum (w')^2 r^2 with w' = sqrt(w)
    weights = 1.0 / np.maximum(gen_pt, 1.0)
    a_w, b_w = fit_linear_correction(abs_eta, gen_pt, reco_pt, weights=weights)
    slope, intercept = np.polyfit(abs_eta, gen_pt - reco_pt, 1, w=np.sqrt(weights))
    assert a_w == pytest.approx(intercept, rel=1e-9, abs=1e-9)
    assert b_w == pytest.approx(slope, rel=1e-9, abs=1e-9)
    assert (a_w, b_w) != pytest.approx((a, b), rel=1e-6)  # the weights matter


def test_fit_rejects_bad_input():
    x = np.array([0.5, 1.0, 1.5])
    with pytest.raises(ValueError, match="same length"):
        fit_linear_correction(x, x[:2], x[:2])
    with pytest.raises(ValueError, match="two distinct"):
        fit_linear_correction(np.ones(3), x, x)
    with pytest.raises(ValueError, match="two distinct"):
        fit_linear_correction(x, x, x, weights=[1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="finite"):
        fit_linear_correction(x, [1.0, np.nan, 2.0], x)
    with pytest.raises(ValueError, match="non-negative"):
        fit_linear_correction(x, x, x, weights=[1.0, -1.0, 1.0])


# --- payload --------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".json", ".json.gz"])
def test_payload_evaluates_as_the_formula(tmp_path, suffix):
    a, b, eta_max = 0.731, -1.214, 2.5
    path = write_correction_payload(tmp_path / f"corr{suffix}", a, b, eta_max=eta_max,
                                    name="my_corr")
    raw = path.read_bytes()
    assert (raw[:2] == b"\x1f\x8b") == suffix.endswith(".gz")
    doc = json.loads(gzip.decompress(raw) if suffix.endswith(".gz") else raw)
    assert doc == correction_payload(a, b, eta_max=eta_max, name="my_corr")
    cset = correctionlib.CorrectionSet.from_file(str(path))
    assert list(cset) == ["my_corr"]
    corr = cset["my_corr"]
    assert [i.name for i in corr.inputs] == ["abs_eta", "pt"]
    abs_eta = np.linspace(0.0, 4.0, 41)
    pt = np.linspace(5.0, 205.0, 41)
    got = corr.evaluate(abs_eta, pt)
    expected = pt + a + b * np.minimum(abs_eta, eta_max)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    assert corr.evaluate(3.9, 50.0) == pytest.approx(50.0 + a + b * eta_max, rel=1e-12)


def test_payload_rejects_bad_values(tmp_path):
    with pytest.raises(ValueError, match="finite"):
        correction_payload(float("nan"), 1.0)
    with pytest.raises(ValueError, match="eta_max"):
        correction_payload(1.0, 1.0, eta_max=0.0)
    with pytest.raises(ValueError):
        write_correction_payload(tmp_path / "x.json", 1.0, float("inf"))
    assert not list(tmp_path.iterdir())  # nothing half-written


# --- calibrator -----------------------------------------------------------------------------


def params_for(path, year="2022_preEE", **extra):
    params = defaults()
    params.derived_energy_correction = {year: {"json_path": str(path), **extra}}
    return params


@pytest.fixture(scope="module")
def derived_payload(tmp_path_factory, matched_pairs):
    """The seed's chain: a payload fitted on the real matched electrons."""
    a, b = fit_linear_correction(*matched_pairs)
    path = tmp_path_factory.mktemp("derived") / "egamma_eta_linear.json.gz"
    return write_correction_payload(path, a, b), (a, b)


def test_calibrator_is_registered():
    assert CALIBRATORS["derived_energy_correction"] is DerivedEnergyCorrection
    assert DerivedEnergyCorrection.has_variations is False
    assert DerivedEnergyCorrection.isMC_only is False
    assert "Electron.pt" in DerivedEnergyCorrection.calibrated_collections


def same(x, y):
    return ak.array_equal(x, y, equal_nan=True, dtype_exact=True, check_parameters=False)


def test_calibrator_matches_direct_correctionlib(tt_events, derived_payload):
    path, (a, b) = derived_payload
    manager = CalibratorsManager([DerivedEnergyCorrection], tt_events, params_for(path), MC)
    out = dict(manager.calibration_loop(tt_events))
    assert list(out) == ["nominal"]
    calibrated = out["nominal"]
    corr = correctionlib.CorrectionSet.from_file(str(path))[DEFAULT_CORRECTION]
    expected = [
        corr.evaluate(float(abs(np.float32(e["eta"]) + np.float32(e["deltaEtaSC"]))), e["pt"])
        for electrons in tt_events.Electron for e in electrons
    ]
    assert len(expected) > 100
    got = ak.to_numpy(ak.flatten(calibrated.Electron.pt))
    np.testing.assert_array_equal(got, expected)
    # the payload holds the fit: pt + a + b min(|eta_SC|, 3)
    eta_sc = ak.to_numpy(ak.flatten(correction_abs_eta(tt_events.Electron, "Electron")))
    eta_sc = eta_sc.astype(np.float64)
    original = ak.to_numpy(ak.flatten(tt_events.Electron.pt)).astype(np.float64)
    np.testing.assert_allclose(got, original + a + b * np.minimum(eta_sc, 3.0), rtol=1e-12)
    assert not np.allclose(got, original)  # the correction did something
    # ... and nothing else changed
    assert calibrated.fields == tt_events.fields
    assert calibrated.Electron.fields == tt_events.Electron.fields
    for field in tt_events.Electron.fields:
        if field != "pt":
            assert same(calibrated.Electron[field], tt_events.Electron[field]), field
    for collection in tt_events.fields:
        if collection != "Electron":
            assert same(calibrated[collection], tt_events[collection]), collection


def test_calibrator_photons_use_supercluster_eta(tmp_path):
    events = read_eager(str(find_data_file("nano_tt_v15.root")))
    path = write_correction_payload(tmp_path / "pho.json", 0.4, -1.3)
    params = params_for(path, collection="Photon")
    manager = CalibratorsManager([DerivedEnergyCorrection], events, params, MC)
    calibrated = manager.calibrate(events, "nominal")
    pho = events.Photon
    assert ak.sum(ak.num(pho)) > 100
    # the formula directly, at |superclusterEta|, which differs from |eta|
    pt = ak.to_numpy(ak.flatten(pho.pt)).astype(np.float64)
    eta_sc = ak.to_numpy(ak.flatten(pho.superclusterEta)).astype(np.float64)
    expected = pt + 0.4 - 1.3 * np.minimum(np.abs(eta_sc), 3.0)
    got = ak.to_numpy(ak.flatten(calibrated.Photon.pt))
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert not ak.all(abs(pho.superclusterEta) == abs(pho.eta))
    assert same(calibrated.Electron, events.Electron)


def test_calibrator_without_section_changes_nothing(tt_events, derived_payload):
    path, _ = derived_payload
    for params, metadata in (
        (defaults(), MC),  # no derived_energy_correction section at all
        (params_for(path, year="2023_preBPix"), MC),  # another period only
    ):
        manager = CalibratorsManager([DerivedEnergyCorrection], tt_events, params, metadata)
        calibrated = manager.calibrate(tt_events, "nominal")
        assert manager.calibrators == ["derived_energy_correction"]
        assert same(calibrated.Electron, tt_events.Electron)


def test_calibrator_rejects_unsupported_collection(tt_events, tmp_path):
    path = write_correction_payload(tmp_path / "c.json", 1.0, 0.0)
    with pytest.raises(ConfigError, match="collection"):
        CalibratorsManager([DerivedEnergyCorrection], tt_events,
                           params_for(path, collection="Jet"), MC)
    with pytest.raises(ConfigError, match="unknown key"):
        CalibratorsManager([DerivedEnergyCorrection], tt_events,
                           params_for(path, colection="Photon"), MC)


def test_calibrator_corrects_upstream_variations(tt_events, derived_payload):
    """After scale and smearing, each variation's smeared pt is what gets corrected."""
    path, _ = derived_payload
    params = params_for(path)
    chain = CalibratorsManager([ElectronsScaleCalibrator, DerivedEnergyCorrection], tt_events,
                               params, MC)
    alone = CalibratorsManager([ElectronsScaleCalibrator], tt_events, params, MC)
    asked = ["electron_scale_and_smearing"]
    chained = dict(chain.calibration_loop(tt_events, variations_for_calibrators=asked))
    upstream = dict(alone.calibration_loop(tt_events, variations_for_calibrators=asked))
    assert list(chained) == list(upstream) and len(chained) == 5
    corr = correctionlib.CorrectionSet.from_file(str(path))[DEFAULT_CORRECTION]
    abs_eta = correction_abs_eta(tt_events.Electron, "Electron")
    for variation, events in chained.items():
        expected = corr.evaluate(abs_eta, upstream[variation].Electron.pt)
        assert ak.all(events.Electron.pt == expected), variation


class _JetShift(Calibrator):
    """A cheap calibrator with variations that touches jets only."""

    name = "test_egamma_derive_jet_shift"
    has_variations = True
    calibrated_collections = ["Jet.pt"]

    def initialize(self, events):
        self._variations = ["shiftUp", "shiftDown"]

    def calibrate(self, events, orig_colls, variation, already_applied_calibrators=None):
        factor = {"shiftUp": 1.1, "shiftDown": 0.9}.get(variation, 1.0)
        return {"Jet.pt": orig_colls["Jet.pt"] * factor}


def test_calibrator_reuses_nominal_when_upstream_leaves_electrons(tt_events, derived_payload):
    path, _ = derived_payload
    manager = CalibratorsManager([_JetShift, DerivedEnergyCorrection], tt_events,
                                 params_for(path), MC)
    out = dict(manager.calibration_loop(
        tt_events, variations_for_calibrators=["test_egamma_derive_jet_shift"]))
    assert list(out) == ["nominal", "shiftUp", "shiftDown"]
    for variation in ("shiftUp", "shiftDown"):
        assert manager.changed_collections(variation) == {"Jet"}
        assert ak.all(out[variation].Electron.pt == out["nominal"].Electron.pt)
        assert not ak.all(out[variation].Jet.pt == out["nominal"].Jet.pt)


def test_calibrator_lazy_equals_eager(tt_events, tt_lazy, derived_payload):
    path, _ = derived_payload
    params = params_for(path)
    eager = CalibratorsManager([DerivedEnergyCorrection], tt_events, params, MC)
    lazy = CalibratorsManager([DerivedEnergyCorrection], tt_lazy, params, MC)
    (computed,) = dask.compute(lazy.calibrate(tt_lazy, "nominal").Electron.pt)
    assert ak.all(computed == eager.calibrate(tt_events, "nominal").Electron.pt)
