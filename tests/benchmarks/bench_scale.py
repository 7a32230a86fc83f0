"""calibrew benchmark: whole runs at scale, many datasets and strong scaling.

Not a test: run it by hand, on a quiet machine, and paste the tables it prints into
``docs/benchmarks.md`` (``--write`` does that).

    python tests/benchmarks/bench_scale.py --datasets 1,100 --workers 1,2,4 --write

Every measure is a whole ``calibrew run`` (:func:`pipeline.run_job`) in a fresh process,
on the local site, with an empty cache directory (``XDG_CACHE_HOME``: preprocessing and
traced plans) and an empty output directory.

Many datasets: the demo analysis (configs/demo.yaml, 57 variations, its feature table) on
N datasets, each the demo file under its own name (a symbolic link, so that every dataset
has its own input path) in 4 chunks of 50 events, on 2 workers. Client CPU time and peak
memory (RSS) are those of the run's own process (the Dask workers are other processes);
``process`` is its wall time, Python's start and imports included; each figure is also
given as a ratio to N = 1.

Strong scaling: the demo analysis on one dataset of ``--events`` events resampled from the
demo file (``calibrew make-sample``, split into ``--files`` files, made once into
``--sample-dir`` and reused, ``--make-jobs`` at a time), on 1, 2, 4... workers. With
``--repeat K`` the dataset lists each file K times (hard links, each its own input file):
K times the events at the cost of making one sample; ``--repeat-one`` gives the one-worker
run its own, smaller K (its rate is then measured on fewer chunks; the table says so).
Efficiency is the compute rate per worker against one worker's; the share outside compute
is ``1 - compute / wall`` and, where the report has the workers' chunk task seconds, the
workers' idle share during compute, ``1 - chunk tasks / (workers x compute)``. More workers
than cores are oversubscribed (started with ``oversubscribe``): they share the cores, and
the table says so.

Defaults: 100,000 events in 4 files, chunks of 12,500 (8 chunks). Figures the report does
not have (``first_chunk_s``, ``chunk_task_s`` in an older calibrew) are printed as ``-``. A
run that fails, or outlasts ``--timeout``, ends the benchmark with status 1 after printing
the end of its stderr; ``--out-json`` writes the rows (and the tables) after every run, so
that a benchmark cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import NoReturn

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from demo_job import with_datasets  # noqa: E402
from results_doc import publish  # noqa: E402

DEMO = ROOT / "configs" / "demo.yaml"
DEMO_FILE = "nano_tt_v12.root"
DEMO_CHUNKSIZE = 50  # the 200-event demo file in 4 chunks
MANY_WORKERS = 2
TAIL_LINES = 40


# --- the child: one run, in its own process -------------------------------------------------

def run_child(job: Path, output: Path, workers: int) -> dict:
    """In this process: run ``job`` into ``output`` on ``workers`` local workers (more than
    the cores with a warning); this process's CPU seconds and peak RSS afterwards."""
    from rich.console import Console

    from pipeline import RunOptions, run_job

    run_job(job, RunOptions(output=output, workers=workers, show_progress=False,
                            site_options={"dashboard_address": ":0", "oversubscribe": True}),
            console=Console(file=sys.stderr))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu_s": usage.ru_utime + usage.ru_stime, "peak_mib": usage.ru_maxrss / 1024}


def measure(label: str, job: Path, output: Path, workers: int, timeout: float) -> dict:
    """:func:`run_child` in a fresh process with an empty cache directory: its figures and
    report.json's. A run that fails (the measure ``label``) prints the tail of its stderr
    and ends the benchmark."""
    cache = Path(tempfile.mkdtemp(prefix="calibrew-bench-scale-cache-"))
    # the project first, then what PYTHONPATH already names (packages installed with --target)
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "PYTHONPATH": path}
    command = [sys.executable, __file__, "--child", str(job), str(output), str(workers)]
    start = time.perf_counter()
    # its own process group: a run past ``timeout`` is killed with its Dask workers
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
    try:
        stdout, stderr = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        fail(f"{label}: the run did not end within {timeout:.0f} s", child.communicate()[1])
    except BaseException:  # interrupted (Ctrl-C, SIGTERM): the run's workers end with it
        os.killpg(child.pid, signal.SIGKILL)
        raise
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    process_s = time.perf_counter() - start
    if child.returncode != 0:
        fail(f"{label}: the run failed, exit status {child.returncode}", stderr)
    report = json.loads((output / "report.json").read_text())
    row = {**json.loads(stdout.strip().splitlines()[-1]), "process_s": process_s,
           "workers": workers, **{key: report.get(key) for key in (
               "wall_time_s", "graph_build_s", "compute_s", "events_computed",
               "first_chunk_s", "chunk_task_s")}}
    print(json.dumps(row), flush=True)
    return row


