"""The :class:`CalibratorsManager`: applies a calibrator sequence for each variation."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from pipeline.calibration.calibrator import Calibrator
from pipeline.calibration.columns import check_structure, get_column, has_column, with_columns
from pipeline.errors import CalibrationError, UnknownNameError, plugin_call
from pipeline.variations import (
    NOMINAL,
    validate_variation_names,
    without_one_sided_downs,
)


@contextlib.contextmanager
def calibrator_call(cls: type, stage: str, variation: str | None = None) -> Iterator[None]:
    """Run a call into calibrator ``cls`` (its constructor, ``initialize`` or ``calibrate``);
    an error that is not calibrew's own is raised as :class:`CalibrationError` naming the
    calibrator, the stage, the variation and the column or line at fault. An error raised
    inside a file reader (the input cannot be read) passes unchanged."""
    name = getattr(cls, "name", cls.__name__)
    with plugin_call(CalibrationError, f"calibrator {name!r}", cls, stage, variation):
        yield


def calibrator_enabled(params: Any, name: str, period: str) -> bool:
    """Whether calibrator ``name`` runs for ``period`` per ``params.calibrators_enabled``.

    The parameters may hold ``calibrators_enabled: {<calibrator>: {<period>: bool}}``;
    a calibrator or period not listed is enabled.
    """
    if params is None:
        return True
    try:
        table = params["calibrators_enabled"]
    except (KeyError, TypeError, AttributeError):
        return True
    if table is None or name not in table:
        return True
    per_period = table[name]
    if isinstance(per_period, bool):
        return per_period
    return bool(per_period.get(period, True))


class OriginalCollections(Mapping[str, Any]):
    """The calibrated collections and fields of ``events`` before calibration, fetched from
    ``events`` on first use and then kept.

    The keys are those of ``keys`` (``"Jet"`` or ``"Jet.pt"``) that ``events`` has, plus the
    collection of each field. A key is read only when a calibrator asks for it, so a lazy
    trace records, and an eager chunk then reads, only the columns the calibrators use: a
    declared collection that the configuration leaves out (``FatJet`` with AK4 jets alone) is
    never touched. ``events`` is not modified by calibration, so a value fetched late is the
    value it had at the start.

    Examples
    --------
    >>> import awkward as ak
    >>> ev = ak.Array([{"Jet": [{"pt": 1.0}]}])
    >>> original = OriginalCollections(ev, ["Jet.pt", "FatJet.pt"])
    >>> list(original), original["Jet.pt"].tolist()
    (['Jet', 'Jet.pt'], [[1.0]])
    """

    def __init__(self, events: Any, keys: Iterable[str]) -> None:
        self._events = events
        self._values: dict[str, Any] = {}
        self._keys: list[str] = []
        for key in keys:
            collection = key.split(".")[0]
            if collection not in self._keys and has_column(events, collection):
                self._keys.append(collection)
            if "." in key and key not in self._keys and has_column(events, key):
                self._keys.append(key)

    def __getitem__(self, key: str) -> Any:
        if key not in self._values:
            if key not in self._keys:
                raise KeyError(key)
            self._values[key] = get_column(self._events, key)
        return self._values[key]

    def __contains__(self, key: object) -> bool:
        return key in self._keys  # without fetching the column

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


class CalibratorsManager:
    """Apply a sequence of calibrators to events, once per systematic variation.

    Each calibrator's variation names are checked
    (:func:`pipeline.variations.validate_variation_names`); of a source it declares in
    ``one_sided``, the ``Up`` alone runs (a ``Down`` it lists too is dropped: never
    calibrated).

    Parameters
    ----------
    calibrators
        Calibrator classes, applied in this order.
    events
        The events of the chunk (eager awkward or lazy dask-awkward NanoEvents). Each
        calibrator's ``initialize`` sees these, before any calibration.
    params
        Parameters (``pipeline.config.parameters.defaults()`` merged with the user's YAML).
    metadata
        Dataset metadata: ``isMC``, ``year`` (period label), ``era``, ``sample``, ``dataset``.
    requested_calibrator_variations
        Names of the calibrators whose variations will be asked for; the others are built
        with ``do_variations=False``. None builds every calibrator with variations.
    **kwargs
        Passed on to every calibrator constructor.

    Examples
    --------
    >>> import awkward as ak
    >>> from pipeline.calibration import Calibrator
    >>> class Twice(Calibrator):
    ...     name = "doc_twice"
    ...     has_variations = True
    ...     calibrated_collections = ["Jet.pt"]
    ...     def initialize(self, events):
    ...         self._variations = ["twiceUp", "twiceDown"]
    ...     def calibrate(self, events, orig, variation, already_applied_calibrators=None):
    ...         f = {"twiceUp": 2.2, "twiceDown": 1.8}.get(variation, 2.0)
    ...         return {"Jet.pt": orig["Jet.pt"] * f}
    >>> events = ak.Array([{"Jet": [{"pt": 10.0}]}])
    >>> manager = CalibratorsManager([Twice], events, None, {"isMC": True})
    >>> [(v, ev.Jet.pt.tolist()) for v, ev in manager.calibration_loop(
    ...     events, variations_for_calibrators=["doc_twice"])]
    [('nominal', [[20.0]]), ('twiceUp', [[22.0]]), ('twiceDown', [[18.0]])]
    """

    def __init__(
        self,
        calibrators: Sequence[type[Calibrator]],
        events: Any,
        params: Any,
        metadata: Mapping[str, Any] | None = None,
        requested_calibrator_variations: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        self.metadata = dict(metadata or {})
        is_mc = bool(self.metadata.get("isMC", False))
        period = str(self.metadata.get("year", ""))
        self.calibrator_sequence: list[Calibrator] = []
        self.skipped: dict[str, str] = {}
        self.available_variations: list[str] = [NOMINAL]
        self.available_variations_bycalibrator: dict[str, list[str]] = {}
        self.calibrated_collections: dict[str, list[str]] = {}
        names = [c.name for c in calibrators]
        for cls in calibrators:
            if not (isinstance(cls, type) and issubclass(cls, Calibrator)):
                raise CalibrationError(f"{cls!r} in the calibrator sequence is not a Calibrator")
            if names.count(cls.name) > 1:
                raise CalibrationError(f"calibrator {cls.name!r} appears twice in the sequence")
        for cls in calibrators:
            if cls.isMC_only and not is_mc:
                self.skipped[cls.name] = "MC only"
                continue
            if not calibrator_enabled(params, cls.name, period):
                self.skipped[cls.name] = f"disabled for period {period!r} in the parameters"
                continue
            do_variations = (
                requested_calibrator_variations is None
                or cls.name in requested_calibrator_variations
            )
            with calibrator_call(cls, "__init__"):
                calibrator = cls(params, self.metadata, do_variations=do_variations, **kwargs)
            with calibrator_call(cls, "initialize"):
                calibrator.initialize(events)
            self.calibrator_sequence.append(calibrator)
            for col in cls.calibrated_collections:
                self.calibrated_collections.setdefault(col, []).append(cls.name)
            variations = list(getattr(calibrator, "_variations", []) or [])
            if variations and not cls.has_variations:
                raise CalibrationError(
                    f"calibrator {cls.name!r} sets variations {variations} but declares "
                    "has_variations = False"
                )
            validate_variation_names("calibrator", cls.name, variations, cls.one_sided)
            variations = without_one_sided_downs(variations, cls.one_sided)
            own = [v for v in variations if v not in self.available_variations]
            self.available_variations += own
            self.available_variations_bycalibrator[cls.name] = variations
        self._sequence_names = names
        self._nominal_outputs: dict[str, Mapping[str, Any]] = {}
        self._nominal_events: list[Any] = []
        self._changed: dict[str, set[str]] = {}
        self.original_collections = self._original_collections(events)

    @property
    def calibrators(self) -> list[str]:
        """Names of the calibrators that run, in order."""
        return [c.name for c in self.calibrator_sequence]

    def _original_collections(self, events: Any) -> Mapping[str, Any]:
        """The collections and fields the sequence calibrates, as they are before it runs
        (fetched on first use: see :class:`OriginalCollections`)."""
        return OriginalCollections(events, self.calibrated_collections)

    def get_available_variations(self, calibrator_name: str | None = None) -> list[str]:
        """All variations (with ``"nominal"``), or those of one calibrator."""
        if calibrator_name is None:
            return list(self.available_variations)
        return list(self.available_variations_bycalibrator.get(calibrator_name, []))

    def variations_to_run(
        self,
        variations_for_calibrators: Sequence[str] | None = None,
        variations: Sequence[str] | None = None,
    ) -> list[str]:
        """The ordered variation list ``calibration_loop`` yields, ``"nominal"`` first."""
        out = [NOMINAL]
        for name in variations_for_calibrators or []:
            if name not in self._sequence_names:
                raise UnknownNameError(
                    "calibrator", name, self._sequence_names,
                    "variations_for_calibrators (calibrators in the sequence)",
                )
            out += [v for v in self.get_available_variations(name) if v not in out]
        for var in variations or []:
            if var not in self.available_variations:
                raise UnknownNameError("variation", var, self.available_variations)
            if var not in out:
                out.append(var)
        return out

    def calibrate(self, events: Any, variation: str) -> Any:
        """Apply the whole sequence for one variation; return new calibrated events.

        After the nominal, a calibrator that returns the nominal's very arrays changes
        nothing: while no calibrator before it changed anything, the variation goes on from
        the nominal's events after it; else only its collections are taken from there when
        no calibrator before it changed them (no structure check and no rebuild of the
        columns in either case).
        """
        if variation not in self.available_variations:
            raise UnknownNameError("variation", variation, self.available_variations)
        if variation == NOMINAL:
            self._nominal_events = []
        applied: list[str] = []
        changed: set[str] = set()
        for position, calibrator in enumerate(self.calibrator_sequence):
            with calibrator_call(type(calibrator), "calibrate", variation):
                columns = calibrator.calibrate(
                    events, self.original_collections, variation,
                    already_applied_calibrators=list(applied),
                )
            if not isinstance(columns, Mapping):
                raise CalibrationError(
                    f"calibrator {calibrator.name!r} returned {type(columns).__name__}; "
                    "calibrate() must return a dict {'Collection.field': array}"
                )
            own_changes = self._changed_keys(calibrator.name, variation, columns)
            reuse = (variation != NOMINAL and not own_changes
                     and set(columns) == set(self._nominal_outputs.get(calibrator.name, ())))
            events = self._apply(calibrator, columns, events, position, reuse, changed)
            if variation == NOMINAL:
                self._nominal_events.append(events)
            applied.append(calibrator.name)
            changed |= own_changes
        self._changed[variation] = {key.split(".")[0] for key in changed}
        return events

    def _apply(self, calibrator: Calibrator, columns: Mapping[str, Any], events: Any,
               position: int, reuse: bool, changed: set[str]) -> Any:
        """``events`` with the calibrator's ``columns`` set, checked. With ``reuse`` (the
        columns are the nominal's very arrays) they are taken from the nominal's events
        after this calibrator where nothing they depend on changed (``changed``: the columns
        the calibrators before it changed in this variation)."""
        for key in columns:
            if not isinstance(key, str) or key not in calibrator.calibrated_collections:
                raise CalibrationError(
                    f"calibrator {calibrator.name!r} returned column {key!r}, which it "
                    f"does not declare in calibrated_collections "
                    f"{list(calibrator.calibrated_collections)}"
                )
        if reuse and position < len(self._nominal_events):
            nominal = self._nominal_events[position]
            if not changed:
                return nominal
            touched = {key.split(".")[0] for key in columns}
            if not touched & {key.split(".")[0] for key in changed}:
                return with_columns(events, {c: get_column(nominal, c) for c in touched})
        for key, value in columns.items():
            old = get_column(events, key) if has_column(events, key) else None
            check_structure(calibrator.name, key, old, value)
        return with_columns(events, dict(columns))

    def _changed_keys(self, name: str, variation: str, columns: Mapping[str, Any]) -> set[str]:
        """Columns whose array is not the very object the calibrator returned at nominal."""
        if variation == NOMINAL:
            self._nominal_outputs[name] = dict(columns)
            return set()
        nominal = self._nominal_outputs.get(name)
        if nominal is None:
            return set(columns)
        return {key for key, value in columns.items() if nominal.get(key) is not value}

    def changed_collections(self, variation: str) -> set[str] | None:
        """Collections that may differ from the nominal in ``variation`` (after it ran).

        A calibrator that returns, for a variation, the same array objects as for the
        nominal (it computed them once per chunk) changed nothing; any other returned
        column counts as changed. None when unknown (the nominal or the variation has not
        been calibrated yet by this manager).
        """
        if variation == NOMINAL:
            return set()
        return self._changed.get(variation) if NOMINAL in self._changed else None

    def calibration_loop(
        self,
        events: Any,
        variations_for_calibrators: Sequence[str] | None = None,
        variations: Sequence[str] | None = None,
    ) -> Iterator[tuple[str, Any]]:
        """Yield ``(variation, calibrated_events)``: ``"nominal"`` first, then each variation.

        Every variation starts from ``events`` as given: nothing leaks between variations.
        """
        for variation in self.variations_to_run(variations_for_calibrators, variations):
            yield variation, self.calibrate(events, variation)
