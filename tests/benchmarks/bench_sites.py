"""calibrew benchmark: the demo job on the one-node SLURM cluster with 1, 2 and 4 workers
against the local cluster, and the cost of starting each cluster.

Not a test: run it by hand (as root: it starts ``cluster/slurm-local.sh`` if needed) and
paste the table into ``docs/benchmarks.md`` (``--write`` does that). Every row comes from
the same run, side by side.

    python tests/benchmarks/bench_sites.py --events 200000 --chunksize 25000 --write

Measures, with ``calibrew run`` itself (``pipeline.run.runner.run_job``) on a ``make-sample``
file, the demo analysis (57 variations, its histograms and feature table):

- events/s of the computation (chunks submitted to last chunk checkpointed; on SLURM this
  includes the jobs starting), and the whole run's wall time;
- the cluster start overhead: starting the site until all its workers have joined, then
  closing it, measured alone.
"""

from __future__ import annotations

import argparse
import os
import platform
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
sys.path.insert(0, str(ROOT / "tests"))

from bench import sample_file  # noqa: E402
from demo_job import with_datasets  # noqa: E402
from results_doc import publish  # noqa: E402

from pipeline.run.runner import RunOptions, run_job  # noqa: E402
from pipeline.sites import load_site, start_site, workers_override  # noqa: E402


def write_job(folder: Path, sample: Path, chunksize: int) -> Path:
    config = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    config["parameters"] = [str(ROOT / "configs" / p) for p in config["parameters"]]
    (spec,) = config["datasets"].values()
    spec["files"] = [str(sample)]
    with_datasets(config, {"bench": spec})
    (folder / "analysis.yaml").write_text(yaml.safe_dump(config))
    job = folder / "job.yaml"
    job.write_text(f"config: analysis.yaml\noutput: {folder / 'out'}\nchunksize: {chunksize}\n")
    return job


def start_overhead(site_name: str, workers: int, overrides: dict) -> float:
    """Seconds from starting the site to ``workers`` workers joined, plus closing it."""
    site = load_site(site_name, {**workers_override(site_name, workers), **overrides})
    start = time.perf_counter()
    session = start_site(site)
    session.client.wait_for_workers(workers, timeout=600)
    session.close()
    return time.perf_counter() - start


def run(job: Path, site_name: str, workers: int, overrides: dict) -> dict:
    out = job.parent / "out"
    shutil.rmtree(out, ignore_errors=True)
    result = run_job(job, RunOptions(site=site_name, workers=workers, site_options=overrides,
                                     show_progress=False))
    report = result.report
    return {"events": report["events_computed"], "compute_s": report["compute_s"],
            "wall_s": report["wall_time_s"], "rate": report["events_per_s"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--chunksize", type=int, default=25_000)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()

    subprocess.run(["bash", str(ROOT / "cluster" / "slurm-local.sh"), "start"], check=True)
    sample = sample_file(args.events)
    folder = Path(tempfile.mkdtemp(prefix="calibrew-bench-sites-"))
    job = write_job(folder, sample, args.chunksize)
    slurm = {"log_directory": str(folder / "logs"), "dashboard_address": ":0"}
    local = {"dashboard_address": ":0"}
    setups = [("local", 1, local), ("local", 2, local), ("slurm", 1, slurm),
              ("slurm", 2, slurm), ("slurm", 4, slurm)]
    rows = []
    for site_name, workers, overrides in setups:
        overhead = start_overhead(site_name, workers, overrides)
        measured = run(job, site_name, workers, overrides)
        rows.append((site_name, workers, overhead, measured))
        print(f"{site_name} x{workers}: start {overhead:.1f} s, "
              f"{measured['rate']:,.0f} events/s", flush=True)
    shutil.rmtree(folder, ignore_errors=True)

    base = rows[0][3]["rate"]
    lines = [
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d} on {platform.machine()} "
        f"({os.cpu_count()} cores), {platform.python_version()}, one run: `python "
        f"tests/benchmarks/bench_sites.py --events {args.events} --chunksize "
        f"{args.chunksize}`; the demo job (57 variations, histograms and feature table) on "
        f"{args.events:,} events resampled from nano_tt_v12.root, "
        f"{-(-args.events // args.chunksize)} chunks; SLURM: the one-node cluster of "
        "cluster/slurm-local.sh, one single-core worker per job.",
        "",
        "| site | workers | start until all workers joined (s) | compute events/s "
        "| vs local x1 | compute (s) | run wall time (s) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {name} | {n} | {overhead:.1f} | {m['rate']:,.0f} | {m['rate'] / base:.2f} "
              f"| {m['compute_s']:.1f} | {m['wall_s']:.1f} |"
              for name, n, overhead, m in rows]
    publish(lines, "bench-sites", "Sites: SLURM against local", args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