def fail(message: str, stderr: str) -> NoReturn:
    """Print ``message`` and the last lines of a run's ``stderr``; end with status 1."""
    tail = "\n".join(stderr.splitlines()[-TAIL_LINES:])
    print(f"error: {message}; the end of its stderr:\n{tail}", file=sys.stderr)
    raise SystemExit(1)


# --- the jobs --------------------------------------------------------------------------------

def write_job(folder: Path, files: dict[str, list[str]], chunksize: int) -> Path:
    """The demo analysis on the datasets ``files`` (name: its files) as a job in
    ``folder``, its output ``folder / "output"``; the job file's path."""
    config = yaml.safe_load(DEMO.read_text())
    config["parameters"] = [str(DEMO.parent / p) for p in config["parameters"]]
    (spec,) = config["datasets"].values()
    with_datasets(config, {name: {**spec, "files": paths} for name, paths in files.items()})
    (folder / "analysis.yaml").write_text(yaml.safe_dump(config))
    job = folder / "job.yaml"
    job.write_text(yaml.safe_dump({"config": "analysis.yaml", "output": str(folder / "output"),
                                   "chunksize": chunksize}))
    return job


def demo_file() -> Path:
    from pipeline.inputs.datafiles import find_data_file

    return find_data_file(DEMO_FILE)


def many_datasets(n: int, timeout: float) -> dict:
    """The demo analysis on ``n`` datasets (the demo file under ``n`` names)."""
    folder = Path(tempfile.mkdtemp(prefix="calibrew-bench-scale-"))
    try:
        source = demo_file()
        files = {}
        for i in range(n):
            link = folder / f"tt_{i:03d}.root"
            link.symlink_to(source)
            files[f"tt_{i:03d}"] = [str(link)]
        job = write_job(folder, files, DEMO_CHUNKSIZE)
        return {"datasets": n, **measure(f"{n} dataset(s)", job, folder / "output",
                                          MANY_WORKERS, timeout)}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def make_sample_file(path: Path, events: int, seed: int) -> Path:
    """``events`` events resampled from the demo file into ``path`` (the branches of
    bench.py's ``KEEP``); an interrupted make leaves no file at ``path``."""
    from bench import KEEP

    from pipeline.inputs.make_sample import make_sample

    print(f"making {path} ({events:,} events)...", flush=True)
    part = path.with_suffix(".part.root")
    make_sample(DEMO_FILE, part, events, seed=seed, keep=KEEP)
    part.rename(path)
    return path


