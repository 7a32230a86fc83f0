"""Feature tables, evaluate stage: a table's values in one variation, as awkward arrays.

For one chunk, a :class:`TableEvaluator` evaluates a table (``tables.<name>`` in the analysis
config) variation by variation: the objects and aliases, whether each row passes, the columns
and collections the variation may change, the label and the weights. It returns them as a
:class:`TableValues`; the same code runs on typetracers (column projection) and on eager
arrays. The row builder (:mod:`pipeline.analysis.table_rows`) turns them into the part's
columns, from numpy.

A column is evaluated again for a shape variation when the expression reads a collection that
the variation changed (the calibrators' outputs are compared with the nominal ones by the
:class:`~pipeline.calibration.manager.CalibratorsManager`). Objects from a collection that a
calibrator re-sorts in every variation (the jets, sorted by pt) are followed by their
``original_index``: the evaluator gives it with the values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import awkward as ak
import numpy as np

from pipeline.analysis.plan import TablePlan
from pipeline.analysis.value_checks import NotNumbers, not_numbers, value_kind
from pipeline.config.models import CollectionSpec
from pipeline.errors import ConfigError, ExpressionError
from pipeline.selection import Expression, cumulative_masks
from pipeline.table_layout import EVENT, IDENTITY
from pipeline.variations import NOMINAL

#: a column that reads one of these may change in every variation
_ANY_COLLECTION = "events"


@dataclass(frozen=True)
class TableValues:
    """One table's values in one variation (awkward arrays, or typetracers).

    A value is one per event (1-D) or one per row (object levels); ``None``: not given in
    this variation.
    """

    #: ``obj`` (the objects) and the aliases
    namespace: dict[str, Any]
    #: the objects' local index (object and constituent levels): the rows of each event
    template: Any
    #: the objects' ``original_index``, when rows follow re-sorted objects
    object_ids: Any
    #: per event: passes the analysis' (or the table's own) preselection
    selected: Any
    #: per row: passes the table's ``select``
    select: Any
    columns: dict[str, Any] = field(default_factory=dict)
    collections: dict[str, Any] = field(default_factory=dict)
    #: the label expression's values (nominal only)
    label: Any = None
    #: the event weight: at nominal, and in a variation that changed it
    weight: Any = None
    #: the weight variations carried (nominal only)
    weight_variations: dict[str, Any] = field(default_factory=dict)

    def arrays(self) -> list[Any]:
        """Every value held, for tracing to touch."""
        return [*self.namespace.values(), self.template, self.object_ids, self.selected,
                self.select, *self.columns.values(), *self.collections.values(), self.label,
                self.weight, *self.weight_variations.values()]


class TableEvaluator:
    """Evaluate one table of one chunk, variation by variation (the nominal first).

    ``reordered``: collections a calibrator may put in another order per variation; objects
    read from them are followed across variations by their ``original_index`` field.
    """

    def __init__(self, plan: TablePlan, events: Any, reordered: set[str] | None = None) -> None:
        self.plan = plan
        self.reordered = set(reordered or ())
        missing = [k for k in IDENTITY if k not in events.fields]
        if missing:
            raise ExpressionError(f"tables.{plan.name}: the events have no {', '.join(missing)}; "
                                  "a table needs the event identity (run, luminosityBlock, "
                                  "event)")
        self.event = events[EVENT]  # constants and a bool selection take its length
        self._deps: dict[str, set[str]] = {}
        #: object rows followed by identity (original_index) across variations
        self._follow = False

    def evaluate(self, variation: str, events: Any, analysis_selected: Any, weights: Any,
                 changed: set[str] | None, weights_changed: bool) -> TableValues | None:
        """The table's values in ``variation`` (``None``: a variation the table does not
        carry): the pass masks, and the columns ``variation`` may change."""
        plan = self.plan
        nominal = variation == NOMINAL
        if not nominal and variation not in plan.variations:
            return None
        extra, template = self._namespace(events)
        if nominal:
            self._check_order(extra.get("obj"))
        selected, select = self._passed(events, extra, analysis_selected, template)
        columns = {}
        for name, expr, _ in plan.columns:
            key = f"column:{name}"
            if nominal:
                value = self._evaluate(key, expr, events, extra)
            elif self._changes(key, changed):
                value = expr.evaluate(events, extra)
            else:
                continue
            columns[name] = self._per_row(value, template, expr)
        collections = {}
        for name, expr, spec in plan.collections:
            key = f"collection:{name}"
            if nominal:
                value = self._evaluate(key, expr, events, extra)
            elif spec.variations and self._changes(key, changed):
                value = expr.evaluate(events, extra)
            else:
                continue
            collections[name] = self._collection(value, expr, spec)
        label = None
        if plan.label_expr is not None and nominal:
            label = self._per_row(plan.label_expr.evaluate(events, extra), template,
                                  plan.label_expr)
        return TableValues(
            namespace=extra, template=template,
            object_ids=extra["obj"].original_index if self._follow else None,
            selected=selected, select=select, columns=columns, collections=collections,
            label=label, weight=weights.nominal if nominal or weights_changed else None,
            weight_variations={k: weights.variations[k] for k in plan.weight_variations}
            if nominal else {})

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
        problem = not_numbers(value, expr.text)
        if problem is not None:
            raise ExpressionError(f"{expr.where}: {problem.describe('a table holds numbers')}")
        if not isinstance(value, ak.Array):  # a constant
            return ak.full_like(self.event, value, dtype=np.asarray(value).dtype)
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
                template: Any) -> tuple[Any, Any]:
        """Whether each event passes the preselection, and each row the ``select``."""
        plan = self.plan
        selected = analysis_selected
        if plan.preselection is not None:
            steps = cumulative_masks(plan.preselection, events)
            selected = steps[-1][1] if steps else True
        if isinstance(selected, bool):
            selected = ak.full_like(self.event, selected, dtype=bool)
        mask = None
        if plan.select is not None:
            mask = self._per_row(plan.select.evaluate(events, extra), template, plan.select)
        return selected, mask

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

    def _collection(self, value: Any, expr: Expression, spec: CollectionSpec) -> Any:
        """The collection's configured fields, sorted as configured (a list per row)."""
        depth = 2 if self.plan.level == "object" else 1
        if not isinstance(value, ak.Array) or value.ndim != depth + 1:
            raise ExpressionError(
                f"{expr.where}: {expr.text!r} must give a list of objects per "
                f"{'object' if depth == 2 else 'event'}, got {getattr(value, 'type', value)}")
        missing = [f for f in spec.fields if f not in value.fields]
        if missing:
            raise ExpressionError(f"{expr.where}: no field(s) {', '.join(missing)} in "
                                  f"{expr.text!r}; its fields are: {', '.join(value.fields)}")
        for name in spec.fields:
            field_text = f"{expr.text}[{name!r}]"
            problem = not_numbers(value[name], field_text)
            if problem is None and value_kind(value[name])[0] != depth:
                problem = NotNumbers(field_text, "lists in each object", value[name])
            if problem is not None:
                need = "a collection holds one number per object in each field"
                raise ExpressionError(f"{expr.where}: {problem.describe(need)}")
        if spec.sort_by:
            if spec.sort_by not in value.fields:
                raise ExpressionError(f"{expr.where}: sort_by {spec.sort_by!r} is not a field "
                                      f"of {expr.text!r}")
            value = value[ak.argsort(value[spec.sort_by], axis=-1, ascending=False,
                                     stable=True)]
        return ak.zip({f: value[f] for f in spec.fields}, depth_limit=None)


__all__ = ["TableEvaluator", "TableValues"]
