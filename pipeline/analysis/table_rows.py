"""Feature tables: the rows and columns of a table, built per chunk for every variation.

A table (``tables.<name>`` in the analysis config) has a row per selected event (``event``
level), per object of an ``objects`` expression (``object``), or per constituent of such
objects (``constituent``). For one chunk, :class:`TableRows` collects, variation by
variation, which rows pass and the columns the variation may change; :meth:`TableRows.finish`
keeps the rows that pass in any variation (so rows stay aligned across variations) and
returns flat numpy columns for :class:`~pipeline.outputs.table_writer.TableWriter`, in the
layout of :mod:`pipeline.table_layout`.

A column is stored again for a shape variation when the expression reads a collection that
the variation changed (the calibrators' outputs are compared with the nominal ones by the
:class:`~pipeline.calibration.manager.CalibratorsManager`). Object rows are identified by
their position in the ``objects`` list, which must have the same length in every variation
(cuts that vary belong in ``select``). Objects from a collection that a calibrator re-sorts in
every variation (the jets, sorted by pt) are followed by their ``original_index`` instead: the
rows are the nominal's objects in the nominal's order, and each variation's values and pass
mask are those of the same object, wherever the variation puts it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import awkward as ak
import numpy as np

from pipeline.calibration.manager import NOMINAL
from pipeline.config.models import CollectionSpec, ColumnSpec, TableSpec
from pipeline.errors import ConfigError, ExpressionError
from pipeline.rng import hash_identity
from pipeline.selection import Expression, cumulative_masks, make_cut
from pipeline.table_layout import (
    CONSTITUENT_INDEX,
    FOLD,
    FOLD_PURPOSE,
    IDENTITY,
    IDENTITY_DTYPES,
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
    folds_attr,
    json_float,
    part_attrs,
    variation_prefix,
)

#: a column that reads one of these may change in every variation
_ANY_COLLECTION = "events"


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
class TablePlan:
    """One table of one dataset, compiled: expressions, variations carried, label."""

    name: str
    spec: TableSpec
    preselection: tuple[tuple[str, Any], ...] | None
    aliases: tuple[tuple[str, Expression], ...]
    objects: Expression | None
    select: Expression | None
    columns: tuple[tuple[str, Expression, ColumnSpec], ...]
    collections: tuple[tuple[str, Expression, CollectionSpec], ...]
    variations: tuple[str, ...]
    weight_variations: tuple[str, ...]
    label: int | None
    label_expr: Expression | None
    is_data: bool

    @property
    def level(self) -> str:
        return self.spec.level

    def attrs(self) -> dict[str, Any]:
        """The table's static description (root attributes; the runner adds the sentinels
        the parts used)."""
        columns = {}
        for name, _, spec in self.columns:
            columns[name] = {"expr": spec.expr, "dtype": spec.dtype, "unit": spec.unit,
                             "sentinel": json_float(self.sentinel(spec)),
                             "description": spec.description}
        collections = {name: {"expr": spec.expr, "fields": spec.fields, "layout": spec.layout,
                              "length": spec.length, "sort_by": spec.sort_by,
                              "dtype": spec.dtype, "units": spec.units,
                              "variations": spec.variations}
                       for name, _, spec in self.collections}
        return {
            "table": self.name,
            "level": self.level,
            "objects": self.spec.objects,
            "select": self.spec.select,
            "aliases": dict(self.spec.aliases),
            "columns": columns,
            "collections": collections,
            "shape_variations": list(self.variations),
            "weight_variations": list(self.weight_variations),
            "labels": {"classes": self.spec.class_names(), "by_sample": dict(self.spec.labels),
                       "label": self.label, "expr": self.spec.label},
            "folds": folds_attr(),
            "units": {"weight": "per event (generator weight x weights)"},
        }

    def sentinel(self, spec: ColumnSpec) -> float:
        return self.spec.sentinel if spec.sentinel is None else spec.sentinel


def make_table_plan(name: str, spec: TableSpec, params: Any, metadata: Mapping[str, Any],
                    shape_variations: Sequence[str],
                    weight_variations: Sequence[str]) -> TablePlan:
    """Compile table ``name`` for one dataset; unknown variation names are config errors."""
    where = f"tables.{name}"
    if not metadata.get("isMC"):
        carried: list[str] = []  # collision data have no shape variations
    elif spec.variations == "all":
        carried = [v for v in shape_variations if v != NOMINAL]
    elif spec.variations == "none":
        carried = []
    else:
        carried = list(spec.variations)
        known = [v for v in shape_variations if v != NOMINAL]
        bad = [(f"{where}.variations[{i}]", f"unknown shape variation {v!r} for dataset "
                f"{metadata.get('dataset')!r}; its variations are: {', '.join(known) or 'none'}")
               for i, v in enumerate(carried) if v not in known]
        if bad:
            raise ConfigError("analysis config", bad)
    preselection = None
    if spec.preselection is not None:
        preselection = tuple((cut, make_cut(text, f"{where}.preselection.{cut}", params,
                                            metadata))
                             for cut, text in spec.preselection.items())
    sample = str(metadata.get("sample"))
    label = spec.class_names().index(spec.labels[sample]) if sample in spec.labels else None
    return TablePlan(
        name=name,
        spec=spec,
        preselection=preselection,
        aliases=tuple((a, Expression(text, f"{where}.aliases.{a}"))
                      for a, text in spec.aliases.items()),
        objects=Expression(spec.objects, f"{where}.objects") if spec.objects else None,
        select=Expression(spec.select, f"{where}.select") if spec.select else None,
        columns=tuple((c, Expression(s.expr, f"{where}.columns.{c}"), s)
                      for c, s in spec.column_specs().items()),
        collections=tuple((c, Expression(s.expr, f"{where}.collections.{c}.expr"), s)
                          for c, s in spec.collections.items()),
        variations=tuple(carried),
        weight_variations=tuple(weight_variations) if spec.weight_variations else (),
        label=label,
        label_expr=Expression(spec.label, f"{where}.label") if spec.label else None,
        is_data=not bool(metadata.get("isMC")),
    )


@dataclass
class _Variation:
    passed: Any
    columns: dict[str, Any] = field(default_factory=dict)
    collections: dict[str, Any] = field(default_factory=dict)
    weight: Any = None


class TableRows:
    """The rows of one table for one chunk, collected variation by variation.

    Call :meth:`add` with the nominal first, then with each variation; then :meth:`finish`.
    On a typetracer (``tracing``), :meth:`add` only evaluates and touches what it reads.
    Values of one per event (weights, event-level columns in an object table) stay per event
    and are taken for each row through the row's event index.

    ``reordered``: collections a calibrator may put in another order per variation; objects
    read from them are matched across variations by their ``original_index`` field.
    """

    def __init__(self, plan: TablePlan, events: Any, tracing: bool,
                 reordered: set[str] | None = None) -> None:
        self.plan = plan
        self.tracing = tracing
        self.reordered = set(reordered or ())
        missing = [k for k in IDENTITY if k not in events.fields]
        if missing:
            raise ExpressionError(f"tables.{plan.name}: the events have no {', '.join(missing)}; "
                                  "a table needs the event identity (run, luminosityBlock, "
                                  "event)")
        self.identity = {k: events[k] for k in IDENTITY}
        self.n_events = 0 if tracing else len(events)
        self.touched: list[Any] = list(self.identity.values())
        self.by_variation: dict[str, _Variation] = {}
        self.template: Any = None
        self.row_event: np.ndarray | None = None
        self.nominal_shape: np.ndarray | None = None
        self.weight_variations: dict[str, Any] = {}
        self.label_values: Any = None
        self.sentinels: dict[str, Any] = {}
        self._deps: dict[str, set[str]] = {}
        #: object rows followed by identity (original_index) across variations
        self._follow = False
        self._nominal_ids: np.ndarray | None = None
        #: the variation's rows in the nominal's row order (None: the same order)
        self._perm: np.ndarray | None = None

    # -- evaluation -----------------------------------------------------------------------
    def _namespace(self, events: Any) -> tuple[dict[str, Any], Any]:
        """``obj`` (the objects), then the aliases in order; and the row template."""
        extra: dict[str, Any] = {}
        template = None
        if self.plan.objects is not None:
            used: set[str] = set()
            objects = self.plan.objects.evaluate(events, extra, used)
            self._deps["obj"] = self._resolve(used)
            extra["obj"] = objects
            depth = 2 if self.plan.level == "constituent" else 1
            if not isinstance(objects, ak.Array) or objects.ndim < depth + 1:
                raise ExpressionError(
                    f"{self.plan.objects.where}: {self.plan.objects.text!r} must give "
                    f"{'a list of lists' if depth == 2 else 'a list'} per event for level "
                    f"{self.plan.level!r}, got {getattr(objects, 'type', type(objects))}")
            template = ak.local_index(objects, axis=depth)
        for name, expr in self.plan.aliases:
            used = set()
            extra[name] = expr.evaluate(events, extra, used)
            self._deps[name] = self._resolve(used)
        if self.tracing:
            self.touched += [v for v in extra.values() if isinstance(v, ak.Array)]
        return extra, template

    def _resolve(self, used: set[str]) -> set[str]:
        out: set[str] = set()
        for name in used:
            out |= self._deps.get(name, {name})
        return out

    def _evaluate(self, key: str, expr: Expression, events: Any,
                  extra: dict[str, Any]) -> Any:
        used: set[str] = set()
        value = expr.evaluate(events, extra, used)
        self._deps[key] = self._resolve(used)
        return value

    def _changes(self, key: str, changed: set[str] | None) -> bool:
        deps = self._deps.get(key, {_ANY_COLLECTION})
        return changed is None or _ANY_COLLECTION in deps or bool(deps & changed)

    def _per_row(self, value: Any, template: Any, expr: Expression) -> Any:
        """``value`` checked: one per event, or (object levels) one per row."""
        if not isinstance(value, ak.Array):  # a constant
            return ak.full_like(self.identity["event"], value, dtype=np.asarray(value).dtype)
        if value.ndim == 1 or template is None:
            if value.ndim != 1:
                raise ExpressionError(
                    f"{expr.where}: {expr.text!r} gives {value.type}; an event-level column "
                    "needs one value per event (keep lists as a collection)")
            return value
        try:
            return ak.broadcast_arrays(value, template)[0]
        except Exception as err:
            raise ExpressionError(
                f"{expr.where}: {expr.text!r} does not give one value per row of level "
                f"{self.plan.level!r} (objects {self.plan.spec.objects!r}): {err}") from None

    def _passed(self, events: Any, extra: dict[str, Any], analysis_selected: Any,
                template: Any) -> Any:
        """Whether each row passes: numpy booleans per row (a typetracer when tracing)."""
        plan = self.plan
        selected = analysis_selected
        if plan.preselection is not None:
            steps = cumulative_masks(plan.preselection, events)
            selected = steps[-1][1] if steps else True
        if isinstance(selected, bool):
            selected = ak.full_like(self.identity["event"], selected, dtype=bool)
        mask = None
        if plan.select is not None:
            mask = self._per_row(plan.select.evaluate(events, extra), template, plan.select)
        if self.tracing:
            self.touched += [selected, mask]
            return selected
        passed = self._rows(ak.fill_none(selected, False), bool)
        if mask is not None:
            passed &= self._rows(ak.fill_none(mask, False, axis=None), bool)
        return passed

    def add(self, variation: str, events: Any, analysis_selected: Any, weights: Any,
            changed: set[str] | None, weights_changed: bool) -> None:
        """Evaluate the rows' pass mask and the columns ``variation`` may change."""
        plan = self.plan
        nominal = variation == NOMINAL
        if not nominal and variation not in plan.variations:
            return
        extra, template = self._namespace(events)
        if nominal:
            self._check_order(extra.get("obj"))
        if template is not None and not self.tracing:
            shape = _shape_signature(template)
            if nominal:
                self.template, self.nominal_shape = template, shape
            elif self.nominal_shape is None or not np.array_equal(shape, self.nominal_shape):
                raise ExpressionError(
                    f"tables.{plan.name}.objects: {plan.spec.objects!r} gives another number of "
                    f"objects in variation {variation!r} than at nominal; rows are matched by "
                    "position, so cuts that vary belong in 'select'")
        if nominal and not self.tracing:
            self.row_event = _row_events(template, self.n_events)
        self._perm = None
        if self._follow and not self.tracing:
            self._perm = self._align(variation, extra["obj"])
        record = _Variation(self._passed(events, extra, analysis_selected, template))
        for name, expr, _ in plan.columns:
            key = f"column:{name}"
            if nominal or self.tracing:
                value = self._evaluate(key, expr, events, extra)
            elif self._changes(key, changed):
                value = expr.evaluate(events, extra)
            else:
                continue
            record.columns[name] = self._per_row(value, template, expr)
        for name, expr, spec in plan.collections:
            key = f"collection:{name}"
            if nominal or self.tracing:
                value = self._evaluate(key, expr, events, extra)
            elif spec.variations and self._changes(key, changed):
                value = expr.evaluate(events, extra)
            else:
                continue
            record.collections[name] = self._collection(value, expr, spec, template)
        if plan.label_expr is not None and nominal:
            self.label_values = self._per_row(plan.label_expr.evaluate(events, extra),
                                              template, plan.label_expr)
        if nominal or weights_changed:
            record.weight = weights.nominal
        if nominal:
            self.weight_variations = {k: weights.variations[k] for k in plan.weight_variations}
        if self.tracing:
            self.touched += [template, self.label_values, record.weight,
                             *record.columns.values(), *record.collections.values(),
                             *self.weight_variations.values()]
        else:
            self._to_numpy(record)
        self.by_variation[variation] = record

    def _to_numpy(self, record: _Variation) -> None:
        """Turn a variation's values into numpy, one per row, at once: the awkward arrays
        (and the calibrated collections they hold on to) are freed before the next one."""
        specs = {name: spec for name, _, spec in self.plan.columns}
        for name, value in record.columns.items():
            record.columns[name], fill = self._column(name, value, specs[name])
            self.sentinels.setdefault(name, fill)
        collection_specs = {name: spec for name, _, spec in self.plan.collections}
        for name, value in record.collections.items():
            column = self._stored_collection(value, collection_specs[name])
            record.collections[name] = (column if self._perm is None
                                        else _take_rows(column, self._perm))
        if record.weight is not None:
            record.weight = self._rows(record.weight, np.float64)

    def _check_order(self, objects: Any) -> None:
        """Objects of a re-sorted collection, with variations: follow them by identity."""
        reordered = self._deps.get("obj", set()) & self.reordered
        if not (reordered and self.plan.variations):
            return
        where = f"tables.{self.plan.name}.objects"
        if self.plan.level != "object":
            raise ConfigError("analysis config", [(
                where, f"the objects come from {', '.join(sorted(reordered))}, which a "
                "calibrator re-sorts in each variation (jets_calibration.sort_by_pt): "
                f"level {self.plan.level!r} cannot follow them across variations; use "
                "level 'object', carry no variations (variations: none) or turn the "
                "re-sorting off")])
        if "original_index" not in getattr(objects, "fields", []):
            raise ConfigError("analysis config", [(
                where, f"the objects come from {', '.join(sorted(reordered))}, which a "
                "calibrator re-sorts in each variation (jets_calibration.sort_by_pt): the "
                "objects need their field 'original_index' to be followed across variations "
                f"(select objects of the collection, e.g. {sorted(reordered)[0]}[...]), or "
                "carry no variations (variations: none)")])
        self._follow = True

    def _align(self, variation: str, objects: Any) -> np.ndarray | None:
        """Where each nominal row's object sits among the variation's rows (None: same
        place); the objects must be the same, by ``original_index``, event by event."""
        assert self.row_event is not None
        ids = np.asarray(ak.to_numpy(ak.flatten(objects.original_index, axis=None)),
                         dtype=np.int64)
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

    def _collection(self, value: Any, expr: Expression, spec: CollectionSpec,
                    template: Any) -> Any:
        depth = 2 if self.plan.level == "object" else 1
        if not isinstance(value, ak.Array) or value.ndim != depth + 1:
            raise ExpressionError(
                f"{expr.where}: {expr.text!r} must give a list of objects per "
                f"{'object' if depth == 2 else 'event'}, got {getattr(value, 'type', value)}")
        if template is not None and not self.tracing and not ak.all(
                ak.num(value, axis=1) == ak.num(template, axis=1)):
            raise ExpressionError(
                f"{expr.where}: {expr.text!r} does not give one list per object of "
                f"{self.plan.spec.objects!r} (another number of objects in some events)")
        missing = [f for f in spec.fields if f not in value.fields]
        if missing:
            raise ExpressionError(f"{expr.where}: no field(s) {', '.join(missing)} in "
                                  f"{expr.text!r}; its fields are: {', '.join(value.fields)}")
        if spec.sort_by:
            if spec.sort_by not in value.fields:
                raise ExpressionError(f"{expr.where}: sort_by {spec.sort_by!r} is not a field "
                                      f"of {expr.text!r}")
            value = value[ak.argsort(value[spec.sort_by], axis=-1, ascending=False,
                                     stable=True)]
        return ak.zip({f: value[f] for f in spec.fields}, depth_limit=None)

    # -- the part's columns ---------------------------------------------------------------
    def _rows(self, value: Any, dtype: Any) -> np.ndarray:
        """One value per row (before ``keep``): per-event values through the row's event."""
        assert self.row_event is not None
        if value.ndim == 1:
            return np.asarray(ak.to_numpy(value)).astype(dtype)[self.row_event]
        flat = np.asarray(ak.to_numpy(ak.flatten(value, axis=None))).astype(dtype)
        return flat if self._perm is None else flat[self._perm]

    def finish(self) -> tuple[dict[str, Column], dict[str, Any]]:
        """The part's columns (rows passing in any variation) and its attributes."""
        plan = self.plan
        if self.tracing:
            for array in self.touched:
                if isinstance(array, ak.Array):
                    ak.typetracer.touch_data(array)
            return {}, {}
        passed = {v: r.passed for v, r in self.by_variation.items()}
        keep = np.zeros_like(passed[NOMINAL])
        for mask in passed.values():
            keep |= mask
        rows = int(keep.sum())
        out: dict[str, Column] = {}
        for key in IDENTITY:
            out[key] = self._rows(self.identity[key], IDENTITY_DTYPES[key])[keep]
        out[FOLD] = fold_of(*(out[key] for key in IDENTITY))
        if plan.level != "event":
            objects = ak.broadcast_arrays(ak.local_index(self.template, axis=1),
                                          self.template)[0]
            out[OBJECT_INDEX] = self._rows(objects, np.int32)[keep]
        if plan.level == "constituent":
            out[CONSTITUENT_INDEX] = self._rows(self.template, np.int32)[keep]
        nominal = self.by_variation[NOMINAL]
        out[WEIGHT] = nominal.weight[keep]
        names = list(self.weight_variations)
        out[WEIGHT_VARIATIONS] = (
            np.stack([self._rows(self.weight_variations[n], np.float64)[keep] for n in names],
                     axis=1) if names else np.zeros((rows, 0), np.float64))
        if plan.label is not None:
            out[LABEL] = np.full(rows, plan.label, dtype=np.int32)
        elif self.label_values is not None:
            out[LABEL] = self._rows(ak.fill_none(self.label_values, -1, axis=None),
                                      np.int32)[keep]
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

    def _column(self, name: str, value: Any, spec: ColumnSpec) -> tuple[np.ndarray, Any]:
        """A column's values for every row and the value missing entries took."""
        computed = _computed_dtype(value)
        dtype = np.dtype(spec.dtype) if spec.dtype else (
            np.dtype(np.float32) if computed.kind == "f" else computed)
        fill = _fill_value(dtype, self.plan.sentinel(spec))
        try:
            # missing values take the sentinel before flattening (flattening drops them)
            return self._rows(ak.fill_none(value, fill, axis=None), dtype), fill
        except Exception as err:
            raise ExpressionError(f"tables.{self.plan.name}.columns.{name}: cannot store "
                                  f"{spec.expr!r} ({value.type}): {err}") from None

    def _stored_collection(self, value: Any, spec: CollectionSpec) -> Column:
        """A collection's lists for every row, ragged or padded as configured."""
        if self.plan.level == "object":
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


