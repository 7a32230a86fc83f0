"""calibrew benchmark: planning many datasets (graphs built from one traced plan per shape).

Not a test: run it by hand, on a quiet machine, and paste the table it prints into
``docs/benchmarks.md`` (``--write`` does that).

    python tests/benchmarks/bench_planning.py --datasets 1,10,100 --write

Each measure runs in a fresh process: the demo analysis (configs/demo.yaml, 57 variations,
its feature table) on N datasets, each the demo file under its own name (a symbolic link,
so every dataset has its own input path) in 4 chunks. Planning is what the run does between
preprocessing and the cluster: the feature tables' writers, and each dataset's graph built
and optimised. ``cold``: an empty cache directory (preprocessing and plans); ``warm``: the
same run again, its plan taken from the cache. ``alone``: every dataset traced on its own,
as before shared planning (N = 1 and 10 only: it grows linearly). Client CPU time and peak
memory (RSS) are those of the whole process; ``process`` is its wall time, Python's start
and imports included.
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

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from results_doc import publish  # noqa: E402

CHUNKSIZE = 50  # the 200-event demo file in 4 chunks


def plan(n: int, mode: str, work: Path) -> dict:
    """In this process: preprocess and plan ``n`` datasets; the figures as a dict."""
    from pipeline.analysis.loading import load_config, load_parameters
    from pipeline.graph import build_dataset_graph
    from pipeline.inputs.datafiles import find_data_file
    from pipeline.inputs.datasets import Dataset, preprocess
    from pipeline.run.identity import plan_identity
    from pipeline.run.planning import PlanCache, Planner
    from pipeline.run.runner import table_writers

    cfg = load_config(ROOT / "configs" / "demo.yaml")
    params = load_parameters(cfg.parameters)
    (spec,) = cfg.datasets.values()
    source = find_data_file(str(spec.files[0]))
    files = work / "files"
    files.mkdir(exist_ok=True)
    start = time.perf_counter()
    datasets = []
    for i in range(n):
        link = files / f"tt_{i:03d}.root"
        if not link.exists():
            link.symlink_to(source)
        name = f"tt_{i:03d}"
        datasets.append(preprocess(Dataset(name, [str(link)], {
            **spec.metadata.model_dump(), "dataset": name}), CHUNKSIZE))
    preprocess_s = time.perf_counter() - start
    cpu0 = _cpu()
    start = time.perf_counter()
    planner = Planner(cfg, params, PlanCache(plan_identity(cfg, params)))
    tables = work / "tables"
    for dataset in datasets:
        writers = table_writers(dataset, cfg, params, tables)
        graph = (build_dataset_graph(dataset, cfg, params, writers) if mode == "alone"
                 else planner.graph(dataset, writers))
        graph.chunk_tasks()
        graph.necessary_columns()  # the report's columns_read
    return {"datasets": n, "mode": mode, "preprocess_s": preprocess_s,
            "planning_s": time.perf_counter() - start, "planning_cpu_s": _cpu() - cpu0,
            "cpu_s": _cpu(), "traced": n if mode == "alone" else planner.traced,
            "cached": planner.cached,
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(n: int, mode: str, cache: Path) -> dict:
    """:func:`plan` in a fresh process whose cache directory is ``cache``."""
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--child", str(n), mode, str(cache)],
                          env=env, check=True, capture_output=True, text=True)
    row = json.loads(done.stdout.strip().splitlines()[-1])
    row["process_s"] = time.perf_counter() - start
    print(json.dumps(row), flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="1,10,100")
    parser.add_argument("--alone", default="1,10", help="dataset counts planned alone")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        n, mode, cache = args.child
        print(json.dumps(plan(int(n), mode, Path(cache))))
        return 0

    rows = []
    for n in (int(x) for x in args.alone.split(",") if x):
        cache = Path(tempfile.mkdtemp(prefix="calibrew-bench-plan-"))
        rows.append(measure(n, "alone", cache))
        shutil.rmtree(cache, ignore_errors=True)
    for n in (int(x) for x in args.datasets.split(",")):
        cache = Path(tempfile.mkdtemp(prefix="calibrew-bench-plan-"))
        rows.append({**measure(n, "shared", cache), "mode": "cold"})
        rows.append({**measure(n, "shared", cache), "mode": "warm"})
        shutil.rmtree(cache, ignore_errors=True)

    one = {r["mode"]: r["planning_s"] for r in rows if r["datasets"] == 1}
    one_cpu = {r["mode"]: r["planning_cpu_s"] for r in rows if r["datasets"] == 1}
    lines = [
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d} on {platform.machine()} "
        f"({os.cpu_count()} cores), Python {platform.python_version()}, one run: "
        f"`python tests/benchmarks/bench_planning.py --datasets {args.datasets}`. The demo "
        f"analysis on N datasets (the demo file under N names, {200 // CHUNKSIZE} chunks "
        "each); planning = table writers + graphs built and optimised.",
        "",
        "| datasets | planning | plans traced / cached | planning (s) | x one dataset "
        "| planning CPU (s) | x one dataset (CPU) | client CPU (s) | peak RSS (MiB) "
        "| process (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        ratio = r["planning_s"] / one[r["mode"]] if r["mode"] in one else float("nan")
        cpu_ratio = (r["planning_cpu_s"] / one_cpu[r["mode"]] if r["mode"] in one_cpu
                     else float("nan"))
        lines.append(f"| {r['datasets']} | {r['mode']} | {r['traced']} / {r['cached']} "
                     f"| {r['planning_s']:.1f} | {ratio:.2f} | {r['planning_cpu_s']:.2f} "
                     f"| {cpu_ratio:.2f} | {r['cpu_s']:.1f} "
                     f"| {r['peak_mib']:,.0f} | {r['process_s']:.1f} |")
    publish(lines, "planning", "Planning many datasets", args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
