"""The evaluate stage of the chunk function: one chunk's physics, variation by variation.

:func:`evaluate` runs the calibrator sequence for the nominal and each variation and gives,
per variation, a :class:`VariationValues`: the cutflow steps and category masks, the weight of
each slot of the variation axis, every histogram's observables and every feature table's
values (:mod:`pipeline.analysis.table_values`). It returns awkward arrays and runs the same
code on typetracers (dask-awkward finds the columns to read from what it touches) and on
eager arrays; the accumulators see their numpy conversion (:mod:`pipeline.analysis.to_numpy`).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any

from pipeline.analysis.plan import ProcessingPlan
from pipeline.analysis.table_values import TableEvaluator, TableValues
from pipeline.analysis.value_checks import observable
from pipeline.calibration.manager import CalibratorsManager
from pipeline.errors import CalibrationError, CalibrewError, with_context
from pipeline.selection import (
    Expression,
    ExpressionCache,
    cumulative_masks,
    event_mask,
    forget_subexpressions,
)
from pipeline.table_layout import IDENTITY
from pipeline.variations import NOMINAL
from pipeline.weights import EventWeights, compute_weights, generator_weight


@dataclass(frozen=True)
class Observables:
    """One histogram's axis values in one variation, and the categories it is filled in."""

    categories: tuple[str, ...]
    values: list[Any]
    #: the axes' expressions (their config keys name a failure to fill)
    expressions: tuple[Expression, ...]
    #: the events the values are of (a mask: those of the categories); None: every event
    subset: Any = None


@dataclass(frozen=True)
class VariationValues:
    """What one variation of a chunk gives, as awkward arrays (or typetracers).

    A mask or a weight may be a Python value (``True``, ``1.0``) that holds for every event.
    """

    variation: str
    #: the mask after each preselection cut, in order (the cutflow's steps)
    steps: list[tuple[str, Any]]
    #: each category's mask (the preselection included)
    categories: list[tuple[str, Any]]
    #: (slot of the variation axis, event weight): the variation's weight, then, at the
    #: nominal, each weight variation
    slots: list[tuple[str, Any]]
    #: by histogram: the histograms that have this variation
    observables: dict[str, Observables]
    #: by table: the tables that carry this variation
    tables: dict[str, TableValues]

    def arrays(self) -> list[Any]:
        """Every value held, for tracing to touch."""
        return [*(m for _, m in self.steps), *(m for _, m in self.categories),
                *(w for _, w in self.slots),
                *(v for o in self.observables.values() for v in o.values),
                *(a for t in self.tables.values() for a in t.arrays())]


@dataclass(frozen=True)
class ChunkValues:
    """What a chunk gives: per-chunk values, and its variations, one at a time (each is
    calibrated when the iterator gets to it, so a consumer holds one at a time)."""

    generator_weight: Any
    #: the event identity (``run``, ``luminosityBlock``, ``event``) when tables are built
    identity: dict[str, Any]
    variations: Iterator[VariationValues]


def evaluate(plan: ProcessingPlan, events: Any, tables: Collection[str] = ()) -> ChunkValues:
    """Evaluate the chunk ``events`` for ``plan``; the feature tables named in ``tables``
    too."""
    manager = CalibratorsManager(
        list(plan.calibrators), events, plan.params, plan.metadata,
        requested_calibrator_variations=list(plan.variation_calibrators),
    )
    reordered = set().union(*(c.reordered_collections() for c in manager.calibrator_sequence))
    evaluators = [TableEvaluator(t, events, reordered) for t in plan.tables if t.name in tables]
    return ChunkValues(
        generator_weight=generator_weight(events, plan.metadata),
        identity={k: events[k] for k in IDENTITY} if evaluators else {},
        variations=_variations(plan, events, manager, evaluators),
    )


def _variations(plan: ProcessingPlan, events: Any, manager: CalibratorsManager,
                tables: list[TableEvaluator]) -> Iterator[VariationValues]:
    cache = ExpressionCache()
    weights = _Weights(plan)
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
        cache.start(variation, changed, calibrated)
        try:
            values = _variation(plan, variation, calibrated, changed, cache, weights, tables)
        except CalibrewError as err:  # its message names the key; the variation is added
            raise with_context(err, f"variation {variation!r}") from err.__cause__
        yield values
        del values  # not held here while the next variation is calibrated
    forget_subexpressions()


