"""Event weights and their variations.

The generator weight always applies to simulation. On top of it, the analysis config lists
weights by name (``weights.common.inclusive``, ``weights.bysample.<sample>.inclusive``) and
the weights whose variations run (``variations.weights...``), by name or by import path
(``my_module:MyWeight``). Each weight is a small class in the :data:`WEIGHTS` registry
that returns its nominal per-event factor and, optionally, its
variations ``{name}Up`` / ``{name}Down`` (or ``{name}_{source}Up/Down`` for several
sources). A source the class declares in ``one_sided`` has the ``Up`` alone (the results
mirror it). Weights apply to simulation only. Payloads and settings come from the
``event_weights.<period>.<weight>`` parameters.

Built-in weights: ``pileup`` (LUM), ``btag_shape`` (BTV ``deepJet_shape`` with its
systematics), ``electron_id`` (EGM), ``muon_id_iso`` (MUO, ID times isolation).
"""

from __future__ import annotations

import contextlib
import sys
import weakref
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import awkward as ak
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.calibration import ops
from pipeline.config.parameters import format_validation_error, section
from pipeline.config.plugins import Registry
from pipeline.corrections import get_correction
from pipeline.corrections.reuse import evaluate_by_bin
from pipeline.errors import ConfigError, InputFileError, WeightError, plugin_call
from pipeline.selection import Expression, Vocabulary
from pipeline.variations import (
    check_one_sided,
    validate_variation_names,
    without_one_sided_downs,
)


def generator_weight(events: Any, metadata: Mapping[str, Any]) -> Any:
    """The generator weight for MC (``genWeight``, or the column named by the metadata's
    ``generator_weight``) as float64; ones for data, and for MC whose ``generator_weight``
    is ``none`` (then the sum of generator weights is the number of events).

    Examples
    --------
    >>> import awkward as ak
    >>> generator_weight(ak.Array([{"genWeight": 2.0}]), {"isMC": True}).tolist()
    [2.0]
    >>> generator_weight(ak.Array([{"run": 1}]), {"isMC": False}).tolist()
    [1.0]
    >>> generator_weight(ak.Array([{"run": 1, "genWeight": 2.0}]),
    ...                  {"isMC": True, "generator_weight": "none"}).tolist()
    [1.0]
    """
    column = str(metadata.get("generator_weight") or "genWeight")
    if metadata.get("isMC") and column.lower() != "none":
        if column not in events.fields:
            raise InputFileError(
                f"dataset {metadata.get('dataset', '?')!r} is MC but its events have no "
                f"{column} column (metadata.generator_weight)"
            )
        return ops.values_astype(ops.fill_none(events[column], 0), np.float64)
    return ops.values_astype(events.run, np.float64) * 0 + 1


@dataclass
class WeightValues:
    """A weight's nominal factor per event and its variations (factors replacing it)."""

    nominal: Any
    variations: dict[str, Any] = field(default_factory=dict)


