"""The jet calibrator against direct correctionlib evaluation, element by element."""

from __future__ import annotations

import awkward as ak
import correctionlib
import numpy as np
import pytest

from pipeline.calibration import CalibratorsManager, JetsCalibrator
from pipeline.errors import ConfigError, UnknownNameError
from pipeline.inputs.datafiles import find_data_file

MC = {"isMC": True, "year": "2022_preEE", "sample": "TTbar", "dataset": "tt"}
TAG = "Summer22_22Sep2023_V3_MC"


def flat(array) -> np.ndarray:
    return np.asarray(ak.to_numpy(ak.flatten(array)), dtype=np.float64)


def file_order(jets, field: str = "pt") -> np.ndarray:
    """A field of calibrated jets (sorted by pt), flat in the input file's jet order."""
    return flat(jets[field][ak.argsort(jets.original_index, axis=1)])


@pytest.fixture(scope="module")
def payload():
    path = find_data_file("jet_jerc_Summer22_V3.json.gz")
    return correctionlib.CorrectionSet.from_file(str(path))


@pytest.fixture(scope="module")
def calibrated(tt_events):
    from pipeline.config.parameters import defaults

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

    from pipeline.config.parameters import defaults

    params = OmegaConf.merge(defaults(), {"jets_calibration": {"apply_jer_MC": {
        "2022_preEE": {"AK4PFPuppi": False, "AK8PFPuppi": False}}}})
    manager = CalibratorsManager([JetsCalibrator], tt_events, params, MC,
                                 requested_calibrator_variations=[])
    (_, nominal), = list(manager.calibration_loop(tt_events))
    expected = reference_jec(tt_events, payload)
    np.testing.assert_allclose(file_order(nominal.Jet), expected, rtol=1e-6)
    np.testing.assert_allclose(file_order(nominal.Jet, "pt_raw"),
                               flat(tt_events.Jet.pt * (1 - tt_events.Jet.rawFactor)), rtol=1e-7)


def test_jes_variations_match_correctionlib(tt_events, calibrated, payload):
    nominal = file_order(calibrated["nominal"].Jet)
    # the JES shift multiplies the (smeared) nominal by 1 +- unc(eta, pt_jec)
    jec_pt = reference_jec(tt_events, payload)
    eta = flat(tt_events.Jet.eta)
    for source in ("Regrouped_Absolute", "Regrouped_FlavorQCD", "Regrouped_HF_2022"):
        unc = payload[f"{TAG}_{source}_AK4PFPuppi"]
        expected_unc = np.array([unc.evaluate(e, p) for e, p in zip(eta, jec_pt)])
        up = file_order(calibrated[f"AK4PFPuppi_JES_{source}Up"].Jet)
        down = file_order(calibrated[f"AK4PFPuppi_JES_{source}Down"].Jet)
        np.testing.assert_allclose(up, nominal * (1 + expected_unc), rtol=1e-6)
        np.testing.assert_allclose(down, nominal * (1 - expected_unc), rtol=1e-6)


def test_jer_is_independent_of_chunking(tt_events):
    from pipeline.config.parameters import defaults

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
    nominal = file_order(calibrated["nominal"].Jet)
    up = file_order(calibrated["AK4PFPuppi_JERUp"].Jet)
    assert not np.allclose(nominal, up)
    for variation in ("nominal", "AK4PFPuppi_JERUp", "AK4PFPuppi_JERDown"):
        for coll in ("Jet", "FatJet"):
            assert np.all(flat(calibrated[variation][coll].pt) > 0), (variation, coll)


def test_jer_smearing_floors_the_jet_energy(tt_events, calibrated, payload):
    """CMSSW's SmearedJetProducerT: a smearing factor that would leave the jet below
    MIN_JET_ENERGY = 1e-2 GeV becomes 1e-2 / E (E: the JEC-corrected jet energy), so the
    smeared jet keeps its direction with E = 1e-2 GeV; pt and mass scale alike."""
    for variation in ("nominal", "AK4PFPuppi_JERUp", "AK4PFPuppi_JERDown"):
        jets = calibrated[variation].Jet
        pt, pt_jec = file_order(jets), file_order(jets, "pt_jec")
        mass, mass_jec = file_order(jets, "mass"), file_order(jets, "mass_jec")
        eta = flat(tt_events.Jet.eta)
        energy_jec = np.hypot(pt_jec * np.cosh(eta), mass_jec)
        # (eta is float32 in NanoAOD: the calibrator's cosh(eta) rounds at 1e-7)
        floored = np.isclose(pt / pt_jec, 1e-2 / energy_jec, rtol=1e-6, atol=0)
        if variation == "nominal":
            assert np.count_nonzero(floored) >= 6  # forward jets smeared below zero before
        np.testing.assert_allclose(np.hypot(pt * np.cosh(eta), mass)[floored], 1e-2,
                                   rtol=1e-6)
        np.testing.assert_allclose(mass[floored], (mass_jec * pt / pt_jec)[floored],
                                   rtol=1e-12)
        assert np.all(pt > 0)


