"""Expressions over the calibrated events: cuts, categories and histogram observables.

An expression is a Python expression over the event collections by name (``Jet``,
``PuppiMET``, ``genWeight``...), ``events`` itself, ``ak`` and ``np``. For example
``"ak.num(Jet[Jet.pt > 30]) >= 4"`` or ``"ak.sum(Jet.pt, axis=1)"``. Expressions are
compiled once and evaluated per chunk and variation; they run on eager arrays and on the
typetracers dask-awkward uses to find the columns a run reads.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import difflib
import keyword
import threading
import types
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import awkward as ak
import numpy as np

from pipeline.config.plugins import Registry
from pipeline.errors import CalibrewError, ConfigError, ExpressionError, raised_by_reader

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
#: the attribute of an inlined definition's root node: (its name, its text)
_DEFINITION = "_calibrew_definition"
#: events arrays whose subexpression values are kept at once (a variation's events and the
#: subsets of them some observables are computed on)
_KEPT_EVENTS = 4


class _SubexpressionValues(threading.local):
    """The values of the subexpressions computed on each events array (per thread), and the
    nominal values of the definitions, which a variation reuses where it changed none of
    the collections they read."""

    def __init__(self) -> None:
        self.by_events: dict[int, tuple[Any, dict[str, tuple[Any, set[str]]]]] = {}
        self.variation_events: Any = None
        self.is_nominal = True
        self.changed: set[str] | None = None
        self.nominal: dict[str, tuple[Any, set[str]]] = {}

    def values(self, events: Any) -> dict[str, tuple[Any, set[str]]]:
        """The values computed on ``events`` (kept with a reference to it)."""
        entry = self.by_events.pop(id(events), None)  # the last used is kept longest
        if entry is None or entry[0] is not events:
            while len(self.by_events) >= _KEPT_EVENTS:
                del self.by_events[next(iter(self.by_events))]
            entry = (events, {})
        self.by_events[id(events)] = entry
        return entry[1]

    def nominal_value(self, key: str, events: Any) -> tuple[Any, set[str]] | None:
        """The nominal's value of definition ``key`` if still valid on ``events``."""
        if self.is_nominal or self.changed is None or events is not self.variation_events:
            return None
        hit = self.nominal.get(key)
        if hit is None or hit[1] & self.changed or "events" in hit[1]:
            return None
        return hit


_SUBEXPRESSIONS = _SubexpressionValues()


def begin_variation(events: Any, variation: str, changed: set[str] | None) -> None:
    """Start sharing subexpressions over ``events``, the calibrated events of ``variation``
    (the nominal first) that changed the collections ``changed`` (``None``: unknown)."""
    shared = _SUBEXPRESSIONS
    shared.by_events = {}
    shared.variation_events, shared.is_nominal = events, variation == "nominal"
    shared.changed = changed
    if shared.is_nominal:
        shared.nominal = {}


def forget_subexpressions() -> None:
    """Drop the shared subexpression values (at the end of a chunk)."""
    _SUBEXPRESSIONS.__init__()  # type: ignore[misc]


def _split(node: ast.expr, parts: dict[str, _Part], where: str,
           functions: Mapping[str, str]) -> ast.expr:
    """Replace each subexpression over event names by a call that computes it once.

    ``parts`` receives the key of the subexpression (``ast.dump``, the same text in every
    expression, with the functions it calls) -> its :class:`_Part`; ``functions`` are the
    names that are not the events' (the language's and the functions), each with the function
    it names. Children first: an inner subexpression (``(Jet.pt > 30) & (abs(Jet.eta) <
    2.4)``) is shared by every expression containing it.
    """
    names = frozenset(n.id for n in ast.walk(node) if isinstance(n, ast.Name))
    key = ast.dump(node) + "".join(f" {n}={functions[n]}" for n in sorted(names & {*functions}))
    origin = getattr(node, _DEFINITION, None)
    for field, value in ast.iter_fields(node):
        if isinstance(value, ast.expr):
            setattr(node, field, _split(value, parts, where, functions))
        elif isinstance(value, list):
            setattr(node, field, [_split(v, parts, where, functions)
                                  if isinstance(v, ast.expr) else v for v in value])
    if isinstance(node, ast.Call):
        for keyword in node.keywords:
            keyword.value = _split(keyword.value, parts, where, functions)
    if isinstance(node, _MEMOIZED) and names - functions.keys():
        body = ast.fix_missing_locations(ast.Expression(body=node))
        parts[key] = _Part(compile(body, f"<{where}>", "eval"), names, origin)
        return ast.Call(func=ast.Name(id=_MEMO_NAME, ctx=ast.Load()),
                        args=[ast.Constant(value=key)], keywords=[])
    return node


