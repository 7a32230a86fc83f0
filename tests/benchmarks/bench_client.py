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
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bench_scale import machine, measure  # noqa: E402
from demo_job import write_large_histogram_job  # noqa: E402
from results_doc import publish  # noqa: E402

DATASETS = 5
EVENTS = 200  # in the demo file
WORKERS = 2


def run(chunksize: int, bins: int, timeout: float) -> dict:
    """The synthetic job (:func:`demo_job.write_large_histogram_job`) on five datasets, each
    the demo file under its own name, measured by :func:`bench_scale.measure` (a fresh
    process, an empty cache)."""
    from pipeline.inputs.datafiles import find_data_file

    folder = Path(tempfile.mkdtemp(prefix="calibrew-bench-client-"))
    try:
        files = []
        for i in range(DATASETS):
            link = folder / f"tt_{i}.root"
            link.symlink_to(find_data_file("nano_tt_v12.root"))
            files.append(str(link))
        job = write_large_histogram_job(folder, "client", files, chunksize, bins, WORKERS)
        row = measure(f"chunks of {chunksize}, {bins} bins", job, folder / "client",
                      WORKERS, timeout)
        return {**row, "vector_mb": 2 * (bins + 2) ** 2 * 8 / 2**20,
                "chunks": DATASETS * -(-EVENTS // chunksize)}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunksizes", default="40,1", help="events per chunk")
    parser.add_argument("--bins", default="30,1500", help="bins per histogram axis")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()

    rows = [run(int(c), int(b), args.timeout) for b in args.bins.split(",")
            for c in args.chunksizes.split(",")]
    base = rows[0]
    lines = [
        f"{machine()}, one run: `python tests/benchmarks/bench_client.py --chunksizes "
        f"{args.chunksizes} --bins {args.bins}`. A synthetic analysis (one 2D histogram "
        f"with its variances, no calibrator) on {DATASETS} datasets of {EVENTS} events, "
        f"{WORKERS} local workers; each row a whole run in a fresh process. Client = the "
        "run's own process.",
        "",
        "| chunks | vector per chunk (MB) | client CPU (s) | x first row | client peak RSS "
        "(MiB) | x first row | compute (s) | workers' chunk tasks (s) | process (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        tasks = f"{r['chunk_task_s']:.1f}" if r["chunk_task_s"] is not None else "-"
        lines.append(f"| {r['chunks']} | {r['vector_mb']:.2f} | {r['cpu_s']:.1f} "
                     f"| {r['cpu_s'] / base['cpu_s']:.2f} "
                     f"| {r['peak_mib']:,.0f} "
                     f"| {r['peak_mib'] / base['peak_mib']:.2f} "
                     f"| {r['compute_s']:.1f} | {tasks} | {r['process_s']:.1f} |")
    publish(lines, "client", "The client against chunks and histogram size", args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
