"""Built-in CMS calibrators, weights and the jet veto map against independent computations.

Each reference below is written plainly: direct correctionlib calls, element by element,
in Python loops, or the legacy JetMET text payloads through coffea's lookup tools.
"""

from __future__ import annotations

import math

import awkward as ak
import correctionlib
import numpy as np
import pytest
from omegaconf import OmegaConf

from pipeline.calibration import (
    CalibratorsManager,
    ElectronsScaleCalibrator,
    JetsCalibrator,
    METCalibrator,
    PhotonsScaleCalibrator,
    default_calibrators_sequence,
)
from pipeline.calibration.met import type1_shift
from pipeline.config.parameters import defaults
from pipeline.cuts import make_cut
from pipeline.errors import InputFileError
from pipeline.inputs.datafiles import find_data_file
from pipeline.inputs.nanoevents import read_eager
from pipeline.rng import normal
from pipeline.weights import compute_weights

MC = {"isMC": True, "year": "2022_preEE", "sample": "TTbar", "dataset": "tt"}
DATA = {"isMC": False, "year": "2022_preEE", "era": "C", "sample": "Muon", "dataset": "mu"}
POG = "pog/2022_Summer22/"
RTOL = 1e-6


def cset(name: str) -> correctionlib.CorrectionSet:
    return correctionlib.CorrectionSet.from_file(str(find_data_file(name)))


def loop(manager, events, calibrators):
    return dict(manager.calibration_loop(events, calibrators))


# --- electrons and photons --------------------------------------------------------------------


def test_electron_smearing_and_variations_on_mc(tt_events):
    manager = CalibratorsManager([ElectronsScaleCalibrator], tt_events, defaults(), MC)
    out = loop(manager, tt_events, ["electron_scale_and_smearing"])
    assert list(out) == ["nominal", "ele_scaleUp", "ele_scaleDown", "ele_smearUp",
                         "ele_smearDown"]
    ss = cset(POG + "EGM_electronSS.json.gz")
    expected = {k: [] for k in out}
    for i_event, electrons in enumerate(tt_events.Electron):
        run = int(tt_events.run[i_event])
        lumi = int(tt_events.luminosityBlock[i_event])
        event = int(tt_events.event[i_event])
        for index, ele in enumerate(electrons):
            eta_sc = ele["eta"] + ele["deltaEtaSC"]
            pt, r9 = ele["pt"], ele["r9"]
            z = float(normal(np.array([run]), np.array([lumi]), np.array([event]),
                             np.array([index]), "electron_scale_and_smearing:smear")[0])
            rho = ss["Smearing"].evaluate("rho", eta_sc, r9)
            err = ss["Smearing"].evaluate("err_rho", eta_sc, r9)
            unc = ss["Scale"].evaluate("total_uncertainty", int(ele["seedGain"]), float(run),
                                       eta_sc, r9, pt)
            nominal = pt * (1 + rho * z)
            expected["nominal"].append(nominal)
            expected["ele_scaleUp"].append(nominal * (1 + unc))
            expected["ele_scaleDown"].append(nominal * (1 - unc))
            expected["ele_smearUp"].append(pt * (1 + (rho + err) * z))
            expected["ele_smearDown"].append(pt * (1 + (rho - err) * z))
    assert len(expected["nominal"]) > 50
    for variation, events in out.items():
        got = ak.to_numpy(ak.flatten(events.Electron.pt))
        np.testing.assert_allclose(got, expected[variation], rtol=RTOL, err_msg=variation)
        assert ak.all(events.Electron.pt_original == tt_events.Electron.pt)


def test_electron_scale_on_data(data_events):
    manager = CalibratorsManager([ElectronsScaleCalibrator], data_events, defaults(), DATA)
    out = loop(manager, data_events, ["electron_scale_and_smearing"])
    assert list(out) == ["nominal"]  # MC-only variations do not run on data
    scale = cset(POG + "EGM_electronSS.json.gz")["Scale"]
    expected = [
        ele["pt"] * scale.evaluate("total_correction", int(ele["seedGain"]), float(run),
                                   ele["eta"] + ele["deltaEtaSC"], ele["r9"], ele["pt"])
        for electrons, run in zip(data_events.Electron, data_events.run) for ele in electrons
    ]
    got = ak.to_numpy(ak.flatten(out["nominal"].Electron.pt))
    np.testing.assert_allclose(got, expected, rtol=RTOL)


