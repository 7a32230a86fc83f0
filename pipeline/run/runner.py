"""Run a job: preprocess, build the graphs, compute on a site, write outputs and report."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from pipeline import __version__
from pipeline.analysis.histogram_fill import CUTFLOW
from pipeline.analysis.loading import load_job, load_parameters
from pipeline.analysis.plan import ALL_EVENTS
from pipeline.config.models import AnalysisConfig, JobSpec, RemoteSpec, ResampleSpec
from pipeline.errors import (
    CalibrationError,
    CalibrewError,
    ConfigError,
    ExpressionError,
    InputFileError,
    OutputConflictError,
    OutputError,
    WeightError,
    with_context,
)
from pipeline.graph import DatasetGraph
from pipeline.inputs.bytes_read import chunk_bytes
from pipeline.inputs.datasets import Dataset, preprocess_datasets
from pipeline.inputs.filesets import dataset_from_spec
from pipeline.inputs.remote import xrootd_environment
from pipeline.inputs.scanning import ScanMap
from pipeline.outputs.atomic import describe_os_error
from pipeline.outputs.histograms import WrittenHistograms, write_pickle
from pipeline.outputs.lock import OutputLock
from pipeline.outputs.provenance import provenance
from pipeline.outputs.report import write_json
from pipeline.outputs.results import Results, check_results, write_results, written_datasets
from pipeline.outputs.table_writer import TableWriter
from pipeline.run.checkpoints import (
    ChunkCheckpoints,
    different_outputs,
    outputs_identity,
    record_outputs_identity,
)
from pipeline.run.execution import ComputeTimes, DatasetRun, OnBadFile, compute_chunks
from pipeline.run.identity import output_identity, plan_identity, table_identity
from pipeline.run.planning import PlanCache, Planner
from pipeline.run.progress import ProgressBoard
from pipeline.run.resample import resample_datasets
from pipeline.run.site_session import SiteOnDemand
from pipeline.sites import check_site, describe, load_site, workers_override
from pipeline.table_layout import TableError, merge_part_attrs

CHECKPOINTS = ".chunks"
HISTOGRAMS_PICKLE = "histograms.pkl"


@dataclass
class RunResult:
    """What a run produced: histograms per dataset (read from their files when asked for)
    and the report."""

    histograms: WrittenHistograms = field(default_factory=WrittenHistograms)
    report: dict[str, Any] = field(default_factory=dict)
    #: the merged, normalised results and the statistical models
    results: Results = field(default_factory=Results)


def table_writers(dataset: Dataset, cfg: AnalysisConfig, params: Any,
                  output: Path) -> dict[str, TableWriter]:
    """The stores of the dataset's feature tables, ``<output>/<dataset>/<table>.zarr``: the
    sinks its chunk tasks write their parts into."""
    identity = table_identity(dataset, cfg, params)
    return {name: TableWriter(output / dataset.name / f"{name}.zarr", len(dataset.chunks),
                              identity)
            for name in cfg.tables}


def make_datasets(cfg: AnalysisConfig, names: list[str] | str, config_dir: Path | None,
                  chunksize: int, on_bad_file: OnBadFile = "fail",
                  bad_files: list[dict[str, str]] | None = None,
                  console: Console | None = None,
                  remote: RemoteSpec | None = None,
                  scan_map: ScanMap | None = None,
                  resample: tuple[ResampleSpec, str] | None = None) -> list[Dataset]:
    """The job's datasets, files resolved (globs, folders, coffea filesets; remote files
    with ``remote``'s timeouts and retries) and preprocessed into chunks, each file scanned
    once: from the cache, else through ``scan_map`` (the run's: on its cluster's workers;
    default: here).

    A file that cannot be opened stops the run (:class:`InputFileError` naming it), or with
    ``on_bad_file="skip"`` is left out, printed and appended to ``bad_files``.
    ``resample`` (the job's spec and path) replaces the files by resampled copies first.
    """
    selected = list(cfg.datasets) if names == "all" else list(names)
    datasets = [dataset_from_spec(name, cfg.datasets[name], config_dir, remote)
                for name in selected]
    if resample is not None:
        resample_datasets(datasets, *resample, console or Console())
    listed = [len(dataset.files) for dataset in datasets]
    skip = _skip_file(bad_files, console) if on_bad_file == "skip" else None
    preprocess_datasets(datasets, chunksize, on_error=skip, scan_map=scan_map)
    for dataset, n_files in zip(datasets, listed):
        if n_files and not dataset.files:
            raise InputFileError(f"dataset {dataset.name!r}: none of its {n_files} file(s) "
                                 "can be read")
    return datasets


def _skip_file(bad_files: list[dict[str, str]] | None,
               console: Console | None) -> Callable[[Dataset, str, InputFileError], None]:
    def record(dataset: Dataset, file: str, err: InputFileError) -> None:
        if bad_files is not None:
            bad_files.append({"dataset": dataset.name, "file": file, "error": str(err),
                              "stage": "open"})
        if console is not None:
            console.print(f"[yellow]skipped[/] {escape(dataset.name)}: {escape(str(err))}",
                          highlight=False)
    return record


def dataset_summary(graph: DatasetGraph, histograms: dict[str, Any]) -> dict[str, Any]:
    cutflow = histograms[CUTFLOW]
    steps = list(cutflow.axes["step"])
    weighted = cutflow[:, "weighted"].values()
    counts = cutflow[:, "events"].values()
    return {
        "dataset": graph.dataset.name,
        "metadata": graph.dataset.metadata,
        "files": graph.dataset.files,
        "chunks": len(graph.dataset.chunks),
        "events": int(counts[steps.index(ALL_EVENTS)]),
        "sum_genweights": float(weighted[steps.index(ALL_EVENTS)]),
        "cutflow": {s: {"events": int(c), "weighted": float(w)}
                    for s, c, w in zip(steps, counts, weighted)},
        "variations": list(graph.plan.variations),
    }


def finalize_tables(graph: DatasetGraph, writers: dict[str, TableWriter],
                    summary: dict[str, Any], cfg: AnalysisConfig, params: Any,
                    skipped: Sequence[int] = ()) -> list[Path]:
    """Write each feature table's final metadata (making it visible); return their paths."""
    dataset = graph.dataset
    origin = provenance(cfg.digest(), params, str(dataset.metadata.get("year", "")),
                        dataset.files, dataset.entries)
    written = []
    for table in graph.plan.tables:
        writer = writers[table.name]
        merged = merge_part_attrs(writer.part_attrs(skipped), writer.path)
        attrs = table.attrs()
        for name, fill in merged.sentinels.items():
            attrs["columns"][name]["sentinel"] = fill  # the value missing entries took
        writer.finalize({
            **attrs,
            "dataset": dataset.name,
            "metadata": dict(dataset.metadata),
            "changed_columns": merged.changed_columns,
            "events_total": summary["events"],
            "sum_genweights": summary["sum_genweights"],
            "rows_selected": merged.rows_selected,
            "provenance": origin,
        }, skipped=skipped)
        written.append(writer.path)
    return written


def write_dataset_outputs(output: Path, graph: DatasetGraph, writers: dict[str, TableWriter],
                          histograms: dict[str, Any], cfg: AnalysisConfig, params: Any,
                          skipped: Sequence[int] = ()) -> dict[str, Any]:
    """Write histograms.pkl, summary.json and finalize the tables (their ``writers``); the
    ROOT export is the merged result's (:mod:`pipeline.outputs.results`)."""
    folder = output / graph.dataset.name
    summary = {**dataset_summary(graph, histograms), "chunks_left_out": list(skipped)}
    try:
        written = [
            write_pickle(histograms, folder / HISTOGRAMS_PICKLE),
            *finalize_tables(graph, writers, summary, cfg, params, skipped),
            write_json(summary, folder / "summary.json"),
        ]
    except OSError as err:  # a table's metadata (each file above raises OutputError)
        raise OutputError(f"cannot write the outputs of dataset {graph.dataset.name!r} in "
                          f"{folder}: {describe_os_error(err)}") from err
    summary["outputs"] = [str(p) for p in written]
    return summary


@dataclass
class RunOptions:
    """How a job runs, beside what the job file says (command-line choices)."""

    output: str | Path | None = None
    site: str | None = None
    workers: int | None = None
    site_options: dict[str, Any] = field(default_factory=dict)
    retries: int | None = None
    on_bad_file: OnBadFile | None = None
    performance_report: str | Path | None = None
    show_progress: bool = True
    fresh: bool = False
    #: write into an output directory that holds another configuration's outputs,
    #: replacing those this job writes (its tables among them)
    force: bool = False


@dataclass
class _RunState:
    """What a run has done so far: enough to write its report if it fails."""

    started: float
    site: dict[str, str]
    bad_files: list[dict[str, str]] = field(default_factory=list)
    runs: list[DatasetRun] = field(default_factory=list)
    #: by dataset, then table: the feature tables' writers (the chunk tasks' sinks)
    writers: dict[str, dict[str, TableWriter]] = field(default_factory=dict)
    build_s: float = 0.0
    #: when the first chunk finished and the workers' seconds in chunk tasks
    times: ComputeTimes = field(default_factory=ComputeTimes)
    #: the traced plans: traced in this run, and taken from the plan cache
    plans: dict[str, int] = field(default_factory=dict)
    compute_s: float = 0.0
    #: whether a failure now is reported in report.json: one of the inputs or of the
    #: computation; a configuration found wrong before (an expression, a table's identity,
    #: the site) writes nothing, and leaves a previous run's report as it is
    report_failure: bool = True


def run_job(job_path: str | Path, options: RunOptions | None = None,
            console: Console | None = None, **kwargs: Any) -> RunResult:
    """Run the job at ``job_path`` end to end; return its histograms and report.

    ``kwargs`` are :class:`RunOptions` fields (``run_job(job, output=..., site=...)``).
    Chunks finished by an interrupted earlier run of the same job are not computed again
    (unless ``fresh``). A run that fails on its inputs or during the computation writes
    ``report.json`` with ``status: failed``.

    The run holds a lock on its output directory (another run into it is refused, naming
    its pid and host), and refuses a directory that holds the outputs of another
    configuration or parameters unless ``force`` (or ``fresh``).
    """
    opts = options or RunOptions(**kwargs)
    console = console or Console()
    started = time.perf_counter()
    job, cfg = load_job(job_path)
    site_name = opts.site or job.site
    site = load_site(site_name, {**workers_override(site_name, opts.workers or job.workers),
                                 **opts.site_options})
    check_site(site)  # too many workers, a missing sbatch: said before any planning
    state = _RunState(started, {"name": site_name, "type": site.type,
                                "description": describe(site)})
    out_dir = Path(opts.output or job.output)
    with OutputLock(out_dir, str(job_path)):
        try:
            return _run(job_path, job, cfg, site, out_dir, opts, console, state)
        except CalibrewError as err:
            if state.report_failure:
                # a directory that cannot be written cannot hold the report either: the
                # error that stopped the run is the one to show
                with contextlib.suppress(OutputError):
                    _write_report(out_dir, job, cfg, state, {}, status="failed",
                                  error=str(err))
            raise


def merge_job(job_path: str | Path, output: str | Path | None = None) -> Results:
    """Merge the per-dataset outputs a job wrote (into ``output``, default the job's) and
    write the results again (:func:`~pipeline.outputs.results.write_results`): after a
    change of the config's processes or fit, or after a merge that failed. Nothing is
    computed. Raises :class:`~pipeline.errors.OutputError` when no dataset's outputs are
    there, :class:`~pipeline.errors.ConfigError` when the simulation cannot be normalised.
    """
    job, cfg = load_job(job_path)
    params = load_parameters([*cfg.parameters, *job.parameters])
    out_dir = Path(output or job.output)
    with OutputLock(out_dir, str(job_path)):
        if not written_datasets(out_dir, cfg):
            raise OutputError(f"{out_dir}: no dataset of {job.config} has outputs there; "
                              f"run the job first (calibrew run {job_path})")
        results = write_results(out_dir, cfg, params)
    if results.merged is None:
        raise ConfigError(str(job_path), [("processes", results.skipped or "")])
    return results


def _run(job_path: str | Path, job: JobSpec, cfg: AnalysisConfig, site: Any, out_dir: Path,
         opts: RunOptions, console: Console, state: _RunState) -> RunResult:
    cluster = SiteOnDemand(site, state.site["name"], console)
    try:
        return _run_on(cluster, job_path, job, cfg, out_dir, opts, console, state)
    finally:
        cluster.close()


def _run_on(cluster: SiteOnDemand, job_path: str | Path, job: JobSpec, cfg: AnalysisConfig,
            out_dir: Path, opts: RunOptions, console: Console, state: _RunState) -> RunResult:
    """The run on ``cluster``: started to scan uncached files, else once the graphs are
    built (a configuration error found while planning starts nothing)."""
    config_dir = (Path(job_path).parent / job.config).resolve().parent
    params = load_parameters([*cfg.parameters, *job.parameters])
    chunksize = job.chunksize or cfg.chunksize
    retries = job.retries if opts.retries is None else opts.retries
    on_bad_file: OnBadFile = opts.on_bad_file or job.on_bad_file
    for key, value in xrootd_environment(job.remote).items():
        os.environ.setdefault(key, value)  # workers inherit them; a user's XRD_* wins
    datasets = make_datasets(cfg, job.datasets, config_dir, chunksize, on_bad_file,
                             state.bad_files, console, job.remote, cluster.scan_map,
                             None if job.resample is None else (job.resample, str(job_path)))
    for ds in datasets:
        console.print(f"[bold]{escape(ds.name)}[/]: {len(ds.files)} file(s), "
                      f"{ds.entries:,} events, {len(ds.chunks)} chunk(s) of <= {chunksize:,}")
    # the graphs are built (and every expression checked) before any computation
    state.report_failure = False
    t0 = time.perf_counter()
    state.writers = {ds.name: table_writers(ds, cfg, params, out_dir) for ds in datasets}

    def note(message: str) -> None:  # a plan cache entry that cannot be read or written
        console.print(f"[yellow]note:[/] {escape(message)}", highlight=False)

    planner = Planner(cfg, params, PlanCache(plan_identity(cfg, params), note=note))
    graphs = [_plan(planner, ds, state.writers[ds.name]) for ds in datasets]
    check_results(cfg, params, [ds.name for ds in datasets])  # before any computation
    state.plans = {"traced": planner.traced, "from_cache": planner.cached}
    _check_output_directory(out_dir, cfg, params, opts)
    writers = [writer for tables in state.writers.values() for writer in tables.values()]
    if opts.fresh:  # start again: this job's tables and finished chunks are removed
        for writer in writers:
            shutil.rmtree(writer.path, ignore_errors=True)
    for writer in writers:  # a table of another identity or schema stops the run here,
        try:                # before any table is created (with --force it is replaced)
            writer.check()
        except TableError:
            if not opts.force:
                raise
            shutil.rmtree(writer.path)
    record_outputs_identity(out_dir, output_identity(cfg, params), str(job_path))
    for writer in writers:
        try:
            writer.prepare()
        except OSError as err:
            raise OutputError(f"cannot create table {writer.path}: "
                              f"{describe_os_error(err)}") from err
    state.build_s = time.perf_counter() - t0
    console.print(f"graphs built in {state.build_s:.2f} s "
                  f"({sum(len(g.dataset.chunks) for g in graphs)} chunk tasks, "
                  f"{sum(len(g.plan.variations) for g in graphs)} variations; "
                  f"{planner.traced} plan(s) traced, {planner.cached} from the cache)")
    for graph in graphs:
        store = ChunkCheckpoints(out_dir / graph.dataset.name / CHECKPOINTS,
                                 table_identity(graph.dataset, cfg, params))
        if opts.fresh:
            store.clear()
        state.runs.append(DatasetRun(graph, store, resumed=store.open()))
        if state.runs[-1].resumed:
            console.print(f"{escape(graph.dataset.name)}: {len(state.runs[-1].resumed)} of "
                          f"{len(graph.dataset.chunks)} chunk(s) finished by an earlier run "
                          f"are kept ({store.folder})")
    client = cluster.client()
    compute_start = time.perf_counter()
    state.report_failure = True
    try:
        state.times = _compute(client, state.runs, retries, on_bad_file, opts, console)
        if state.times.first_chunk_s is not None:  # from the run's start
            state.times.first_chunk_s += compute_start - state.started
    finally:
        state.compute_s = time.perf_counter() - compute_start
    # every output is written before the cluster closes: a close that fails or times out
    # (distributed's nanny join, under load) cannot lose them
    return _write_outputs(out_dir, job, cfg, params, state, console)


def _plan(planner: Planner, dataset: Dataset, writers: dict[str, TableWriter]) -> DatasetGraph:
    """Build the dataset's graph, its chunk tasks writing the tables' parts into
    ``writers``, from the traced plan of its analysis shape (traced on the typetracer of its
    first file if no dataset of its shape was planned: every calibrator and expression
    runs); an error names the dataset and that file."""
    try:
        graph = planner.graph(dataset, writers)
        graph.chunk_tasks()  # optimised here (the read projected, the chunk task fused)
    except (CalibrationError, ExpressionError, WeightError) as err:
        first = dataset.files[0] if dataset.files else "no file"
        more = f" (and {len(dataset.files) - 1} more)" if len(dataset.files) > 1 else ""
        raise with_context(err, f"dataset {dataset.name!r}, file {first}{more}, read to "
                                "plan the run") from err
    return graph


def _check_output_directory(out_dir: Path, cfg: AnalysisConfig, params: Any,
                            opts: RunOptions) -> None:
    """Refuse an output directory that holds another configuration's outputs (unless
    ``force`` or ``fresh``): they would be overwritten, mixed with this run's."""
    differ = different_outputs(out_dir, output_identity(cfg, params))
    if differ and not (opts.force or opts.fresh):
        what = " and ".join("configuration" if k == "config" else k for k in differ)
        job = (outputs_identity(out_dir) or {}).get("job")
        raise OutputConflictError(
            f"output directory {out_dir} holds the outputs of another {what}"
            + (f" (written by {job})" if job else "") + ": this run would overwrite "
            "them. Nothing was changed. Choose another --output, or use --force to replace "
            "them (or --fresh, which also computes every chunk again).")


def _compute(client: Any, runs: list[DatasetRun], retries: int, on_bad_file: OnBadFile,
             opts: RunOptions, console: Console) -> ComputeTimes:
    from distributed import performance_report

    board = ProgressBoard({r.name: (len(r.graph.dataset.chunks), len(r.resumed))
                           for r in runs}, console=console, enabled=opts.show_progress)
    report = (performance_report(filename=str(opts.performance_report))
              if opts.performance_report else contextlib.nullcontext())
    with report, board:
        times = compute_chunks(client, runs, retries, on_bad_file, board)
    if opts.performance_report:
        console.print(f"Dask performance report: {opts.performance_report}")
    return times


def _write_outputs(out_dir: Path, job: JobSpec, cfg: AnalysisConfig, params: Any,
                   state: _RunState, console: Console) -> RunResult:
    """Write each dataset's outputs from its summed vector (fetched from the worker, one
    dataset at a time), and write the report. Checkpoints are removed once written, but
    for a dataset with chunks left out: a later run then computes only those."""
    result = RunResult()
    summaries = {}
    for run in state.runs:
        graph = run.graph
        histograms = graph.plan.unpack(run.vector())
        result.histograms.paths[run.name] = out_dir / run.name / HISTOGRAMS_PICKLE
        try:
            summary = write_dataset_outputs(out_dir, graph, state.writers[run.name],
                                            histograms, cfg, params,
                                            sorted(run.failed_chunks))
        except OutputError as err:
            raise OutputError(f"{err}\nThe computed chunks are kept ({run.checkpoints.folder})"
                              ": once the output directory can be written, rerun the same "
                              "command to write the outputs without computing them "
                              "again.") from err
        summaries[run.name] = {**summary, **run.report(), **_bytes_read(run, summary)}
        if not run.failed:
            run.checkpoints.clear()
    try:
        result.results = write_results(out_dir, cfg, params)
    except CalibrewError as err:
        raise with_context(err, "merging the results; every dataset's outputs are written: "
                                "fix it, then `calibrew merge` with the same job file "
                                "merges them") from err
    result.report = _write_report(out_dir, job, cfg, state, summaries, result.results)
    events = sum(r.events_computed for r in state.runs)
    failures = [f for r in state.runs for f in r.failed]
    for failure in failures:
        console.print(f"[yellow]left out:[/] {escape(failure.describe())}", highlight=False)
    for bad in state.bad_files:
        console.print(f"[yellow]left out:[/] {escape(bad['dataset'])}: {escape(bad['error'])}",
                      highlight=False)
    left_out = len(failures) + len(state.bad_files)
    rates = state.times.rates()
    console.print(f"processed {events:,} events in {result.report['wall_time_s']:.1f} s "
                  f"(planning {state.build_s:.1f} s"
                  + (f"; {rates.describe()}" if rates is not None else "") + ")"
                  + (f", {left_out} input(s) left out" if left_out else "")
                  + f"; report: {escape(str(out_dir / 'report.json'))}")
    print_results(result.results, console)
    return result


def print_results(results: Results, console: Console) -> None:
    """Say what :func:`~pipeline.outputs.results.write_results` wrote (or why nothing),
    and the merge's notes."""
    if results.merged is None:
        console.print(f"[yellow]note:[/] {escape(results.skipped or '')}", highlight=False)
        return
    merged = results.merged
    datasets = sum(len(p.datasets) for p in merged.processes.values())
    console.print(f"results: merged {datasets} dataset(s) into {len(merged.processes)} "
                  f"process(es), {merged.total_luminosity():.3g} fb^-1: "
                  + ", ".join(escape(str(p)) for p in results.paths), highlight=False)
    for line in merged.notes:
        console.print(f"[yellow]note:[/] {escape(line)}", highlight=False)


def _bytes_read(run: DatasetRun, summary: dict[str, Any]) -> dict[str, Any]:
    """Compressed input bytes of the dataset's processed chunks, in all and per event
    (``None`` if the files' metadata cannot be read: a diagnostic never fails a run)."""
    columns = sorted(run.graph.necessary_columns())
    try:
        sizes = chunk_bytes(run.graph.dataset, columns, skip=run.failed_chunks)
    except Exception:
        return {"columns_read": columns, "bytes_read": None, "bytes_per_event": None}
    total = sum(sizes)
    return {"columns_read": columns, "bytes_read": total,
            "bytes_per_event": total / summary["events"] if summary["events"] else None}


def _write_report(out_dir: Path, job: JobSpec, cfg: AnalysisConfig, state: _RunState,
                  summaries: dict[str, Any], results: Results | None = None,
                  status: str = "complete", error: str | None = None) -> dict[str, Any]:
    events = sum(r.events_computed for r in state.runs)
    report = {
        "status": status,
        **({"error": error} if error else {}),
        "calibrew_version": __version__,
        "config_digest": cfg.digest(),
        "job": job.model_dump(),
        "site": state.site,
        "datasets": summaries or {r.name: r.report() for r in state.runs},
        "events_processed": sum(s.get("events", 0) for s in summaries.values()),
        "events_computed": events,
        "chunks_failed": [{"dataset": f.dataset, **f.as_dict()} for r in state.runs
                          for f in r.failed],
        "files_unreadable": state.bad_files,
        "wall_time_s": time.perf_counter() - state.started,
        "graph_build_s": state.build_s,
        "plans": state.plans,
        "compute_s": state.compute_s,
        "first_chunk_s": state.times.first_chunk_s,
        "chunk_task_s": state.times.chunk_task_s,
        "events_per_s": events / state.compute_s if state.compute_s else None,
        "rates": None if (rates := state.times.rates()) is None else rates.as_dict(),
        "outputs": [p for s in summaries.values() for p in s.get("outputs", [])],
        **({"results": results.report()} if results is not None else {}),
    }
    write_json(report, out_dir / "report.json")
    return report
