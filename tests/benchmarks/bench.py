"""calibrew benchmark: demo-job throughput against the read floor, graph scaling, memory.

Not a test: run it by hand, on a quiet machine, and paste the table it prints into
``docs/benchmarks.md`` (``--write`` does that). Every figure of one table is measured in the
same run, side by side, so ratios are meaningful on a shared, noisy machine.

    python tests/benchmarks/bench.py --events 2000000 --write

Measures
--------
(a) events/s per core of the demo analysis (configs/demo.yaml: the default calibrators
    with 57 variations, 7 histograms x 2 categories and its feature table, written) on a
    ``make-sample`` file, on a LocalCluster of one single-threaded worker;
(b) events/s of plain uproot reading the same branches (the read floor), in this process;
(c) graph build + optimisation time and task count for 1, 10, 100 and 200 variations;
(d) peak memory (RSS) of the worker during (a).
"""

from __future__ import annotations

import argparse
import platform
import resource
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import uproot

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pipeline.analysis.loading import load_config, load_parameters  # noqa: E402
from pipeline.calibration import Calibrator  # noqa: E402
from pipeline.config.models import AnalysisConfig  # noqa: E402
from pipeline.graph import build_dataset_graph  # noqa: E402
from pipeline.inputs.datafiles import cache_dir  # noqa: E402
from pipeline.inputs.datasets import Dataset, preprocess  # noqa: E402
from pipeline.run.runner import table_writers  # noqa: E402

KEEP = ["Jet_*", "FatJet_*", "GenJet*", "Rho_*", "genWeight", "PuppiMET_*", "RawPuppiMET_*",
        "CorrT1METJet_*", "Electron_*", "Photon_*", "Muon_*", "Pileup_*"]
METADATA = {"sample": "TTbar", "year": "2022_preEE", "isMC": True, "dataset": "bench"}


class BenchVariations(Calibrator):
    """A jet-pt scale with a configurable number of variations (graph-scaling probe)."""

    name = "bench_variations"
    has_variations = True
    calibrated_collections = ["Jet.pt"]
    n_variations = 2

    def initialize(self, events):
        n = max(self.n_variations // 2, 1)
        self._variations = [f"b{i}{d}" for i in range(n) for d in ("Up", "Down")]

    def calibrate(self, events, orig_colls, variation, already_applied_calibrators=None):
        factor = 1.01 if variation.endswith("Up") else 0.99 if variation != "nominal" else 1.0
        return {"Jet.pt": orig_colls["Jet.pt"] * factor}


def sample_file(events: int) -> Path:
    import hashlib

    from pipeline.inputs.make_sample import make_sample

    tag = hashlib.sha256(" ".join(KEEP).encode()).hexdigest()[:8]
    path = cache_dir() / "bench" / f"tt_resampled_{events}_{tag}.root"
    if not path.exists():
        print(f"making {path} ({events:,} events)...", flush=True)
        make_sample("nano_tt_v12.root", path, events, seed=7, keep=KEEP)
    return path


def bench_demo(path: Path, chunksize: int) -> dict:
    """(a) and (d): the demo analysis on one single-threaded worker."""
    from distributed import Client, LocalCluster

    cfg = load_config(ROOT / "configs" / "demo.yaml")
    params = load_parameters(cfg.parameters)
    dataset = preprocess(Dataset("bench", [str(path)], METADATA), chunksize)
    tables = Path(tempfile.mkdtemp(prefix="calibrew-bench-"))
    writers = table_writers(dataset, cfg, params, tables)
    graph = build_dataset_graph(dataset, cfg, params, writers)  # the feature table is written
    for writer in writers.values():
        writer.prepare()
    total = graph.total()
    columns = sorted(graph.necessary_columns())
    import dask

    from pipeline.sites import MMAP_THRESHOLD, allocator_config

    with dask.config.set(allocator_config(MMAP_THRESHOLD)):  # as calibrew's local site
        cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                               dashboard_address=":0", silence_logs=40)
    with cluster, Client(cluster) as client:
        start = time.perf_counter()
        vector = client.compute(total).result()
        elapsed = time.perf_counter() - start
        peak_kib = max(client.run(
            lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss).values())
    shutil.rmtree(tables, ignore_errors=True)
    hists = graph.plan.unpack(vector)
    n_events = int(hists["cutflow"]["all events", "events"].value)
    return {"events": n_events, "seconds": elapsed, "rate": n_events / elapsed,
            "columns": columns, "peak_mib": peak_kib / 1024, "chunks": len(dataset.chunks),
            "variations": len(graph.plan.variations)}


