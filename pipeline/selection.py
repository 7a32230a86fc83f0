"""Expressions over the calibrated events: cuts, categories and histogram observables.

An expression is a Python expression over the event collections by name (``Jet``,
``PuppiMET``, ``genWeight``...), ``events`` itself, ``ak`` and ``np``. For example
``"ak.num(Jet[Jet.pt > 30]) >= 4"`` or ``"ak.sum(Jet.pt, axis=1)"``. Expressions are
compiled once and evaluated per chunk and variation; they run on eager arrays and on the
typetracers dask-awkward uses to find the columns a run reads.
"""

from __future__ import annotations

import ast
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import awkward as ak
import numpy as np

from pipeline.config.plugins import Registry
from pipeline.errors import ExpressionError

#: The names of the language itself: ``ak``, ``np`` and a few builtins.
LANGUAGE_NAMES: dict[str, Any] = {
    "__builtins__": {"abs": abs, "min": min, "max": max, "True": True, "False": False,
                     "len": len, "float": float, "int": int},
    "ak": ak,
    "np": np,
}

#: Functions every expression may call by name: registered with ``@FUNCTIONS.register``
#: or declared as ``calibrew.functions`` entry points (the recipes' functions, e.g.
#: ``jet_constituents``). An analysis adds its own (``functions:`` in its config).
FUNCTIONS: Registry[Callable[..., Any]] = Registry("expression function",
                                                   "calibrew.functions")


def reserved_name(name: str) -> bool:
    """Whether ``name`` is one of the language (``ak``, ``np``, ``abs``...).

    Examples
    --------
    >>> reserved_name("np"), reserved_name("abs"), reserved_name("my_func")
    (True, True, False)
    """
    return name in LANGUAGE_NAMES or name in LANGUAGE_NAMES["__builtins__"]


class _EventNamespace(Mapping[str, Any]):
    """The names an expression sees: ``events``, its fields, then ``extra`` names.

    The names looked up are recorded in ``used`` (what the expression depends on).
    """

    def __init__(self, events: Any, extra: Mapping[str, Any] | None = None,
                 memo: Callable[[str], Any] | None = None) -> None:
        self.events = events
        self.fields = set(events.fields)
        self.extra = dict(extra or {})
        self.used: set[str] = set()
        self.memo = memo

    def __getitem__(self, key: str) -> Any:
        if key == _MEMO_NAME and self.memo is not None:
            return self.memo
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


# --- subexpressions shared within one variation -----------------------------------------

_MEMO_NAME = "__calibrew_subexpression__"
_MEMOIZED = (ast.Subscript, ast.Call, ast.BinOp, ast.Compare, ast.BoolOp, ast.UnaryOp,
             ast.Attribute)
_LOCAL_SCOPES = (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp,
                 ast.NamedExpr)


class _SubexpressionValues(threading.local):
    """The values of the subexpressions computed on one events array (per thread)."""

    def __init__(self) -> None:
        self.events: Any = None
        self.values: dict[str, tuple[Any, set[str]]] = {}


_SUBEXPRESSIONS = _SubexpressionValues()


def forget_subexpressions() -> None:
    """Drop the shared subexpression values (at the end of a variation or a chunk)."""
    _SUBEXPRESSIONS.events, _SUBEXPRESSIONS.values = None, {}


def _split(node: ast.expr, parts: dict[str, tuple[Any, frozenset[str]]],
           where: str, known: frozenset[str]) -> ast.expr:
    """Replace each subexpression over event names by a call that computes it once.

    ``parts`` receives ``ast.dump`` of the subexpression (the same text in every
    expression) -> (its code, the names it reads); ``known`` are the names that are not
    the events' (the language's and the functions). Children first: an inner subexpression
    (``(Jet.pt > 30) & (abs(Jet.eta) < 2.4)``) is shared by every expression containing it.
    """
    key = ast.dump(node)
    names = frozenset(n.id for n in ast.walk(node) if isinstance(n, ast.Name))
    for field, value in ast.iter_fields(node):
        if isinstance(value, ast.expr):
            setattr(node, field, _split(value, parts, where, known))
        elif isinstance(value, list):
            setattr(node, field, [_split(v, parts, where, known) if isinstance(v, ast.expr)
                                  else v for v in value])
    if isinstance(node, ast.Call):
        for keyword in node.keywords:
            keyword.value = _split(keyword.value, parts, where, known)
    if isinstance(node, _MEMOIZED) and names - known:
        body = ast.fix_missing_locations(ast.Expression(body=node))
        parts[key] = (compile(body, f"<{where}>", "eval"), names)
        return ast.Call(func=ast.Name(id=_MEMO_NAME, ctx=ast.Load()),
                        args=[ast.Constant(value=key)], keywords=[])
    return node


