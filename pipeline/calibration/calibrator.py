"""The :class:`Calibrator` base class and the calibrator registry.

The contract is the one of seed 000 (PocketCoffea's calibrator API): class attributes
``name``, ``has_variations``, ``isMC_only``, ``calibrated_collections``; a constructor
``__init__(params, metadata, **kwargs)``; ``initialize(events)`` once per chunk, which sets
``self._variations``; and ``calibrate(events, events_original_collections, variation,
already_applied_calibrators)`` returning ``{"Collection.field": array}``.

calibrew adds one optional class attribute, ``columns_read``: documentation of the input
columns. Column projection itself is automatic (dask-awkward traces what is used).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

from pipeline.errors import CalibrationError, UnknownNameError

#: Every calibrator class defined so far, by its ``name``. A plain dict users may extend.
CALIBRATORS: dict[str, type[Calibrator]] = {}


class Calibrator(ABC):
    """Base class of every calibrator.

    Subclasses set the class attributes and implement :meth:`initialize` and
    :meth:`calibrate`. Defining a subclass registers it under its ``name``.

    Examples
    --------
    >>> class Scale(Calibrator):
    ...     name = "doc_scale_example"
    ...     calibrated_collections = ["Jet.pt"]
    ...     def initialize(self, events):
    ...         self._variations = []
    ...     def calibrate(self, events, orig_colls, variation, already_applied_calibrators=None):
    ...         return {"Jet.pt": events["Jet"].pt * 1.01}
    >>> CALIBRATORS["doc_scale_example"] is Scale
    True
    """

    name: ClassVar[str] = ""
    has_variations: ClassVar[bool] = False
    isMC_only: ClassVar[bool] = False
    calibrated_collections: ClassVar[list[str]] = []
    #: Input columns the calibrator reads (documentation; projection is traced).
    columns_read: ClassVar[list[str]] = []
    #: The top-level parameters section the calibrator reads (``""``: none of its own).
    #: A parameter file may hold a section only if the defaults have it or a calibrator
    #: of the config's sequence declares it here (or in ``params_sections``).
    params_section: ClassVar[str] = ""
    #: Further top-level parameters sections the calibrator reads.
    params_sections: ClassVar[list[str]] = []
    #: A pydantic model of the ``params_section``, validated when parameters are loaded
    #: (``None``: the section is free-form until the calibrator reads it).
    params_schema: ClassVar[type[Any] | None] = None

    _variations: list[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("name"):
            # abstract intermediate classes, or a class re-created by cloudpickle
            return
        existing = CALIBRATORS.get(cls.name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise CalibrationError(
                f"calibrator name {cls.name!r} is already used by "
                f"{existing.__module__}.{existing.__qualname__}; choose another name for "
                f"{cls.__module__}.{cls.__qualname__}"
            )
        for section in cls.parameter_sections():
            if not isinstance(section, str) or not section.isidentifier():
                raise CalibrationError(
                    f"calibrator {cls.name!r}: params_section(s) entry {section!r} must be "
                    "a top-level parameters section name (an identifier)"
                )
        for col in cls.calibrated_collections:
            if not isinstance(col, str) or col.count(".") > 1 or not col.strip("."):
                raise CalibrationError(
                    f"calibrator {cls.name!r}: calibrated_collections entry {col!r} must be "
                    "'Collection' or 'Collection.field'"
                )
        CALIBRATORS[cls.name] = cls

    def __init__(
        self,
        params: Any = None,
        metadata: Mapping[str, Any] | None = None,
        do_variations: bool = True,
        **kwargs: Any,
    ) -> None:
        self.params = params
        self.metadata: Mapping[str, Any] = dict(metadata or {})
        self.do_variations = do_variations
        self.kwargs = kwargs
        self._variations = []

    @classmethod
    def parameter_sections(cls) -> list[str]:
        """The top-level parameters sections this calibrator declares it reads.

        Examples
        --------
        >>> get_calibrator("met_rescaling").parameter_sections()
        ['met_rescaling']
        """
        first = [cls.params_section] if cls.params_section else []
        return first + [s for s in cls.params_sections if s != cls.params_section]

    # Read-only conveniences used by calibrators (seed 000 uses ``self.isMC``).
    @property
    def isMC(self) -> bool:
        """Whether the events are simulation (``metadata["isMC"]``)."""
        return bool(self.metadata.get("isMC", False))

    @property
    def year(self) -> str:
        """The data-taking period label (``metadata["year"]``), e.g. ``"2022_preEE"``."""
        return str(self.metadata.get("year", ""))

    @property
    def variations(self) -> list[str]:
        """The variations this calibrator provides for the current chunk."""
        return list(self._variations)

    def reordered_collections(self) -> set[str]:
        """Collections whose objects this calibrator may put in another order (by variation).

        Feature tables follow objects taken from such a collection across variations by
        their ``original_index`` field (not by position). The default: none.
        """
        return set()

    def initialize(self, events: Any) -> None:
        """Prepare per-chunk data and set ``self._variations`` (both Up and Down).

        Called once per chunk, on the events before any calibrator ran. The default
        declares no variations.
        """
        self._variations = []

    @abstractmethod
    def calibrate(
        self,
        events: Any,
        events_original_collections: Mapping[str, Any],
        variation: str,
        already_applied_calibrators: list[str] | None = None,
    ) -> dict[str, Any]:
        """Return the calibrated columns, ``{"Collection.field": array}``, for ``variation``.

        Called for every variation, also those of other calibrators: return the nominal
        calibration then. Never modify ``events`` in place.
        """


class CalibratorImportError(CalibrationError):
    """A calibrator named by import path (``"module:Class"``) cannot be loaded.

    ``where`` is the config key path that names it, ``problem`` says why: the module is not
    found, the module raised while importing (with its error and line), the module has no
    such attribute, or the attribute is not a :class:`Calibrator`.
    """

    def __init__(self, name: str, problem: str, where: str = "") -> None:
        self.name, self.problem, self.where = name, problem, where
        super().__init__(f"{where + ': ' if where else ''}cannot load calibrator {name!r}: "
                         f"{problem}")


#: Said of every import path: the client and every worker import the module.
IMPORTABLE_HINT = ("a module named by import path must be importable by the client and by "
                   "every worker: put its folder on PYTHONPATH or install it as a package")


def _import_location(err: BaseException) -> str:
    """``" (at FILE, line N)"``: where in the user's code an import raised."""
    import traceback

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