def bench_read_floor(path: Path, columns: list[str], chunksize: int,
                     max_events: int | None = None) -> dict:
    """(b): plain uproot reading of the same branches, chunk by chunk, in this process."""
    start = time.perf_counter()
    n_events = 0
    with uproot.open(path) as handle:
        tree = handle["Events"]
        stop = min(tree.num_entries, max_events or tree.num_entries)
        for begin in range(0, stop, chunksize):
            arrays = tree.arrays(columns, entry_start=begin,
                                 entry_stop=min(begin + chunksize, stop), library="np")
            n_events += len(arrays[columns[0]])
        compressed = sum(tree[c].compressed_bytes for c in columns)
    elapsed = time.perf_counter() - start
    return {"events": n_events, "seconds": elapsed, "rate": n_events / elapsed,
            "bytes_per_event": compressed / n_events}


def bench_graph(path: Path, n_variations: int, chunksize: int) -> dict:
    """(c): graph build plus optimisation, and task count, for ``n_variations``."""
    BenchVariations.n_variations = n_variations
    cfg = AnalysisConfig.model_validate({
        "datasets": {"bench": {"files": [str(path)], "metadata": {
            k: v for k, v in METADATA.items() if k != "dataset"}}},
        "calibrators": ["bench_variations"],
        "variations": {"shape": {"common": {"inclusive": ["bench_variations"]}}},
        "preselection": {"two_jets": "ak.num(Jet[Jet.pt > 30]) >= 2"},
        "histograms": {"jet_pt": {"axes": [{"expr": "Jet.pt", "bins": 30, "start": 0,
                                            "stop": 300}]}},
    })
    dataset = preprocess(Dataset("bench", [str(path)], METADATA), chunksize)
    start = time.perf_counter()
    graph = build_dataset_graph(dataset, cfg, load_parameters())
    total = graph.total()
    elapsed = time.perf_counter() - start
    return {"variations": len(graph.plan.variations), "seconds": elapsed,
            "tasks": len(total.dask), "layers": len(graph.chunks.dask.layers),
            "chunks": len(dataset.chunks)}


# --- (e), (f): the jet chain with 1, 11 and all JES sources, against a plain eager script ----

JET_TAG = "Summer22_22Sep2023_V3_MC"
JET_PAYLOAD = "jet_jerc_Summer22_V3.json.gz"
CUT = "(Jet.pt > 30) & (abs(Jet.eta) < 2.4)"
JET_CHAIN_BRANCHES = ["Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass", "Jet_rawFactor", "Jet_area",
                      "Jet_genJetIdx", "GenJet_pt", "GenJet_eta", "GenJet_phi",
                      "Rho_fixedGridRhoFastjetAll", "genWeight"]


def jes_source_sets() -> dict[str, list[str]]:
    """1 source (Total), the 11 regrouped sources, and all the full sources of the payload."""
    from pipeline.corrections import load_correction_set

    names = [k[len(JET_TAG) + 1: -len("_AK4PFPuppi")] for k in load_correction_set(JET_PAYLOAD)
             if k.startswith(JET_TAG + "_") and k.endswith("_AK4PFPuppi")]
    levels = {"L1FastJet", "L2Relative", "L3Absolute", "L2L3Residual", "L1L2L3Res"}
    full = sorted(n for n in names if n not in levels and not n.startswith(
        ("Regrouped_", "SubTotal", "Total")))
    regrouped = sorted(n for n in names if n.startswith("Regrouped_") and n != "Regrouped_Total")
    return {"1": ["Total"], "11": regrouped, f"all ({len(full)})": full}