class Weight:
    """Base class of an event weight. Subclasses set ``name`` and implement ``compute``;
    defining one registers it in :data:`WEIGHTS` (a name used twice is an error).

    ``compute`` returns variations in pairs, ``{source}Up`` and ``{source}Down``, except for
    the sources of ``one_sided``: their ``Up`` alone (a ``Down`` returned is dropped).
    """

    name: ClassVar[str] = ""
    settings_model: ClassVar[type[BaseModel] | None] = None
    #: Sources varied one way only (``{source}Up``, no ``{source}Down``): the results mirror
    #: the ``Up`` around the nominal. E.g. ``one_sided = ("topPt",)``.
    one_sided: ClassVar[tuple[str, ...]] = ()
    #: The analysis' functions and definitions its ``selection`` may use (set by
    #: :func:`compute_weights`; None: the built-in functions only).
    vocabulary: Vocabulary | None = None
    #: The names the ``selection`` read (collected by :func:`compute_weights`; None: not
    #: collected).
    selection_reads: set[str] | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            check_one_sided("weight", cls.name, cls.one_sided)
            WEIGHTS[cls.name] = cls

    def __init__(self, settings: Mapping[str, Any] | None, metadata: Mapping[str, Any]) -> None:
        self.metadata = dict(metadata)
        if self.settings_model is not None:
            where = f"event_weights.{metadata.get('year')}.{self.name}"
            if settings is None:
                raise ConfigError("parameters", [
                    (where, "missing: no settings for this weight and period")])
            try:
                self.settings: Any = self.settings_model.model_validate(dict(settings))
            except ValidationError as err:
                raise ConfigError("parameters", format_validation_error(err, where)) from None

    def compute(self, events: Any, variations: bool) -> WeightValues:
        raise NotImplementedError

    def inputs(self) -> set[str] | None:
        """Collections the weight reads (its nominal is reused where none of them changed);
        None, the default, means unknown: the weight is recomputed for every variation."""
        return None

    def selected(self, events: Any, collection: str) -> Any:
        """The objects of ``collection`` that pass the settings' ``selection`` expression
        (which may call the analysis' functions and use its definitions)."""
        where = f"event_weights.{self.metadata.get('year')}.{self.name}.selection"
        expression = _selection(self.settings.selection, where, self.vocabulary)
        return events[collection][expression.evaluate(events, used=self.selection_reads)]


#: Weight classes by name: the built-in ones, then the ``calibrew.weights`` entry points.
WEIGHTS: Registry[type[Weight]] = Registry("weight", "calibrew.weights", Weight)

#: The weights' selections compiled, per vocabulary (None: the built-in functions only).
_SELECTIONS: weakref.WeakKeyDictionary[Vocabulary, dict[tuple[str, str], Expression]] = (
    weakref.WeakKeyDictionary())
_PLAIN_SELECTIONS: dict[tuple[str, str], Expression] = {}


def _selection(text: str, where: str,
               vocabulary: Vocabulary | Mapping[str, Any] | None) -> Expression:
    """The :class:`Expression` of a weight's selection, compiled once per vocabulary (each
    time for a plain mapping of functions, which cannot be referenced weakly).

    Examples
    --------
    >>> words = Vocabulary(definitions={"good": "Muon.pt > 20"})
    >>> _selection("good", "doc", words) is _selection("good", "doc", words)
    True
    """
    if vocabulary is None:
        compiled = _PLAIN_SELECTIONS
    elif isinstance(vocabulary, Vocabulary):
        compiled = _SELECTIONS.setdefault(vocabulary, {})
    else:
        return Expression(text, where, vocabulary)
    expression = compiled.get((text, where))
    if expression is None:
        expression = compiled[(text, where)] = Expression(text, where, vocabulary)
    return expression


def _payload(settings: Any) -> Any:
    return get_correction(settings.json_path, settings.correction)


class PileupSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    json_path: str
    correction: str


class PileupWeight(Weight):
    """Pileup reweighting from ``Pileup_nTrueInt`` (LUM payload, nominal/up/down)."""

    name = "pileup"
    settings_model = PileupSettings

    def inputs(self) -> set[str] | None:
        return {"Pileup"}

    def compute(self, events: Any, variations: bool) -> WeightValues:
        corr = _payload(self.settings)
        n_true = events.Pileup.nTrueInt
        out = WeightValues(corr.evaluate(n_true, "nominal"))
        if variations:
            out.variations = {"pileupUp": corr.evaluate(n_true, "up"),
                              "pileupDown": corr.evaluate(n_true, "down")}
        return out


def _event_product(per_object: Any) -> Any:
    return ops.prod(per_object, axis=1)


class BtagShapeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    json_path: str
    correction: str = "deepJet_shape"
    discriminant: str = "btagDeepFlavB"
    jets: str = "Jet"
    pt_min: float = 20.0
    abseta_max: float = 2.5
    systematics: list[str] = Field(default_factory=lambda: [
        "hf", "lf", "hfstats1", "hfstats2", "lfstats1", "lfstats2", "cferr1", "cferr2"])


