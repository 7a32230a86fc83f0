"""The light analysis in calibrew (issue 17): its config, its parameters, and its
histograms computed in this process or on a one-worker LocalCluster.

The analysis is ``light_analysis.yaml`` beside this module, its dataset's file replaced by
the one given. The parameters are ``light_params.yaml`` over the defaults (AK4 jets
alone: it drops the default AK8 jet type with null). The same analysis written by hand in
coffea is ``light_coffea.py``.

Examples
--------
>>> cfg = config("sample.root")
>>> cfg.datasets["tt"].files, list(cfg.categories)
(['sample.root'], ['1b', '2b'])
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask
import hist
import numpy as np
from dask.local import get_sync

from pipeline.analysis.loading import load_config, load_parameters
from pipeline.config.models import AnalysisConfig
from pipeline.graph import DatasetGraph, build_dataset_graph, sum_vectors
from pipeline.inputs.datasets import Dataset, preprocess
from pipeline.run.identity import plan_identity
from pipeline.run.planning import PlanCache, Planner

LIGHT = Path(__file__).resolve().parent
CONFIG = LIGHT / "light_analysis.yaml"
DATASET = "tt"
METADATA = {"sample": "TTbar", "year": "2022_preEE", "isMC": True, "dataset": DATASET}


def config(path: str | Path) -> AnalysisConfig:
    """The analysis config, its one dataset reading ``path``."""
    cfg = load_config(CONFIG)
    cfg.datasets[DATASET].files = [str(path)]
    return cfg


def parameters(cfg: AnalysisConfig) -> Any:
    """The config's parameters: AK4 jets alone (light_params.yaml drops the AK8 jet type).

    >>> params = parameters(config("sample.root"))
    >>> dict(params.jets_calibration.collection["2022_preEE"])
    {'AK4PFPuppi': 'Jet', 'AK8PFPuppi': None}
    """
    return load_parameters(cfg.parameters)


def dataset_graph(path: str | Path, chunksize: int,
                  plans: Path | None = None) -> tuple[DatasetGraph, bool]:
    """The dataset's lazy graph, optimised (one chunk task per ``chunksize`` events of
    ``path``), and whether its plan came from the plan cache.

    With ``plans``, a plan-cache folder, the graph is planned as ``calibrew run`` plans it
    (its :class:`~pipeline.run.planning.Planner`): the traced plan is taken from the cache
    when there (no file opened, nothing traced), else traced and saved. Without, it is
    traced.
    """
    cfg = config(path)
    params = parameters(cfg)
    dataset = preprocess(Dataset(DATASET, [str(path)], dict(METADATA)), chunksize)
    if plans is None:
        graph, cached = build_dataset_graph(dataset, cfg, params), False
    else:
        planner = Planner(cfg, params, PlanCache(plan_identity(cfg, params), folder=plans))
        graph = planner.graph(dataset)
        cached = planner.cached > 0
    graph.chunk_tasks()  # optimised here, as calibrew's runner does when it plans
    return graph, cached


def run_in_process(graph: DatasetGraph,
                   done: Callable[[int], None] | None = None) -> dict[str, hist.Hist]:
    """The histograms of ``graph``, its chunk tasks computed one after another in this
    process (dask's synchronous scheduler, passed as the function: the name ``"sync"``
    would make dask import distributed, 0.35 s, to look for a client); ``done(events)`` is
    called after each chunk."""
    parts = []
    for chunk, task in zip(graph.dataset.chunks, graph.chunk_tasks(), strict=True):
        (vector,) = dask.compute(task, scheduler=get_sync)
        parts.append(vector)
        if done is not None:
            done(chunk.entries)
    total = sum_vectors(parts)
    assert total is not None
    return graph.plan.unpack(total)


def compute_on_cluster(graph: DatasetGraph) -> tuple[dict[str, hist.Hist],
                                                    dict[int, tuple[float, float]]]:
    """The histograms of ``graph``, computed on calibrew's ``local`` site with one worker
    (what ``calibrew run --workers 1`` starts: a LocalCluster of one single-threaded worker
    process, its allocator set as the site sets it) as the graph's tree sum; also, by chunk
    index, the (start, stop) times (``time.time()``) of its chunk task on the worker."""
    from distributed import get_task_stream

    from pipeline.run.warm_up import warm_workers
    from pipeline.sites import load_site, start_site, workers_override

    index = {task.key: i for i, task in enumerate(graph.chunk_tasks())}
    session = start_site(load_site("local", workers_override("local", 1)))
    try:
        warm_workers(session.client)  # as the runner does before it submits chunks
        with get_task_stream(session.client) as stream:
            vector = session.client.compute(graph.total()).result()
    finally:
        session.close()
    spans = {index[task["key"]]: (s["start"], s["stop"]) for task in stream.data
             if task["key"] in index for s in task["startstops"] if s["action"] == "compute"}
    return graph.plan.unpack(np.asarray(vector)), spans


def region_events(hists: dict[str, hist.Hist]) -> dict[str, int]:
    """The events of each category (b-tag region) at the nominal, from the cutflow."""
    cutflow = hists["cutflow"]
    counts: dict[str, int] = {}
    for region in hists["ht"].axes["category"]:
        entry: Any = cutflow[{"step": f"category: {region}", "kind": "events"}]
        counts[region] = int(entry.value)
    return counts