def test_data_uses_era_tag_and_has_no_variations(tt_events):
    from pipeline.config.parameters import defaults

    data = {"isMC": False, "year": "2022_preEE", "era": "C", "sample": "Muon", "dataset": "d"}
    manager = CalibratorsManager([JetsCalibrator], tt_events, defaults(), data)
    assert manager.get_available_variations() == ["nominal"]
    with pytest.raises(ConfigError, match="no JEC tag for data era 'Z'"):
        CalibratorsManager([JetsCalibrator], tt_events, defaults(), {**data, "era": "Z"})


def test_unknown_period_and_correction_are_named(tt_events):
    from omegaconf import OmegaConf

    from pipeline.config.parameters import defaults

    with pytest.raises(ConfigError, match="no jet collections for period '2031'"):
        CalibratorsManager([JetsCalibrator], tt_events, defaults(), {**MC, "year": "2031"})
    params = OmegaConf.merge(defaults(), {"jets_calibration": {"variations": {
        "2022_preEE": {"AK4PFPuppi": ["JES_Absolut"]}}}})
    with pytest.raises(UnknownNameError, match="jet_jerc_Summer22_V3.json.gz: unknown correction "
                                               "'Summer22_22Sep2023_V3_MC_Absolut_AK4PFPuppi'"):
        CalibratorsManager([JetsCalibrator], tt_events, params, MC)


def test_missing_branch_is_named(tt_events):
    from pipeline.config.parameters import defaults
    from pipeline.errors import CalibrationError

    stripped = ak.with_field(tt_events, tt_events.Jet[["pt", "eta", "phi", "mass", "area"]], "Jet")
    with pytest.raises(CalibrationError, match="Jet_rawFactor is missing"):
        CalibratorsManager([JetsCalibrator], stripped, defaults(), MC)


def test_jets_are_sorted_by_pt_in_every_variation_by_default(tt_events, calibrated):
    """Nominal and every variation: decreasing pt, each jet keeping all its fields and its
    ``original_index`` (the position in the input file), so gen matching stays traceable."""
    unsorted = dict(CalibratorsManager([JetsCalibrator], tt_events, no_sort(), MC)
                    .calibration_loop(tt_events, ["jet_calibration"]))
    assert len(calibrated) > 20
    for variation, events in calibrated.items():
        for coll in ("Jet", "FatJet"):
            jets = events[coll]
            pt = jets.pt
            assert ak.all(pt[:, 1:] <= pt[:, :-1]), (variation, coll)
            index = jets.original_index
            original = tt_events[coll]
            assert ak.all(ak.sort(index, axis=1) == ak.local_index(original, axis=1))
            for field in ("eta", "phi", "rawFactor", "area"):
                assert ak.all(jets[field] == original[field][index]), (variation, field)
            gen = "genJetIdx" if coll == "Jet" else "genJetAK8Idx"
            assert ak.all(jets[gen] == original[gen][index])
            # the same values as without sorting, moved with their jet
            assert ak.all(pt == unsorted[variation][coll].pt[index]), (variation, coll)
    # 79 of the 200 events have their jets out of pt order before sorting
    before = unsorted["nominal"].Jet.pt
    assert ak.sum(ak.any(before[:, 1:] > before[:, :-1], axis=1)) > 50


def no_sort():
    from omegaconf import OmegaConf

    from pipeline.config.parameters import defaults

    return OmegaConf.merge(defaults(), {"jets_calibration": {"sort_by_pt": {
        "2022_preEE": {"AK4PFPuppi": False, "AK8PFPuppi": False}}}})


def test_sorting_can_be_switched_off(tt_events):
    manager = CalibratorsManager([JetsCalibrator], tt_events, no_sort(), MC)
    assert manager.calibrator_sequence[0].reordered_collections() == set()
    for variation, events in manager.calibration_loop(tt_events, ["jet_calibration"]):
        assert ak.all(events.Jet.eta == tt_events.Jet.eta), variation
        assert ak.all(events.Jet.original_index == ak.local_index(tt_events.Jet, axis=1))


def test_jer_matches_a_plain_computation(tt_events):
    """Hybrid JER for AK4 and AK8 jets, jet by jet, with direct correctionlib calls."""
    import math

    from pipeline.config.parameters import defaults
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
                    # CMSSW's floor: the smeared energy is at least 1e-2 GeV
                    energy = math.hypot(pt * math.cosh(jet["eta"]),
                                        jet["mass"] * (1 - jet["rawFactor"]) * pt / raw)
                    expected[key].append(pt * max(factor, 1e-2 / energy))
        assert len(expected["nominal"]) > 0
        for key, values in expected.items():
            got = file_order(out[key][coll])
            np.testing.assert_allclose(got, values, rtol=1e-6, err_msg=f"{coll} {key}")


def test_payloads_are_loaded_once_per_process(tt_events):
    from pipeline.config.parameters import defaults
    from pipeline.corrections.loader import _index

    _index.cache_clear()
    for a, b in ((0, 100), (100, 200)):
        chunk = tt_events[a:b]
        manager = CalibratorsManager([JetsCalibrator], chunk, defaults(), MC)
        list(manager.calibration_loop(chunk, ["jet_calibration"]))
    info = _index.cache_info()
    assert info.misses == 2  # the AK4 and the AK8 payloads, each indexed once
    assert info.hits > 0