def jet_chain_config(path: Path) -> AnalysisConfig:
    return AnalysisConfig.model_validate({
        "datasets": {"bench": {"files": [str(path)], "metadata": {
            k: v for k, v in METADATA.items() if k != "dataset"}}},
        "calibrators": ["jet_calibration"],
        "variations": {"shape": {"common": {"inclusive": ["jet_calibration"]}}},
        "preselection": {"two_jets": f"ak.num(Jet[{CUT}]) >= 2"},
        "histograms": {
            "jet_pt": {"axes": [{"expr": f"Jet.pt[{CUT}]", "bins": 30, "start": 0,
                                 "stop": 300}]},
            "ht": {"axes": [{"expr": f"ak.sum(Jet.pt[{CUT}], axis=1)", "bins": 25,
                             "start": 0, "stop": 1000}]},
        },
    })


def jet_params(sources: list[str]):
    from omegaconf import OmegaConf

    return OmegaConf.merge(load_parameters(), {"jets_calibration": {
        "collection": {"2022_preEE": {"AK4PFPuppi": "Jet"}},
        "variations": {"2022_preEE": {"AK4PFPuppi": [f"JES_{s}" for s in sources] + ["JER"]}},
    }})


def bench_jet_chain(path: Path, sources: list[str], chunksize: int, max_events: int) -> dict:
    """calibrew's jet chain (AK4: JEC, the JES sources, JER): the dataset's graph (reading
    only the branches the chain uses), its chunks computed one after another in this
    process; the graph is built and optimised before the clock starts."""
    import dask

    from pipeline.inputs.datasets import Chunk

    cfg = jet_chain_config(path)
    params = jet_params(sources)
    dataset = Dataset("bench", [str(path)], METADATA)
    dataset.chunks = [Chunk(str(path), begin, min(begin + chunksize, max_events))
                      for begin in range(0, max_events, chunksize)]
    dataset.chunks.append(Chunk(str(path), max_events, max_events + 2000))  # warm-up
    tasks = build_dataset_graph(dataset, cfg, params).chunk_tasks()
    dask.compute(tasks[-1], scheduler="sync")  # payloads loaded, kernels compiled
    start = time.perf_counter()
    dask.compute(*tasks[:-1], scheduler="sync")
    elapsed = time.perf_counter() - start
    return {"events": max_events, "seconds": elapsed, "rate": max_events / elapsed}