def test_photon_twin(tt_file):
    events = read_eager(str(find_data_file("nano_tt_v15.root")))
    manager = CalibratorsManager([PhotonsScaleCalibrator], events, defaults(), MC)
    out = loop(manager, events, ["photon_scale_and_smearing"])
    assert "pho_smearUp" in out
    smearing = cset(POG + "EGM_photonSS.json.gz")["Smearing"]
    pho = ak.flatten(events.Photon)
    rho = np.array([smearing.evaluate("rho", p["superclusterEta"], p["r9"]) for p in pho])
    got = ak.to_numpy(ak.flatten(out["nominal"].Photon.pt))
    original = ak.to_numpy(pho.pt)
    # smearing factor (got/original - 1) / rho is the same standard normal z per photon
    z = (got / original - 1) / rho
    assert 0.2 < np.std(z) < 3 and np.all(np.isfinite(z))


def test_smearing_does_not_depend_on_chunking(tt_events):
    def smeared(events):
        manager = CalibratorsManager([ElectronsScaleCalibrator], events, defaults(), MC)
        return loop(manager, events, ["electron_scale_and_smearing"])

    whole = smeared(tt_events)
    parts = [smeared(tt_events[a:b]) for a, b in ((0, 1), (1, 77), (77, 200))]
    for variation, events in whole.items():
        stitched = ak.concatenate([p[variation].Electron.pt for p in parts])
        assert ak.all(stitched == events.Electron.pt), variation


# --- MET ------------------------------------------------------------------------------------------


def test_met_closure_with_nanoaod_jet_corrections(tt_events):
    """Type-1 from RawPuppiMET with the file's own jet corrections gives back PuppiMET.

    Measured agreement on nano_tt_v12.root: median relative difference 8e-4, 90 % of events
    within 0.7 %, at the level of NanoAOD's reduced float precision for jet pt and rawFactor.
    """
    jets = tt_events.Jet
    dx, dy = type1_shift(jets, jets.pt, jets.pt * (1 - jets.rawFactor), 15.0, 0.9)
    raw = tt_events.RawPuppiMET
    met = np.hypot(raw.pt * np.cos(raw.phi) - dx, raw.pt * np.sin(raw.phi) - dy)
    rel = np.abs(ak.to_numpy(met - tt_events.PuppiMET.pt)) / ak.to_numpy(tt_events.PuppiMET.pt)
    assert np.median(rel) < 2e-3
    assert np.quantile(rel, 0.9) < 1e-2


def test_met_propagates_every_jet_variation(tt_events):
    sequence = [JetsCalibrator, METCalibrator]
    manager = CalibratorsManager(sequence, tt_events, defaults(), MC)
    out = loop(manager, tt_events, ["jet_calibration", "met_rescaling"])
    assert "met_unclusteredUp" in out and "AK4PFPuppi_JES_Regrouped_AbsoluteUp" in out
    jec = cset("jet_jerc_Summer22_V3.json.gz").compound[
        "Summer22_22Sep2023_V3_MC_L1L2L3Res_AK4PFPuppi"]
    # the default propagates the unsmeared jets (pt_jec); the variations of the low-pt jets
    # and the smeared variant are checked in test_met.py
    for variation in ("nominal", "met_unclusteredUp"):
        events = out[variation]
        expected = []
        for i in range(len(tt_events)):
            x = tt_events.RawPuppiMET.pt[i] * math.cos(tt_events.RawPuppiMET.phi[i])
            y = tt_events.RawPuppiMET.pt[i] * math.sin(tt_events.RawPuppiMET.phi[i])
            if variation == "met_unclusteredUp":
                stored = tt_events.PuppiMET[i]
                x += (stored["ptUnclusteredUp"] * math.cos(stored["phiUnclusteredUp"])
                      - stored["pt"] * math.cos(stored["phi"]))
                y += (stored["ptUnclusteredUp"] * math.sin(stored["phiUnclusteredUp"])
                      - stored["pt"] * math.sin(stored["phi"]))
            for jet in events.Jet[i]:
                keep = 1 - jet["muonSubtrFactor"]
                corr, raw = jet["pt_jec"] * keep, jet["pt_raw"] * keep
                if corr > 15 and jet["chEmEF"] + jet["neEmEF"] < 0.9:
                    x -= (corr - raw) * math.cos(jet["phi"])
                    y -= (corr - raw) * math.sin(jet["phi"])
            rho = tt_events.Rho.fixedGridRhoFastjetAll[i]
            for low in tt_events.CorrT1METJet[i]:
                raw = low["rawPt"]
                corr = raw * jec.evaluate(low["area"], low["eta"], raw, rho)
                keep = 1 - low["muonSubtrFactor"]
                if corr * keep > 15:
                    x -= (corr - raw) * keep * math.cos(low["phi"])
                    y -= (corr - raw) * keep * math.sin(low["phi"])
            expected.append(math.hypot(x, y))
        np.testing.assert_allclose(ak.to_numpy(events.PuppiMET.pt), expected, rtol=RTOL,
                                   atol=1e-4, err_msg=variation)
    assert not np.allclose(ak.to_numpy(out["nominal"].PuppiMET.pt),
                           ak.to_numpy(out["AK4PFPuppi_JES_Regrouped_AbsoluteUp"].PuppiMET.pt))