class BtagShapeWeight(Weight):
    """b-tag shape scale factors: product over the selected jets of ``deepJet_shape``.

    Variations ``btag_{systematic}Up/Down``. ``cferr*`` apply to c jets only, the others to
    b and light jets only; a jet a systematic does not apply to keeps its central factor.
    """

    name = "btag_shape"
    settings_model = BtagShapeSettings

    def inputs(self) -> set[str] | None:
        return {self.settings.jets}

    def compute(self, events: Any, variations: bool) -> WeightValues:
        s = self.settings
        corr = _payload(s)
        jets = events[s.jets]
        flat = ops.flat_positions_of([jets[field] for field in
                                      ("pt", "eta", "hadronFlavour", s.discriminant)])
        if flat is not None:  # an eager chunk: on flat numpy arrays
            return self._compute_flat(corr, flat, variations)
        abseta = np.abs(jets.eta)
        selected = (jets.pt > s.pt_min) & (abseta < s.abseta_max)
        jets = jets[selected]
        abseta = abseta[selected]
        flavor = ops.values_astype(jets.hadronFlavour, np.int64)
        disc = jets[s.discriminant]
        # the payload is defined for discriminant values in [0, 1]; NanoAOD uses -1 for none
        disc = ops.where(disc < 0, 0.0, disc)
        central = corr.evaluate("central", flavor, abseta, jets.pt, disc)
        out = WeightValues(_event_product(central))
        if not variations:
            return out
        is_c = flavor == 4
        for syst in s.systematics:
            c_only = syst.startswith("cferr")
            applies = is_c if c_only else ~is_c
            forced = ops.where(applies, flavor, 4 if c_only else 5)
            for direction, prefix in (("Up", "up"), ("Down", "down")):
                shifted = corr.evaluate(f"{prefix}_{syst}", forced, abseta, jets.pt, disc)
                factor = ops.where(applies, shifted, central)
                out.variations[f"btag_{syst}{direction}"] = _event_product(factor)
        return out

    def _compute_flat(self, corr: Any, flat: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                      variations: bool) -> WeightValues:
        """The same on eager arrays, from the :func:`ops.flat_positions` of the jets' pt,
        eta, flavour and discriminant: the central factors by :meth:`_SelectedJets.central`;
        each systematic's bins looked up on the same arrays (the compiled tables then share
        the lookup)."""
        s = self.settings
        (counts, pt, pt_at), (_, eta, eta_at) = flat[:2]
        pt = pt[pt_at]
        selected = (pt > s.pt_min) & (np.abs(eta[eta_at]) < s.abseta_max)
        counts = ops.list_counts(selected, counts)

        def per_event(factor: np.ndarray) -> Any:
            return ops.list_products(factor, counts)

        jets = _SelectedJets(pt[selected], flat[1:], selected)
        central = jets.central(corr)
        out = WeightValues(per_event(central))
        if not variations:
            return out
        flavor, abseta, pt, disc = jets.arguments(slice(None))
        is_c = flavor == 4
        forced = {True: np.where(is_c, flavor, 4), False: np.where(~is_c, flavor, 5)}
        for syst in self.settings.systematics:
            c_only = syst.startswith("cferr")
            applies = is_c if c_only else ~is_c
            for direction, prefix in (("Up", "up"), ("Down", "down")):
                shifted = corr.evaluate(f"{prefix}_{syst}", forced[c_only], abseta, pt, disc)
                out.variations[f"btag_{syst}{direction}"] = per_event(
                    np.where(applies, shifted, central))
        return out


