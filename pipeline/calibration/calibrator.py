"""The :class:`Calibrator` base class and the calibrator registry.

The contract is the one of seed 000 (PocketCoffea's calibrator API): class attributes
``name``, ``has_variations``, ``isMC_only``, ``calibrated_collections``; a constructor
``__init__(params, metadata, **kwargs)``; ``initialize(events)`` once per chunk, which sets
``self._variations``; and ``calibrate(events, events_original_collections, variation,
already_applied_calibrators)`` returning ``{"Collection.field": array}``.

calibrew adds optional class attributes: ``columns_read``, documentation of the input
columns (column projection itself is automatic: dask-awkward traces what is used), and
``one_sided``, the sources whose only variation is ``{source}Up`` (the results mirror it).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

from pipeline.config.plugins import Registry
from pipeline.errors import CalibrationError
from pipeline.variations import check_one_sided


class Calibrator(ABC):
    """Base class of every calibrator.

    Subclasses set the class attributes and implement :meth:`initialize` and
    :meth:`calibrate`. Defining a subclass registers it in :data:`CALIBRATORS` under its
    ``name``; another class of the same name is a
    :class:`~pipeline.config.plugins.NameClashError` naming both.

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
    #: Sources varied one way only: ``{source}Up`` is their variation, without a
    #: ``{source}Down`` (a ``{source}Down`` still listed is never calibrated); the results
    #: mirror the ``Up`` around the nominal. E.g. ``one_sided = ("topPt",)``.
    one_sided: ClassVar[tuple[str, ...]] = ()

    _variations: list[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("name"):  # an abstract intermediate class
            return
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
        check_one_sided("calibrator", cls.name, cls.one_sided)
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
        """Prepare per-chunk data and set ``self._variations`` (both Up and Down, or the Up
        alone of a source declared in ``one_sided``).

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


#: Every calibrator class by its ``name``: those defined so far (the built-in ones of
#: :mod:`pipeline.calibration` are always there), then the ``calibrew.calibrators`` entry
#: points (the recipes' calibrators).
CALIBRATORS: Registry[type[Calibrator]] = Registry("calibrator", "calibrew.calibrators",
                                                   Calibrator)


def get_calibrator(name: str, where: str = "") -> type[Calibrator]:
    """Look a calibrator class up by name, or by import path ``"module:Class"``.

    An import path that cannot be loaded raises
    :class:`~pipeline.config.plugins.ImportPathError` saying whether the module was not
    found, raised while importing (its error and line), lacks the attribute, or holds no
    calibrator there.

    Examples
    --------
    >>> get_calibrator("jet_calibration").__name__
    'JetsCalibrator'
    >>> get_calibrator("nope")
    Traceback (most recent call last):
    ...
    pipeline.errors.UnknownNameError: unknown calibrator 'nope'; valid calibrators are: ...
    """
    return CALIBRATORS.resolve(name, where)