class _Weights:
    """The event weights of each variation; those of the nominal (which comes first) are
    kept: a variation reuses the factors whose inputs it did not change."""

    def __init__(self, plan: ProcessingPlan) -> None:
        self.plan = plan
        self.nominal: EventWeights | None = None

    def of(self, variation: str, events: Any, changed: set[str] | None) -> tuple[
            EventWeights, bool]:
        """The weights of ``variation``, and whether they differ from the nominal's."""
        plan = self.plan
        if variation == NOMINAL:
            self.nominal = compute_weights(events, plan.metadata, plan.params,
                                           list(plan.weights), list(plan.varied_weights),
                                           vocabulary=plan.vocabulary, variation=variation)
            return self.nominal, False
        assert self.nominal is not None
        reuse = self.nominal.reusable(changed)
        weights = compute_weights(events, plan.metadata, plan.params, list(plan.weights), [],
                                  reuse=reuse, vocabulary=plan.vocabulary, variation=variation)
        return weights, bool(self.nominal.factors) and set(reuse) != set(self.nominal.factors)


def _variation(plan: ProcessingPlan, variation: str, events: Any, changed: set[str] | None,
               cache: ExpressionCache, weights_of: _Weights,
               tables: list[TableEvaluator]) -> VariationValues:
    """One variation's values (its locals go when it returns: nothing of it stays in the
    generator while the next variation is calibrated)."""
    steps, categories = _selection(plan, events, cache)
    selected = steps[-1][1] if steps else True
    weights, weights_changed = weights_of.of(variation, events, changed)
    table_values = {}
    for table in tables:
        values = table.evaluate(variation, events, selected, weights, changed, weights_changed)
        if values is not None:
            table_values[table.plan.name] = values
    return VariationValues(
        variation=variation,
        steps=steps,
        categories=categories,
        # at the nominal, each weight variation fills its own slot of the variation axis
        slots=[(variation, weights.nominal), *weights.variations.items()],
        observables=_observables(plan, variation, events, categories, cache),
        tables=table_values,
    )


def _observables(plan: ProcessingPlan, variation: str, events: Any,
                 categories: list[tuple[str, Any]],
                 cache: ExpressionCache) -> dict[str, Observables]:
    """The observables of the histograms that have ``variation``: on every event, or for
    those of ``plan.on_selected``, on the events of the histogram's categories only (the
    same values for those events: an observable is computed per event)."""
    masks = dict(categories)
    subsets: dict[tuple[str, ...], tuple[Any, Any, frozenset[str] | None]] = {}
    out = {}
    for layout, exprs in plan.histograms:
        if variation not in layout.variations:
            continue
        names = tuple(c for c in layout.categories if c in masks)
        on, subset, key = events, None, None
        reads: frozenset[str] | None = frozenset()
        if layout.name in plan.on_selected and names:
            if names not in subsets:
                mask = functools.reduce(operator.or_, (masks[c] for c in names))
                read = cache.reads([*(cut for _, cut in plan.preselection),
                                    *(e for c, e in plan.categories if c in names)])
                subsets[names] = (mask, None if isinstance(mask, bool) else events[mask], read)
            mask, selected, read = subsets[names]
            if selected is not None:  # else every event (or none) is in the categories
                on, subset, reads, key = selected, mask, read, " | ".join(names)
        values = [observable(cache.evaluate(e, on, key and f"{e.text} on {key}", reads), e)
                  for e in exprs]
        out[layout.name] = Observables(layout.categories, values, exprs, subset)
    return out


def _selection(plan: ProcessingPlan, events: Any, cache: ExpressionCache) -> tuple[
        list[tuple[str, Any]], list[tuple[str, Any]]]:
    """Cumulative preselection masks (the cutflow steps) and the category masks."""
    steps = cumulative_masks(plan.preselection, events, cache)
    selected = steps[-1][1] if steps else True
    categories = [(name, selected & event_mask(cache.evaluate(expr, events), expr))
                  for name, expr in plan.categories]
    return steps, categories


__all__ = ["ChunkValues", "Observables", "VariationValues", "evaluate"]