class _SelectedJets:
    """The selected jets (``selected``), of pt ``pt``, of the :func:`ops.flat_positions`
    ``flat`` of the jets' eta, flavour and discriminant, as the b-tag payload takes them.

    A jet variation changes only the pt: when the eta, flavour and discriminant are taken
    from their buffers at the same positions (``shared``: the buffers of the chunk's
    unvaried jets), a jet's position in them is the same jet in every variation.
    """

    def __init__(self, pt: np.ndarray, flat: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                 selected: np.ndarray) -> None:
        self.pt = pt
        first = flat[0][2]
        self.shared = all(len(values) == len(flat[0][1])
                          and (at is first or np.array_equal(at, first))
                          for _, values, at in flat)
        if self.shared:  # the selected jets at their positions in the buffers
            self.buffers = [values for _, values, _ in flat]
            self.positions = first[selected]
        else:
            self.buffers = [values[at][selected] for _, values, at in flat]
            self.positions = np.arange(len(pt))

    def arguments(self, which: np.ndarray | slice) -> tuple[np.ndarray, ...]:
        """The flavour, |eta|, pt and discriminant of the selected jets ``which``."""
        eta, flavor, disc = (values[self.positions[which]] for values in self.buffers)
        # the payload is defined for discriminant values in [0, 1]; NanoAOD uses -1 for none
        return (flavor.astype(np.int64), np.abs(eta).astype(np.float64),
                self.pt[which].astype(np.float64),
                np.where(disc < 0, 0.0, disc).astype(np.float64))

    def central(self, corr: Any) -> np.ndarray:
        """The central factors. With ``shared`` buffers, a jet whose pt stays in its pt bin
        keeps its factor of the first call on these buffers, the same bits
        (:func:`~pipeline.corrections.reuse.evaluate_by_bin`)."""
        if not self.shared:
            return np.asarray(corr.evaluate("central", *self.arguments(slice(None))),
                              dtype=np.float64)
        return evaluate_by_bin(corr, lambda which: ("central", *self.arguments(which)), 3,
                               self.pt, self.buffers, self.positions)


class ElectronIdSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    json_path: str
    correction: str = "Electron-ID-SF"
    year: str
    working_point: str
    selection: str = Field(description="expression selecting the electrons that get the SF")


class ElectronIdWeight(Weight):
    """Electron identification scale factors (EGM), product over the selected electrons."""

    name = "electron_id"
    settings_model = ElectronIdSettings

    def inputs(self) -> set[str] | None:
        return {"Electron"}

    def compute(self, events: Any, variations: bool) -> WeightValues:
        s = self.settings
        corr = _payload(s)
        electrons = self.selected(events, "Electron")
        eta = electrons.eta + electrons.deltaEtaSC
        pt = electrons.pt

        def sf(kind: str) -> Any:
            return _event_product(corr.evaluate(s.year, kind, s.working_point, eta, pt))

        out = WeightValues(sf("sf"))
        if variations:
            out.variations = {"electron_idUp": sf("sfup"), "electron_idDown": sf("sfdown")}
        return out


class MuonIdIsoSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    json_path: str
    id: str
    iso: str
    selection: str = Field(description="expression selecting the muons that get the SF")


class MuonIdIsoWeight(Weight):
    """Muon identification times isolation scale factors (MUO), product over the muons."""

    name = "muon_id_iso"
    settings_model = MuonIdIsoSettings

    def inputs(self) -> set[str] | None:
        return {"Muon"}

    def compute(self, events: Any, variations: bool) -> WeightValues:
        s = self.settings
        ident = get_correction(s.json_path, s.id)
        iso = get_correction(s.json_path, s.iso)
        muons = self.selected(events, "Muon")
        eta, pt = np.abs(muons.eta), muons.pt

        def sf(kind: str) -> Any:
            return _event_product(ident.evaluate(eta, pt, kind) * iso.evaluate(eta, pt, kind))

        out = WeightValues(sf("nominal"))
        if variations:
            out.variations = {"muon_id_isoUp": sf("systup"), "muon_id_isoDown": sf("systdown")}
        return out


