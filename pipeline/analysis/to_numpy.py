"""The boundary between the chunk function's two stages: awkward values become numpy.

The evaluate stage (:mod:`pipeline.analysis.evaluate`) gives awkward arrays; the accumulators
(:mod:`pipeline.analysis.histogram_fill`, :mod:`pipeline.analysis.table_rows`) take numpy
only. This module is the one place where one becomes the other, a variation at a time (its
awkward arrays, and the calibrated events they hold on to, can go before the next one):

* masks and weights: one value per event (a Python value holds for every event);
* a histogram's observables: flat entries with the event of each entry
  (:class:`~pipeline.analysis.histogram_fill.Entries`); a missing value (None) is no entry;
* a table's values: one per event or per row in their stored dtypes, missing values as the
  column's sentinel, collections ragged or padded.

A conversion that fails raises an :class:`~pipeline.errors.ExpressionError` naming the
histogram or the table's key and the variation, with the original error's type and message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import awkward as ak
import numpy as np

from pipeline.analysis.evaluate import ChunkValues, Observables, VariationValues
from pipeline.analysis.histogram_fill import Entries
from pipeline.analysis.plan import TablePlan
from pipeline.analysis.table_rows import RowValues, StoredCollection, TableArrays
from pipeline.analysis.table_values import TableValues
from pipeline.analysis.value_checks import type_text
from pipeline.config.models import CollectionSpec, ColumnSpec
from pipeline.errors import CalibrewError, ExpressionError, raised_by_reader, with_context
from pipeline.table_layout import IDENTITY_DTYPES, Column, PaddedColumn, RaggedColumn


@dataclass(frozen=True)
class ChunkArrays:
    """A chunk's own values in numpy."""

    n_events: int
    generator_weight: np.ndarray
    #: the event identity in its stored dtypes (when tables are built)
    identity: dict[str, np.ndarray]


@dataclass(frozen=True)
class VariationArrays:
    """A :class:`~pipeline.analysis.evaluate.VariationValues` in numpy."""

    variation: str
    steps: list[tuple[str, np.ndarray]]
    categories: list[tuple[str, np.ndarray]]
    slots: list[tuple[str, np.ndarray]]
    #: by histogram, then by category
    entries: dict[str, dict[str, Entries]]
    tables: dict[str, TableArrays]


def chunk_arrays(values: ChunkValues) -> ChunkArrays:
    """The chunk's number of events, generator weight and identity."""
    weight = values.generator_weight
    return ChunkArrays(
        n_events=len(weight),
        generator_weight=np.asarray(ak.to_numpy(weight), dtype=np.float64),
        identity={k: np.asarray(ak.to_numpy(v)).astype(IDENTITY_DTYPES[k])
                  for k, v in values.identity.items()},
    )


def variation_arrays(values: VariationValues, n_events: int,
                     tables: Mapping[str, TablePlan]) -> VariationArrays:
    """One variation's values in numpy (``tables``: the plans of its tables, by name)."""
    try:
        categories = [(name, _event_mask(m, n_events)) for name, m in values.categories]
        masks = dict(categories)
        return VariationArrays(
            variation=values.variation,
            steps=[(name, _event_mask(m, n_events)) for name, m in values.steps],
            categories=categories,
            slots=[(name, _event_weights(w, n_events)) for name, w in values.slots],
            entries={name: _histogram_entries(name, o, n_events, masks)
                     for name, o in values.observables.items()},
            tables={name: _table(t, tables[name]) for name, t in values.tables.items()},
        )
    except CalibrewError as err:  # its message names the key; the variation is added
        raise with_context(err, f"variation {values.variation!r}") from err.__cause__


@contextmanager
def _named(where: str, value: Any = None) -> Iterator[None]:
    """Raise an error of the conversion inside as an :class:`ExpressionError` that starts
    with ``where`` (the config key, what was converted) and the type of ``value`` (the
    awkward array converted, if given), and keeps the error's type and message. calibrew's
    own errors, a lack of memory and the readers' errors pass as they are (a worker with more
    memory, or a second read, may succeed).

    Examples
    --------
    >>> with _named("tables.t.columns.x: cannot store 'x'", ak.Array([[1.0], []])):
    ...     np.zeros(2) + np.zeros(3)
    Traceback (most recent call last):
    ...
    pipeline.errors.ExpressionError: tables.t.columns.x: cannot store 'x' (var * float64): \
ValueError: operands ...
    """
    try:
        yield
    except (CalibrewError, MemoryError):
        raise
    except Exception as err:
        if raised_by_reader(err):
            raise
        kind = "" if value is None else f" ({type_text(value)})"
        raise ExpressionError(f"{where}{kind}: {type(err).__name__}: {err}") from err


