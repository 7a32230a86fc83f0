"""calibrew benchmark: the client's cost against the number of chunks and the histograms' size.

Not a test: run it by hand, on a quiet machine, and paste the table it prints into
``docs/benchmarks.md`` (``--write`` does that).

    python tests/benchmarks/bench_client.py --chunksizes 40,1 --bins 30,1500 --write

A synthetic analysis (no calibrator, one category, one 2D histogram of ``BINS x BINS`` bins
with its variances: 16 KB at 30 bins, 36 MB at 1500) on five datasets, each the demo file
under its own name (200 events), split into chunks of ``chunksize`` events (40: 25 chunks;
1: 1000 chunks), on 2 local workers. Each run is a whole ``calibrew run`` in a fresh process
with an empty cache and output directory; the client's CPU time and peak memory (RSS) are
those of that process (the workers are other processes). The workers save and sum the
chunks' vectors: the client's cost should not grow with the histograms' size, and only by a
small receipt per chunk with their number.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from results_doc import publish  # noqa: E402

DATASETS = 5
WORKERS = 2


def write_job(folder: Path, chunksize: int, bins: int) -> Path:
    """The synthetic job in ``folder``: five datasets, one large histogram."""
    from pipeline.inputs.datafiles import find_data_file

    source = find_data_file("nano_tt_v12.root")
    datasets = {}
    for i in range(DATASETS):
        link = folder / f"tt_{i}.root"
        link.symlink_to(source)
        datasets[f"big{i}"] = {"files": [str(link)], "metadata": {
            "sample": "TTbar", "year": "2022_preEE", "isMC": True}}
    config = {
        "datasets": datasets,
        "calibrators": [],
        "categories": {"inclusive": "True"},
        "histograms": {"jet_eta_pt": {"axes": [
            {"expr": "Jet.eta", "name": "eta", "bins": bins, "start": -5, "stop": 5},
            {"expr": "Jet.pt", "name": "pt", "bins": bins, "start": 0, "stop": 500}]}},
    }
    (folder / "analysis.yaml").write_text(yaml.safe_dump(config))
    job = folder / "job.yaml"
    job.write_text(yaml.safe_dump({"config": "analysis.yaml", "output": str(folder / "out"),
                                   "chunksize": chunksize, "workers": WORKERS}))
    return job


def child(chunksize: int, bins: int, folder: Path) -> dict:
    """In this process: run the job; the figures as a dict."""
    from pipeline.run.runner import run_job

    start = time.perf_counter()
    result = run_job(write_job(folder, chunksize, bins), show_progress=False)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    report = result.report
    return {"chunksize": chunksize, "bins": bins,
            "chunks": sum(d["chunks_computed"] for d in report["datasets"].values()),
            "vector_mb": 2 * (bins + 2) ** 2 * 8 / 2**20,
            "run_s": time.perf_counter() - start, "compute_s": report["compute_s"],
            "client_cpu_s": usage.ru_utime + usage.ru_stime,
            "client_peak_mib": usage.ru_maxrss / 1024,
            "chunk_task_s": report.get("chunk_task_s")}


def measure(chunksize: int, bins: int) -> dict:
    """:func:`child` in a fresh process with an empty cache and output directory."""
    folder = Path(tempfile.mkdtemp(prefix="calibrew-bench-client-"))
    try:
        env = {**os.environ, "XDG_CACHE_HOME": str(folder / "cache"), "PYTHONPATH": str(ROOT)}
        start = time.perf_counter()
        done = subprocess.run([sys.executable, __file__, "--child", str(chunksize), str(bins),
                               str(folder)], env=env, capture_output=True, text=True)
        if done.returncode:
            print(done.stderr[-4000:], file=sys.stderr)
            raise SystemExit(f"the run with chunks of {chunksize} and {bins} bins failed")
        row = json.loads(done.stdout.strip().splitlines()[-1])
        row["process_s"] = time.perf_counter() - start
        print(json.dumps(row), flush=True)
        return row
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunksizes", default="40,1", help="events per chunk")
    parser.add_argument("--bins", default="30,1500", help="bins per histogram axis")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        chunksize, bins, folder = args.child
        print(json.dumps(child(int(chunksize), int(bins), Path(folder))))
        return 0

    rows = [measure(int(c), int(b)) for b in args.bins.split(",")
            for c in args.chunksizes.split(",")]
    base = rows[0]
    lines = [
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d} on {platform.machine()} "
        f"({os.cpu_count()} cores), Python {platform.python_version()}, one run: "
        f"`python tests/benchmarks/bench_client.py --chunksizes {args.chunksizes} --bins "
        f"{args.bins}`. A synthetic analysis (one 2D histogram with its variances, no "
        f"calibrator) on {DATASETS} datasets of 200 events, {WORKERS} local workers; each row "
        "a whole run in a fresh process. Client = the run's own process.",
        "",
        "| chunks | vector per chunk (MB) | client CPU (s) | x first row | client peak RSS "
        "(MiB) | x first row | compute (s) | workers' chunk tasks (s) | process (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        tasks = f"{r['chunk_task_s']:.1f}" if r["chunk_task_s"] is not None else "-"
        lines.append(f"| {r['chunks']} | {r['vector_mb']:.2f} | {r['client_cpu_s']:.1f} "
                     f"| {r['client_cpu_s'] / base['client_cpu_s']:.2f} "
                     f"| {r['client_peak_mib']:,.0f} "
                     f"| {r['client_peak_mib'] / base['client_peak_mib']:.2f} "
                     f"| {r['compute_s']:.1f} | {tasks} | {r['process_s']:.1f} |")
    publish(lines, "client", "The client against chunks and histogram size", args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
