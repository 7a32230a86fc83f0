"""The per-dataset lazy graph: read NanoAOD lazily, map the chunk processor, sum.

Lazy only: nothing here computes, starts a cluster or writes, and it knows no output format.
The graph is ``from-uproot`` (only the columns used) -> one fused ``calibrew-chunk`` task per
chunk (:class:`~pipeline.analysis.processor.ChunkProcessor`, every variation inside) -> a tree
sum of the per-chunk histogram vectors. Its size does not grow with the number of variations.
The feature tables' parts are written by the chunk tasks into the sinks the caller hands in
(:class:`~pipeline.analysis.processor.TableSink`: the run layer gives the Zarr writers).

Planning is shared: what tracing the chunk function on typetracers yields (the variations
and the input columns, a :class:`TracedPlan`) depends only on the dataset's
:func:`analysis_shape`, so datasets of one shape are traced once (:func:`trace_plan`) and
each one's graph is built from that plan without tracing again (``build_dataset_graph(...,
traced=plan)``: the read projected onto the plan's columns, the chunk function mapped with
its known meta). The graph is the same as the one traced alone.
"""

from __future__ import annotations

import gc
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import awkward as ak
import dask
import dask_awkward as dak
import numpy as np
from dask._task_spec import DataNode, GraphNode, Task, TaskRef
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph
from dask_awkward.layers import AwkwardInputLayer
from dask_awkward.manual import optimize_columns

from pipeline.analysis.loading import analysis_vocabulary, calibrator_classes
from pipeline.analysis.plan import ProcessingPlan, make_plan
from pipeline.analysis.processor import ChunkProcessor, TableSink, is_typetracer
from pipeline.calibration.manager import CalibratorsManager
from pipeline.config.models import AnalysisConfig
from pipeline.errors import CalibrewError, ChunkFault, is_deterministic
from pipeline.inputs.datasets import Dataset
from pipeline.inputs.nanoevents import base_form, read_lazy, read_like
from pipeline.inputs.parquet import read_parquet_lazy
from pipeline.weights import weight_variation_names

CHUNK_LABEL = "calibrew-chunk"
SUM_FAN_IN = 8
#: the dataset metadata no traced result depends on: they only name and normalise outputs
#: (the sample counts through its variations, weights and table labels in the config)
UNTRACED_METADATA = ("dataset", "sample", "xsec")


def read_events(dataset: Dataset, known_base_form: str | None = None,
                like: Any = None) -> Any:
    """Lazy events (dask-awkward) of ``dataset``, one partition per chunk: NanoEvents, or
    the records of a flat Parquet table. NanoAOD read without opening its first file:
    with ``known_base_form`` (the :attr:`TracedPlan.base_form` of its shape), or ``like``
    the lazy events of a dataset of its shape and uproot options (read by their read
    function: cheaper still)."""
    if dataset.format == "parquet":
        return read_parquet_lazy([(c.file, c.start, c.stop) for c in dataset.chunks],
                                 dataset.name)
    if like is not None:
        return read_like(like, dataset.steps_by_file())
    return read_lazy(dataset.steps_by_file(), dataset.uproot_options(), known_base_form)


def plan_variations(cfg: AnalysisConfig, params: Any, metadata: dict[str, Any],
                    events_meta: Any) -> tuple[list[str], list[str]]:
    """The shape and the weight variations of a dataset, found on its typetracer."""
    sample = str(metadata["sample"])
    variation_calibrators = cfg.variations_for_sample(sample)
    manager = CalibratorsManager(
        calibrator_classes(cfg), events_meta, params, metadata,
        requested_calibrator_variations=variation_calibrators,
    )
    shape = manager.variations_to_run(variation_calibrators)
    weights = weight_variation_names(
        metadata, params, cfg.weights_for_sample(sample),
        cfg.weight_variations_for_sample(sample), events_meta, analysis_vocabulary(cfg))
    return shape, [w for w in weights if w not in shape]