def _row_events(template: Any, n_events: int) -> np.ndarray:
    """The event index of each row: every event (event level), or one per object or
    constituent of the row template."""
    if template is None:
        return np.arange(n_events)
    counts = ak.num(template, axis=1)
    if template.ndim > 2:
        counts = ak.sum(ak.num(template, axis=2), axis=1)
    return np.repeat(np.arange(n_events), np.asarray(ak.to_numpy(counts), dtype=np.int64))


def _computed_dtype(array: Any) -> np.dtype[Any]:
    content = ak.flatten(array, axis=None).type.content
    if isinstance(content, ak.types.OptionType):
        content = content.content
    return np.dtype(getattr(content, "primitive", "float64"))


def _fill_value(dtype: np.dtype[Any], sentinel: float) -> Any:
    """The sentinel, or -1 (0 for unsigned, False for bool) where an integer needs one."""
    if dtype.kind == "f" or sentinel == sentinel:
        return False if dtype.kind == "b" else sentinel
    return 0 if dtype.kind in "ub" else -1


def _shape_signature(template: Any) -> np.ndarray:
    """Object counts (and constituent counts) of a row template, as one flat array."""
    parts = [np.asarray(ak.to_numpy(ak.num(template, axis=1)))]
    if template.ndim > 2:
        parts.append(np.asarray(ak.to_numpy(ak.flatten(ak.num(template, axis=2)))))
    return np.concatenate(parts)


__all__ = ["TablePlan", "TableRows", "fold_of", "make_table_plan"]
