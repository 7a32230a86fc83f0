"""The per-chunk work of a dataset: calibrate every variation, select, categorise, fill.

:class:`ChunkProcessor` is the one function the lazy graph maps over the chunks (the
fused design of DESIGN.md): for one chunk of events it runs the calibrator sequence for
the nominal and each variation, applies the preselection and categories, and fills every
histogram over its category and variation axes. It returns the filled histograms as one
flat float64 vector, so the graph stays the same size whatever the number of variations.
With feature tables configured it also builds each table's rows for the chunk
(:mod:`pipeline.analysis.table_rows`) and writes them as the chunk's part of the table.

The same object runs eagerly on a whole file (``processor.histograms(events)``,
``processor.tables(events)``), which is how the tests compare the lazy graph with an eager
computation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import awkward as ak
import hist
import numpy as np

from pipeline.analysis.loading import calibrator_classes
from pipeline.analysis.table_rows import TablePlan, TableRows, make_table_plan
from pipeline.calibration.calibrator import Calibrator
from pipeline.calibration.manager import NOMINAL, CalibratorsManager
from pipeline.config.models import AnalysisConfig
from pipeline.errors import CalibrationError
from pipeline.outputs.histograms import (
    CUTFLOW,
    HistogramLayout,
    cutflow_histogram,
    from_vector,
    to_vector,
    weighted_view,
)
from pipeline.outputs.table_writer import TableWriter
from pipeline.selection import (
    Expression,
    ExpressionCache,
    cumulative_masks,
    event_mask,
    forget_subexpressions,
    make_cut,
)
from pipeline.table_layout import Column
from pipeline.weights import compute_weights, generator_weight

ALL_EVENTS = "all events"


@dataclass(frozen=True)
class ProcessingPlan:
    """Everything the per-chunk function needs, fixed when the graph is built."""

    calibrators: tuple[type[Calibrator], ...]
    params: Any
    metadata: Mapping[str, Any]
    variation_calibrators: tuple[str, ...]
    weights: tuple[str, ...]
    varied_weights: tuple[str, ...]
    variations: tuple[str, ...]
    preselection: tuple[tuple[str, Any], ...]
    categories: tuple[tuple[str, Expression], ...]
    histograms: tuple[tuple[HistogramLayout, tuple[Expression, ...]], ...]
    tables: tuple[TablePlan, ...] = ()
    writers: tuple[tuple[str, TableWriter], ...] = ()

    @property
    def cutflow_steps(self) -> list[str]:
        return [ALL_EVENTS, *(name for name, _ in self.preselection),
                *(f"category: {name}" for name, _ in self.categories)]

    def empty_histograms(self) -> dict[str, hist.Hist]:
        out = {layout.name: layout.empty() for layout, _ in self.histograms}
        out[CUTFLOW] = cutflow_histogram(self.cutflow_steps)
        return out

    @property
    def vector_size(self) -> int:
        return sum(to_vector(h).size for h in self.empty_histograms().values())

    def unpack(self, vector: np.ndarray) -> dict[str, hist.Hist]:
        """Turn the summed vector back into ``{name: Hist}``."""
        out, offset = {}, 0
        for name, h in self.empty_histograms().items():
            size = to_vector(h).size
            out[name] = from_vector(h, vector[offset : offset + size])
            offset += size
        return out


def make_plan(
    cfg: AnalysisConfig,
    params: Any,
    metadata: Mapping[str, Any],
    variations: Sequence[str],
    shape_variations: Sequence[str] | None = None,
    writers: Mapping[str, TableWriter] | None = None,
) -> ProcessingPlan:
    """Compile the config's expressions and fix the histogram layouts for one dataset.

    ``shape_variations`` (default: all of ``variations``) are those of the calibrators, the
    others being weight variations; ``writers`` give the feature tables' stores by name.
    """
    categories = tuple((name, Expression(expr, f"categories.{name}"))
                       for name, expr in cfg.categories.items())
    histograms = []
    for hname, spec in cfg.histograms.items():
        cats = tuple(spec.categories or cfg.categories)
        hvars = tuple(variations) if spec.variations else (NOMINAL,)
        layout = HistogramLayout(hname, spec, cats, hvars)
        exprs = tuple(Expression(a.expr, f"histograms.{hname}.axes[{i}].expr")
                      for i, a in enumerate(spec.axes))
        histograms.append((layout, exprs))
    shape = list(variations if shape_variations is None else shape_variations)
    weight_variations = [v for v in variations if v not in shape]
    tables = tuple(make_table_plan(name, spec, params, metadata, shape, weight_variations)
                   for name, spec in cfg.tables.items())
    return ProcessingPlan(
        tables=tables,
        writers=tuple((writers or {}).items()),
        calibrators=tuple(calibrator_classes(cfg)),
        params=params,
        metadata=dict(metadata),
        variation_calibrators=tuple(cfg.variations_for_sample(str(metadata["sample"]))),
        weights=tuple(cfg.weights_for_sample(str(metadata["sample"]))),
        varied_weights=tuple(cfg.weight_variations_for_sample(str(metadata["sample"]))),
        variations=tuple(variations),
        preselection=tuple((name, make_cut(expr, f"preselection.{name}", params, metadata))
                           for name, expr in cfg.preselection.items()),
        categories=categories,
        histograms=tuple(histograms),
    )


def _is_tracing(events: Any) -> bool:
    return ak.backend(events) == "typetracer"


def _missing_values(kind: ak.types.Type) -> bool:
    """Whether the innermost values of an array of type ``kind`` may be missing."""
    while isinstance(kind, (ak.types.ListType, ak.types.RegularType, ak.types.OptionType)):
        if isinstance(kind, ak.types.OptionType) and not isinstance(
                kind.content, (ak.types.ListType, ak.types.RegularType)):
            return True
        kind = kind.content
    return False


def _flat_numpy(array: Any) -> np.ndarray:
    """All values of an awkward array as float64 numpy, a missing value as NaN in its place.

    A missing list (an event without one) has no values; a missing number keeps its place,
    so that the values stay aligned with their events and weights.

    Examples
    --------
    >>> _flat_numpy(ak.Array([1, None, 3])).tolist()
    [1.0, nan, 3.0]
    >>> _flat_numpy(ak.Array([[1.5, None], None, [2.5]])).tolist()
    [1.5, nan, 2.5]
    """
    if _missing_values(array.type.content):
        array = ak.fill_none(ak.values_astype(array, np.float64), np.nan, axis=-1)
    return np.asarray(ak.to_numpy(ak.flatten(array, axis=None)), dtype=np.float64)


def _flat_observables(values: list[Any]) -> tuple[list[np.ndarray], np.ndarray | None] | None:
    """The observables as flat numpy arrays, with the number of entries per event (None:
    one per event); None when they mix per-event values and lists, or nest deeper."""
    if not values or not all(isinstance(v, ak.Array) for v in values):
        return None
    if all(v.ndim == 1 for v in values):
        return [_flat_numpy(v) for v in values], None
    if not all(v.ndim == 2 and not isinstance(v.type.content, ak.types.OptionType)
               for v in values):
        return None
    counts = np.asarray(ak.num(values[0], axis=1))
    if not all(np.array_equal(counts, np.asarray(ak.num(v, axis=1))) for v in values[1:]):
        return None
    return [_flat_numpy(v) for v in values], counts


def _select_flat(flat: tuple[list[np.ndarray], np.ndarray | None], weights: list[np.ndarray],
                 mask: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The entries of the events in ``mask``, each with its event's weights."""
    observables, counts = flat
    if counts is None:
        return [o[mask] for o in observables], [w[mask] for w in weights]
    entries = np.repeat(mask, counts)
    kept = counts[mask]
    return [o[entries] for o in observables], [np.repeat(w[mask], kept) for w in weights]