@dataclass(frozen=True)
class TracedPlan:
    """What tracing a dataset's chunk function on typetracers yields, shared by every
    dataset of its :func:`analysis_shape`: the shape and weight variations, the input
    columns the chunk function reads, and the JSON of the input's base form (NanoAOD: the
    datasets of the shape are read with it, without opening a file; ``None`` for Parquet).

    Examples
    --------
    >>> plan = TracedPlan(("nominal",), ("pileupUp",), frozenset({"nJet", "Jet_pt"}))
    >>> TracedPlan.from_dict(plan.as_dict()) == plan
    True
    """

    shape: tuple[str, ...]
    weights: tuple[str, ...]
    columns: frozenset[str]
    base_form: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able form (columns sorted)."""
        return {"shape": list(self.shape), "weights": list(self.weights),
                "columns": sorted(self.columns), "base_form": self.base_form}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TracedPlan:
        """The plan of :meth:`as_dict`; a missing key raises :class:`KeyError`, a wrong
        type :class:`TypeError`."""
        parts = {k: data[k] for k in ("shape", "weights", "columns")}
        if not all(isinstance(v, list) and all(isinstance(x, str) for x in v)
                   for v in parts.values()):
            raise TypeError("a traced plan holds three lists of names")
        form = data["base_form"]
        if form is not None and not isinstance(form, str):
            raise TypeError("a traced plan's base form is a JSON text")
        return cls(tuple(parts["shape"]), tuple(parts["weights"]),
                   frozenset(parts["columns"]), form)


def analysis_shape(dataset: Dataset, cfg: AnalysisConfig,
                   events_meta: Any = None) -> dict[str, Any]:
    """What the traced plan of ``dataset`` depends on, besides the configuration, the
    parameters and the code: its metadata but for :data:`UNTRACED_METADATA` (data or MC,
    the period, the era, the generator weight column), its sample's calibrator variations,
    weights, weight variations and table labels, the input format and the digest of its
    events' form (the input file's branches and types: ``dataset.form_digest``, found by
    preprocessing, else the digest of ``events_meta``'s form). Datasets of equal shapes
    share one :class:`TracedPlan`; a calibrator may choose its variations and columns from
    these, not from the dataset's or sample's name.
    """
    sample = str(dataset.metadata["sample"])
    if dataset.form_digest is not None:
        digest = dataset.form_digest
    elif events_meta is not None:
        form = json.dumps(_canonical(events_meta.layout.form.to_dict()), sort_keys=True)
        digest = hashlib.sha256(form.encode()).hexdigest()[:32]
    else:
        raise ValueError(f"dataset {dataset.name!r}: no form digest (preprocess it) and "
                         "no events")
    return {
        "metadata": {k: v for k, v in sorted(dataset.metadata.items())
                     if k not in UNTRACED_METADATA},
        "variations": cfg.variations_for_sample(sample),
        "weights": cfg.weights_for_sample(sample),
        "weight_variations": cfg.weight_variations_for_sample(sample),
        "labels": {name: spec.labels.get(sample) for name, spec in cfg.tables.items()},
        "format": dataset.format,
        "form": digest,
    }


def _canonical(form: Any) -> Any:
    """A form's dict with every record's fields in sorted order (a schema may build them
    in any order: the same form in another process).

    Examples
    --------
    >>> _canonical({"class": "RecordArray", "fields": ["b", "a"], "contents": [1, 2]})
    {'class': 'RecordArray', 'fields': ['a', 'b'], 'contents': [2, 1]}
    """
    if isinstance(form, list):
        return [_canonical(item) for item in form]
    if not isinstance(form, dict):
        return form
    out = {key: _canonical(value) for key, value in form.items()}
    if isinstance(out.get("fields"), list) and isinstance(out.get("contents"), list):
        pairs = sorted(zip(out["fields"], out["contents"]), key=lambda pair: str(pair[0]))
        out["fields"], out["contents"] = [f for f, _ in pairs], [c for _, c in pairs]
    return out


@dataclass
class DatasetGraph:
    """The lazy computation of one dataset (``columns``: the input columns it reads, when
    known from its :class:`TracedPlan`)."""

    dataset: Dataset
    plan: ProcessingPlan
    chunks: dak.Array
    columns: frozenset[str] | None = None
    _chunk_tasks: list[Delayed] | None = field(default=None, init=False, repr=False)

    def chunk_tasks(self) -> list[Delayed]:
        """One delayed histogram vector per chunk, in chunk order.

        The graph is optimised here, once: dask-awkward projects the read onto the columns
        used.
        """
        if self._chunk_tasks is None:
            self._chunk_tasks = share_common_arguments(
                self.chunks.to_delayed(optimize_graph=True), f"{self.chunks.name}-shared")
        return list(self._chunk_tasks)

    def total(self) -> Delayed:
        """A delayed float64 vector: the histograms of all chunks, summed along the tree of
        :func:`tree_levels` (fan-in 8), as the run's workers do, so that both give the same
        bits."""
        level: list[Any] = self.chunk_tasks()
        while True:
            level = [dask.delayed(sum_vectors)(level[i : i + SUM_FAN_IN])
                     for i in range(0, len(level), SUM_FAN_IN)]
            if len(level) == 1:
                return level[0]

    def necessary_columns(self) -> set[str]:
        """The input branches the run reads (traced, unless its plan was given)."""
        if self.columns is not None:
            return set(self.columns)
        columns: set[str] = set()
        for cols in dak.report_necessary_columns(self.chunks).values():
            columns |= set(cols or ())
        return columns


def share_common_arguments(tasks: list[Delayed], prefix: str) -> list[Delayed]:
    """``tasks`` (delayed, of one graph) with each argument object that all of them hold
    (the fused read-and-process subgraph: uproot's reader, with the file's whole form, and
    the chunk function, a quarter of a megabyte) moved into a task of its own, key
    ``(prefix, i)``, that every task depends on.

    The scheduler ships each task's spec to a worker on its own, so an argument held by
    every chunk task would be serialised once per chunk, on the client's machine (where
    the scheduler runs, locally and on batch); as a dependency it reaches each worker once.

    The chunk tasks are marked data producers (they read the input): the scheduler then
    spreads them over the least busy workers, as it does for tasks without dependencies.
    Otherwise, with at most twice the workers' threads in chunks, it would run them all on
    the worker holding the shared argument.

    Examples
    --------
    >>> from dask._task_spec import Task
    >>> big = {"reader": "a large object"}
    >>> tasks = [Delayed(("chunk", i), {("chunk", i): Task(("chunk", i), len, big)})
    ...          for i in range(2)]
    >>> shared = share_common_arguments(tasks, "chunk-shared")
    >>> dict(shared[0].dask)[("chunk", 0)].dependencies
    frozenset({('chunk-shared', 0)})
    >>> dask.compute(*shared, scheduler="sync")
    (1, 1)
    """
    graph = low_level_graph(tasks)
    specs = [graph[t.key] for t in tasks]
    if len(specs) < 2 or not all(isinstance(s, Task) for s in specs):
        return list(tasks)
    first = specs[0]
    common = [i for i, arg in enumerate(first.args)
              if isinstance(arg, dict) or callable(arg)
              if not isinstance(arg, GraphNode)
              if all(len(s.args) == len(first.args) and s.args[i] is arg for s in specs)]
    if not common:
        return list(tasks)
    graph.update({(prefix, i): DataNode((prefix, i), first.args[i]) for i in common})
    for key, spec in zip((t.key for t in tasks), specs, strict=True):
        args = [TaskRef((prefix, i)) if i in common else arg
                for i, arg in enumerate(spec.args)]
        graph[key] = Task(key, spec.func, *args, _data_producer=True, **spec.kwargs)
    return one_layer(graph, [t.key for t in tasks], prefix)


def low_level_graph(tasks: Iterable[Delayed]) -> dict[Any, Any]:
    """The tasks of ``tasks``' graphs, by key."""
    return {key: spec for t in tasks for key, spec in dict(t.dask).items()}


