"""The chunk function: evaluate a chunk's variations, then accumulate them.

:class:`ChunkProcessor` is the one function the lazy graph maps over the chunks (the fused
design of DESIGN.md). It has two stages:

1. *evaluate* (:func:`pipeline.analysis.evaluate.evaluate`): per variation, the calibrated
   columns, the cutflow and category masks, the histograms' observables, the weights and
   the feature tables' values, as awkward arrays;
2. *accumulate*, on numpy only (:mod:`pipeline.analysis.to_numpy` converts between the two):
   the histogram filler (:mod:`pipeline.analysis.histogram_fill`), the table-row builder
   (:mod:`pipeline.analysis.table_rows`) and the tables' sinks, which write the chunk's part
   of each table.

dask-awkward calls the function on typetracers to find the columns to read: then the
evaluate stage runs alone and every array it returned is touched (:func:`is_typetracer` is
the one place that tells the two calls apart). The function returns the chunk's histograms
as one flat float64 vector, so the graph stays the same size whatever the number of
variations.

The same object runs eagerly on a whole file (``processor.histograms(events)``,
``processor.tables(events)``), which is how the tests compare the lazy graph with an eager
computation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import awkward as ak
import hist
import numpy as np

from pipeline.analysis.evaluate import evaluate
from pipeline.analysis.histogram_fill import HistogramFiller
from pipeline.analysis.plan import ProcessingPlan
from pipeline.analysis.table_rows import TableRows
from pipeline.analysis.to_numpy import chunk_arrays, variation_arrays
from pipeline.table_layout import Column
from pipeline.variations import NOMINAL

Tables = dict[str, tuple[dict[str, Column], dict[str, Any]]]


class TableSink(Protocol):
    """Where a feature table's parts go (the run layer gives
    :class:`~pipeline.outputs.table_writer.TableWriter`)."""

    def part_done(self, index: int) -> bool:
        """Whether part ``index`` is already written (a resumed run skips it)."""
        ...

    def write_part(self, index: int, columns: Mapping[str, Column],
                   attrs: Mapping[str, Any] | None = None) -> int:
        """Write part ``index``: the columns of a chunk's rows and their attributes."""
        ...


def is_typetracer(events: Any) -> bool:
    """Whether ``events`` are typetracers: dask-awkward is tracing the function.

    Examples
    --------
    >>> events = ak.Array([{"x": 1.0}])
    >>> is_typetracer(events), is_typetracer(ak.Array(events.layout.to_typetracer()))
    (False, True)
    """
    return ak.backend(events) == "typetracer"


def _touch(arrays: Iterable[Any]) -> None:
    """Mark the data of ``arrays`` as needed (the columns they come from are read)."""
    for array in arrays:
        if isinstance(array, ak.Array):
            ak.typetracer.touch_data(array)


class ChunkProcessor:
    """Callable applied to each chunk; returns the chunk's histograms as a flat vector.

    Parameters
    ----------
    plan
        The dataset's :class:`~pipeline.analysis.plan.ProcessingPlan`.
    sinks
        By table name: where each feature table's parts are written (none: tables are not
        written).
    """

    def __init__(self, plan: ProcessingPlan, sinks: Mapping[str, TableSink] | None = None
                 ) -> None:
        self.plan = plan
        self.sinks = dict(sinks or {})

    def __call__(self, events: Any, part: Any = None) -> ak.Array:
        """Histograms of the chunk as a one-row array; feature-table parts written.

        ``part`` (a one-element array: the chunk's index) names the table parts this chunk
        writes; a part already written (a resumed run) is not computed again.
        """
        if is_typetracer(events):
            self.trace(events)
            return self.meta()
        index = None if part is None else int(np.asarray(part)[0])
        todo = [] if index is None else [n for n, s in self.sinks.items()
                                         if not s.part_done(index)]
        filler, rows = self._accumulate(events, todo)
        for name, table in rows.items():
            assert index is not None  # tables are only built for a known part
            self.sinks[name].write_part(index, *table.finish())
        return ak.to_regular(ak.Array(filler.vector()[np.newaxis, :]), axis=1)

    def meta(self) -> ak.Array:
        """The typetracer of the output: one row of ``vector_size`` float64 per chunk."""
        empty = ak.to_regular(ak.Array(np.zeros((1, self.plan.vector_size))), axis=1)
        return ak.Array(empty.layout.to_typetracer(forget_length=True))

    def trace(self, events: Any) -> None:
        """Evaluate every variation and table on typetracers and touch what they give."""
        chunk = evaluate(self.plan, events, [t.name for t in self.plan.tables])
        _touch([chunk.generator_weight, *chunk.identity.values()])
        for values in chunk.variations:
            _touch(values.arrays())

    def histograms(self, events: Any) -> dict[str, hist.Hist]:
        """Run the whole per-chunk computation eagerly and return ``{name: Hist}``."""
        return self._accumulate(events, [])[0].histograms

    def tables(self, events: Any) -> Tables:
        """Every feature table's columns and part attributes, computed eagerly."""
        rows = self._accumulate(events, [t.name for t in self.plan.tables])[1]
        return {name: table.finish() for name, table in rows.items()}

    def _accumulate(self, events: Any, tables: Sequence[str]) -> tuple[
            HistogramFiller, dict[str, TableRows]]:
        """Evaluate ``events``, and fill the histograms and the rows of ``tables``."""
        plan = self.plan
        chunk = evaluate(plan, events, tables)
        arrays = chunk_arrays(chunk)
        filler = HistogramFiller(plan.layouts, plan.cutflow_steps)
        table_plans = {t.name: t for t in plan.tables if t.name in tables}
        rows = {name: TableRows(t, arrays.identity, arrays.n_events)
                for name, t in table_plans.items()}
        for values in chunk.variations:
            numpy = variation_arrays(values, arrays.n_events, table_plans)
            del values  # its awkward arrays go before the next variation is calibrated
            for name, table in numpy.tables.items():
                rows[name].add(numpy.variation, table)
            if numpy.variation == NOMINAL:
                filler.fill_cutflow(arrays.generator_weight, [
                    np.ones(arrays.n_events, dtype=bool), *(m for _, m in numpy.steps),
                    *(m for _, m in numpy.categories)])
            filler.fill(numpy.variation, numpy.entries, numpy.slots, numpy.categories)
        return filler, rows


__all__ = ["ChunkProcessor", "TableSink", "is_typetracer"]