_T = TypeVar("_T")


def _converted(where: str, convert: Callable[[], _T]) -> _T:
    """``convert()``, its failure named by ``where`` (see :func:`_named`)."""
    with _named(where):
        return convert()


# -- masks, weights, observables ------------------------------------------------------------
def _event_mask(mask: Any, n_events: int) -> np.ndarray:
    if isinstance(mask, bool):
        return np.full(n_events, mask)
    return np.asarray(ak.to_numpy(mask), dtype=bool)


def _event_weights(weight: Any, n_events: int) -> np.ndarray:
    """An event weight (one per event: :func:`~pipeline.weights.compute_weights` checks each
    factor) as float64 numpy."""
    if isinstance(weight, ak.Array):
        return _flat_numpy(weight)
    return np.broadcast_to(np.asarray(weight, dtype=np.float64), (n_events,))


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


def _histogram_entries(name: str, observables: Observables, n_events: int,
                       masks: Mapping[str, np.ndarray]) -> dict[str, Entries]:
    """Histogram ``name``'s entries by category (:func:`_entries`), its failure named."""
    axes = ", ".join(repr(e.text) for e in observables.expressions)
    need = (" (its axes give one number per event, or lists of the same length in each "
            "event)" if len(observables.expressions) > 1 else "")
    with _named(f"histograms.{name}: cannot fill {axes}{need}"):
        return _entries(observables, n_events, masks)


def _entries(observables: Observables, n_events: int,
             masks: Mapping[str, np.ndarray]) -> dict[str, Entries]:
    """A histogram's entries by category, each entry with the index of its event in the
    chunk (observables computed on a subset of the events are mapped back)."""
    if observables.subset is None:
        return _entries_of(observables, n_events, masks)
    index = np.flatnonzero(_event_mask(observables.subset, n_events))
    inner = _entries_of(observables, len(index), {c: m[index] for c, m in masks.items()})
    return {c: Entries(e.values, index[e.events]) for c, e in inner.items()}


def _entries_of(observables: Observables, n_events: int,
                masks: Mapping[str, np.ndarray]) -> dict[str, Entries]:
    """A histogram's entries by category: shared by its categories when the observables are
    one per event or lists of the same lengths; else broadcast with awkward in each category
    (selected first: the lists need to match in the selected events only)."""
    values = observables.values
    flat = _flat_observables(values)
    if flat is not None:
        columns, counts = flat
        events = np.arange(n_events)
        shared = _finite(columns, events if counts is None else np.repeat(events, counts))
        return {category: shared for category in observables.categories}
    out = {}
    for category in observables.categories:
        if category not in masks:
            continue
        mask = masks[category]
        arrays = [v[mask] if isinstance(v, ak.Array) else v for v in values]
        *columns, events = (_flat_numpy(a) for a in
                            ak.broadcast_arrays(*arrays, np.flatnonzero(mask)))
        out[category] = _finite(columns, events)
    return out


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


def _finite(values: list[np.ndarray], events: np.ndarray) -> Entries:
    """The entries without a missing (NaN) value: a missing value is not filled.

    An entry's event is missing (NaN) only where one of its values is."""
    finite = ~np.isnan(events)
    for v in values:
        finite &= ~np.isnan(v)
    if not finite.all():
        values, events = [v[finite] for v in values], events[finite]
    return Entries(values, events.astype(np.int64))


