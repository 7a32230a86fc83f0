"""PocketCoffea 0.9.13 on calibrew's benchmark jet work: a peer process of ``bench.py``.

Not a test, and not imported by calibrew: ``bench.py --whole-process`` runs this script with
the Python of PocketCoffea's own virtual environment (coffea 0.7, awkward 1), timed from
before the spawn, and reads the JSON line it prints last::

    <venv>/bin/python tests/benchmarks/peers/pocketcoffea_jets.py --file SAMPLE.root \\
        --payload jet_jerc_Summer22_V3.json.gz --events 100000 --chunksize 50000 --work jets

It does what a PocketCoffea workflow does for each chunk, with PocketCoffea's own code:
coffea 0.7 ``NanoEventsFactory`` reads the chunk, a ``CalibratorsManager`` initialises
PocketCoffea's ``JetsCalibrator`` (``--work met``: and its ``METCalibrator``, type-1 MET of
``PuppiMET`` from ``RawPuppiMET``, the calibrated ``Jet`` and ``CorrT1METJet``) on it, and
``calibration_loop`` yields the events of each variation. The histograms are those of
calibrew's benchmark jet chain, filled with ``hist``: the pt of the jets with pt > 30 GeV and
abs(eta) < 2.4 and their sum (``ht``) in events with two such jets, weighted by ``genWeight``
(``--work met``: and the MET pt of those events).

The parameters are PocketCoffea's defaults (``get_default_parameters``) with the AK4 jets
alone (``collection`` replaced, as calibrew's benchmark does) and the payload and tags of
calibrew's jet chain (``Summer22_22Sep2023_V3_MC``, ``Summer22_22Sep2023_JRV1_MC``) in place of
PocketCoffea's CVMFS ones; its default variations of 2022_preEE are JES Total and JER. That
payload's JER scale factor has a ``systematic`` input (JRV1), which 0.9.13's smearing code
no longer reads: :func:`jersmear_by_systematic` calls PocketCoffea's own ``get_jersmear`` for
it instead (the only code of this script in PocketCoffea's chain).
Without CVMFS the ``cvmfs`` resolver gives placeholder paths (used by no step here).

The printed JSON holds the seconds of the imports (from the interpreter's start of this
script), of the setup (parameters), of the first chunk (the warm-up) and of the others (the
steady state); with ``--check``, instead, the figures of the first chunk that ``bench.py``
compares with calibrew's jet chain (an untimed process of its own).
"""

from __future__ import annotations

import time

START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import warnings  # noqa: E402

import awkward as ak  # noqa: E402
import hist  # noqa: E402
import numpy as np  # noqa: E402
from coffea.nanoevents import NanoAODSchema, NanoEventsFactory  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from pocket_coffea.lib import jets as pc_jets  # noqa: E402
from pocket_coffea.lib.calibrators.calibrators_manager import CalibratorsManager  # noqa: E402
from pocket_coffea.lib.calibrators.common import JetsCalibrator, METCalibrator  # noqa: E402
from pocket_coffea.lib.jets import get_jersmear, jet_correction_corrlib  # noqa: E402
from pocket_coffea.parameters import defaults  # noqa: E402

YEAR = "2022_preEE"
METADATA = {"dataset": "bench", "sample": "TTbar", "year": YEAR, "isMC": True,
            "nano_version": 12}
JEC_TAG = "Summer22_22Sep2023_V3_MC"
JER_TAG = "Summer22_22Sep2023_JRV1_MC"
COLLECTIONS = {"jets": {"AK4PFPuppi": "Jet"},
               "met": {"AK4PFPuppi": "Jet", "AK4CorrT1METJetPuppi": "CorrT1METJet"}}
CALIBRATORS = {"jets": [JetsCalibrator], "met": [JetsCalibrator, METCalibrator]}


