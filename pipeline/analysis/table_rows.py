"""Feature tables, accumulate stage: a table's rows and columns for one chunk, from numpy.

A table (``tables.<name>`` in the analysis config) has a row per selected event (``event``
level), per object of an ``objects`` expression (``object``), or per constituent of such
objects (``constituent``). For one chunk, :class:`TableRows` collects, variation by variation,
which rows pass and the columns the variation changed (:class:`TableArrays`: the numpy form of
:class:`~pipeline.analysis.table_values.TableValues`); :meth:`TableRows.finish` keeps the rows
that pass in any variation (so rows stay aligned across variations) and returns flat numpy
columns for the table's sink, in the layout of :mod:`pipeline.table_layout`.

Object rows are identified by their position in the ``objects`` list, which must have the
same length in every variation (cuts that vary belong in ``select``). Objects of a collection
that a calibrator re-sorts in every variation are followed by their ``original_index``
instead: the rows are the nominal's objects in the nominal's order, and each variation's
values and pass mask are those of the same object, wherever the variation puts it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.analysis.plan import TablePlan
from pipeline.errors import ExpressionError
from pipeline.rng import hash_identity
from pipeline.table_layout import (
    CONSTITUENT_INDEX,
    FOLD,
    FOLD_PURPOSE,
    IDENTITY,
    IS_DATA,
    LABEL,
    N_FOLDS,
    OBJECT_INDEX,
    PASS,
    WEIGHT,
    WEIGHT_VARIATIONS,
    Column,
    PaddedColumn,
    RaggedColumn,
    part_attrs,
    variation_prefix,
)
from pipeline.variations import NOMINAL


def fold_of(run: Any, lumi: Any, event: Any) -> np.ndarray:
    """The train/test fold (0 to 9) of each event, hashed from its identity.

    The rule is the table format's (:data:`~pipeline.table_layout.N_FOLDS`,
    :data:`~pipeline.table_layout.FOLD_PURPOSE`); the hash is :mod:`pipeline.rng`'s, which
    the format module does not import (it would load awkward into the ML readers).

    Examples
    --------
    >>> fold_of(np.array([1, 1]), np.array([2, 2]), np.array([3, 4])).tolist()
    [1, 4]
    """
    h = hash_identity(np.asarray(run), np.asarray(lumi), np.asarray(event), 0, FOLD_PURPOSE)
    return (np.asarray(h, dtype=np.uint64) % np.uint64(N_FOLDS)).astype(np.uint8)


@dataclass(frozen=True)
class RowValues:
    """Values in their stored dtype: one per event (taken for each row through the row's
    event) or one per row."""

    values: np.ndarray
    per_event: bool


@dataclass(frozen=True)
class StoredCollection:
    """A collection's lists of one per row, ragged or padded, and the number of objects of
    each event it was computed for (checked against the rows)."""

    column: Column
    objects: np.ndarray | None


@dataclass(frozen=True)
class TableArrays:
    """One table's values in one variation, in numpy (see
    :class:`~pipeline.analysis.table_values.TableValues`)."""

    #: objects per event (object and constituent levels; None: event level)
    objects: np.ndarray | None
    #: constituents per object (constituent level)
    constituents: np.ndarray | None
    #: the objects' original_index, one per row, when rows follow re-sorted objects
    object_ids: np.ndarray | None
    selected: RowValues
    select: RowValues | None
    #: name -> (values, the value missing entries took)
    columns: dict[str, tuple[RowValues, Any]] = field(default_factory=dict)
    collections: dict[str, StoredCollection] = field(default_factory=dict)
    label: RowValues | None = None
    weight: RowValues | None = None
    weight_variations: dict[str, RowValues] = field(default_factory=dict)


@dataclass
class _Variation:
    passed: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    collections: dict[str, Column] = field(default_factory=dict)
    weight: np.ndarray | None = None


class TableRows:
    """The rows of one table for one chunk, collected variation by variation.

    Call :meth:`add` with the nominal first, then with each variation the table carries;
    then :meth:`finish`. Values of one per event (weights, event-level columns in an object
    table) are taken for each row through the row's event index.

    Parameters
    ----------
    plan
        The table.
    identity
        The chunk's ``run``, ``luminosityBlock`` and ``event``, in their stored dtypes.
    n_events
        The chunk's number of events.
    """

    def __init__(self, plan: TablePlan, identity: Mapping[str, np.ndarray],
                 n_events: int) -> None:
        self.plan = plan
        self.identity = identity
        self.n_events = n_events
        self.by_variation: dict[str, _Variation] = {}
        self.sentinels: dict[str, Any] = {}
        self.label: np.ndarray | None = None
        self.weight_variations: dict[str, np.ndarray] = {}
        #: the nominal's rows: each row's event, objects per event, constituents per object
        self.row_event: np.ndarray = np.arange(n_events)
        self.objects: np.ndarray | None = None
        self.constituents: np.ndarray | None = None
        self._nominal_ids: np.ndarray | None = None

    def add(self, variation: str, arrays: TableArrays) -> None:
        """Add the pass mask and the columns of ``variation`` (the nominal first)."""
        plan = self.plan
        nominal = variation == NOMINAL
        if nominal:
            self.objects, self.constituents = arrays.objects, arrays.constituents
            self.row_event = _row_events(self.n_events, arrays.objects, arrays.constituents)
        elif not (_same(arrays.objects, self.objects)
                  and _same(arrays.constituents, self.constituents)):
            raise ExpressionError(
                f"tables.{plan.name}.objects: {plan.spec.objects!r} gives another number of "
                f"objects in variation {variation!r} than at nominal; rows are matched by "
                "position, so cuts that vary belong in 'select'")
        perm = None if arrays.object_ids is None else self._align(variation, arrays.object_ids)
        passed = self._rows(arrays.selected, perm)
        if arrays.select is not None:
            passed &= self._rows(arrays.select, perm)
        record = _Variation(passed)
        for name, (values, fill) in arrays.columns.items():
            record.columns[name] = self._rows(values, perm)
            self.sentinels.setdefault(name, fill)
        exprs = {name: expr for name, expr, _ in plan.collections}
        for name, stored in arrays.collections.items():
            if stored.objects is not None and not _same(stored.objects, arrays.objects):
                expr = exprs[name]
                raise ExpressionError(
                    f"{expr.where}: {expr.text!r} does not give one list per object of "
                    f"{plan.spec.objects!r} (another number of objects in some events)")
            record.collections[name] = (stored.column if perm is None
                                        else _take_rows(stored.column, perm))
        if arrays.weight is not None:
            record.weight = self._rows(arrays.weight, perm)
        if nominal:
            self.label = None if arrays.label is None else self._rows(arrays.label, perm)
            self.weight_variations = {k: self._rows(v, perm)
                                      for k, v in arrays.weight_variations.items()}
        self.by_variation[variation] = record

    def _rows(self, values: RowValues, perm: np.ndarray | None) -> np.ndarray:
        """One value per row (before ``keep``): per-event values through the row's event;
        per-row values in the nominal's row order (``perm``: where each nominal row's object
        sits among the variation's rows)."""
        if values.per_event:
            return values.values[self.row_event]
        return values.values if perm is None else values.values[perm]

    def _align(self, variation: str, ids: np.ndarray) -> np.ndarray | None:
        """Where each nominal row's object sits among the variation's rows (None: same
        place); the objects must be the same, by ``original_index``, event by event."""
        if variation == NOMINAL:
            self._nominal_ids = ids
            return None
        assert self._nominal_ids is not None
        if np.array_equal(ids, self._nominal_ids):
            return None
        nominal_order = np.lexsort((self._nominal_ids, self.row_event))
        order = np.lexsort((ids, self.row_event))
        if not np.array_equal(ids[order], self._nominal_ids[nominal_order]):
            raise ExpressionError(
                f"tables.{self.plan.name}.objects: {self.plan.spec.objects!r} gives other "
                f"objects in variation {variation!r} than at nominal (the same number, other "
                "objects by original_index); rows follow one object each across "
                "variations, so cuts that vary belong in 'select'")
        perm = np.empty_like(order)
        perm[nominal_order] = order
        return perm

    def finish(self) -> tuple[dict[str, Column], dict[str, Any]]:
        """The part's columns (rows passing in any variation) and its attributes."""
        plan = self.plan
        passed = {v: r.passed for v, r in self.by_variation.items()}
        keep = np.zeros_like(passed[NOMINAL])
        for mask in passed.values():
            keep |= mask
        rows = int(keep.sum())
        out: dict[str, Column] = {}
        for key in IDENTITY:
            out[key] = self.identity[key][self.row_event][keep]
        out[FOLD] = fold_of(*(out[key] for key in IDENTITY))
        if plan.level != "event":
            assert self.objects is not None
            objects = _local_index(self.objects)
            if plan.level == "constituent":
                assert self.constituents is not None
                objects = np.repeat(objects, self.constituents)
            out[OBJECT_INDEX] = objects.astype(np.int32)[keep]
        if plan.level == "constituent":
            assert self.constituents is not None
            out[CONSTITUENT_INDEX] = _local_index(self.constituents).astype(np.int32)[keep]
        nominal = self.by_variation[NOMINAL]
        assert nominal.weight is not None
        out[WEIGHT] = nominal.weight[keep]
        names = list(self.weight_variations)
        out[WEIGHT_VARIATIONS] = (
            np.stack([self.weight_variations[n][keep] for n in names], axis=1) if names
            else np.zeros((rows, 0), np.float64))
        if plan.label is not None:
            out[LABEL] = np.full(rows, plan.label, dtype=np.int32)
        elif self.label is not None:
            out[LABEL] = self.label[keep]
        out[IS_DATA] = np.full(rows, plan.is_data, dtype=bool)
        out[PASS] = passed[NOMINAL][keep]
        for name, values in nominal.columns.items():
            out[name] = values[keep]
        for name, column in nominal.collections.items():
            out[name] = _select_rows(column, keep)
        changed: dict[str, list[str]] = {}
        for variation in plan.variations:
            record = self.by_variation[variation]
            prefix = variation_prefix(variation)
            out[prefix + PASS] = passed[variation][keep]
            for name, values in record.columns.items():
                out[prefix + name] = values[keep]
            for name, column in record.collections.items():
                out[prefix + name] = _select_rows(column, keep)
            if record.weight is not None:
                out[prefix + WEIGHT] = record.weight[keep]
            changed[variation] = sorted([*record.columns, *record.collections]
                                        + ([WEIGHT] if record.weight is not None else []))
        attrs = part_attrs(self.n_events, changed, self.sentinels,
                           {v: int(p.sum()) for v, p in passed.items()})
        return out, attrs