def one_layer(graph: Mapping[Any, Any], keys: Iterable[Any], name: str) -> list[Delayed]:
    """Delayed objects of ``keys`` in ``graph``, all in one layer ``name``: combined (in a
    sum, in one ``compute``), their graphs are merged into one copy, not one per object."""
    layer = HighLevelGraph({name: dict(graph)}, {name: set()})
    return [Delayed(key, layer, layer=name) for key in keys]


def sum_vectors(parts: Iterable[Any]) -> np.ndarray | None:
    """The sum of ``parts`` in their order (``None`` entries, failed chunks, are left out);
    ``None`` if all are.

    Examples
    --------
    >>> sum_vectors([np.array([1.0]), None, np.array([2.0])])
    array([3.])
    """
    total = None
    for part in parts:
        if part is None:
            continue
        if isinstance(part, ChunkFault):  # the analysis failed on this chunk
            raise part.error
        vector = np.asarray(part, dtype=np.float64).reshape(-1)
        total = vector.copy() if total is None else total + vector
    return total


def tree_levels(n: int) -> list[int]:
    """The number of nodes on each level of the sum tree of ``n`` chunks (that of
    :meth:`DatasetGraph.total`: groups of ``SUM_FAN_IN`` in order, level by level), from the
    chunks up to the one root.
    Summing along it (as the workers do, :mod:`pipeline.run.reduction`) makes the same
    additions in the same order, so the same bits.

    Examples
    --------
    >>> tree_levels(20)
    [20, 3, 1]
    >>> tree_levels(1)
    [1, 1]
    """
    sizes = [n]
    while True:
        sizes.append(-(-sizes[-1] // SUM_FAN_IN))
        if sizes[-1] <= 1:
            return sizes


class ChunkTask:
    """The function of a chunk task: the processor, whose deterministic errors (an
    expression's, a calibrator's, a table part's: :func:`~pipeline.errors.is_deterministic`)
    are returned as a :class:`~pipeline.errors.ChunkFault` instead of raised, so that Dask
    does not retry them; any other error (an unreadable input, a worker's trouble) is
    raised, and retried. On typetracers (planning) every error is raised.

    Arrays held by reference cycles (a user's calibrator may leave some; calibrew's own
    expressions did) are freed by Python's cyclic collector, which runs after enough new
    objects, not enough memory: a worker would carry a chunk's arrays into the next ones
    (0.6 GiB more at the peak of the demo's 200k-event chunks). They are collected before
    and after each eager chunk; in a warmed-up worker (:mod:`pipeline.run.warm_up`) a
    collection skips its long-lived objects."""

    def __init__(self, processor: ChunkProcessor) -> None:
        self.processor = processor

    def __call__(self, events: Any, part: Any = None) -> Any:
        eager = not is_typetracer(events)
        if eager:
            gc.collect()  # what earlier chunks left, before this one allocates
        try:
            return self.processor(events) if part is None else self.processor(events, part)
        except CalibrewError as err:
            if not is_deterministic(err) or not eager:
                raise
            return ChunkFault(err)
        finally:
            if eager:
                gc.collect()


def _part_indices(n: int, name: str) -> dak.Array:
    """One partition per chunk holding the chunk's index: it names the table parts."""
    meta = ak.Array(ak.Array(np.zeros(1, dtype=np.int64)).layout.to_typetracer(
        forget_length=True))
    parts = dak.from_map(_index_array, list(range(n)), label=f"calibrew-part-{name}",
                         meta=meta)
    assert isinstance(parts, dak.Array)
    return parts


def _index_array(index: int) -> ak.Array:
    return ak.Array(np.array([index], dtype=np.int64))


def trace_plan(dataset: Dataset, cfg: AnalysisConfig, params: Any, events: Any = None,
               sinks: Mapping[str, TableSink] | None = None) -> TracedPlan:
    """Trace the chunk function of ``dataset`` (``events``: its lazy events, read if not
    given) on typetracers, once: every calibrator and expression runs, so their errors are
    raised here. The plan holds for every dataset of its :func:`analysis_shape`.
    """
    events = read_events(dataset) if events is None else events
    shape, weights = plan_variations(cfg, params, dict(dataset.metadata), events._meta)
    chunks = _map_chunks(dataset, events, make_plan(cfg, params, dict(dataset.metadata),
                                                    shape + weights, shape), sinks)
    columns: set[str] = set()
    # a trace that fails raises its error: without it the columns would be unknown
    with dask.config.set({"awkward.optimization.on-fail": "raise"}):
        necessary = dak.report_necessary_columns(chunks)
    for name, cols in necessary.items():
        if name in _input_layers(events):
            columns |= set(cols or ())
    return TracedPlan(tuple(shape), tuple(weights), frozenset(columns), base_form(events))


def build_dataset_graph(dataset: Dataset, cfg: AnalysisConfig, params: Any,
                        sinks: Mapping[str, TableSink] | None = None,
                        traced: TracedPlan | None = None, events: Any = None) -> DatasetGraph:
    """Build the lazy graph of one preprocessed dataset (``dataset.chunks`` set).

    With ``sinks`` (by table name), each chunk task also writes its part of the dataset's
    feature tables into them (the caller prepares them, and finalizes the tables).

    With the ``traced`` plan of its :func:`analysis_shape`, nothing is traced: the read is
    projected onto the plan's columns and the chunk function mapped with its meta. Without,
    the variations are found on the typetracer here and the chunk function is traced when
    the graph is optimised (:meth:`DatasetGraph.chunk_tasks`). ``events``: the dataset's
    lazy events, if already read.
    """
    if not dataset.chunks:
        raise ValueError(f"dataset {dataset.name!r} has no chunks: preprocess it first")
    events = read_events(dataset) if events is None else events
    metadata = dict(dataset.metadata)
    if traced is None:
        shape, weights = plan_variations(cfg, params, metadata, events._meta)
        plan = make_plan(cfg, params, metadata, shape + weights, shape)
        return DatasetGraph(dataset=dataset, plan=plan,
                            chunks=_map_chunks(dataset, events, plan, sinks))
    plan = make_plan(cfg, params, metadata, list(traced.shape + traced.weights),
                     list(traced.shape))
    projected = optimize_columns(events, dict.fromkeys(_input_layers(events), traced.columns))
    return DatasetGraph(dataset=dataset, plan=plan,
                        chunks=_map_chunks(dataset, projected, plan, sinks),
                        columns=traced.columns)


def _input_layers(events: dak.Array) -> list[str]:
    """The names of the input (read) layers of ``events``."""
    return [name for name, layer in events.dask.layers.items()
            if isinstance(layer, AwkwardInputLayer)]


def _map_chunks(dataset: Dataset, events: dak.Array, plan: ProcessingPlan,
                sinks: Mapping[str, TableSink] | None) -> dak.Array:
    """The chunk function mapped over ``events``: one histogram vector per chunk."""
    processor = ChunkProcessor(plan, sinks)
    # with tables, a second input names each chunk's part (both are fused into one task)
    inputs = [events, _part_indices(len(dataset.chunks), dataset.name)] if sinks else [events]
    # The meta is given, so the processor is traced once, at optimisation (column projection),
    # or not at all once the read is projected.
    chunks = dak.map_partitions(
        ChunkTask(processor), *inputs, label=f"{CHUNK_LABEL}-{dataset.name}",
        meta=processor.meta(),
    )
    assert isinstance(chunks, dak.Array)
    return chunks