def plain_eager_script(path: Path, sources: list[str], chunksize: int, max_events: int) -> dict:
    """The straightforward way: uproot arrays, correctionlib, one variation after another."""
    import awkward as ak
    import correctionlib
    import hist

    from pipeline.inputs.datafiles import find_data_file

    cset = correctionlib.CorrectionSet.from_file(str(find_data_file(JET_PAYLOAD)))
    jec = cset.compound[f"{JET_TAG}_L1L2L3Res_AK4PFPuppi"]
    reso = cset["Summer22_22Sep2023_JRV1_MC_PtResolution_AK4PFPuppi"]
    sf = cset["Summer22_22Sep2023_JRV1_MC_ScaleFactor_AK4PFPuppi"]
    variations = ["nominal"] + [f"{s}{d}" for s in sources for d in ("Up", "Down")] + [
        "JERUp", "JERDown"]
    h_pt = hist.Hist(hist.axis.StrCategory(variations), hist.axis.Regular(30, 0, 300),
                     storage=hist.storage.Weight())
    h_ht = hist.Hist(hist.axis.StrCategory(variations), hist.axis.Regular(25, 0, 1000),
                     storage=hist.storage.Weight())
    branches = JET_CHAIN_BRANCHES
    rng = np.random.default_rng(1)
    start = time.perf_counter()
    n_events = 0
    with uproot.open(path) as handle:
        tree = handle["Events"]
        for begin in range(0, max_events, chunksize):
            a = tree.arrays(branches, entry_start=begin,
                            entry_stop=min(begin + chunksize, max_events))
            n_events += len(a)
            for variation in variations:
                raw = a.Jet_pt * (1 - a.Jet_rawFactor)
                pt = raw * jec.evaluate(a.Jet_area, a.Jet_eta, raw, a.Rho_fixedGridRhoFastjetAll)
                if variation[:-2] in sources or variation[:-4] in sources:
                    source = variation[:-2] if variation.endswith("Up") else variation[:-4]
                    unc = cset[f"{JET_TAG}_{source}_AK4PFPuppi"].evaluate(a.Jet_eta, pt)
                    pt = pt * (1 + unc if variation.endswith("Up") else 1 - unc)
                res = reso.evaluate(a.Jet_eta, pt, a.Rho_fixedGridRhoFastjetAll)
                syst = {"JERUp": "up", "JERDown": "down"}.get(variation, "nom")
                s = sf.evaluate(a.Jet_eta, pt, syst)
                idx = a.Jet_genJetIdx
                valid = (idx >= 0) & (idx < ak.num(a.GenJet_pt))
                gen_pt = ak.fill_none(a.GenJet_pt[ak.mask(idx, valid)], 0.0)
                gen_eta = ak.fill_none(a.GenJet_eta[ak.mask(idx, valid)], 0.0)
                gen_phi = ak.fill_none(a.GenJet_phi[ak.mask(idx, valid)], 0.0)
                dphi = np.mod(a.Jet_phi - gen_phi + np.pi, 2 * np.pi) - np.pi
                matched = valid & (np.hypot(a.Jet_eta - gen_eta, dphi) < 0.2) & (
                    np.abs(pt - gen_pt) < 3 * res * pt)
                counts = ak.num(pt)
                z = ak.unflatten(rng.standard_normal(int(ak.sum(counts))), counts)
                factor = ak.where(matched, 1 + (s - 1) * (pt - gen_pt) / pt,
                                  1 + res * z * np.sqrt(np.maximum(s * s - 1, 0)))
                pt = pt * np.maximum(factor, 0)
                good = pt[(pt > 30) & (np.abs(a.Jet_eta) < 2.4)]
                selected = ak.num(good) >= 2
                w = a.genWeight[selected]
                jets = good[selected]
                h_pt.fill(variation, ak.to_numpy(ak.flatten(jets)),
                          weight=ak.to_numpy(ak.flatten(ak.broadcast_arrays(w, jets)[0])))
                h_ht.fill(variation, ak.to_numpy(ak.sum(jets, axis=1)), weight=ak.to_numpy(w))
    elapsed = time.perf_counter() - start
    return {"events": n_events, "seconds": elapsed, "rate": n_events / elapsed}


POCKETCOFFEA_HZ = (7_000, 12_000)  # PocketCoffea 0.9.13, JEC + JES Total + JER, per core


