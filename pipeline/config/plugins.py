"""Registries of what a config names: calibrators, weights, cuts, expression functions.

Every kind has one :class:`Registry`, a read-only mapping from a name to a class or a
function, and the same rules:

- it is filled by its base class's ``__init_subclass__`` (``REGISTRY[cls.name] = cls``) or by
  the decorator :meth:`Registry.register`;
- a name defined twice is a :class:`NameClashError` naming both definitions (a class
  re-created by cloudpickle, with the same module and qualified name, is the same one);
- a name the registry does not hold is looked up among the package entry points of its
  group (``calibrew.calibrators``, ``calibrew.weights``, ``calibrew.cuts``,
  ``calibrew.functions``): a plugin (the recipes, or another installed package) is
  imported when a config names it, never by the core;
- a user's own object is named by import path, ``"my_module:MyThing"``
  (:meth:`Registry.resolve`); a module that cannot be loaded raises an
  :class:`ImportPathError` saying which of four ways it failed.

Examples
--------
>>> SHAPES = Registry("shape", "calibrew.doc_shapes")
>>> @SHAPES.register
... def square(x):
...     return x * x
>>> SHAPES["square"](3), list(SHAPES)
(9, ['square'])
>>> SHAPES.resolve("circle")
Traceback (most recent call last):
...
pipeline.errors.UnknownNameError: unknown shape 'circle'; valid shapes are: square
"""

from __future__ import annotations

import importlib
import inspect
import os
import traceback
from collections.abc import Callable, Iterator, Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Generic, TypeVar

from pipeline.errors import CalibrewError, UnknownNameError

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

#: Said of every import path: the client and every worker import the module.
IMPORTABLE_HINT = ("a module named by import path must be importable by the client and by "
                   "every worker: put its folder on PYTHONPATH or install it as a package")


class NameClashError(CalibrewError):
    """Two definitions of the same name in one registry; the message names both."""


class ImportPathError(CalibrewError):
    """An object named by import path (``"module:Name"``) cannot be loaded.

    ``where`` is the config key path that names it, ``problem`` says why: the module is not
    found, the module raised while importing (with its error and line), the module has no
    such attribute (the ones there are listed), or the attribute is of the wrong kind.
    """

    def __init__(self, kind: str, name: str, problem: str, where: str = "") -> None:
        self.kind, self.name, self.problem, self.where = kind, name, problem, where
        super().__init__(f"{where + ': ' if where else ''}cannot load {kind} {name!r}: "
                         f"{problem}")

    def __reduce__(self) -> tuple[Any, ...]:  # pickled (to and from workers) whole
        return (type(self), (self.kind, self.name, self.problem, self.where), self.__dict__)


def definition(obj: Any) -> str:
    """``module.qualname`` of ``obj``, with ``(file:line)`` where the source is known.

    Examples
    --------
    >>> definition(definition).startswith("pipeline.config.plugins.definition (")
    True
    """
    text = f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
    try:
        file = inspect.getsourcefile(obj)
        line = inspect.getsourcelines(obj)[1]
    except (OSError, TypeError):
        return text
    return f"{text} ({file}:{line})"


def _path(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '')}:{getattr(obj, '__qualname__', '')}"