def placeholder_cvmfs(group_tags: dict | None = None) -> None:
    """Stand-in for ``defaults.setup_cvmfs_resolver`` without CVMFS: ``${cvmfs:...}`` gives
    a path under ``/cvmfs-absent`` (no step of this script opens one).

    >>> placeholder_cvmfs(); OmegaConf.create({"p": "${cvmfs:2022,JME,a.json}"}).p
    '/cvmfs-absent/JME/2022/a.json'
    """
    OmegaConf.register_new_resolver(
        "cvmfs", lambda period, group, file, tag=None: f"/cvmfs-absent/{group}/{period}/{file}",
        replace=True)


def parameters(payload: str, work: str) -> OmegaConf:
    """PocketCoffea's default parameters, with the AK4 jets of ``work`` alone and calibrew's
    jet payload and tags."""
    defaults.setup_cvmfs_resolver = placeholder_cvmfs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        params = defaults.get_default_parameters()
    OmegaConf.update(params, f"jets_calibration.jet_types.AK4PFPuppi.{YEAR}",
                     {"json_path": payload, "jec_mc": JEC_TAG, "jec_data": JEC_TAG,
                      "jer": JER_TAG, "level": "L1L2L3Res"}, merge=False)
    OmegaConf.update(params, f"jets_calibration.collection.{YEAR}", COLLECTIONS[work],
                     merge=False)
    OmegaConf.update(params, f"jets_calibration.merge_collections_for_variations.{YEAR}",
                     {"AK4PFPuppi": list(COLLECTIONS[work])}, merge=False)
    return params


def jersmear_by_systematic(eval_dict: dict, ceval, jer_sf_tag: str, syst_tag=None):
    """PocketCoffea's JER smearing factors, nominal, up and down, for a payload whose JER
    scale factor takes a ``systematic`` input (``JRV1``, calibrew's payload), with
    PocketCoffea's own :func:`~pocket_coffea.lib.jets.get_jersmear` for each.

    PocketCoffea 0.9.13's ``jet_correction_corrlib`` calls ``get_jersmear_SFunc``, written
    for the ``JRV2`` payloads (a scale factor without ``systematic`` and a separate
    ``SFUncertainty``); the payload here has no ``JRV2``, so :func:`main` puts this function
    in its place: same inputs, same outputs, PocketCoffea's own smearing correction.
    """
    smear = {}
    for syst in ("nom", "up", "down"):
        eval_dict, smear[syst] = get_jersmear(eval_dict, ceval, jer_sf_tag, syst)
    if syst_tag is None:
        return smear["nom"]
    return smear["nom"], smear["up"], smear["down"]


def read_chunk(path: str, start: int, stop: int):
    """The events ``[start, stop)`` of ``path`` as coffea 0.7 NanoEvents (lazy columns)."""
    return NanoEventsFactory.from_root(
        path, entry_start=start, entry_stop=stop, schemaclass=NanoAODSchema,
        metadata={**METADATA, "filename": path}).events()


def selected(events):
    """The jets of the benchmark's cut and the mask of events with two of them."""
    jets = events.Jet[(events.Jet.pt > 30) & (abs(events.Jet.eta) < 2.4)]
    return jets, ak.num(jets) >= 2


def calibrated(events, params, work: str):
    """PocketCoffea's calibration of one chunk, as its workflow's ``initialize_calibrators``
    and ``loop_over_variations`` do it: ``(variation, events)`` for each variation."""
    calibrators = CALIBRATORS[work]
    manager = CalibratorsManager(calibrators, events, params, METADATA,
                                 requested_calibrator_variations=[c.name for c in calibrators])
    return manager.calibration_loop(events,
                                    variations_for_calibrators=[c.name for c in calibrators])


def new_histograms(work: str) -> dict[str, hist.Hist]:
    """The benchmark's histograms, with a variation axis."""
    def make(bins: int, stop: float) -> hist.Hist:
        return hist.Hist(hist.axis.StrCategory([], growth=True, name="variation"),
                         hist.axis.Regular(bins, 0, stop), storage=hist.storage.Weight())

    hists = {"jet_pt": make(30, 300), "ht": make(25, 1000)}
    if work == "met":
        hists["met_pt"] = make(30, 300)
    return hists