def _select_rows(column: Column, keep: np.ndarray) -> Column:
    """The rows ``keep`` of a ragged or padded collection.

    Examples
    --------
    >>> ragged = RaggedColumn(np.array([0, 2, 2, 3]), {"pt": np.array([1.0, 2.0, 3.0])})
    >>> out = _select_rows(ragged, np.array([True, False, True]))
    >>> out.offsets.tolist(), out.fields["pt"].tolist()
    ([0, 2, 3], [1.0, 2.0, 3.0])
    """
    if isinstance(column, PaddedColumn):
        return PaddedColumn({f: v[keep] for f, v in column.fields.items()}, column.mask[keep])
    assert isinstance(column, RaggedColumn)
    counts = np.diff(column.offsets)
    content = np.repeat(keep, counts)
    offsets = np.zeros(int(keep.sum()) + 1, dtype=np.int64)
    np.cumsum(counts[keep], out=offsets[1:])
    return RaggedColumn(offsets, {f: v[content] for f, v in column.fields.items()})


def _take_rows(column: Column, index: np.ndarray) -> Column:
    """The rows ``index`` (in that order) of a ragged or padded collection.

    Examples
    --------
    >>> ragged = RaggedColumn(np.array([0, 2, 2, 3]), {"pt": np.array([1.0, 2.0, 3.0])})
    >>> out = _take_rows(ragged, np.array([2, 0, 1]))
    >>> out.offsets.tolist(), out.fields["pt"].tolist()
    ([0, 1, 3, 3], [3.0, 1.0, 2.0])
    """
    if isinstance(column, PaddedColumn):
        return PaddedColumn({f: v[index] for f, v in column.fields.items()},
                            column.mask[index])
    assert isinstance(column, RaggedColumn)
    starts, stops = column.offsets[:-1][index], column.offsets[1:][index]
    counts = stops - starts
    offsets = np.zeros(len(index) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    content = (np.repeat(starts - offsets[:-1], counts) + np.arange(int(offsets[-1]))
               if len(index) else np.zeros(0, dtype=np.int64))
    return RaggedColumn(offsets, {f: v[content] for f, v in column.fields.items()})


def _same(counts: np.ndarray | None, nominal: np.ndarray | None) -> bool:
    if counts is None or nominal is None:
        return counts is nominal
    return np.array_equal(counts, nominal)


def _row_events(n_events: int, objects: np.ndarray | None,
                constituents: np.ndarray | None) -> np.ndarray:
    """The event index of each row: every event (event level), or one per object or
    constituent.

    Examples
    --------
    >>> _row_events(3, np.array([2, 0, 1]), None).tolist()
    [0, 0, 2]
    >>> _row_events(3, np.array([2, 0, 1]), np.array([1, 2, 1])).tolist()
    [0, 0, 0, 2]
    """
    events = np.arange(n_events)
    if objects is None:
        return events
    events = np.repeat(events, objects)
    return events if constituents is None else np.repeat(events, constituents)


def _local_index(counts: np.ndarray) -> np.ndarray:
    """Each item's position in its list, for lists of ``counts`` items.

    Examples
    --------
    >>> _local_index(np.array([2, 0, 3])).tolist()
    [0, 1, 0, 1, 2]
    """
    counts = np.asarray(counts, dtype=np.int64)
    starts = np.cumsum(counts) - counts
    return np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(starts, counts)


__all__ = ["RowValues", "StoredCollection", "TableArrays", "TableRows", "fold_of"]