@dataclass
class EventWeights:
    """The total event weight, the totals of every weight variation, the per-weight nominal
    factors, and the collections each weight computed here read: those its ``inputs()``
    declares and those its selection read (None, or absent: unknown)."""

    nominal: Any
    variations: dict[str, Any]
    factors: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, set[str] | None] = field(default_factory=dict)

    def reusable(self, changed: set[str] | None) -> dict[str, Any]:
        """The nominal factors still valid when the collections ``changed`` changed."""
        if changed is None:
            return {}
        out = {}
        for name, factor in self.factors.items():
            read = self.inputs.get(name)
            if read is not None and not read & changed:
                out[name] = factor
        return out


def import_path(cls: type) -> str:
    """``module:Qualname`` of a class.

    Examples
    --------
    >>> import_path(PileupWeight)
    'pipeline.weights:PileupWeight'
    """
    return f"{cls.__module__}:{cls.__qualname__}"


def canonical_weight_names(names: Iterable[str]) -> tuple[str, ...]:
    """The weights ``names`` (registry names or import paths) as a fresh worker finds them:
    the registry name of a built-in weight or of an entry point's, the import path
    ``module:Qualname`` of any other (a user's weight, whose module a worker imports only
    when a name leads it there). Resolved here, on the client: an unknown name fails now.

    Examples
    --------
    >>> canonical_weight_names(["pileup", "pipeline.weights:BtagShapeWeight"])
    ('pileup', 'btag_shape')
    """
    return tuple(_canonical(WEIGHTS.resolve(name)) for name in names)


def _canonical(cls: type[Weight]) -> str:
    point = WEIGHTS.entry_points().get(cls.name)
    if cls.__module__ == __name__ or (
            point is not None and f"{point.module}:{point.attr}" == import_path(cls)):
        return cls.name
    module = sys.modules.get(cls.__module__)
    if getattr(module, cls.__qualname__, None) is not cls:  # not importable by its path
        return cls.name
    return import_path(cls)


def _described(cls: type[Weight]) -> str:
    return f"weight {cls.name!r} ({import_path(cls)})"


@contextlib.contextmanager
def weight_call(cls: type[Weight], stage: str, variation: str | None = None) -> Iterator[None]:
    """Run a call into weight ``cls`` (its constructor or ``compute``); an error that is not
    calibrew's own is raised as :class:`~pipeline.errors.WeightError` naming the weight, its
    class, the stage, the variation and the column or line at fault. An error raised inside
    a file reader (the input cannot be read) passes unchanged.

    Examples
    --------
    >>> with weight_call(PileupWeight, "compute", "jesUp"):
    ...     raise ValueError("no payload for run 1")
    Traceback (most recent call last):
    ...
    pipeline.errors.WeightError: weight 'pileup' (pipeline.weights:PileupWeight) failed in ...
    """
    with plugin_call(WeightError, _described(cls), cls, stage, variation):
        yield


def _known_length(array: Any) -> int | None:
    """The length of an eager array (None for a typetracer or a lazy array)."""
    if isinstance(array, np.ndarray):
        return len(array)
    if isinstance(array, ak.Array) and ak.backend(array) == "cpu":
        return len(array)
    return None


def _check_factor(cls: type[Weight], what: str, factor: Any, n_events: int | None) -> None:
    """Check that ``factor`` is a number, or an array of one number per event."""
    ndim = getattr(factor, "ndim", 0)
    if ndim > 1:
        raise WeightError(
            f"{_described(cls)} gave a {what} factor of type {factor.type}: a weight gives "
            "one number per event (of per-object factors, take the product: "
            "ak.prod(factors, axis=1))")
    length = _known_length(factor) if ndim == 1 else None
    if length is not None and n_events is not None and length != n_events:
        raise WeightError(f"{_described(cls)} gave a {what} factor of {length} values for "
                          f"{n_events} events: a weight gives one number per event")