def _qualified(value: Any) -> str:
    """What a name of an expression's globals stands for, as text: a module's name, a
    function's import path and identity (a subexpression calling another function of the same
    name, even a lambda of the same module, is another one)."""
    if isinstance(value, types.ModuleType):
        return value.__name__
    kind = value if hasattr(value, "__qualname__") else type(value)
    return f"{kind.__module__}:{kind.__qualname__}@{id(value):x}"


@dataclass(frozen=True)
class _Part:
    """A shared subexpression: its code, the names it reads, the definition it is (if one:
    its name and text)."""

    code: Any
    names: frozenset[str]
    definition: tuple[str, str] | None


class Vocabulary:
    """The names an analysis adds to the language: its functions and its definitions.

    ``definitions`` are named expressions; each may use the others (in any order: a file
    written back with sorted keys means the same), not itself, directly or through others.
    Every expression compiled with this vocabulary may use them by name: they are pasted into
    it, so a definition is computed once per events array and shared by every expression
    that uses it, and reads exactly the columns it names. Problems are a
    :class:`ConfigError` naming ``definitions.<name>`` in ``source``.

    Examples
    --------
    >>> import awkward as ak
    >>> words = Vocabulary(definitions={"jets": "Jet[good_jet]", "good_jet": "Jet.pt > 30"})
    >>> events = ak.Array([{"Jet": [{"pt": 40.0}, {"pt": 20.0}]}])
    >>> Expression("ak.num(jets)", "categories.one", words).evaluate(events).tolist()
    [1]
    >>> Vocabulary(definitions={"jets": "Jet[good_jet]", "good_jet": "ak.num(jets) > 1"})
    Traceback (most recent call last):
    ...
    pipeline.errors.ConfigError: analysis config: invalid configuration
      - definitions.jets: uses itself, through jets -> good_jet -> jets
    """

    def __init__(self, functions: Mapping[str, Callable[..., Any]] | None = None,
                 definitions: Mapping[str, str] | None = None,
                 source: str = "analysis config") -> None:
        self.functions = dict(functions or {})
        self.definitions = dict(definitions or {})
        self.bodies: dict[str, ast.expr] = {}
        problems: dict[str, str] = {}
        trees = {}
        for name, text in self.definitions.items():
            tree = self._parse(name, text)
            if isinstance(tree, str):
                problems[name] = tree
            else:
                trees[name] = tree
        for name in trees:
            if not problems:
                self._define(name, trees, (), problems)
        if problems:
            raise ConfigError(source, [(f"definitions.{n}", p) for n, p in problems.items()])

    def _parse(self, name: str, text: str) -> ast.Expression | str:
        """Definition ``name`` parsed, or what is wrong with it."""
        if not name.isidentifier() or keyword.iskeyword(name):
            return "a definition's name must be a Python identifier"
        if reserved_name(name) or name in ("events", _MEMO_NAME):
            return f"{name!r} is a name of the expression language"
        if name in self.functions or name in FUNCTIONS:
            return f"{name!r} is already an expression function"
        try:
            return ast.parse(text, f"<definitions.{name}>", "eval")
        except SyntaxError as err:
            return f"invalid expression {text!r}: {err.msg}"

    def _define(self, name: str, trees: Mapping[str, ast.Expression], using: tuple[str, ...],
                problems: dict[str, str]) -> None:
        """Paste the definitions ``name`` uses into it (those first), then keep it."""
        if name in self.bodies:
            return
        if name in using:
            cycle = " -> ".join([*using[using.index(name):], name])
            problems[name] = "uses itself" + (f", through {cycle}" if len(using) > 1 or
                                              using[-1] != name else "")
            return
        tree = trees[name]
        for used in dict.fromkeys(_loaded_names(tree)):
            if used in trees:
                self._define(used, trees, (*using, name), problems)
        if problems:
            return
        body = self.inline(tree.body)
        setattr(body, _DEFINITION, (name, self.definitions[name]))
        self.bodies[name] = body

    def inline(self, node: ast.expr) -> ast.expr:
        """``node`` with each definition's name replaced by (a copy of) its expression."""
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) \
                and node.id in self.bodies:
            return copy.deepcopy(self.bodies[node.id])
        for field, value in ast.iter_fields(node):
            if isinstance(value, ast.expr):
                setattr(node, field, self.inline(value))
            elif isinstance(value, list):
                setattr(node, field, [self.inline(v) if isinstance(v, ast.expr) else v
                                      for v in value])
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                kw.value = self.inline(kw.value)
        return node


