"""Event weights and their variations.

The generator weight always applies to simulation. On top of it, the analysis config lists
weights by name (``weights.common.inclusive``, ``weights.bysample.<sample>.inclusive``) and
the weights whose variations run (``variations.weights...``), by name or by import path
(``my_module:MyWeight``). Each weight is a small class in the :data:`WEIGHTS` registry
that returns its nominal per-event factor and, optionally, its
variations ``{name}Up`` / ``{name}Down`` (or ``{name}_{source}Up/Down`` for several
sources). Weights apply to simulation only. Payloads and settings come from the
``event_weights.<period>.<weight>`` parameters.

Built-in weights: ``pileup`` (LUM), ``btag_shape`` (BTV ``deepJet_shape`` with its
systematics), ``electron_id`` (EGM), ``muon_id_iso`` (MUO, ID times isolation).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import awkward as ak
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipeline.calibration import ops
from pipeline.config.parameters import section
from pipeline.config.plugins import Registry
from pipeline.corrections import get_correction
from pipeline.errors import ConfigError, InputFileError
from pipeline.selection import Expression


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
    defining one registers it in :data:`WEIGHTS` (a name used twice is an error)."""

    name: ClassVar[str] = ""
    settings_model: ClassVar[type[BaseModel] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            WEIGHTS[cls.name] = cls

    def __init__(self, settings: Mapping[str, Any] | None, metadata: Mapping[str, Any]) -> None:
        self.metadata = dict(metadata)
        if self.settings_model is not None:
            if settings is None:
                raise ConfigError("parameters", [(
                    f"event_weights.{metadata.get('year')}.{self.name}",
                    "missing: no settings for this weight and period")])
            self.settings: Any = self.settings_model.model_validate(dict(settings))

    def compute(self, events: Any, variations: bool) -> WeightValues:
        raise NotImplementedError

    def inputs(self) -> set[str] | None:
        """Collections the weight reads (its nominal is reused where none of them changed);
        None, the default, means unknown: the weight is recomputed for every variation."""
        return None

    def selected(self, events: Any, collection: str) -> Any:
        """The objects of ``collection`` that pass the settings' ``selection`` expression."""
        where = f"event_weights.{self.metadata.get('year')}.{self.name}.selection"
        return events[collection][Expression(self.settings.selection, where).evaluate(events)]


#: Weight classes by name: the built-in ones, then the ``calibrew.weights`` entry points.
WEIGHTS: Registry[type[Weight]] = Registry("weight", "calibrew.weights", Weight)


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
        abseta = np.abs(jets.eta)
        selected = (jets.pt > s.pt_min) & (abseta < s.abseta_max)
        jets = jets[selected]
        if isinstance(jets, ak.Array) and ak.backend(jets) == "cpu":
            return self._compute_flat(corr, jets, variations)
        abseta = np.abs(jets.eta)
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

    def _compute_flat(self, corr: Any, jets: ak.Array, variations: bool) -> WeightValues:
        """The same on eager arrays, on the flat jets: each systematic's bins are looked up
        on the same arrays (the compiled tables then share the lookup)."""
        counts = ak.num(jets, axis=1)

        def flat(array: Any) -> np.ndarray:
            return np.asarray(ak.to_numpy(ak.flatten(array, axis=1)))

        def per_event(factor: np.ndarray) -> Any:
            return _event_product(ak.unflatten(factor, counts))

        abseta = np.abs(flat(jets.eta)).astype(np.float64)
        pt = flat(jets.pt).astype(np.float64)
        flavor = flat(jets.hadronFlavour).astype(np.int64)
        disc = flat(jets[self.settings.discriminant])
        # the payload is defined for discriminant values in [0, 1]; NanoAOD uses -1 for none
        disc = np.where(disc < 0, 0.0, disc).astype(np.float64)
        central = corr.evaluate("central", flavor, abseta, pt, disc)
        out = WeightValues(per_event(central))
        if not variations:
            return out
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
    """The total event weight, the totals of every weight variation, and the per-weight
    nominal factors with the collections each read (None: unknown)."""

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


def compute_weights(events: Any, metadata: Mapping[str, Any], params: Any,
                    names: list[str], varied: list[str],
                    reuse: Mapping[str, Any] | None = None) -> EventWeights:
    """Generator weight times the named weights; the variations of the ``varied`` ones.

    ``names`` and ``varied`` hold weight names or import paths (``my_module:MyWeight``);
    a weight's settings are the parameters ``event_weights.<period>.<its name>``. A
    variation's total replaces that weight's nominal factor by its varied factor.
    ``reuse`` gives nominal factors already known (of a weight whose inputs did not change);
    those weights are not evaluated again. Data get weight one and no variations.
    """
    total = generator_weight(events, metadata)
    if not metadata.get("isMC"):
        return EventWeights(total, {})
    values: dict[str, WeightValues] = {}
    inputs: dict[str, set[str] | None] = {}
    period = str(metadata.get("year", ""))
    varied_classes = {WEIGHTS.resolve(v) for v in varied}
    for name in names:
        cls = WEIGHTS.resolve(name)
        weight = cls(section(params, "event_weights", period, cls.name), metadata)
        inputs[name] = weight.inputs()
        if reuse is not None and name in reuse and cls not in varied_classes:
            values[name] = WeightValues(reuse[name])
        else:
            values[name] = weight.compute(events, variations=cls in varied_classes)
    nominal = total
    for v in values.values():
        nominal = nominal * v.nominal
    variations = {}
    for name, v in values.items():
        others = total
        for other, w in values.items():
            if other != name:
                others = others * w.nominal
        for var_name, factor in v.variations.items():
            variations[var_name] = others * factor
    factors = {name: v.nominal for name, v in values.items()}
    return EventWeights(nominal, variations, factors, inputs)


def weight_variation_names(metadata: Mapping[str, Any], params: Any, names: list[str],
                           varied: list[str], events_meta: Any) -> list[str]:
    """The weight variations a dataset will fill (found on its typetracer)."""
    if not metadata.get("isMC") or not varied:
        return []
    return list(compute_weights(events_meta, metadata, params, names, varied).variations)


__all__ = ["WEIGHTS", "EventWeights", "Weight", "WeightValues", "compute_weights",
           "generator_weight"]