def _import_calibrator(name: str, where: str) -> type[Calibrator]:
    """Import ``"module:Class"``; any failure says which of the four ways it failed."""
    import importlib

    module_name, _, attr = name.partition(":")
    if not module_name or not attr or ":" in attr:
        raise CalibratorImportError(name, "an import path is written 'module:Class' (e.g. "
                                    "'my_package.calibrators:ScaleJets')", where)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        missing = err.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise CalibratorImportError(
                name, f"module {module_name!r} not found"
                + (f" (no module {missing!r})" if missing != module_name else "")
                + f"; {IMPORTABLE_HINT}", where) from None
        raise CalibratorImportError(
            name, f"module {module_name!r} raised while importing: "
            f"{type(err).__name__}: {err}{_import_location(err)}", where) from None
    except SyntaxError as err:
        raise CalibratorImportError(
            name, f"module {module_name!r} raised while importing: "
            f"{type(err).__name__}: {err.msg} ({err.filename}, line {err.lineno})",
            where) from None
    except Exception as err:  # anything the user's module raises at import time
        raise CalibratorImportError(
            name, f"module {module_name!r} raised while importing: "
            f"{type(err).__name__}: {err}{_import_location(err)}", where) from None
    origin = getattr(module, "__file__", None) or module_name
    if not hasattr(module, attr):
        found = sorted(k for k, v in vars(module).items()
                       if isinstance(v, type) and issubclass(v, Calibrator)
                       and v is not Calibrator and v.__module__ == module.__name__)
        raise CalibratorImportError(
            name, f"module {module_name!r} ({origin}) has no attribute {attr!r}; calibrators "
            f"defined there: {', '.join(found) if found else '(none)'}", where)
    cls = getattr(module, attr)
    if not (isinstance(cls, type) and issubclass(cls, Calibrator)):
        raise CalibratorImportError(
            name, f"{attr!r} of module {module_name!r} ({origin}) is not a Calibrator "
            "subclass", where)
    return cls


def get_calibrator(name: str, where: str = "") -> type[Calibrator]:
    """Look a calibrator class up by name, or by import path ``"module:Class"``.

    An import path that cannot be loaded raises :class:`CalibratorImportError` saying
    whether the module was not found, raised while importing (its error and line), or
    lacks the attribute.

    Examples
    --------
    >>> get_calibrator("nope")
    Traceback (most recent call last):
    ...
    pipeline.errors.UnknownNameError: unknown calibrator 'nope'; valid calibrators are: ...
    >>> try:
    ...     get_calibrator("calibrew_no_such_module:Cal")
    ... except CalibratorImportError as err:
    ...     print(err.problem.split(";")[0])
    module 'calibrew_no_such_module' not found
    """
    if ":" in name:
        return _import_calibrator(name, where)
    load_builtin_calibrators()
    if name not in CALIBRATORS:
        raise UnknownNameError("calibrator", name, CALIBRATORS, where)
    return CALIBRATORS[name]


def load_builtin_calibrators() -> None:
    import pipeline.calibration.builtin
    import pipeline.recipes.egamma
    import pipeline.recipes.higgsml_calibrators  # noqa: F401