# -- feature tables -------------------------------------------------------------------------
def _table(values: TableValues, plan: TablePlan) -> TableArrays:
    where = f"tables.{plan.name}"
    objects = constituents = ids = None
    template = values.template
    if template is not None:
        with _named(f"{where}.objects: cannot count {plan.spec.objects!r}"):
            objects = np.asarray(ak.to_numpy(ak.num(template, axis=1)))
            if template.ndim > 2:
                constituents = np.asarray(ak.to_numpy(ak.flatten(ak.num(template, axis=2))))
    if values.object_ids is not None:
        with _named(f"{where}.objects: cannot store the original_index of {plan.spec.objects!r}"):
            ids = np.asarray(ak.to_numpy(ak.flatten(values.object_ids, axis=None)),
                             dtype=np.int64)
    weight_variations = {}
    for name, value in values.weight_variations.items():
        with _named(f"{where}.weight_variations: cannot store {name!r}"):
            weight_variations[name] = _row_values(value, np.float64)
    column_specs = {name: spec for name, _, spec in plan.columns}
    collection_specs = {name: spec for name, _, spec in plan.collections}
    return TableArrays(
        objects=objects, constituents=constituents, object_ids=ids,
        selected=_converted(f"{where}: cannot store which events pass the preselection",
                            lambda: _row_values(ak.fill_none(values.selected, False), bool)),
        select=None if values.select is None else _converted(
            f"{where}.select: cannot store {plan.spec.select!r}",
            lambda: _row_values(ak.fill_none(values.select, False, axis=None), bool)),
        columns={name: _column(plan, name, value, column_specs[name])
                 for name, value in values.columns.items()},
        collections={name: _collection(plan, name, value, collection_specs[name], template)
                     for name, value in values.collections.items()},
        label=None if values.label is None else _converted(
            f"{where}.label: cannot store {plan.spec.label!r}",
            lambda: _row_values(ak.fill_none(values.label, -1, axis=None), np.int32)),
        weight=None if values.weight is None else _converted(
            f"{where}: cannot store the event weight",
            lambda: _row_values(values.weight, np.float64)),
        weight_variations=weight_variations,
    )


def _row_values(value: Any, dtype: Any) -> RowValues:
    """One value per event (a 1-D array) or per row (the flattened values), as ``dtype``."""
    if value.ndim == 1:
        return RowValues(np.asarray(ak.to_numpy(value)).astype(dtype), per_event=True)
    flat = np.asarray(ak.to_numpy(ak.flatten(value, axis=None))).astype(dtype)
    return RowValues(flat, per_event=False)


def _column(plan: TablePlan, name: str, value: Any, spec: ColumnSpec) -> tuple[RowValues, Any]:
    """A column's values in its stored dtype and the value missing entries took."""
    with _named(f"tables.{plan.name}.columns.{name}: cannot store {spec.expr!r}", value):
        computed = _computed_dtype(value)
        dtype = np.dtype(spec.dtype) if spec.dtype else (
            np.dtype(np.float32) if computed.kind == "f" else computed)
        fill = _fill_value(dtype, plan.sentinel(spec))
        # missing values take the sentinel before flattening (flattening drops them)
        return _row_values(ak.fill_none(value, fill, axis=None), dtype), fill


def _collection(plan: TablePlan, name: str, value: Any, spec: CollectionSpec,
                template: Any) -> StoredCollection:
    """A collection's stored lists and the number of objects of each event."""
    with _named(f"tables.{plan.name}.collections.{name}: cannot store {spec.expr!r}", value):
        return StoredCollection(
            _stored_collection(value, spec, plan.level),
            None if template is None else np.asarray(ak.to_numpy(ak.num(value, axis=1))))


def _computed_dtype(array: Any) -> np.dtype[Any]:
    content = ak.flatten(array, axis=None).type.content
    if isinstance(content, ak.types.OptionType):
        content = content.content
    return np.dtype(getattr(content, "primitive", "float64"))


def _fill_value(dtype: np.dtype[Any], sentinel: float) -> Any:
    """The sentinel, or -1 (0 for unsigned, False for bool) where an integer needs one.

    Examples
    --------
    >>> _fill_value(np.dtype("float32"), -999.0), _fill_value(np.dtype("uint8"), float("nan"))
    (-999.0, 0)
    """
    if dtype.kind == "f" or sentinel == sentinel:
        return False if dtype.kind == "b" else sentinel
    return 0 if dtype.kind in "ub" else -1


def _stored_collection(value: Any, spec: CollectionSpec, level: str) -> Column:
    """A collection's lists for every row, ragged or padded as configured."""
    if level == "object":
        value = ak.flatten(value, axis=1)
    dtype = np.dtype(spec.dtype)
    if spec.layout == "ragged":
        counts = np.asarray(ak.to_numpy(ak.num(value, axis=1)), dtype=np.int64)
        offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        fields = {f: np.asarray(ak.to_numpy(ak.flatten(value[f], axis=1))).astype(dtype)
                  for f in spec.fields}
        return RaggedColumn(offsets, fields)
    length = int(spec.length or 0)
    padded = ak.pad_none(value, length, axis=1, clip=True)
    mask = np.asarray(ak.to_numpy(~ak.is_none(padded, axis=1)), dtype=bool)
    fields = {f: np.asarray(ak.to_numpy(ak.fill_none(padded[f], 0)), dtype=dtype)
              for f in spec.fields}
    return PaddedColumn(fields, mask.reshape(len(value), length))


__all__ = ["ChunkArrays", "VariationArrays", "chunk_arrays", "variation_arrays"]