def sample_files(events: int, n_files: int, folder: Path, jobs: int = 1) -> list[Path]:
    """``events`` events resampled from the demo file into ``n_files`` files in ``folder``,
    made once (``jobs`` processes at a time) and reused."""
    from bench import KEEP

    tag = hashlib.sha256(" ".join(KEEP).encode()).hexdigest()[:8]
    paths = [folder / f"tt_scale_{events}_{i + 1}of{n_files}_{tag}.root"
             for i in range(n_files)]
    missing = [(path, events // n_files, 100 + i) for i, path in enumerate(paths)
               if not path.exists()]
    if jobs > 1 and len(missing) > 1:
        with concurrent.futures.ProcessPoolExecutor(min(jobs, len(missing))) as pool:
            list(pool.map(make_sample_file, *zip(*missing)))
    else:
        for args in missing:
            make_sample_file(*args)
    return paths


def repeated(sample: list[Path], repeat: int, folder: Path) -> list[Path]:
    """``sample`` listed ``repeat`` times, each repetition after the first through hard
    links in ``folder`` (copies across file systems): calibrew resolves symbolic links and
    reads a file once per dataset, so every input needs a file of its own.

    Examples
    --------
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "a.root").write_text("")
    >>> [p.name for p in repeated([folder / "a.root"], 2, folder)]
    ['a.root', 'a_copy1.root']
    >>> (folder / "a_copy1.root").samefile(folder / "a.root")
    True
    """
    paths = list(sample)
    for k in range(1, repeat):
        for source in sample:
            link = folder / f"{source.stem}_copy{k}{source.suffix}"
            try:
                os.link(source.resolve(), link)
            except OSError:
                shutil.copyfile(source, link)
            paths.append(link)
    return paths


def strong_scaling(sample: list[Path], chunksize: int, workers: int, timeout: float,
                   repeat: int = 1, keep: Path | None = None) -> dict:
    """The demo analysis on the resampled ``sample`` (each file ``repeat`` times) with
    ``workers`` local workers; its report.json is copied into ``keep`` (when given) as
    ``report_<workers>workers.json``."""
    folder = Path(tempfile.mkdtemp(prefix="calibrew-bench-scale-"))
    try:
        inputs = repeated(sample, repeat, folder)
        job = write_job(folder, {"tt_scale": [str(p) for p in inputs]}, chunksize)
        row = measure(f"strong scaling, {workers} worker(s)", job, folder / "output", workers,
                      timeout)
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(folder / "output" / "report.json",
                        keep / f"report_{workers}workers.json")
        return row
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --- the tables ------------------------------------------------------------------------------

def number(value: float | None, digits: int = 1) -> str:
    """``value`` with ``digits`` decimals and thousands separators, ``-`` when absent."""
    return "-" if value is None else f"{value:,.{digits}f}"


def ratio(value: float | None, base: float | None) -> str:
    return "-" if value is None or not base else f"{value / base:.2f}"


def machine() -> str:
    cores = os.cpu_count()
    return (f"Measured {datetime.now(timezone.utc):%Y-%m-%d} on {platform.machine()} "
            f"({cores} cores, {len(os.sched_getaffinity(0))} usable), Python "
            f"{platform.python_version()}")


#: the many-datasets table's figures: heading, the row's key, decimals
MANY_COLUMNS = [("process (s)", "process_s", 1), ("planning (s)", "graph_build_s", 2),
                ("client CPU (s)", "cpu_s", 1), ("client peak RSS (MiB)", "peak_mib", 0),
                ("first chunk (s)", "first_chunk_s", 2), ("compute (s)", "compute_s", 2)]


def many_table(rows: list[dict], command: str) -> list[str]:
    one = next((r for r in rows if r["datasets"] == 1), {})
    lines = [
        f"{machine()}, one run: `{command}`. The demo analysis (57 variations, its feature "
        f"table) on N datasets, each the demo file under its own name in "
        f"{200 // DEMO_CHUNKSIZE} chunks, local site with {MANY_WORKERS} workers; each row a "
        "whole run in a fresh process with an empty cache. Process: its wall time, Python's "
        "start included; client CPU and peak RSS: the run's own process (not its workers); "
        "first chunk: from the run's start to the first chunk result; x: the ratio to one "
        "dataset.",
        "",
        "| datasets | " + " | ".join(f"{name} | x" for name, _, _ in MANY_COLUMNS) + " |",
        "| --- |" + " --- | --- |" * len(MANY_COLUMNS),
    ]
    for r in rows:
        cells = [f"{number(r[key], digits)} | {ratio(r[key], one.get(key))}"
                 for _, key, digits in MANY_COLUMNS]
        lines.append(f"| {r['datasets']} | " + " | ".join(cells) + " |")
    return lines


def scaling_table(rows: list[dict], n_files: int, chunksize: int, command: str) -> list[str]:
    rows = sorted(rows, key=lambda r: r["workers"])
    events = sorted({r["events_computed"] for r in rows})
    cores = os.cpu_count() or 1
    rate_1 = next((r["events_computed"] / r["compute_s"] for r in rows if r["workers"] == 1),
                  None)
    over = [r["workers"] for r in rows if r["workers"] > cores]
    sizes = (f"{events[0]:,} events" if len(events) == 1 else
             " or ".join(f"{n:,}" for n in events) + " events (the events column)")
    lines = [
        f"{machine()}, one run: `{command}`. The demo analysis on {sizes} "
        f"resampled from the demo file ({n_files} files, chunks of {chunksize:,}), local "
        "site; each row a whole run in a fresh process with an empty cache. Wall: the run's, "
        "from its start (Python's start and imports not included); efficiency: events/s "
        "per worker against one worker's; outside compute: 1 - compute / wall; "
        "workers idle in compute: 1 - chunk task seconds / (workers x compute)."
        + (f" {' and '.join(map(str, over))} workers on {cores} cores are oversubscribed: "
           "they share the cores, their efficiency cannot reach 1." if over else ""),
        "",
        "| workers | events | wall (s) | compute (s) | events/s in compute "
        "| efficiency vs 1 worker | outside compute | workers idle in compute |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        n, compute, wall = r["workers"], r["compute_s"], r["wall_time_s"]
        rate = r["events_computed"] / compute
        idle = (None if r["chunk_task_s"] is None
                else 1 - r["chunk_task_s"] / (n * compute))
        note = " (oversubscribed)" if n > cores else ""
        lines.append(f"| {n}{note} | {r['events_computed']:,} | {number(wall)} "
                     f"| {number(compute)} | {number(rate, 0)} "
                     f"| {ratio(rate / n, rate_1)} | {number(1 - compute / wall, 2)} "
                     f"| {number(idle, 2)} |")
    return lines


def counts(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="1,100", help="dataset counts (many datasets; "
                        "empty: skipped)")
    parser.add_argument("--workers", default="1,2,4", help="worker counts (strong scaling; "
                        "empty: skipped)")
    parser.add_argument("--events", type=int, default=100_000, help="events of the sample")
    parser.add_argument("--files", type=int, default=4, help="files of the sample")
    parser.add_argument("--chunksize", type=int, default=12_500)
    parser.add_argument("--repeat", type=int, default=1, help="times each sample file is "
                        "listed (strong scaling; hard links)")
    parser.add_argument("--repeat-one", type=int, default=None, help="--repeat of the "
                        "one-worker run (default: --repeat)")
    parser.add_argument("--make-jobs", type=int, default=1, help="sample files made at once")
    parser.add_argument("--out-json", type=Path, help="write the rows and tables here after "
                        "every run")
    parser.add_argument("--keep-reports", type=Path, help="copy each strong-scaling run's "
                        "report.json into this folder")
    parser.add_argument("--sample-dir", type=Path, default=Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "calibrew" / "bench",
        help="where the sample is made once and reused")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        job, output, workers = args.child
        print(json.dumps(run_child(Path(job), Path(output), int(workers))))
        return 0

    # a SIGTERM (``timeout``) ends the benchmark as Ctrl-C does: the run in progress is killed
    signal.signal(signal.SIGTERM, lambda signum, _: sys.exit(128 + signum))
    command = "python tests/benchmarks/bench_scale.py " + shlex.join(sys.argv[1:])
    results: dict = {"machine": machine(), "command": command}
    if counts(args.datasets):
        rows = results["datasets"] = []
        for n in counts(args.datasets):
            rows.append(many_datasets(n, args.timeout))
            save(args.out_json, results)
        results["datasets_table"] = publish(many_table(rows, command), "scale",
                                            "Many datasets: whole runs", args.write)
        save(args.out_json, results)
    if counts(args.workers):
        args.sample_dir.mkdir(parents=True, exist_ok=True)
        sample = sample_files(args.events, args.files, args.sample_dir, args.make_jobs)
        rows = results["scaling"] = []
        for n in counts(args.workers):
            repeat = args.repeat_one if n == 1 and args.repeat_one else args.repeat
            rows.append(strong_scaling(sample, args.chunksize, n, args.timeout, repeat,
                                       args.keep_reports))
            save(args.out_json, results)
        results["scaling_table"] = publish(
            scaling_table(rows, args.files, args.chunksize, command),
            "scaling", "Strong scaling: workers on one sample", args.write)
        save(args.out_json, results)
    return 0


def save(path: Path | None, results: dict) -> None:
    """Write ``results`` as JSON to ``path`` (nothing when None)."""
    if path is not None:
        path.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