def targets(demo: dict, floor: dict, graphs: list[dict], jes_rows: list, chunksize: int
            ) -> list[str]:
    """The performance issue's targets, each met or its measured distance."""
    def verdict(ok: bool, distance: str) -> str:
        return "met" if ok else f"not met: {distance}"

    share = demo["rate"] / floor["rate"]
    low, high = (demo["rate"] / hz for hz in POCKETCOFFEA_HZ)
    ratios = {label: ours["rate"] / plain["rate"] for label, _, ours, plain in jes_rows}
    largest = max(graphs, key=lambda g: g["variations"])
    graph_s, peak = largest["seconds"], demo["peak_mib"]
    lines = [
        "| target | measured | |",
        "| --- | --- | --- |",
        f"| events/s per core >= 0.5 x the read floor | {share:.3f} x "
        f"| {verdict(share >= 0.5, f'{0.5 / share:.1f}x faster needed')} |",
        "| >= 2x a plain eager correctionlib script (jet chain, "
        + " / ".join(f"{k} JES sources" for k in ratios) + ") | "
        + " / ".join(f"{r:.2f}x" for r in ratios.values()) + " | "
        + verdict(all(r >= 2 for r in ratios.values()),
                  "below 2x with " + ", ".join(k for k, r in ratios.items() if r < 2)
                  + " sources") + " |",
        f"| >= 10x PocketCoffea 0.9.13 (7 to 12 kHz per core) | {high:.2f}x to {low:.2f}x "
        f"| {verdict(high >= 10, f'{10 / high:.1f}x to {10 / low:.1f}x faster needed')} |",
        f"| graph build + optimisation < 2 s at 200 variations "
        f"| {graph_s:.2f} s ({largest['variations']} variations) "
        f"| {verdict(graph_s < 2, f'{graph_s - 2:.2f} s over')} |",
        f"| peak memory per worker < 2 GiB, {chunksize:,}-event chunks | {peak:,.0f} MiB "
        f"| {verdict(peak < 2048, f'{peak - 2048:,.0f} MiB over')} |",
    ]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--chunksize", type=int, default=200_000)
    parser.add_argument("--variations", default="2,10,100,200",
                        help="numbers of shifted variations (Up + Down) for (c)")
    parser.add_argument("--jes-events", type=int, default=200_000,
                        help="events for the JES-source scan (e, f)")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()

    path = sample_file(args.events)
    jet_floor = bench_read_floor(path, JET_CHAIN_BRANCHES, args.chunksize, args.jes_events)
    jes_rows = []
    for label, sources in jes_source_sets().items():
        ours = bench_jet_chain(path, sources, args.chunksize, args.jes_events)
        plain = plain_eager_script(path, sources, args.chunksize, args.jes_events)
        jes_rows.append((label, len(sources), ours, plain))
        print(f"JES {label}: calibrew {ours['rate']:,.0f}/s, plain {plain['rate']:,.0f}/s",
              flush=True)
    demo = bench_demo(path, args.chunksize)
    print(f"demo: {demo['rate']:,.0f} events/s, peak {demo['peak_mib']:,.0f} MiB", flush=True)
    floor = bench_read_floor(path, demo["columns"], args.chunksize)
    print(f"read floor: {floor['rate']:,.0f} events/s", flush=True)
    graphs = []
    for n in args.variations.split(","):
        graphs.append(bench_graph(path, int(n), args.chunksize))
        print(f"graph: {graphs[-1]}", flush=True)

    lines = [
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d} on {platform.machine()}, "
        f"{platform.python_version()}, one run: `python tests/benchmarks/bench.py "
        f"--events {args.events} --chunksize {args.chunksize}`; "
        f"{demo['events']:,} events resampled from nano_tt_v12.root, "
        f"{demo['chunks']} chunks.",
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| (a) demo job with its feature table, events/s per core ({demo['variations']} "
        f"variations, 1 worker x 1 thread) | {demo['rate']:,.0f} |",
        f"| (b) read floor: uproot, same {len(demo['columns'])} branches, events/s "
        f"| {floor['rate']:,.0f} |",
        f"| (a)/(b) | {demo['rate'] / floor['rate']:.3f} |",
        f"| compressed bytes read per event | {floor['bytes_per_event']:.0f} |",
        f"| (d) peak worker memory (RSS), {args.chunksize:,}-event chunks "
        f"| {demo['peak_mib']:,.0f} MiB |",
        "",
        "| (c) variations | graph build + optimisation (s) | tasks | dask-awkward layers |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {g['variations']} | {g['seconds']:.2f} | {g['tasks']} | {g['layers']} |"
              for g in graphs]
    lines += [
        "",
        f"Jet chain (AK4: JEC, JES sources Up/Down, JER nominal/Up/Down; preselection, 2 "
        f"histograms), single core, {args.jes_events:,} events in chunks of "
        f"{args.chunksize:,}: (e) calibrew's graph for the dataset (reading the branches it "
        "uses), its chunks computed one after another in one process; (f) is a plain script: "
        "uproot + correctionlib, recomputing "
        "each variation from scratch, one after another; the read floor of the jet chain's "
        f"{len(JET_CHAIN_BRANCHES)} branches is {jet_floor['rate']:,.0f} events/s.",
        "",
        "| JES sources | variations | (e) calibrew, events/s | (e) / jet read floor "
        "| (f) plain eager script, events/s | (e)/(f) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {label} | {1 + 2 * n + 2} | {ours['rate']:,.0f} "
              f"| {ours['rate'] / jet_floor['rate']:.3f} | {plain['rate']:,.0f} "
              f"| {ours['rate'] / plain['rate']:.2f} |"
              for label, n, ours, plain in jes_rows]
    lines += ["", *targets(demo, floor, graphs, jes_rows, args.chunksize)]
    from results_doc import publish

    publish(lines, "bench", "Calibration chain", args.write)
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    raise SystemExit(main())
