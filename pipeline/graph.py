"""The per-dataset lazy graph: read NanoAOD lazily, map the chunk processor, sum.

Lazy only: nothing here computes, starts a cluster or writes, and it knows no output format.
The graph is ``from-uproot`` (only the columns used) -> one fused ``calibrew-chunk`` task per
chunk (:class:`~pipeline.analysis.processor.ChunkProcessor`, every variation inside) -> a tree
sum of the per-chunk histogram vectors. Its size does not grow with the number of variations.
The feature tables' parts are written by the chunk tasks into the sinks the caller hands in
(:class:`~pipeline.analysis.processor.TableSink`: the run layer gives the Zarr writers).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import awkward as ak
import dask
import dask_awkward as dak
import numpy as np
from dask.delayed import Delayed

from pipeline.analysis.loading import calibrator_classes
from pipeline.analysis.plan import ProcessingPlan, make_plan
from pipeline.analysis.processor import ChunkProcessor, TableSink, is_typetracer
from pipeline.calibration.manager import CalibratorsManager
from pipeline.config.models import AnalysisConfig
from pipeline.errors import CalibrewError, ChunkFault, is_deterministic
from pipeline.inputs.datasets import Dataset
from pipeline.inputs.nanoevents import read_lazy
from pipeline.inputs.parquet import read_parquet_lazy
from pipeline.weights import weight_variation_names

CHUNK_LABEL = "calibrew-chunk"
SUM_FAN_IN = 8


def read_events(dataset: Dataset) -> Any:
    """Lazy events (dask-awkward) of ``dataset``, one partition per chunk: NanoEvents, or
    the records of a flat Parquet table."""
    if dataset.format == "parquet":
        return read_parquet_lazy([(c.file, c.start, c.stop) for c in dataset.chunks],
                                 dataset.name)
    return read_lazy(dataset.steps_by_file())


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
        cfg.weight_variations_for_sample(sample), events_meta)
    return shape, [w for w in weights if w not in shape]


@dataclass
class DatasetGraph:
    """The lazy computation of one dataset."""

    dataset: Dataset
    plan: ProcessingPlan
    chunks: dak.Array
    _chunk_tasks: list[Delayed] | None = field(default=None, init=False, repr=False)

    def chunk_tasks(self) -> list[Delayed]:
        """One delayed histogram vector per chunk, in chunk order.

        The graph is optimised here, once: dask-awkward projects the read onto the columns
        used.
        """
        if self._chunk_tasks is None:
            self._chunk_tasks = list(self.chunks.to_delayed(optimize_graph=True))
        return list(self._chunk_tasks)

    def total(self) -> Delayed:
        """A delayed float64 vector: the histograms of all chunks, summed by
        :func:`tree_sum`'s tree (fan-in 8), so that both give the same bits."""
        level: list[Any] = self.chunk_tasks()
        while True:
            level = [dask.delayed(_sum_vectors)(level[i : i + SUM_FAN_IN])
                     for i in range(0, len(level), SUM_FAN_IN)]
            if len(level) == 1:
                return level[0]

    def necessary_columns(self) -> set[str]:
        """The input branches the run reads."""
        columns: set[str] = set()
        for cols in dak.report_necessary_columns(self.chunks).values():
            columns |= set(cols or ())
        return columns


def _sum_vectors(parts: Iterable[Any]) -> np.ndarray | None:
    """The sum of ``parts`` in their order (``None`` entries, failed chunks, are left out)."""
    total = None
    for part in parts:
        if part is None:
            continue
        if isinstance(part, ChunkFault):  # the analysis failed on this chunk
            raise part.error
        vector = np.asarray(part, dtype=np.float64).reshape(-1)
        total = vector.copy() if total is None else total + vector
    return total


def tree_sum(load: Callable[[int], np.ndarray | None], n: int) -> np.ndarray | None:
    """Sum the vectors ``load(0) ... load(n - 1)`` along the tree of :meth:`DatasetGraph.total`
    (groups of ``SUM_FAN_IN`` in order, level by level): the same additions in the same
    order, so the same bits, holding one partial sum per level in memory.

    Examples
    --------
    >>> import numpy as np
    >>> tree_sum(lambda i: np.array([float(i)]), 20)
    array([190.])
    """
    sizes = [n]
    while True:
        sizes.append(-(-sizes[-1] // SUM_FAN_IN))
        if sizes[-1] <= 1:
            break

    def node(level: int, index: int) -> np.ndarray | None:
        if level == 0:
            return load(index)
        first = index * SUM_FAN_IN
        return _sum_vectors(node(level - 1, i)
                            for i in range(first, min(first + SUM_FAN_IN, sizes[level - 1])))

    return node(len(sizes) - 1, 0) if n else None


class ChunkTask:
    """The function of a chunk task: the processor, whose deterministic errors (an
    expression's, a calibrator's, a table part's: :func:`~pipeline.errors.is_deterministic`)
    are returned as a :class:`~pipeline.errors.ChunkFault` instead of raised, so that Dask
    does not retry them; any other error (an unreadable input, a worker's trouble) is
    raised, and retried. On typetracers (planning) every error is raised."""

    def __init__(self, processor: ChunkProcessor) -> None:
        self.processor = processor

    def __call__(self, events: Any, part: Any = None) -> Any:
        try:
            return self.processor(events) if part is None else self.processor(events, part)
        except CalibrewError as err:
            if not is_deterministic(err) or is_typetracer(events):
                raise
            return ChunkFault(err)


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


def build_dataset_graph(dataset: Dataset, cfg: AnalysisConfig, params: Any,
                        sinks: Mapping[str, TableSink] | None = None) -> DatasetGraph:
    """Build the lazy graph of one preprocessed dataset (``dataset.chunks`` set).

    With ``sinks`` (by table name), each chunk task also writes its part of the dataset's
    feature tables into them (the caller prepares them, and finalizes the tables).
    """
    if not dataset.chunks:
        raise ValueError(f"dataset {dataset.name!r} has no chunks: preprocess it first")
    events = read_events(dataset)
    metadata = dict(dataset.metadata)
    shape, weights = plan_variations(cfg, params, metadata, events._meta)
    plan = make_plan(cfg, params, metadata, shape + weights, shape)
    processor = ChunkProcessor(plan, sinks)
    # with tables, a second input names each chunk's part (both are fused into one task)
    inputs = [events, _part_indices(len(dataset.chunks), dataset.name)] if sinks else [events]
    # The meta is given, so the processor is traced once, at optimisation (column projection).
    chunks = dak.map_partitions(
        ChunkTask(processor), *inputs, label=f"{CHUNK_LABEL}-{dataset.name}",
        meta=processor.meta(),
    )
    return DatasetGraph(dataset=dataset, plan=plan, chunks=chunks)
