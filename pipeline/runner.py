"""Run a job: preprocess, build the graphs, compute on a site, write outputs and report."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from pipeline import __version__
from pipeline.config import AnalysisConfig, JobSpec, load_job
from pipeline.datasets import Dataset, preprocess, resolve_files
from pipeline.graph import DatasetGraph, build_dataset_graph
from pipeline.outputs.histograms import CUTFLOW, write_pickle, write_root
from pipeline.outputs.provenance import provenance
from pipeline.outputs.report import write_json
from pipeline.outputs.tables import TableError
from pipeline.parameters import load_parameters
from pipeline.processor import ALL_EVENTS


@dataclass
class RunResult:
    """What a run produced: histograms per dataset and the report."""

    histograms: dict[str, dict[str, Any]] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)


def make_datasets(cfg: AnalysisConfig, names: list[str] | str, config_dir: Path | None,
                  chunksize: int) -> list[Dataset]:
    """The job's datasets, files resolved and preprocessed into chunks."""
    selected = list(cfg.datasets) if names == "all" else list(names)
    out = []
    for name in selected:
        spec = cfg.datasets[name]
        metadata = {**spec.metadata.model_dump(), "dataset": name}
        dataset = Dataset(name, resolve_files(spec.files, config_dir), metadata, spec.tree)
        out.append(preprocess(dataset, chunksize))
    return out


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


def finalize_tables(graph: DatasetGraph, summary: dict[str, Any], cfg: AnalysisConfig,
                    params: Any) -> list[Path]:
    """Write each feature table's final metadata (making it visible); return their paths."""
    dataset = graph.dataset
    origin = provenance(cfg.digest(), params, str(dataset.metadata.get("year", "")),
                        dataset.files, dataset.entries)
    written = []
    for table, (_, writer) in zip(graph.plan.tables, graph.plan.writers):
        parts = writer.part_attrs()
        changed = {json.dumps(p.get("changed_columns"), sort_keys=True) for p in parts}
        if len(changed) > 1:
            raise TableError(f"{writer.path}: parts store different columns per variation "
                             f"({len(changed)} layouts); calibrators must change the same "
                             "collections in every chunk")
        selected: dict[str, int] = {}
        for p in parts:
            for variation, count in p.get("selected", {}).items():
                selected[variation] = selected.get(variation, 0) + int(count)
        attrs = table.attrs()
        for name, fill in (parts[0].get("sentinels", {}) if parts else {}).items():
            attrs["columns"][name]["sentinel"] = fill  # the value missing entries took
        writer.finalize({
            **attrs,
            "dataset": dataset.name,
            "metadata": dict(dataset.metadata),
            "changed_columns": parts[0].get("changed_columns", {}) if parts else {},
            "events_total": summary["events"],
            "sum_genweights": summary["sum_genweights"],
            "rows_selected": selected,
            "provenance": origin,
        })
        written.append(writer.path)
    return written


def write_dataset_outputs(output: Path, graph: DatasetGraph, histograms: dict[str, Any],
                          cfg: AnalysisConfig, params: Any) -> dict[str, Any]:
    """Write histograms.pkl, histograms.root, summary.json and finalize the tables."""
    folder = output / graph.dataset.name
    summary = dataset_summary(graph, histograms)
    written = [
        write_pickle(histograms, folder / "histograms.pkl"),
        write_root(histograms, folder / "histograms.root"),
        *finalize_tables(graph, summary, cfg, params),
        write_json(summary, folder / "summary.json"),
    ]
    summary["outputs"] = [str(p) for p in written]
    return summary


def run_job(job_path: str | Path, output: str | Path | None = None, site: str | None = None,
            workers: int | None = None, console: Console | None = None,
            show_progress: bool = True) -> RunResult:
    """Run the job at ``job_path`` end to end; return its histograms and report."""
    from pipeline.sites import load_site, start_site

    console = console or Console()
    started = time.perf_counter()
    job, cfg = load_job(job_path)
    config_dir = (Path(job_path).parent / job.config).resolve().parent
    params = load_parameters([*cfg.parameters, *job.parameters])
    out_dir = Path(output or job.output)
    chunksize = job.chunksize or cfg.chunksize
    datasets = make_datasets(cfg, job.datasets, config_dir, chunksize)
    for ds in datasets:
        console.print(f"[bold]{ds.name}[/]: {len(ds.files)} file(s), {ds.entries:,} events, "
                      f"{len(ds.chunks)} chunk(s) of <= {chunksize:,}")
    site_profile = load_site(site or job.site, {"n_workers": workers or job.workers})
    # the graphs are built (and every expression checked) before any cluster starts
    t0 = time.perf_counter()
    graphs = [build_dataset_graph(ds, cfg, params, out_dir) for ds in datasets]
    totals = [g.total() for g in graphs]  # traced here: expressions are checked
    writers = [writer for graph in graphs for _, writer in graph.plan.writers]
    for writer in writers:  # a table of another identity or schema stops the run here,
        writer.check()      # before any table is created
    for writer in writers:
        writer.prepare()
    build_s = time.perf_counter() - t0
    console.print(f"graphs built in {build_s:.2f} s "
                  f"({sum(len(t.dask) for t in totals)} tasks, "
                  f"{sum(len(g.plan.variations) for g in graphs)} variations)")
    client, cluster = start_site(site_profile)
    try:
        console.print(f"Dask dashboard: [link={client.dashboard_link}]{client.dashboard_link}[/]")
        return _compute_and_write(client, job, cfg, params, graphs, totals, out_dir, console,
                                  started, build_s, show_progress)
    finally:
        client.close()
        cluster.close()


def _compute_and_write(client: Any, job: JobSpec, cfg: AnalysisConfig, params: Any,
                       graphs: list[DatasetGraph], totals: list[Any], out_dir: Path,
                       console: Console, started: float, build_s: float,
                       show_progress: bool) -> RunResult:
    from pipeline.progress import ChunkProgressPlugin, finished_chunks, watch

    client.register_plugin(ChunkProgressPlugin())
    compute_start = time.perf_counter()
    futures = client.compute(totals)
    if show_progress:
        layers = {g.label: (g.dataset.name, [c.entries for c in g.dataset.chunks])
                  for g in graphs}
        watch(client, futures, layers, console=console)
    vectors = client.gather(futures)
    compute_s = time.perf_counter() - compute_start
    done = finished_chunks(client)
    result = RunResult()
    summaries = {}
    for graph, vector in zip(graphs, vectors):
        histograms = graph.plan.unpack(vector)
        result.histograms[graph.dataset.name] = histograms
        summaries[graph.dataset.name] = write_dataset_outputs(out_dir, graph, histograms, cfg,
                                                              params)
        summaries[graph.dataset.name]["events_per_s"] = (
            summaries[graph.dataset.name]["events"] / compute_s
        )
        summaries[graph.dataset.name]["chunks_done"] = len(done.get(graph.label, []))
    wall = time.perf_counter() - started
    events = sum(s["events"] for s in summaries.values())
    result.report = {
        "calibrew_version": __version__,
        "config_digest": cfg.digest(),
        "job": job.model_dump(),
        "datasets": summaries,
        "events_processed": events,
        "wall_time_s": wall,
        "graph_build_s": build_s,
        "compute_s": compute_s,
        "events_per_s": events / compute_s if compute_s else None,
        "outputs": [p for s in summaries.values() for p in s["outputs"]],
    }
    report_path = write_json(result.report, out_dir / "report.json")
    console.print(f"processed {events:,} events in {wall:.1f} s "
                  f"({events / compute_s:,.0f} events/s in compute); report: {report_path}")
    return result