def _checked(cls: type[Weight], values: Any, n_events: int | None) -> WeightValues:
    """The weight's values, checked: one number per event, variation names in pairs (or the
    ``Up`` of a one-sided source); the ``Down`` of a one-sided source dropped."""
    if not isinstance(values, WeightValues):
        raise WeightError(f"{_described(cls)} returned {type(values).__name__}; compute() "
                          "must return a WeightValues")
    _check_factor(cls, "nominal", values.nominal, n_events)
    validate_variation_names("weight", cls.name, list(values.variations), cls.one_sided)
    kept = without_one_sided_downs(list(values.variations), cls.one_sided)
    for name in kept:
        _check_factor(cls, f"{name!r}", values.variations[name], n_events)
    return WeightValues(values.nominal, {name: values.variations[name] for name in kept})


def _read(weight: Weight) -> set[str] | None:
    """The collections a computed weight read: those it declares and those its selection
    read (None: unknown)."""
    declared = weight.inputs()
    read = weight.selection_reads or set()
    if declared is None or "events" in read:
        return None
    return declared | read


def compute_weights(events: Any, metadata: Mapping[str, Any], params: Any,
                    names: list[str], varied: list[str],
                    reuse: Mapping[str, Any] | None = None,
                    vocabulary: Vocabulary | None = None,
                    variation: str | None = None) -> EventWeights:
    """Generator weight times the named weights; the variations of the ``varied`` ones.

    ``names`` and ``varied`` hold weight names or import paths (``my_module:MyWeight``);
    a weight is varied if its class is one of ``varied``'s. A weight's settings are the
    parameters ``event_weights.<period>.<its name>``. A variation's total replaces that
    weight's nominal factor by its varied factor. ``reuse`` gives nominal factors already
    known (of a weight whose inputs did not change); those weights are not evaluated
    again. ``vocabulary`` (the analysis' functions and definitions) is what the weights'
    selections may use; ``variation`` (the shape variation of ``events``) is named in the
    message of a weight that fails. Data get weight one and no variations.
    """
    total = generator_weight(events, metadata)
    if not metadata.get("isMC"):
        return EventWeights(total, {})
    values: dict[str, WeightValues] = {}
    inputs: dict[str, set[str] | None] = {}
    period = str(metadata.get("year", ""))
    varied_classes = {WEIGHTS.resolve(v) for v in varied}
    n_events = _known_length(events)
    for name in names:
        cls = WEIGHTS.resolve(name)
        with weight_call(cls, "__init__"):
            weight = cls(section(params, "event_weights", period, cls.name), metadata)
        weight.vocabulary = vocabulary
        if reuse is not None and name in reuse and cls not in varied_classes:
            values[name] = WeightValues(reuse[name])
            continue
        weight.selection_reads = set()
        with weight_call(cls, "compute", variation):
            out = weight.compute(events, variations=cls in varied_classes)
        values[name] = _checked(cls, out, n_events)
        inputs[name] = _read(weight)
    # on an eager chunk the products are numpy's (the same multiplications, in this order)
    total = ops.eager_values(total)
    nominal = total
    for v in values.values():
        nominal = nominal * ops.eager_values(v.nominal)
    variations = {}
    for name, v in values.items():
        if not v.variations:
            continue
        others = total
        for other, w in values.items():
            if other != name:
                others = others * ops.eager_values(w.nominal)
        for var_name, factor in v.variations.items():
            variations[var_name] = ops.as_array(others * ops.eager_values(factor))
    factors = {name: v.nominal for name, v in values.items()}
    return EventWeights(ops.as_array(nominal), variations, factors, inputs)


def weight_variation_names(metadata: Mapping[str, Any], params: Any, names: list[str],
                           varied: list[str], events_meta: Any,
                           vocabulary: Vocabulary | None = None) -> list[str]:
    """The weight variations a dataset will fill (found on its typetracer: a weight that
    fails, or gives variations not in pairs, fails here, before any chunk)."""
    if not metadata.get("isMC") or not varied:
        return []
    return list(compute_weights(events_meta, metadata, params, names, varied,
                                vocabulary=vocabulary).variations)


__all__ = ["WEIGHTS", "EventWeights", "Weight", "WeightValues", "canonical_weight_names",
           "compute_weights", "generator_weight", "import_path", "weight_call",
           "weight_variation_names"]