# --- weights ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def weights(tt_events):
    names = ["pileup", "btag_shape", "electron_id", "muon_id_iso"]
    return compute_weights(tt_events, MC, defaults(), names, names)


def test_pileup_weight(tt_events):
    w = compute_weights(tt_events, MC, defaults(), ["pileup"], ["pileup"])
    pu = cset(POG + "LUM_puWeights.json.gz")[
        "Collisions2022_355100_357900_eraBCD_GoldenJson"]
    for key, variation in (("nominal", None), ("up", "pileupUp"), ("down", "pileupDown")):
        expected = [gw * pu.evaluate(float(n), key)
                    for gw, n in zip(tt_events.genWeight, tt_events.Pileup.nTrueInt)]
        got = w.nominal if variation is None else w.variations[variation]
        np.testing.assert_allclose(ak.to_numpy(got), expected, rtol=RTOL)


def btag_reference(events, systematic: str) -> list[float]:
    shape = cset(POG + "BTV_btagging.json.gz")["deepJet_shape"]
    out = []
    for jets in events.Jet:
        product = 1.0
        for jet in jets:
            if jet["pt"] <= 20 or abs(jet["eta"]) >= 2.5:
                continue
            flavor = int(jet["hadronFlavour"])
            c_only = "cferr" in systematic
            applies = systematic == "central" or (flavor == 4) == c_only
            disc = max(jet["btagDeepFlavB"], 0.0)
            syst = systematic if applies else "central"
            product *= shape.evaluate(syst, flavor, abs(jet["eta"]), jet["pt"], disc)
        out.append(product)
    return out


def test_btag_shape_weight(tt_events, weights):
    w = compute_weights(tt_events, MC, defaults(), ["btag_shape"], ["btag_shape"])
    gen = ak.to_numpy(tt_events.genWeight)
    np.testing.assert_allclose(ak.to_numpy(w.nominal), gen * btag_reference(tt_events, "central"),
                               rtol=RTOL)
    for syst, name in (("up_hf", "btag_hfUp"), ("down_lfstats2", "btag_lfstats2Down"),
                       ("up_cferr1", "btag_cferr1Up")):
        np.testing.assert_allclose(ak.to_numpy(w.variations[name]),
                                   gen * btag_reference(tt_events, syst), rtol=RTOL,
                                   err_msg=name)


