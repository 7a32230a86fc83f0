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

        Feature tables match object rows across variations by position, so they refuse
        objects taken from such a collection. The default: none.
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


def get_calibrator(name: str, where: str = "") -> type[Calibrator]:
    """Look a calibrator class up by name, or by import path ``"module:Class"``.

    Examples
    --------
    >>> get_calibrator("nope")
    Traceback (most recent call last):
    ...
    pipeline.errors.UnknownNameError: unknown calibrator 'nope'; valid calibrators are: ...
    """
    if ":" in name:
        import importlib

        module_name, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise UnknownNameError("calibrator", name, CALIBRATORS, where) from err
        if not (isinstance(cls, type) and issubclass(cls, Calibrator)):
            raise CalibrationError(f"{where + ': ' if where else ''}{name} is not a Calibrator")
        return cls
    _load_builtins()
    if name not in CALIBRATORS:
        raise UnknownNameError("calibrator", name, CALIBRATORS, where)
    return CALIBRATORS[name]


def _load_builtins() -> None:
    import pipeline.calibration.builtin
    import pipeline.recipes.egamma
    import pipeline.recipes.higgsml_calibrators  # noqa: F401