def fill(hists: dict[str, hist.Hist], variation: str, events) -> None:
    """Fill ``hists`` for ``variation`` from the calibrated ``events``."""
    jets, mask = selected(events)
    jets, weight = jets[mask], events.genWeight[mask]
    flat_weight = ak.flatten(ak.broadcast_arrays(weight, jets.pt)[0])
    hists["jet_pt"].fill(variation, ak.to_numpy(ak.flatten(jets.pt)),
                         weight=ak.to_numpy(flat_weight))
    hists["ht"].fill(variation, ak.to_numpy(ak.sum(jets.pt, axis=1)), weight=ak.to_numpy(weight))
    if "met_pt" in hists:
        hists["met_pt"].fill(variation, ak.to_numpy(events.PuppiMET.pt[mask]),
                             weight=ak.to_numpy(weight))


def process(events, params, work: str, hists: dict[str, hist.Hist]) -> list[str]:
    """One chunk: calibrate, fill; returns the variations."""
    variations = []
    for variation, calibrated_events in calibrated(events, params, work):
        fill(hists, variation, calibrated_events)
        variations.append(variation)
    return variations


def summary(events) -> dict[str, float]:
    """The figures compared with calibrew: selected jets, their pt sum, mean MET."""
    jets, mask = selected(events)
    return {"jets": int(ak.sum(ak.num(jets[mask]))), "pt_sum": float(ak.sum(jets[mask].pt)),
            "met_mean": float(ak.mean(events.PuppiMET.pt))}


def jec_check(events, params) -> dict[str, float]:
    """The sum of the JEC pt of all jets, nominal and JES Total Up, before JER: PocketCoffea's
    ``jet_correction_corrlib`` with ``apply_jer=False`` (its variations then shift the JEC pt,
    as calibrew's do before smearing)."""
    jets = jet_correction_corrlib(
        calib_params=params.jets_calibration.jet_types.AK4PFPuppi[YEAR],
        variations=["JES_Total"], events=events, jet_type="AK4PFPuppi", jet_coll_name="Jet",
        chunk_metadata={**METADATA, "era": None}, nano_version=12, apply_jer=False)
    return {"jec_pt_sum": float(ak.sum(jets.pt)),
            "jec_pt_sum_JES_TotalUp": float(ak.sum(jets.pt_JES_Total_up))}


def check(path: str, stop: int, params, work: str) -> dict:
    """:func:`summary` of each variation of the first chunk, and :func:`jec_check`."""
    events = read_chunk(path, 0, stop)
    out = {variation: summary(calibrated_events)
           for variation, calibrated_events in calibrated(events, params, work)}
    return {"variations": out, **jec_check(read_chunk(path, 0, stop), params)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--file", required=True)
    parser.add_argument("--payload", required=True, help="path of jet_jerc_Summer22_V3.json.gz")
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--chunksize", type=int, required=True)
    parser.add_argument("--work", choices=sorted(COLLECTIONS), default="jets")
    parser.add_argument("--check", action="store_true",
                        help="print only the figures of the first chunk (untimed)")
    args = parser.parse_args()
    np.seterr(all="ignore")
    pc_jets.get_jersmear_SFunc = jersmear_by_systematic  # JRV1 payload: see its docstring
    imported = time.perf_counter()
    params = parameters(args.payload, args.work)
    if args.check:
        print(json.dumps(check(args.file, min(args.chunksize, args.events), params, args.work)))
        return 0
    hists = new_histograms(args.work)
    built = time.perf_counter()
    bounds = [(begin, min(begin + args.chunksize, args.events))
              for begin in range(0, args.events, args.chunksize)]
    variations = process(read_chunk(args.file, *bounds[0]), params, args.work, hists)
    warm = time.perf_counter()
    for begin, end in bounds[1:]:
        process(read_chunk(args.file, begin, end), params, args.work, hists)
    done = time.perf_counter()
    row = {"events": args.events, "imports_s": imported - START, "build_s": built - imported,
           "warmup_s": warm - built, "steady_s": done - warm,
           "steady_events": args.events - (bounds[0][1] - bounds[0][0]),
           "variations": len(variations),
           "entries": float(sum(h.sum().value for h in hists.values())),
           "child_s": done - START}
    print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