class Registry(Mapping[str, T], Generic[T]):
    """The objects of one kind by name: registered ones, then the group's entry points.

    Parameters
    ----------
    kind
        What the objects are, for messages (``"calibrator"``, ``"weight"``...).
    group
        The entry-point group of plugins (``"calibrew.calibrators"``).
    base
        The class every object subclasses; ``None``: every object is callable.

    Iterating gives every name, also those of entry points not loaded yet; looking one of
    these up imports its module. An unknown name raises
    :class:`~pipeline.errors.UnknownNameError` (a ``KeyError``) listing the valid names.
    """

    def __init__(self, kind: str, group: str, base: type | None = None) -> None:
        self.kind, self.group, self.base = kind, group, base
        self._items: dict[str, T] = {}
        self._declared: dict[str, EntryPoint] | None = None

    # --- filling -----------------------------------------------------------------------

    def __setitem__(self, name: str, obj: T) -> None:
        """Register ``obj`` as ``name``; another definition of ``name`` is an error."""
        existing = self._items.get(name)
        if existing is None:
            declared = self.entry_points().get(name)
            if declared is not None and f"{declared.module}:{declared.attr}" != _path(obj):
                raise NameClashError(
                    f"{self.kind} name {name!r} is already used by {declared.module}."
                    f"{declared.attr} (entry point {declared.value!r} of group "
                    f"{self.group}); choose another name for {definition(obj)}")
        elif existing is not obj and _path(existing) != _path(obj):
            raise NameClashError(
                f"{self.kind} name {name!r} is already used by {definition(existing)}; "
                f"choose another name for {definition(obj)}")
        self._items[name] = obj

    def register(self, obj: F) -> F:
        """Decorator: register a function under its ``__name__``.

        Examples
        --------
        >>> TOOLS = Registry("tool", "calibrew.doc_tools")
        >>> @TOOLS.register
        ... def hammer():
        ...     return "bang"
        >>> @TOOLS.register
        ... def other():
        ...     pass
        >>> other.__name__ = "hammer"
        >>> TOOLS.register(other)
        Traceback (most recent call last):
        ...
        pipeline.config.plugins.NameClashError: tool name 'hammer' is already used by ...
        """
        self[obj.__name__] = obj  # type: ignore[assignment]
        return obj

    # --- lookup ------------------------------------------------------------------------

    def entry_points(self) -> dict[str, EntryPoint]:
        """The group's entry points by name (read once)."""
        if self._declared is None:
            found: dict[str, EntryPoint] = {}
            for point in entry_points(group=self.group):
                other = found.get(point.name)
                if other is not None and other.value != point.value:
                    raise NameClashError(
                        f"{self.kind} name {point.name!r} is declared by two entry points "
                        f"of group {self.group}: {other.value!r} and {point.value!r}")
                found[point.name] = point
            self._declared = found
        return self._declared

    def __getitem__(self, name: str) -> T:
        return self._lookup(name, "")

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self.entry_points()

    def __iter__(self) -> Iterator[str]:
        return iter(sorted({*self._items, *self.entry_points()}))

    def __len__(self) -> int:
        return len({*self._items, *self.entry_points()})

    def resolve(self, name: str, where: str = "") -> T:
        """The object registered as ``name``, or named by import path ``"module:Name"``.

        ``where`` (the config key path) prefixes the messages of
        :class:`~pipeline.errors.UnknownNameError` and :class:`ImportPathError`.
        """
        if ":" in name:
            return self.load(name, where)
        return self._lookup(name, where)

    def _lookup(self, name: str, where: str) -> T:
        obj = self._items.get(name)
        if obj is not None:
            return obj
        point = self.entry_points().get(name)
        if point is None:
            raise UnknownNameError(self.kind, name, self, where)
        obj = self.load(f"{point.module}:{point.attr}",
                        where or f"entry point {name!r} of group {self.group}")
        if name not in self._items:  # a class registers itself when its module is imported
            other = next((k for k, v in self._items.items() if v is obj), None)
            if other is not None:
                raise NameClashError(
                    f"entry point {name!r} of group {self.group} names {definition(obj)}, "
                    f"which is registered as {other!r}: the two names must be the same")
            self[name] = obj
        return self._items[name]

    # --- import paths ------------------------------------------------------------------

    def accepts(self, obj: Any) -> bool:
        """Whether ``obj`` is of this registry's kind."""
        if self.base is None:
            return callable(obj) and not isinstance(obj, type)
        return isinstance(obj, type) and issubclass(obj, self.base) and obj is not self.base

    def load(self, path: str, where: str = "") -> T:
        """Import ``"module:Name"``; any failure says which of the four ways it failed.

        Examples
        --------
        >>> try:
        ...     Registry("tool", "calibrew.doc_tools").load("calibrew_no_such_module:f")
        ... except ImportPathError as err:
        ...     print(err.problem.split(";")[0])
        module 'calibrew_no_such_module' not found
        """
        module_name, _, attr = path.partition(":")
        if not module_name or not attr or ":" in attr:
            raise ImportPathError(self.kind, path, "an import path is written 'module:Name' "
                                  "(e.g. 'my_package.calibrators:ScaleJets')", where)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            missing = err.name or ""
            if missing and (module_name == missing or module_name.startswith(missing + ".")):
                raise ImportPathError(
                    self.kind, path, f"module {module_name!r} not found"
                    + (f" (no module {missing!r})" if missing != module_name else "")
                    + f"; {IMPORTABLE_HINT}", where) from None
            raise self._raised(path, module_name, err, where) from None
        except Exception as err:  # anything the user's module raises at import time
            raise self._raised(path, module_name, err, where) from None
        origin = getattr(module, "__file__", None) or module_name
        if not hasattr(module, attr):
            found = sorted(k for k, v in vars(module).items()
                           if self.accepts(v) and getattr(v, "__module__", "") == module_name)
            raise ImportPathError(
                self.kind, path, f"module {module_name!r} ({origin}) has no attribute "
                f"{attr!r}; {self.kind}s defined there: {', '.join(found) or '(none)'}",
                where)
        obj = getattr(module, attr)
        if not self.accepts(obj):
            expected = "a function" if self.base is None else f"a {self.base.__name__} subclass"
            raise ImportPathError(
                self.kind, path, f"{attr!r} of module {module_name!r} ({origin}) is not "
                f"{expected}", where)
        return obj

    def _raised(self, path: str, module_name: str, err: BaseException,
                where: str) -> ImportPathError:
        """The error for a module that raised while importing, with the user's line."""
        if isinstance(err, SyntaxError):
            detail = f"{err.msg} ({err.filename}, line {err.lineno})"
        else:
            detail = f"{err}{_import_location(err)}"
        return ImportPathError(self.kind, path, f"module {module_name!r} raised while "
                               f"importing: {type(err).__name__}: {detail}", where)


def _import_location(err: BaseException) -> str:
    """``" (at FILE, line N)"``: where in the user's code an import raised."""
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if not f.filename.startswith("<frozen importlib")
              and f"{os.sep}importlib{os.sep}" not in f.filename and f.filename != __file__]
    if not frames:
        return ""
    first, last = frames[0], frames[-1]
    where = f" (at {first.filename}, line {first.lineno}"
    if (last.filename, last.lineno) != (first.filename, first.lineno):
        where += f"; raised at {last.filename}, line {last.lineno}"
    return where + ")"


__all__ = ["ImportPathError", "NameClashError", "Registry", "definition"]
