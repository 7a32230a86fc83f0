"""The jet calibrator against direct correctionlib evaluation, element by element."""

from __future__ import annotations

import awkward as ak
import correctionlib
import numpy as np
import pytest

from pipeline.calibration import CalibratorsManager, JetsCalibrator
from pipeline.errors import ConfigError, UnknownNameError
from pipeline.samples import find_data_file

MC = {"isMC": True, "year": "2022_preEE", "sample": "TTbar", "dataset": "tt"}
TAG = "Summer22_22Sep2023_V3_MC"


def flat(array) -> np.ndarray:
    return np.asarray(ak.to_numpy(ak.flatten(array)), dtype=np.float64)


@pytest.fixture(scope="module")
def payload():
    path = find_data_file("jet_jerc_Summer22_V3.json.gz")
    return correctionlib.CorrectionSet.from_file(str(path))


@pytest.fixture(scope="module")
def calibrated(tt_events):
    from pipeline.parameters import defaults

    manager = CalibratorsManager([JetsCalibrator], tt_events, defaults(), MC)
    return dict(manager.calibration_loop(tt_events, ["jet_calibration"]))


def reference_jec(events, payload):
    """JEC by hand: raw pt from rawFactor, compound L1L2L3Res per jet, in a plain loop."""
    jec = payload.compound[f"{TAG}_L1L2L3Res_AK4PFPuppi"]
    out = []
    for jets, rho in zip(events.Jet, events.Rho.fixedGridRhoFastjetAll):
        for jet in jets:
            raw = jet["pt"] * (1 - jet["rawFactor"])
            out.append(raw * jec.evaluate(jet["area"], jet["eta"], raw, rho))
    return np.array(out)


def test_jec_matches_correctionlib(tt_events, calibrated, payload):
    # JER off: compare the JEC-only pt
    from omegaconf import OmegaConf

    from pipeline.parameters import defaults

    params = OmegaConf.merge(defaults(), {"jets_calibration": {"apply_jer_MC": {
        "2022_preEE": {"AK4PFPuppi": False, "AK8PFPuppi": False}}}})
    manager = CalibratorsManager([JetsCalibrator], tt_events, params, MC,
                                 requested_calibrator_variations=[])
    (_, nominal), = list(manager.calibration_loop(tt_events))
    expected = reference_jec(tt_events, payload)
    np.testing.assert_allclose(flat(nominal.Jet.pt), expected, rtol=1e-6)
    np.testing.assert_allclose(flat(nominal.Jet.pt_raw),
                               flat(tt_events.Jet.pt * (1 - tt_events.Jet.rawFactor)), rtol=1e-7)


def test_jes_variations_match_correctionlib(tt_events, calibrated, payload):
    nominal = flat(calibrated["nominal"].Jet.pt)
    # the JES shift multiplies the (smeared) nominal by 1 +- unc(eta, pt_jec)
    jec_pt = reference_jec(tt_events, payload)
    eta = flat(tt_events.Jet.eta)
    for source in ("Regrouped_Absolute", "Regrouped_FlavorQCD", "Regrouped_HF_2022"):
        unc = payload[f"{TAG}_{source}_AK4PFPuppi"]
        expected_unc = np.array([unc.evaluate(e, p) for e, p in zip(eta, jec_pt)])
        up = flat(calibrated[f"AK4PFPuppi_JES_{source}Up"].Jet.pt)
        down = flat(calibrated[f"AK4PFPuppi_JES_{source}Down"].Jet.pt)
        np.testing.assert_allclose(up, nominal * (1 + expected_unc), rtol=1e-6)
        np.testing.assert_allclose(down, nominal * (1 - expected_unc), rtol=1e-6)


def test_jer_is_independent_of_chunking(tt_events):
    from pipeline.parameters import defaults

    def jer_pt(events):
        manager = CalibratorsManager([JetsCalibrator], events, defaults(), MC)
        return {v: e.Jet.pt for v, e in manager.calibration_loop(events, ["jet_calibration"])
                if "JER" in v or v == "nominal"}

    whole = jer_pt(tt_events)
    parts = [jer_pt(tt_events[a:b]) for a, b in ((0, 29), (29, 113), (113, 200))]
    for variation, values in whole.items():
        stitched = ak.concatenate([p[variation] for p in parts])
        assert ak.all(stitched == values), variation  # bit-identical


def test_jer_smears_unmatched_and_scales_matched(tt_events, calibrated):
    nominal = flat(calibrated["nominal"].Jet.pt)
    up = flat(calibrated["AK4PFPuppi_JERUp"].Jet.pt)
    assert not np.allclose(nominal, up)
    assert np.all(nominal >= 0)


def test_data_uses_era_tag_and_has_no_variations(tt_events):
    from pipeline.parameters import defaults

    data = {"isMC": False, "year": "2022_preEE", "era": "C", "sample": "Muon", "dataset": "d"}
    manager = CalibratorsManager([JetsCalibrator], tt_events, defaults(), data)
    assert manager.get_available_variations() == ["nominal"]
    with pytest.raises(ConfigError, match="no JEC tag for data era 'Z'"):
        CalibratorsManager([JetsCalibrator], tt_events, defaults(), {**data, "era": "Z"})


def test_unknown_period_and_correction_are_named(tt_events):
    from omegaconf import OmegaConf

    from pipeline.parameters import defaults

    with pytest.raises(ConfigError, match="no jet collections for period '2031'"):
        CalibratorsManager([JetsCalibrator], tt_events, defaults(), {**MC, "year": "2031"})
    params = OmegaConf.merge(defaults(), {"jets_calibration": {"variations": {
        "2022_preEE": {"AK4PFPuppi": ["JES_Absolut"]}}}})
    with pytest.raises(UnknownNameError, match="jet_jerc_Summer22_V3.json.gz: unknown correction "
                                               "'Summer22_22Sep2023_V3_MC_Absolut_AK4PFPuppi'"):
        CalibratorsManager([JetsCalibrator], tt_events, params, MC)