def test_lepton_id_weights(tt_events):
    ele = cset(POG + "EGM_electron.json.gz")["Electron-ID-SF"]
    muo = cset(POG + "MUO_muon_Z.json.gz")
    w = compute_weights(tt_events, MC, defaults(), ["electron_id", "muon_id_iso"],
                        ["electron_id", "muon_id_iso"])
    expected, expected_mu_up = [], []
    for i in range(len(tt_events)):
        sf, sf_mu_up = float(tt_events.genWeight[i]), float(tt_events.genWeight[i])
        for e in tt_events.Electron[i]:
            eta = e["eta"] + e["deltaEtaSC"]
            if e["pt"] > 10 and abs(eta) < 2.5 and e["cutBased"] >= 4:
                value = ele.evaluate("2022Re-recoBCD", "sf", "Tight", eta, e["pt"])
                sf *= value
                sf_mu_up *= value
        for m in tt_events.Muon[i]:
            if m["pt"] > 15 and abs(m["eta"]) < 2.4 and m["tightId"] and m["pfRelIso04_all"] < 0.15:
                args = (abs(m["eta"]), m["pt"])
                sf *= (muo["NUM_TightID_DEN_TrackerMuons"].evaluate(*args, "nominal")
                       * muo["NUM_TightPFIso_DEN_TightID"].evaluate(*args, "nominal"))
                sf_mu_up *= (muo["NUM_TightID_DEN_TrackerMuons"].evaluate(*args, "systup")
                             * muo["NUM_TightPFIso_DEN_TightID"].evaluate(*args, "systup"))
        expected.append(sf)
        expected_mu_up.append(sf_mu_up)
    np.testing.assert_allclose(ak.to_numpy(w.nominal), expected, rtol=RTOL)
    np.testing.assert_allclose(ak.to_numpy(w.variations["muon_id_isoUp"]), expected_mu_up,
                               rtol=RTOL)


def test_weights_are_one_on_data(data_events):
    w = compute_weights(data_events, DATA, defaults(), ["pileup"], ["pileup"])
    assert ak.all(w.nominal == 1) and w.variations == {}


# --- jet veto map ---------------------------------------------------------------------------------


def test_jet_veto_map(tt_events):
    cut = make_cut("@jet_veto_map", "preselection.veto", defaults(), MC)
    veto = cset(POG + "JME_jetvetomaps.json.gz")["Summer22_23Sep2023_RunCD_V1"]
    expected = []
    for jets in tt_events.Jet:
        vetoed = False
        for j in jets:
            if (j["pt"] > 15 and j["jetId"] >= 2 and j["chEmEF"] + j["neEmEF"] < 0.9
                    and veto.evaluate("jetvetomap", max(min(j["eta"], 5.19), -5.19),
                                      max(min(j["phi"], 3.1415), -3.1415)) > 0):
                vetoed = True
        expected.append(not vetoed)
    got = ak.to_numpy(cut.evaluate(tt_events))
    assert got.tolist() == expected
    assert 0 < np.count_nonzero(got) <= len(got)


# --- the JSON payload agrees with the legacy text payloads ----------------------------------------


def test_json_jec_and_jes_agree_with_legacy_text(tt_events):
    from coffea.jetmet_tools import FactorizedJetCorrector, JetCorrectionUncertainty
    from coffea.lookup_tools import extractor

    tag = "Summer22_22Sep2023_V3_MC"
    levels = ["L1FastJet", "L2Relative", "L3Absolute", "L2L3Residual"]
    files = [f"{tag}_{lvl}_AK4PFPuppi.jec.txt.gz" for lvl in levels]
    files.append(f"{tag}_UncertaintySources_AK4PFPuppi.junc.txt.gz")
    ext = extractor()
    ext.add_weight_sets([f"* * {find_data_file(f)}" for f in files])
    ext.finalize()
    evaluator = ext.make_evaluator()
    corrector = FactorizedJetCorrector(
        **{f"{tag}_{lvl}_AK4PFPuppi": evaluator[f"{tag}_{lvl}_AK4PFPuppi"] for lvl in levels})
    jets = ak.flatten(tt_events.Jet)
    rho = ak.flatten(ak.broadcast_arrays(tt_events.Rho.fixedGridRhoFastjetAll,
                                         tt_events.Jet.pt)[0])
    raw = jets.pt * (1 - jets.rawFactor)
    legacy = corrector.getCorrection(JetEta=jets.eta, Rho=rho, JetPt=raw, JetA=jets.area)
    payload = cset("jet_jerc_Summer22_V3.json.gz")
    json_jec = payload.compound[f"{tag}_L1L2L3Res_AK4PFPuppi"].evaluate(
        jets.area, jets.eta, raw, rho)
    np.testing.assert_allclose(ak.to_numpy(json_jec), ak.to_numpy(legacy), rtol=1e-5)
    corrected = raw * json_jec
    for source in ("AbsoluteStat", "FlavorQCD", "RelativeBal", "Total"):
        name = f"{tag}_UncertaintySources_AK4PFPuppi_{source}"
        if name not in evaluator:
            continue
        junc = JetCorrectionUncertainty(**{name: evaluator[name]})
        (_, legacy_factors), = list(junc.getUncertainty(JetEta=jets.eta, JetPt=corrected))
        json_unc = ak.to_numpy(payload[f"{tag}_{source}_AK4PFPuppi"].evaluate(jets.eta, corrected))
        legacy_factors = ak.to_numpy(legacy_factors)
        # the JES scale factors 1 +- unc that the variations apply; the legacy tool returns
        # them in float32, so the uncertainties agree to its resolution (1.2e-7 absolute)
        np.testing.assert_allclose(1 + json_unc, legacy_factors[:, 0], rtol=1e-5, err_msg=source)
        np.testing.assert_allclose(1 - json_unc, legacy_factors[:, 1], rtol=1e-5, err_msg=source)
        np.testing.assert_allclose(json_unc, legacy_factors[:, 0] - 1, rtol=0, atol=1.2e-7)


