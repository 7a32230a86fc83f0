"""calibrew benchmark: demo-job throughput against the read floor, graph scaling, memory.

Not a test: run it by hand, on a quiet machine, and paste the table it prints into
``docs/benchmarks.md`` (``--write`` does that). Every figure of one table is measured in the
same run, side by side, so ratios are meaningful on a shared, noisy machine.

    python tests/benchmarks/bench.py --events 1000000 --write

Measures
--------
(a) events/s per core of the demo analysis (configs/demo.yaml: JEC, 11 regrouped JES
    sources, JER, 29 variations, 5 histograms x 2 categories) on a ``make-sample`` file, on a
    LocalCluster of one single-threaded worker;
(b) events/s of plain uproot reading the same branches (the read floor), in this process;
(c) graph build + optimisation time and task count for 1, 10, 100 and 200 variations;
(d) peak memory (RSS) of the worker during (a).
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import uproot

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pipeline.calibration import Calibrator  # noqa: E402
from pipeline.config import AnalysisConfig, load_config  # noqa: E402
from pipeline.datasets import Dataset, preprocess  # noqa: E402
from pipeline.graph import build_dataset_graph  # noqa: E402
from pipeline.parameters import load_parameters  # noqa: E402
from pipeline.samples import cache_dir  # noqa: E402

KEEP = ["Jet_*", "FatJet_*", "GenJet*", "Rho_*", "genWeight", "PuppiMET_*", "Electron_*",
        "Muon_*", "Pileup_*"]
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
    from pipeline.make_sample import make_sample

    path = cache_dir() / "bench" / f"tt_resampled_{events}.root"
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
    graph = build_dataset_graph(dataset, cfg, params)
    total = graph.total()
    columns = sorted(graph.necessary_columns())
    cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                           dashboard_address=":0", silence_logs=40)
    with cluster, Client(cluster) as client:
        start = time.perf_counter()
        vector = client.compute(total).result()
        elapsed = time.perf_counter() - start
        peak_kib = max(client.run(
            lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss).values())
    hists = graph.plan.unpack(vector)
    n_events = int(hists["cutflow"]["all events", "events"].value)
    return {"events": n_events, "seconds": elapsed, "rate": n_events / elapsed,
            "columns": columns, "peak_mib": peak_kib / 1024, "chunks": len(dataset.chunks),
            "variations": len(graph.plan.variations)}


def bench_read_floor(path: Path, columns: list[str], chunksize: int) -> dict:
    """(b): plain uproot reading of the same branches, chunk by chunk, in this process."""
    start = time.perf_counter()
    n_events = 0
    with uproot.open(path) as handle:
        tree = handle["Events"]
        for begin in range(0, tree.num_entries, chunksize):
            arrays = tree.arrays(columns, entry_start=begin,
                                 entry_stop=min(begin + chunksize, tree.num_entries),
                                 library="np")
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--chunksize", type=int, default=200_000)
    parser.add_argument("--variations", default="2,10,100,200",
                        help="numbers of shifted variations (Up + Down) for (c)")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()

    path = sample_file(args.events)
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
        f"| (a) demo job, events/s per core ({demo['variations']} variations, 1 worker x 1 "
        f"thread) | {demo['rate']:,.0f} |",
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
    table = "\n".join(lines)
    print(table)
    if args.write:
        doc = ROOT / "docs" / "benchmarks.md"
        text = doc.read_text() if doc.exists() else ""
        begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
        if begin in text and end in text:
            text = text.split(begin)[0] + begin + "\n" + table + "\n" + end + text.split(end)[1]
        else:
            text += f"\n{begin}\n{table}\n{end}\n"
        doc.write_text(text)
        print(f"updated {doc}")
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    raise SystemExit(main())
