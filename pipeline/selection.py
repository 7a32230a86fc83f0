"""Expressions over the calibrated events: cuts, categories and histogram observables.

An expression is a Python expression over the event collections by name (``Jet``,
``PuppiMET``, ``genWeight``...), ``events`` itself, ``ak`` and ``np``. For example
``"ak.num(Jet[Jet.pt > 30]) >= 4"`` or ``"ak.sum(Jet.pt, axis=1)"``. Expressions are
compiled once and evaluated per chunk and variation; they run on eager arrays and on the
typetracers dask-awkward uses to find the columns a run reads.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import awkward as ak
import numpy as np

from pipeline.errors import ExpressionError

_SAFE_GLOBALS: dict[str, Any] = {
    "__builtins__": {"abs": abs, "min": min, "max": max, "True": True, "False": False,
                     "len": len, "float": float, "int": int},
    "ak": ak,
    "np": np,
}


_RECIPES_LOADED = False


def _load_recipe_functions() -> None:
    """Add the recipe functions (:mod:`pipeline.recipes`) to the expression namespace."""
    global _RECIPES_LOADED
    if not _RECIPES_LOADED:
        from pipeline.recipes import expression_functions

        _SAFE_GLOBALS.update(expression_functions())
        _RECIPES_LOADED = True


class _EventNamespace(Mapping[str, Any]):
    """The names an expression sees: ``events``, its fields, then ``extra`` names.

    The names looked up are recorded in ``used`` (what the expression depends on).
    """

    def __init__(self, events: Any, extra: Mapping[str, Any] | None = None) -> None:
        self.events = events
        self.fields = set(events.fields)
        self.extra = dict(extra or {})
        self.used: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        if key in self.extra:
            self.used.add(key)
            return self.extra[key]
        if key == "events":
            self.used.add(key)
            return self.events
        if key in self.fields:
            self.used.add(key)
            return self.events[key]
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(["events", *sorted(self.fields), *sorted(self.extra)])

    def __len__(self) -> int:
        return len(self.fields) + 1 + len(self.extra)


class Expression:
    """A compiled expression, with the config key it comes from for error messages.

    Examples
    --------
    >>> import awkward as ak
    >>> events = ak.Array([{"Jet": [{"pt": 40.0}, {"pt": 20.0}]}])
    >>> Expression("ak.num(Jet[Jet.pt > 30])", "categories.onejet").evaluate(events).tolist()
    [1]
    >>> Expression("Jet.ptt", "histograms.h.axes[0].expr").evaluate(events)
    Traceback (most recent call last):
    ...
    pipeline.errors.ExpressionError: histograms.h.axes[0].expr: cannot evaluate 'Jet.ptt': ...
    """

    def __init__(self, text: str, where: str) -> None:
        self.text, self.where = text, where
        try:
            self.code = compile(text, f"<{where}>", "eval")
        except SyntaxError as err:
            raise ExpressionError(f"{where}: invalid expression {text!r}: {err.msg}") from None

    def evaluate(self, events: Any, extra: Mapping[str, Any] | None = None,
                 used: set[str] | None = None) -> Any:
        """The value over ``events``; ``extra`` adds names; ``used`` collects the names read.

        Examples
        --------
        >>> import awkward as ak
        >>> events, used = ak.Array([{"x": 1.0, "y": 2.0}]), set()
        >>> Expression("x + k", "doc").evaluate(events, {"k": 10}, used).tolist(), sorted(used)
        ([11.0], ['k', 'x'])
        """
        _load_recipe_functions()  # here: also in worker processes, which unpickle expressions
        namespace = _EventNamespace(events, extra)
        try:
            return eval(self.code, _SAFE_GLOBALS, namespace)
        except NameError as err:
            name = getattr(err, "name", None) or str(err)
            raise ExpressionError(
                f"{self.where}: cannot evaluate {self.text!r}: no collection or column "
                f"{name!r} in the events (available: {_summary(namespace.fields)})"
            ) from None
        except AttributeError as err:
            field = getattr(err, "name", None)
            detail = f"no field {field!r} in the events" if field else str(err)
            raise ExpressionError(
                f"{self.where}: cannot evaluate {self.text!r}: {detail}"
            ) from None
        except Exception as err:
            raise ExpressionError(
                f"{self.where}: cannot evaluate {self.text!r}: {type(err).__name__}: {err}"
            ) from err
        finally:
            if used is not None:
                used |= namespace.used


def _summary(fields: set[str], limit: int = 25) -> str:
    names = sorted(fields)
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def event_mask(value: Any, expression: Expression, n_events: int | None = None) -> Any:
    """Check that ``value`` is one boolean per event (or a Python bool) and return it."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if not isinstance(value, ak.Array) or value.ndim != 1:
        raise ExpressionError(
            f"{expression.where}: {expression.text!r} must give one boolean per event, "
            f"got {getattr(value, 'type', type(value).__name__)}"
        )
    if isinstance(value.type.content, ak.types.OptionType):
        value = ak.fill_none(value, False)
    return value