def _fill_arrays(values: list[Any], weights: list[np.ndarray],
                 mask: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Select events, broadcast per-event values to objects with awkward, flatten (the
    general case of :func:`_select_flat`)."""
    arrays = [v[mask] if isinstance(v, ak.Array) else v for v in values]
    selected = [w[mask] for w in weights]
    flat = [_flat_numpy(a) for a in ak.broadcast_arrays(*arrays, *selected)]
    return flat[: len(arrays)], flat[len(arrays):]


def _drop_missing(obs: list[np.ndarray],
                  weights: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Leave out the entries with a missing (NaN) observable."""
    finite = np.ones(len(obs[0]) if obs else 0, dtype=bool)
    for o in obs:
        finite &= ~np.isnan(o)
    if finite.all():
        return obs, weights
    return [o[finite] for o in obs], [w[finite] for w in weights]


def _event_weights(weight: Any, n_events: int) -> np.ndarray:
    if isinstance(weight, ak.Array):
        return _flat_numpy(weight)
    return np.broadcast_to(np.asarray(weight, dtype=np.float64), (n_events,))


class ChunkProcessor:
    """Callable applied to each chunk; returns the chunk's histograms as a flat vector.

    Parameters
    ----------
    plan
        The dataset's :class:`ProcessingPlan`.
    """

    def __init__(self, plan: ProcessingPlan) -> None:
        self.plan = plan

    def __call__(self, events: Any, part: Any = None) -> ak.Array:
        """Histograms of the chunk as a one-row array; feature-table parts written.

        ``part`` (a one-element array: the chunk's index) names the table parts this chunk
        writes; a part already written (a resumed run) is not computed again.
        """
        if _is_tracing(events):
            self._run(events, tracing=True, tables=[t.name for t in self.plan.tables])
            return self.meta()
        writers = dict(self.plan.writers)
        index = None if part is None else int(np.asarray(part)[0])
        todo = [] if index is None else [n for n, w in writers.items() if not w.part_done(index)]
        histograms, tables = self._compute(events, todo)
        for name, (columns, attrs) in tables.items():
            assert index is not None  # tables are only built for a known part
            writers[name].write_part(index, columns, attrs)
        vector = np.concatenate([to_vector(h) for h in histograms.values()])
        return ak.to_regular(ak.Array(vector[np.newaxis, :]), axis=1)

    def meta(self) -> ak.Array:
        """The typetracer of the output: one row of ``vector_size`` float64 per chunk."""
        empty = ak.to_regular(ak.Array(np.zeros((1, self.plan.vector_size))), axis=1)
        return ak.Array(empty.layout.to_typetracer(forget_length=True))

    def histograms(self, events: Any) -> dict[str, hist.Hist]:
        """Run the whole per-chunk computation eagerly and return ``{name: Hist}``."""
        return self._compute(events, [])[0]

    def tables(self, events: Any) -> dict[str, tuple[dict[str, Column], dict[str, Any]]]:
        """Every feature table's columns and part attributes, computed eagerly."""
        return self._compute(events, [t.name for t in self.plan.tables])[1]

    def _compute(self, events: Any, tables: list[str]) -> tuple[
            dict[str, hist.Hist], dict[str, tuple[dict[str, Column], dict[str, Any]]]]:
        out: dict[str, TableRows] = {}
        histograms = self._run(events, tracing=False, tables=tables, rows_out=out)
        return histograms, {name: rows.finish() for name, rows in out.items()}

    def manager(self, events: Any) -> CalibratorsManager:
        plan = self.plan
        return CalibratorsManager(
            list(plan.calibrators), events, plan.params, plan.metadata,
            requested_calibrator_variations=list(plan.variation_calibrators),
        )

    def _run(self, events: Any, tracing: bool, tables: Sequence[str] = (),
             rows_out: dict[str, TableRows] | None = None) -> dict[str, hist.Hist]:
        plan = self.plan
        out = plan.empty_histograms()
        manager = self.manager(events)
        reordered = set().union(*(c.reordered_collections() for c in manager.calibrator_sequence))
        rows = {t.name: TableRows(t, events, tracing, reordered)
                for t in plan.tables if t.name in tables}
        generator = generator_weight(events, plan.metadata)
        touched: list[Any] = [generator]
        n_events = len(generator) if not tracing else 0
        cache = ExpressionCache()
        for variation, calibrated in manager.calibration_loop(
            events, variations_for_calibrators=list(plan.variation_calibrators)
        ):
            if variation not in plan.variations:
                raise CalibrationError(
                    f"variation {variation!r} appeared in a chunk of dataset "
                    f"{plan.metadata.get('dataset')!r} but not when the graph was planned "
                    f"({len(plan.variations)} variations); calibrators must declare the same "
                    "variations for every chunk"
                )
            changed = manager.changed_collections(variation)
            cache.start(variation, changed)
            steps, categories = self._selection(calibrated, cache)
            if variation == NOMINAL:
                weights = nominal_weights = compute_weights(
                    calibrated, plan.metadata, plan.params, list(plan.weights),
                    list(plan.varied_weights))
                weights_changed = False
            else:
                # weights whose inputs this variation did not change keep their nominal
                reuse = nominal_weights.reusable(changed)
                weights = compute_weights(calibrated, plan.metadata, plan.params,
                                          list(plan.weights), [], reuse=reuse)
                weights_changed = bool(nominal_weights.factors) and set(reuse) != set(
                    nominal_weights.factors)
            selected = steps[-1][1] if steps else True
            for table in rows.values():
                table.add(variation, calibrated, selected, weights, changed, weights_changed)
            # at the nominal, each weight variation fills its own slot of the variation axis
            fills = [(variation, weights.nominal), *weights.variations.items()]
            if tracing:
                touched += [m for _, m in steps + categories if isinstance(m, ak.Array)]
                touched += [w for _, w in fills]
            else:
                if variation == NOMINAL:
                    self._fill_cutflow(out[CUTFLOW], generator, n_events, steps, categories)
                # numpy once per variation: the event masks and the weights of every slot
                masks = [(name, _as_event_mask(m, n_events)) for name, m in categories]
                fills = [(name, _event_weights(w, n_events)) for name, w in fills]
            for layout, exprs in plan.histograms:
                if variation not in layout.variations:
                    continue
                values = [cache.evaluate(e, calibrated) for e in exprs]
                if tracing:
                    touched += [v for v in values if isinstance(v, ak.Array)]
                    continue
                self._fill(out[layout.name], layout, values, fills, masks)
        if tracing:
            for array in touched:
                ak.typetracer.touch_data(array)
            for table in rows.values():
                table.finish()
        forget_subexpressions()
        if rows_out is not None:
            rows_out.update(rows)
        return out

    def _selection(self, events: Any, cache: ExpressionCache) -> tuple[
            list[tuple[str, Any]], list[tuple[str, Any]]]:
        """Cumulative preselection masks (the cutflow steps) and the category masks."""
        steps = cumulative_masks(self.plan.preselection, events, cache)
        selected = steps[-1][1] if steps else True
        categories = [(name, selected & event_mask(cache.evaluate(expr, events), expr))
                      for name, expr in self.plan.categories]
        return steps, categories

    @staticmethod
    def _fill(h: hist.Hist, layout: HistogramLayout, values: list[Any],
              fills: list[tuple[str, np.ndarray]], masks: list[tuple[str, np.ndarray]]) -> None:
        """Fill ``values`` once per category and per (variation, weight) slot of ``fills``."""
        slots = [(layout.variations.index(name), w) for name, w in fills
                 if name in layout.variations]
        view = weighted_view(h)
        flat = _flat_observables(values)
        for category, mask in masks:
            if category not in layout.categories:
                continue
            weights = [w for _, w in slots]
            obs, flat_weights = _drop_missing(*(
                _fill_arrays(values, weights, mask) if flat is None
                else _select_flat(flat, weights, mask)))
            bins = layout.flow_bins(obs)  # once for every weight of the category
            c = layout.categories.index(category)
            for (index, _), w in zip(slots, flat_weights):
                view.value[c, index] += layout.bin_sums(bins, w)
                view.variance[c, index] += layout.bin_sums(bins, np.square(w))

    def _fill_cutflow(self, h: hist.Hist, weight: Any, n_events: int,
                      steps: list[tuple[str, Any]], categories: list[tuple[str, Any]]) -> None:
        w = np.asarray(ak.to_numpy(weight), dtype=np.float64)
        rows = [np.ones(n_events, dtype=bool)]
        rows += [_as_event_mask(m, n_events) for _, m in steps]
        rows += [_as_event_mask(m, n_events) for _, m in categories]
        view = weighted_view(h)
        for i, mask in enumerate(rows):
            count = float(np.count_nonzero(mask))
            view.value[i, 0] += w[mask].sum()
            view.variance[i, 0] += np.square(w[mask]).sum()
            view.value[i, 1] += count
            view.variance[i, 1] += count


def _as_event_mask(mask: Any, n_events: int) -> np.ndarray:
    if isinstance(mask, bool):
        return np.full(n_events, mask)
    return np.asarray(ak.to_numpy(mask), dtype=bool)
