"""The light analysis of issue 17 written by hand in coffea 2026, as a user would.

A ``processor.ProcessorABC`` run by ``processor.Runner`` on NanoAOD read by
``NanoEventsFactory`` in virtual mode (the Runner's own reading), corrections evaluated with
correctionlib on the payloads calibrew uses, histograms filled with hist:

* jets: the AK4 JEC (the compound L1L2L3Res correction of ``jet_jerc_Summer22_V3.json.gz`` on
  the raw pt), re-sorted by corrected pt; JES Total Up/Down as the jet-scale variation;
* one tight muon or electron (pt > 30 GeV, abs(eta) < 2.4), at least four central jets (pt > 30
  GeV after the JEC, abs(eta) < 2.4);
* b-tag regions ``1b`` and ``2b`` (>= 2 jets above the deepJet medium working point);
* weight: the generator weight times the b-tag shape weight (``deepJet_shape`` of
  ``BTV_btagging.json.gz``, product over the jets of pt > 20 GeV and abs(eta) < 2.5), computed
  on each jet variation's jets; its hf and lf systematics Up/Down at the nominal jets;
* histograms of HT and of the leading jet's pt per region and variation.

The variations carry calibrew's names (``AK4PFPuppi_JES_TotalUp``, ``btag_hfUp``, ...) so that
the two sets of histograms compare directly. The same analysis in calibrew:
``light_analysis.yaml``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import awkward as ak
import correctionlib
import hist
import numpy as np
from coffea import processor
from coffea.nanoevents import NanoAODSchema

JEC = "Summer22_22Sep2023_V3_MC_L1L2L3Res_AK4PFPuppi"
JES_TOTAL = "Summer22_22Sep2023_V3_MC_Total_AK4PFPuppi"
JERC_PAYLOAD = "jet_jerc_Summer22_V3.json.gz"
BTAG_PAYLOAD = "pog/2022_Summer22/BTV_btagging.json.gz"
BTAG_MEDIUM = 0.3086  # deepJet medium working point, 2022 (deepJet_wp_values "M")
BTAG_SYSTEMATICS = ("hf", "lf")
JES_VARIATIONS = {"AK4PFPuppi_JES_TotalUp": 1.0, "AK4PFPuppi_JES_TotalDown": -1.0}
REGIONS = ("1b", "2b")


@functools.cache
def corrections(data_dir: str) -> tuple[Any, Any, Any]:
    """The JEC compound, the JES Total uncertainty and the b-tag shape SF: read once per
    process (the processor itself stays small to pickle)."""
    jerc = correctionlib.CorrectionSet.from_file(str(Path(data_dir) / JERC_PAYLOAD))
    btag = correctionlib.CorrectionSet.from_file(str(Path(data_dir) / BTAG_PAYLOAD))
    return jerc.compound[JEC], jerc[JES_TOTAL], btag["deepJet_shape"]


def empty_histograms() -> dict[str, hist.Hist]:
    """HT and leading-jet pt by region and variation, with sums of squared weights."""
    def one(name: str, bins: int, stop: float, label: str) -> hist.Hist:
        return hist.Hist(
            hist.axis.StrCategory(REGIONS, name="category"),
            hist.axis.StrCategory([], name="variation", growth=True),
            hist.axis.Regular(bins, 0, stop, name=name, label=label),
            storage=hist.storage.Weight(),
        )

    return {"ht": one("ht", 25, 1000, "$H_T$ [GeV]"),
            "lead_jet_pt": one("pt", 30, 450, "Leading jet $p_T$ [GeV]")}


class LightProcessor(processor.ProcessorABC):
    """The light one-lepton ttbar analysis; ``data_dir`` holds the correction payloads."""

    def __init__(self, data_dir: str) -> None:
        self.data_dir = data_dir

    def process(self, events: Any) -> dict[str, Any]:
        jec, jes, btag = corrections(self.data_dir)
        jets = events.Jet
        raw_pt = jets.pt * (1 - jets.rawFactor)
        pt = raw_pt * jec.evaluate(jets.area, jets.eta, raw_pt,
                                   events.Rho.fixedGridRhoFastjetAll)
        uncertainty = jes.evaluate(jets.eta, pt)
        muons = events.Muon
        electrons = events.Electron
        n_leptons = ak.sum((muons.pt > 30) & (abs(muons.eta) < 2.4) & muons.tightId
                           & (muons.pfRelIso04_all < 0.15), axis=1) + ak.sum(
            (electrons.pt > 30) & (abs(electrons.eta) < 2.4) & (electrons.cutBased >= 4),
            axis=1)
        generator = ak.values_astype(events.genWeight, np.float64)
        out = {"histograms": empty_histograms(), "events": dict.fromkeys(REGIONS, 0),
               "processed": len(events)}
        shifts = {"nominal": pt, **{name: pt * (1 + sign * uncertainty)
                                    for name, sign in JES_VARIATIONS.items()}}
        for variation, shifted in shifts.items():
            self.fill(out, jets, shifted, n_leptons == 1, generator, btag, variation)
        return out

    def fill(self, out: dict[str, Any], jets: Any, pt: Any, one_lepton: Any, generator: Any,
             btag: Any, variation: str) -> None:
        """Select and fill the histograms of one jet variation (and, at the nominal, of the
        b-tag weight's systematics)."""
        jets = ak.with_field(jets, pt, "pt")
        jets = jets[ak.argsort(jets.pt, axis=1, ascending=False)]
        central = jets[(jets.pt > 30) & (abs(jets.eta) < 2.4)]
        n_b = ak.sum(central.btagDeepFlavB > BTAG_MEDIUM, axis=1)
        selected = one_lepton & (ak.num(central) >= 4)
        weights = self.btag_weights(jets, btag, variation == "nominal")
        weights = {variation if name == "central" else name: generator * w
                   for name, w in weights.items()}
        ht = ak.sum(central.pt, axis=1)
        lead = ak.firsts(central.pt)
        for region, in_region in zip(REGIONS, (n_b == 1, n_b >= 2)):
            mask = ak.to_numpy(selected & in_region)
            if variation == "nominal":
                out["events"][region] += int(np.count_nonzero(mask))
            for name, weight in weights.items():
                w = ak.to_numpy(weight[mask])
                out["histograms"]["ht"].fill(region, name, ak.to_numpy(ht[mask]), weight=w)
                out["histograms"]["lead_jet_pt"].fill(region, name, ak.to_numpy(lead[mask]),
                                                      weight=w)

    @staticmethod
    def btag_weights(jets: Any, btag: Any, systematics: bool) -> dict[str, Any]:
        """Per event, the product of the b-tag shape SF over the jets of pt > 20 GeV and
        abs(eta) < 2.5: ``central``, and with ``systematics`` each ``btag_{syst}Up/Down``
        (hf and lf apply to b and light jets; a c jet keeps its central SF)."""
        jets = jets[(jets.pt > 20) & (abs(jets.eta) < 2.5)]
        flavour = jets.hadronFlavour
        abseta = abs(jets.eta)
        disc = ak.where(jets.btagDeepFlavB < 0, 0.0, jets.btagDeepFlavB)
        central = btag.evaluate("central", flavour, abseta, jets.pt, disc)
        out = {"central": ak.prod(central, axis=1)}
        if not systematics:
            return out
        is_c = flavour == 4
        not_c = ak.where(is_c, 5, flavour)
        for syst in BTAG_SYSTEMATICS:
            for direction in ("up", "down"):
                sf = btag.evaluate(f"{direction}_{syst}", not_c, abseta, jets.pt, disc)
                out[f"btag_{syst}{direction.capitalize()}"] = ak.prod(
                    ak.where(is_c, central, sf), axis=1)
        return out

    def postprocess(self, accumulator: Any) -> Any:
        return accumulator


def run(path: str, data_dir: str, chunksize: int, executor: Any,
        processor_instance: processor.ProcessorABC | None = None) -> dict[str, Any]:
    """The analysis of ``path`` through ``processor.Runner`` with ``executor``: its output
    (``histograms``, ``events`` per region at the nominal, ``processed``)."""
    runner = processor.Runner(executor=executor, schema=NanoAODSchema, chunksize=chunksize)
    return runner({"tt": {"files": {path: "Events"}}},
                  processor_instance or LightProcessor(data_dir), treename="Events")
