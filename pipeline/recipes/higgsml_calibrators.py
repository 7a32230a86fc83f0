"""The HiggsML Uncertainty Challenge systematics as calibrators (seed 002, GOLLUM).

``higgsml_tes``, ``higgsml_jes`` and ``higgsml_soft_met`` change the primary (``PRI_*``)
features as the challenge's ``mom4_manipulate`` does
(:func:`~pipeline.recipes.higgsml.apply_systematics`: the scaled objects propagate to the
MET, which is recomputed, and every primary feature is rounded to 3 decimals);
``higgsml_postprocess`` then does the challenge's ``postprocess`` (jets at 26 GeV or below
removed) and recomputes the 12 ``DER_*`` features. Each of the three has an ``Up``/``Down``
variation; the values are parameters, per period::

    higgsml_systematics:
      HiggsML:
        tes: {nominal: 1.0, up: 1.01, down: 0.99}
        jes: {nominal: 1.0, up: 1.01, down: 0.99}
        soft_met: {nominal: 0.0, up: 1.0, down: 0.0}   # sigma in GeV

The soft-MET Gaussians are drawn from the event identity (:mod:`pipeline.rng`), so they do
not depend on chunking. Applied one after another, each step rounds; for a variation of one
parameter (the others nominal) this equals the challenge's single pass, since rounding and
the MET recomputation leave an already processed event unchanged (tested).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from pipeline.calibration.calibrator import Calibrator
from pipeline.errors import ConfigError
from pipeline.parameters import section
from pipeline.recipes.higgsml import DER_FEATURES, PRI_FEATURES, apply_systematics, derived_features
from pipeline.rng import normal

SECTION = "higgsml_systematics"


class ShiftValues(BaseModel):
    """The parameter's value at nominal and in its Up and Down variations."""

    model_config = ConfigDict(extra="forbid")
    nominal: float
    up: float
    down: float


DEFAULTS = {
    "tes": ShiftValues(nominal=1.0, up=1.01, down=0.99),
    "jes": ShiftValues(nominal=1.0, up=1.01, down=0.99),
    "soft_met": ShiftValues(nominal=0.0, up=1.0, down=0.0),
}


class _HiggsMLShift(Calibrator):
    """One challenge systematic (``parameter``) applied to the primary features."""

    parameter: ClassVar[str] = ""
    has_variations = True
    isMC_only = False
    calibrated_collections = list(PRI_FEATURES)

    def __init__(self, params: Any, metadata: Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(params, metadata, **kwargs)
        raw = section(params, SECTION, self.year, self.parameter)
        try:
            self.values = (ShiftValues.model_validate(raw) if raw is not None
                           else DEFAULTS[self.parameter])
        except ValueError as err:
            raise ConfigError("parameters", [(f"{SECTION}.{self.year}.{self.parameter}",
                                              str(err))]) from None

    def initialize(self, events: Any) -> None:
        self._variations = [f"{self.parameter}Up", f"{self.parameter}Down"]

    def value(self, variation: str) -> float:
        if variation == f"{self.parameter}Up":
            return self.values.up
        if variation == f"{self.parameter}Down":
            return self.values.down
        return self.values.nominal

    def calibrate(self, events: Any, events_original_collections: Mapping[str, Any],
                  variation: str,
                  already_applied_calibrators: list[str] | None = None) -> dict[str, Any]:
        pri = {name: events[name] for name in PRI_FEATURES}
        return apply_systematics(pri, **self.arguments(events, self.value(variation)),
                                 remove_soft_jets=False)

    def arguments(self, events: Any, value: float) -> dict[str, Any]:
        return {self.parameter: value}


class TauEnergyScale(_HiggsMLShift):
    """``higgsml_tes``: the hadronic tau pT scaled by ``tes``, the difference to the MET."""

    name = "higgsml_tes"
    parameter = "tes"


class JetEnergyScale(_HiggsMLShift):
    """``higgsml_jes``: the two leading jets and ``PRI_jet_all_pt`` scaled by ``jes``."""

    name = "higgsml_jes"
    parameter = "jes"


class SoftMet(_HiggsMLShift):
    """``higgsml_soft_met``: a Gaussian of width ``soft_met`` GeV added to MET x and y."""

    name = "higgsml_soft_met"
    parameter = "soft_met"

    def arguments(self, events: Any, value: float) -> dict[str, Any]:
        if value <= 0:
            return {"soft_met": 0.0}
        identity = (events.run, events.luminosityBlock, events.event, events.event * 0)
        return {"soft_met": value, "normal_x": normal(*identity, "higgsml:soft_met:x"),
                "normal_y": normal(*identity, "higgsml:soft_met:y")}


class PostProcess(Calibrator):
    """``higgsml_postprocess``: jets at 26 GeV or below removed, as the challenge's
    ``postprocess`` does, then the 12 ``DER_*`` features recomputed from the primary ones.
    (The post-selection on the tau and lepton pT is an event selection:
    ``post_selection_mask(events)`` in a preselection.)"""

    name = "higgsml_postprocess"
    has_variations = False
    isMC_only = False
    calibrated_collections = [*PRI_FEATURES, *DER_FEATURES]

    def calibrate(self, events: Any, events_original_collections: Mapping[str, Any],
                  variation: str,
                  already_applied_calibrators: list[str] | None = None) -> dict[str, Any]:
        pri = apply_systematics({name: events[name] for name in PRI_FEATURES})
        return {**pri, **derived_features(pri)}


__all__ = ["JetEnergyScale", "PostProcess", "SoftMet", "TauEnergyScale"]