class Expression:
    """A compiled expression, with the config key it comes from for error messages.

    Subexpressions over the events (``Jet[(Jet.pt > 30) & (abs(Jet.eta) < 2.4)]``) are
    computed once per events array and shared by every expression that contains them
    (cuts, categories, observables, table columns of one variation).

    Besides the events' names, ``ak``, ``np`` and a few builtins, an expression may call the
    functions of :data:`FUNCTIONS` and those of ``functions`` (an analysis' own, by name).

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
    >>> double = {"double": lambda x: 2 * x}
    >>> Expression("double(ak.num(Jet))", "doc", double).evaluate(events).tolist()
    [4]
    """

    def __init__(self, text: str, where: str,
                 functions: Mapping[str, Callable[..., Any]] | None = None) -> None:
        self.text, self.where = text, where
        try:
            self.code = compile(text, f"<{where}>", "eval")
            tree = ast.parse(text, f"<{where}>", "eval")
        except SyntaxError as err:
            raise ExpressionError(f"{where}: invalid expression {text!r}: {err.msg}") from None
        own = functions or {}
        named = sorted({n.id for n in ast.walk(tree) if isinstance(n, ast.Name)})
        #: The language's names and the functions the expression names (pickled with it).
        self.globals: dict[str, Any] = {
            **LANGUAGE_NAMES,
            **{n: own[n] if n in own else FUNCTIONS[n] for n in named
               if n in own or n in FUNCTIONS},
        }
        known = frozenset({*self.globals, *LANGUAGE_NAMES["__builtins__"]})
        self.parts: dict[str, tuple[Any, frozenset[str]]] = {}
        if not any(isinstance(n, _LOCAL_SCOPES) for n in ast.walk(tree)):
            body = _split(tree.body, self.parts, where, known)
            if self.parts:
                self.code = compile(ast.fix_missing_locations(ast.Expression(body=body)),
                                    f"<{where}>", "eval")

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
        namespace = _EventNamespace(events, extra)
        namespace.memo = self._memo(events, namespace)
        try:
            return eval(self.code, self.globals, namespace)
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


    def _memo(self, events: Any, namespace: _EventNamespace) -> Callable[[str], Any]:
        """The function the rewritten code calls for each subexpression."""
        shared = _SUBEXPRESSIONS
        if shared.events is not events:
            shared.events, shared.values = events, {}
        local = set(namespace.extra)

        def subexpression(key: str) -> Any:
            code, names = self.parts[key]
            if names & local:  # reads names given to this call only: not shared
                return eval(code, self.globals, namespace)
            hit = shared.values.get(key)
            if hit is None:
                hit = (eval(code, self.globals, namespace),
                       {n for n in names if n == "events" or n in namespace.fields})
                shared.values[key] = hit
            namespace.used |= hit[1]
            return hit[0]

        return subexpression


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


class ExpressionCache:
    """The values of a chunk's expressions, each computed once per variation.

    Call :meth:`start` before each variation of the chunk, the nominal first, with the
    collections the variation changed (``None``: unknown). An expression evaluated again in
    the same variation returns its value; in a variation that changed none of the
    collections it read (recorded at the nominal), the nominal's value.

    Examples
    --------
    >>> import awkward as ak
    >>> cache, cut = ExpressionCache(), Expression("ak.num(Jet) > 0", "doc")
    >>> nominal = ak.Array([{"Jet": [1.0], "Electron": []}])
    >>> cache.start("nominal", set()); first = cache.evaluate(cut, nominal)
    >>> cache.start("eUp", {"Electron"}); cache.evaluate(cut, nominal) is first
    True
    >>> cache.start("jUp", {"Jet"}); cache.evaluate(cut, nominal) is first
    False
    """

    def __init__(self) -> None:
        self.nominal: dict[str, tuple[Any, frozenset[str] | None]] = {}
        self.current: dict[str, tuple[Any, frozenset[str] | None]] = {}
        self.changed: set[str] | None = set()
        self.is_nominal = True

    def start(self, variation: str, changed: set[str] | None) -> None:
        """Begin ``variation`` (``"nominal"`` first) that changed ``changed``."""
        forget_subexpressions()
        self.is_nominal = variation == "nominal"
        self.changed = changed
        self.current = {}

    def evaluate(self, expression: Any, events: Any) -> Any:
        """``expression.evaluate(events)``, computed at most once per variation."""
        key = expression.text
        entry = self.current.get(key)
        if entry is None and not self.is_nominal and self.changed is not None:
            nominal = self.nominal.get(key)
            if nominal is not None and nominal[1] is not None and not (
                    nominal[1] & self.changed or "events" in nominal[1]):
                entry = nominal
        if entry is None:
            if isinstance(expression, Expression):
                used: set[str] = set()
                entry = (expression.evaluate(events, used=used), frozenset(used))
            else:
                depends = getattr(expression, "depends", None)
                entry = (expression.evaluate(events),
                         None if depends is None else frozenset(depends))
            if self.is_nominal:
                self.nominal[key] = entry
        self.current[key] = entry
        return entry[0]


def cumulative_masks(cuts: Sequence[tuple[str, Any]], events: Any,
                     cache: ExpressionCache | None = None) -> list[tuple[str, Any]]:
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
        value = cut.evaluate(events) if cache is None else cache.evaluate(cut, events)
        selected = selected & event_mask(value, cut)
        steps.append((name, selected))
    return steps