def _loaded_names(tree: ast.AST) -> list[str]:
    """The names ``tree`` reads, in order of appearance."""
    return [n.id for n in ast.walk(tree) if isinstance(n, ast.Name)
            and isinstance(n.ctx, ast.Load)]


class Expression:
    """A compiled expression, with the config key it comes from for error messages.

    Subexpressions over the events (``Jet[(Jet.pt > 30) & (abs(Jet.eta) < 2.4)]``) are
    computed once per events array and shared by every expression that contains them
    (cuts, categories, observables, table columns of one variation).

    Besides the events' names, ``ak``, ``np`` and a few builtins, an expression may call the
    functions of :data:`FUNCTIONS`, and use the functions and definitions of ``vocabulary``
    (an analysis' own, by name; a plain mapping gives functions only).

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
                 vocabulary: Vocabulary | Mapping[str, Callable[..., Any]] | None = None,
                 ) -> None:
        self.text, self.where = text, where
        if not isinstance(vocabulary, Vocabulary):
            vocabulary = Vocabulary(vocabulary)
        try:
            tree = ast.parse(text, f"<{where}>", "eval")
        except SyntaxError as err:
            raise ExpressionError(f"{where}: invalid expression {text!r}: {err.msg}") from None
        #: the definitions the expression uses (their names, in order of the vocabulary)
        named_here = set(_loaded_names(tree))
        self.definitions = tuple(n for n in vocabulary.bodies if n in named_here)
        tree.body = vocabulary.inline(tree.body)
        own = vocabulary.functions
        named = sorted({n.id for n in ast.walk(tree) if isinstance(n, ast.Name)})
        #: the functions it calls, as written (``ak.combinations``), its definitions' included
        self.calls = frozenset(ast.unparse(n.func) for n in ast.walk(tree)
                               if isinstance(n, ast.Call))
        #: The language's names and the functions the expression names (pickled with it).
        self.globals: dict[str, Any] = {
            **LANGUAGE_NAMES,
            **{n: own[n] if n in own else FUNCTIONS[n] for n in named
               if n in own or n in FUNCTIONS},
        }
        known = {**{n: _qualified(v) for n, v in self.globals.items() if n != "__builtins__"},
                 **{n: "builtin" for n in LANGUAGE_NAMES["__builtins__"]}}
        self.parts: dict[str, _Part] = {}
        body = tree.body
        if not any(isinstance(n, _LOCAL_SCOPES) for n in ast.walk(tree)):
            body = _split(tree.body, self.parts, where, known)
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
            with _named(self.where, self.text, namespace, self.definitions):
                self._check_names(namespace)
                return eval(self.code, self.globals, namespace)
        finally:
            namespace.memo = None  # the memo refers to the namespace: no cycle is left
            if used is not None:
                used |= namespace.used

    def _check_names(self, namespace: _EventNamespace) -> None:
        """A definition named like a collection of the events would hide it: refused."""
        hidden = [n for n in self.definitions if n in namespace.fields]
        if hidden:
            raise ExpressionError(
                f"definitions.{hidden[0]}: the events have a collection or column "
                f"{hidden[0]!r}, which this definition would hide; give it another name "
                f"(used by {self.where})")

    def _memo(self, events: Any, namespace: _EventNamespace) -> Callable[[str], Any]:
        """The function the rewritten code calls for each subexpression."""
        shared = _SUBEXPRESSIONS
        values = shared.values(events)
        local = set(namespace.extra)

        def subexpression(key: str) -> Any:
            part = self.parts[key]
            if part.names & local:  # reads names given to this call only: not shared
                return self._part_value(part, namespace)
            hit = values.get(key)
            if hit is None and part.definition is not None:
                hit = shared.nominal_value(key, events)
            if hit is None:
                hit = (self._part_value(part, namespace),
                       {n for n in part.names if n == "events" or n in namespace.fields})
                if part.definition is not None and shared.is_nominal \
                        and events is shared.variation_events:
                    shared.nominal[key] = hit
            values[key] = hit
            namespace.used |= hit[1]
            return hit[0]

        return subexpression

    def _part_value(self, part: _Part, namespace: _EventNamespace) -> Any:
        """A subexpression's value; a definition that fails is named, with this expression."""
        if part.definition is None:
            return eval(part.code, self.globals, namespace)
        name, text = part.definition
        with _named(f"definitions.{name}", text, namespace, used_by=self.where):
            return eval(part.code, self.globals, namespace)