def cumulative_masks(cuts: Sequence[tuple[str, Any]], events: Any) -> list[tuple[str, Any]]:
    """The mask after each named cut of ``cuts``, in order (the cutflow's steps).

    Examples
    --------
    >>> import awkward as ak
    >>> events = ak.Array([{"n": 1}, {"n": 3}, {"n": 5}])
    >>> cuts = [("a", Expression("n > 1", "doc.a")), ("b", Expression("n < 5", "doc.b"))]
    >>> [(name, mask.tolist()) for name, mask in cumulative_masks(cuts, events)]
    [('a', [False, True, True]), ('b', [False, True, False])]
    """
    selected: Any = True
    steps = []
    for name, cut in cuts:
        selected = selected & event_mask(cut.evaluate(events), cut)
        steps.append((name, selected))
    return steps


# --- built-in cuts that need payloads: referenced as "@name" in the preselection -------------

#: Built-in cuts by name; a preselection entry ``"@jet_veto_map"`` uses one.
CUTS: dict[str, type[BuiltinCut]] = {}


class BuiltinCut:
    """An event selection that needs parameters (payloads); settings from
    ``selections.<period>.<name>`` in the parameters."""

    name: str = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            CUTS[cls.name] = cls

    def __init__(self, params: Any, metadata: Mapping[str, Any], where: str) -> None:
        from pipeline.errors import ConfigError
        from pipeline.parameters import section

        period = str(metadata.get("year", ""))
        settings = section(params, "selections", period, self.name)
        if settings is None:
            raise ConfigError("parameters", [(f"selections.{period}.{self.name}",
                              f"missing: {where} uses @{self.name}")])
        self.settings: dict[str, Any] = settings
        self.metadata = metadata
        self.where = where
        self.text = f"@{self.name}"

    def evaluate(self, events: Any) -> Any:
        raise NotImplementedError


class JetVetoMap(BuiltinCut):
    """Reject events with a jet in a vetoed (eta, phi) region of the JME jet veto map.

    Settings: ``json_path``, ``correction``, ``map_type`` (default ``jetvetomap``), and the
    jets considered: ``pt_min`` (15 GeV), ``jet_id_min`` (2, tight), ``max_em_fraction``
    (0.9), ``jets`` (``Jet``), as JME recommends.
    """

    name = "jet_veto_map"

    def evaluate(self, events: Any) -> Any:
        from pipeline.corrections import get_correction

        s = self.settings
        veto = get_correction(s["json_path"], s["correction"])
        jets = events[s.get("jets", "Jet")]
        considered = (
            (jets.pt > s.get("pt_min", 15.0))
            & (jets.jetId >= s.get("jet_id_min", 2))
            & ((jets.chEmEF + jets.neEmEF) < s.get("max_em_fraction", 0.9))
        )
        # the map is defined for |eta| < 5.191 and phi in [-pi, pi]
        eta = np.minimum(np.maximum(jets.eta, -5.19), 5.19)
        phi = np.minimum(np.maximum(jets.phi, -3.1415), 3.1415)
        vetoed = veto.evaluate(s.get("map_type", "jetvetomap"), eta, phi) > 0
        return ~ak.any(considered & vetoed, axis=1)


def make_cut(text: str, where: str, params: Any, metadata: Mapping[str, Any]) -> Any:
    """An :class:`Expression`, or a built-in cut for a text ``"@name"``."""
    if text.startswith("@"):
        from pipeline.errors import UnknownNameError

        name = text[1:]
        if name not in CUTS:
            raise UnknownNameError("built-in cut", name, CUTS, where)
        return CUTS[name](params, metadata, where)
    return Expression(text, where)