# --- data and bad input ---------------------------------------------------------------------------


def test_default_sequence_on_data_runs_no_mc_variation(data_events):
    # nano_dimuon.root is 2018 collision data in an older NanoAOD: PF MET, no RawPuppiMET
    params = OmegaConf.merge(defaults(), {"met_rescaling": {"2022_preEE": {
        "met": "MET", "raw_met": "RawMET"}}})
    manager = CalibratorsManager(default_calibrators_sequence, data_events, params, DATA)
    names = [v for v, _ in manager.calibration_loop(
        data_events, ["jet_calibration", "electron_scale_and_smearing", "met_rescaling"])]
    assert names == ["nominal"]


def test_missing_payload_is_named(tt_events):
    params = OmegaConf.merge(defaults(), {"electron_scale_and_smearing": {
        "2022_preEE": {"json_path": "pog/2022_Summer22/EGM_nope.json.gz"}}})
    with pytest.raises(InputFileError, match="EGM_nope.json.gz"):
        CalibratorsManager([ElectronsScaleCalibrator], tt_events, params, MC)


def test_weights_reused_only_where_their_inputs_did_not_change(tt_events):
    """A variation recomputes only the weights whose collections it changed; the histograms
    equal those of recomputing every weight for every variation."""
    manager = CalibratorsManager(default_calibrators_sequence, tt_events, defaults(), MC)
    names = ["pileup", "btag_shape", "electron_id", "muon_id_iso"]
    out = loop(manager, tt_events, ["jet_calibration", "electron_scale_and_smearing",
                                    "met_rescaling"])
    assert manager.changed_collections("nominal") == set()
    # type-1 MET follows the jets only: an electron variation leaves it at the nominal's
    assert manager.changed_collections("ele_scaleUp") == {"Electron"}
    assert ak.all(out["ele_scaleUp"].PuppiMET.pt == out["nominal"].PuppiMET.pt)
    assert manager.changed_collections("met_unclusteredDown") == {"PuppiMET"}
    assert {"Jet", "PuppiMET"} <= manager.changed_collections("AK4PFPuppi_JERUp")
    assert "Electron" not in manager.changed_collections("AK4PFPuppi_JERUp")
    nominal = compute_weights(out["nominal"], MC, defaults(), names, [])
    for variation in ("ele_scaleUp", "AK4PFPuppi_JES_Regrouped_HFUp", "met_unclusteredDown"):
        reuse = nominal.reusable(manager.changed_collections(variation))
        fresh = compute_weights(out[variation], MC, defaults(), names, [])
        cached = compute_weights(out[variation], MC, defaults(), names, [], reuse=reuse)
        assert "muon_id_iso" in reuse and "pileup" in reuse
        assert ("btag_shape" in reuse) == ("JES" not in variation)
        assert ak.all(cached.nominal == fresh.nominal), variation