def test_missing_branch_is_named(tt_events):
    from pipeline.errors import CalibrationError
    from pipeline.parameters import defaults

    stripped = ak.with_field(tt_events, tt_events.Jet[["pt", "eta", "phi", "mass", "area"]], "Jet")
    with pytest.raises(CalibrationError, match="Jet_rawFactor is missing"):
        CalibratorsManager([JetsCalibrator], stripped, defaults(), MC)


def test_optional_sort_by_pt(tt_events):
    from omegaconf import OmegaConf

    from pipeline.parameters import defaults

    params = OmegaConf.merge(defaults(), {"jets_calibration": {"sort_by_pt": {
        "2022_preEE": {"AK4PFPuppi": True}}}})
    unsorted = dict(CalibratorsManager([JetsCalibrator], tt_events, defaults(), MC)
                    .calibration_loop(tt_events, ["jet_calibration"]))
    manager = CalibratorsManager([JetsCalibrator], tt_events, params, MC)
    for variation, events in manager.calibration_loop(tt_events, ["jet_calibration"]):
        pt = events.Jet.pt
        assert ak.all(pt[:, 1:] <= pt[:, :-1]), variation
        # the same jets, reordered: every field moved with its jet
        order = ak.argsort(unsorted[variation].Jet.pt, axis=1, ascending=False)
        assert ak.all(events.Jet.eta == tt_events.Jet.eta[order])
        assert ak.all(pt == unsorted[variation].Jet.pt[order])


def test_jer_matches_a_plain_computation(tt_events):
    """Hybrid JER for AK4 and AK8 jets, jet by jet, with direct correctionlib calls."""
    import math

    from pipeline.parameters import defaults
    from pipeline.rng import normal

    manager = CalibratorsManager([JetsCalibrator], tt_events, defaults(), MC)
    out = dict(manager.calibration_loop(tt_events, ["jet_calibration"]))
    cases = [
        ("Jet", "GenJet", "genJetIdx", "AK4PFPuppi", 0.4, "jet_jerc_Summer22_V3.json.gz", TAG),
        ("FatJet", "GenJetAK8", "genJetAK8Idx", "AK8PFPuppi", 0.8,
         "pog/2022_Summer22/JME_fatJet_jerc.json.gz", "Summer22_22Sep2023_V2_MC"),
    ]
    for coll, gen_coll, index_field, jet_type, radius, path, tag in cases:
        cs = correctionlib.CorrectionSet.from_file(str(find_data_file(path)))
        jec = cs.compound[f"{tag}_L1L2L3Res_{jet_type}"]
        reso = cs[f"Summer22_22Sep2023_JRV1_MC_PtResolution_{jet_type}"]
        scale = cs[f"Summer22_22Sep2023_JRV1_MC_ScaleFactor_{jet_type}"]
        expected = {"nominal": [], f"{jet_type}_JERUp": [], f"{jet_type}_JERDown": []}
        for i in range(len(tt_events)):
            rho = tt_events.Rho.fixedGridRhoFastjetAll[i]
            gens = tt_events[gen_coll][i]
            ids = [int(tt_events[k][i]) for k in ("run", "luminosityBlock", "event")]
            for index, jet in enumerate(tt_events[coll][i]):
                raw = jet["pt"] * (1 - jet["rawFactor"])
                pt = raw * jec.evaluate(jet["area"], jet["eta"], raw, rho)
                sigma = reso.evaluate(jet["eta"], pt, rho)
                g = int(jet[index_field])
                matched = False
                if 0 <= g < len(gens):
                    gen = gens[g]
                    dphi = (jet["phi"] - gen["phi"] + math.pi) % (2 * math.pi) - math.pi
                    matched = (math.hypot(jet["eta"] - gen["eta"], dphi) < radius / 2
                               and abs(pt - gen["pt"]) < 3 * sigma * pt)
                z = float(normal(*(np.array([v]) for v in ids), np.array([index]),
                                 f"jer:{jet_type}")[0])
                for key, syst in (("nominal", "nom"), (f"{jet_type}_JERUp", "up"),
                                  (f"{jet_type}_JERDown", "down")):
                    s = scale.evaluate(jet["eta"], pt, syst)
                    if matched:
                        factor = 1 + (s - 1) * (pt - gen["pt"]) / pt
                    else:
                        factor = 1 + sigma * z * math.sqrt(max(s * s - 1, 0.0))
                    expected[key].append(pt * max(factor, 0.0))
        assert len(expected["nominal"]) > 0
        for key, values in expected.items():
            got = ak.to_numpy(ak.flatten(out[key][coll].pt))
            np.testing.assert_allclose(got, values, rtol=1e-6, err_msg=f"{coll} {key}")


def test_payloads_are_loaded_once_per_process(tt_events):
    from pipeline.corrections.loader import _load
    from pipeline.parameters import defaults

    _load.cache_clear()
    for a, b in ((0, 100), (100, 200)):
        chunk = tt_events[a:b]
        manager = CalibratorsManager([JetsCalibrator], chunk, defaults(), MC)
        list(manager.calibration_loop(chunk, ["jet_calibration"]))
    info = _load.cache_info()
    assert info.misses == 2  # the AK4 and the AK8 payloads, each parsed once
    assert info.hits > 0