@contextlib.contextmanager
def _named(where: str, text: str, namespace: _EventNamespace, definitions: Sequence[str] = (),
           used_by: str | None = None) -> Iterator[None]:
    """Raise a failure of expression ``text`` inside as the :class:`ExpressionError` of
    :func:`_failure`; calibrew's own errors and the file readers' pass as they are."""
    try:
        yield
    except ExpressionError:
        raise
    except Exception as err:
        if raised_by_reader(err):
            raise
        raise _failure(where, text, err, namespace, definitions, used_by) from (
            None if isinstance(err, (NameError, AttributeError)) else err)


def _failure(where: str, text: str, err: Exception, namespace: _EventNamespace,
             definitions: Sequence[str] = (), used_by: str | None = None) -> ExpressionError:
    """The error of expression ``text`` (config key ``where``) failing with ``err``."""
    if isinstance(err, NameError):
        name = getattr(err, "name", None) or str(err)
        close = difflib.get_close_matches(str(name), namespace.fields, n=3)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        detail = (f"no collection, column or definition {name!r} in the events{hint} "
                  f"(available: {_summary(namespace.fields)})")
    elif isinstance(err, AttributeError):
        field = getattr(err, "name", None)
        detail = f"no field {field!r} in the events" if field else str(err)
    else:
        detail = f"{type(err).__name__}: {err}"
    through = f" (through definitions {', '.join(definitions)})" if definitions else ""
    by = f" (used by {used_by})" if used_by else ""
    return ExpressionError(f"{where}: cannot evaluate {text!r}{through}{by}: {detail}")


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

    def start(self, variation: str, changed: set[str] | None, events: Any = None) -> None:
        """Begin ``variation`` (``"nominal"`` first) that changed ``changed``; ``events``,
        its calibrated events, lets it reuse the nominal values of definitions too."""
        begin_variation(events, variation, changed)
        self.is_nominal = variation == "nominal"
        self.changed = changed
        self.current = {}

    def evaluate(self, expression: Any, events: Any, key: str | None = None,
                 also_reads: frozenset[str] | None = frozenset()) -> Any:
        """``expression.evaluate(events)``, computed at most once per variation.

        ``key`` (default: the expression's text) names the value: another one for another
        ``events`` (a subset of the variation's events, which reads ``also_reads`` through
        the mask that made it; ``None``: unknown)."""
        key = expression.text if key is None else key
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
                entry = (_cut_value(expression, events),
                         None if depends is None else frozenset(depends))
            if also_reads is None or entry[1] is None:
                entry = (entry[0], None)
            elif also_reads:
                entry = (entry[0], entry[1] | also_reads)
            if self.is_nominal:
                self.nominal[key] = entry
        self.current[key] = entry
        return entry[0]

    def reads(self, expressions: Iterable[Any]) -> frozenset[str] | None:
        """What the ``expressions`` evaluated in this variation read (``None``: unknown)."""
        out: set[str] = set()
        for expression in expressions:
            entry = self.current.get(expression.text)
            if entry is None or entry[1] is None:
                return None
            out |= entry[1]
        return frozenset(out)


def _cut_value(cut: Any, events: Any) -> Any:
    """``cut.evaluate(events)``; a cut class's failure is an :class:`ExpressionError` naming
    the cut's config key (an error of the file reader passes unchanged)."""
    try:
        return cut.evaluate(events)
    except CalibrewError:
        raise
    except Exception as err:
        if raised_by_reader(err):
            raise
        raise ExpressionError(f"{cut.where}: cut {cut.text!r} ({type(cut).__module__}:"
                              f"{type(cut).__qualname__}) failed: {type(err).__name__}: "
                              f"{err}") from err


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
        value = _cut_value(cut, events) if cache is None else cache.evaluate(cut, events)
        selected = selected & event_mask(value, cut)
        steps.append((name, selected))
    return steps
