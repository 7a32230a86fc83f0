"""The HiggsML Uncertainty Challenge systematics as calibrators (seed 002, GOLLUM).

``higgsml_tes``, ``higgsml_jes`` and ``higgsml_soft_met`` change the primary (``PRI_*``)
features as the challenge's ``mom4_manipulate`` does
(:func:`~pipeline.recipes.higgsml.apply_systematics`: the scaled objects propagate to the
MET, which is recomputed, and every primary feature is rounded to 3 decimals);
``higgsml_postprocess`` then does the challenge's ``postprocess`` (jets at 26 GeV or below
removed, the tau and lepton pT post-selection) and recomputes the 12 ``DER_*`` features.
Each of the three shifts has an ``Up``/``Down`` variation; the values, and whether the
post-processing runs, are parameters, per period::

    higgsml_systematics:
      HiggsML:
        tes: {nominal: 1.0, up: 1.01, down: 0.99}
        jes: {nominal: 1.0, up: 1.01, down: 0.99}
        soft_met: {nominal: 0.0, up: 1.0, down: 0.0}   # sigma in GeV
        postprocess: true    # the challenge's dopostprocess

One pass, one rounding, whatever the combination. The challenge applies tes, jes and
soft_met together and rounds once; rounding after each shift and starting the next from
the rounded MET gives other values. So each shift calibrator starts from the primary
features as read (the sequence's original collections) and applies, in the challenge's
single pass, its own shift together with those of the HiggsML shift calibrators that ran
before it, each at its value for the variation being computed (the nominal value, or Up
or Down for its own variation). After the last one, the features are the challenge's
``mom4_manipulate`` of all three, whatever the nominal values (a point of a (tes, jes)
grid) and whichever one varies.

The soft-MET Gaussians are drawn from the event identity (:mod:`pipeline.rng`), so they do
not depend on chunking.

``higgsml_postprocess`` writes the event-level boolean column ``higgsml_post_selection``:
the challenge's post-selection (tau pT >= 26, lepton pT >= 20) with ``postprocess: true``,
all True without; the recipe's preselection is that column, so one parameter switches the
whole post-processing (jet removal and event selection) on or off.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import awkward as ak
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.calibration.calibrator import Calibrator
from pipeline.config.parameters import format_validation_error, section
from pipeline.errors import ConfigError
from pipeline.recipes.higgsml import (
    DER_FEATURES,
    PRI_FEATURES,
    apply_systematics,
    derived_features,
    post_selection_mask,
    soft_jet_removal,
)
from pipeline.rng import normal

SECTION = "higgsml_systematics"
#: The event-level column of ``higgsml_postprocess``: the challenge's post-selection.
POST_SELECTION = "higgsml_post_selection"


class ShiftValues(BaseModel):
    """The parameter's value at nominal and in its Up and Down variations."""

    model_config = ConfigDict(extra="forbid")
    nominal: float
    up: float
    down: float


class HiggsMLSettings(BaseModel):
    """``higgsml_systematics.<period>``: the three shifts and the post-processing switch."""

    model_config = ConfigDict(extra="forbid")
    tes: ShiftValues = Field(default_factory=lambda: ShiftValues(nominal=1.0, up=1.01,
                                                                 down=0.99))
    jes: ShiftValues = Field(default_factory=lambda: ShiftValues(nominal=1.0, up=1.01,
                                                                 down=0.99))
    soft_met: ShiftValues = Field(default_factory=lambda: ShiftValues(nominal=0.0, up=1.0,
                                                                      down=0.0))
    postprocess: bool = Field(
        default=True,
        description="the challenge's postprocess (its dopostprocess=True, the default of "
        "its systematics()): jets at 26 GeV or below removed, events with a tau pT below "
        "26 GeV or a lepton pT below 20 GeV fail the post-selection",
    )

    def value(self, parameter: str, variation: str) -> float:
        """The value of ``parameter`` (tes, jes, soft_met) in ``variation``.

        Examples
        --------
        >>> settings = HiggsMLSettings()
        >>> settings.value("tes", "tesUp"), settings.value("tes", "jesUp")
        (1.01, 1.0)
        """
        values: ShiftValues = getattr(self, parameter)
        if variation == f"{parameter}Up":
            return values.up
        if variation == f"{parameter}Down":
            return values.down
        return values.nominal


DEFAULTS = HiggsMLSettings()


def settings(params: Any, period: str) -> HiggsMLSettings:
    """The validated ``higgsml_systematics.<period>`` parameters (defaults where absent).

    Raises
    ------
    ConfigError
        Naming every wrong key by its path, e.g. ``higgsml_systematics.HiggsML.tess``.
    """
    raw = section(params, SECTION, period)
    try:
        return HiggsMLSettings.model_validate(raw if raw is not None else {})
    except ValidationError as err:
        raise ConfigError("parameters",
                          format_validation_error(err, f"{SECTION}.{period}")) from None


def _soft_met_normals(events: Any) -> dict[str, Any]:
    """The standard normals of the soft-MET term, from the event identity."""
    identity = (events.run, events.luminosityBlock, events.event, events.event * 0)
    return {"normal_x": normal(*identity, "higgsml:soft_met:x"),
            "normal_y": normal(*identity, "higgsml:soft_met:y")}


class _HiggsMLShift(Calibrator):
    """One challenge systematic (``parameter``), applied with those that ran before it."""

    parameter: ClassVar[str] = ""
    has_variations = True
    isMC_only = False
    calibrated_collections = list(PRI_FEATURES)
    params_section = SECTION

    def __init__(self, params: Any, metadata: Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(params, metadata, **kwargs)
        self.settings = settings(params, self.year)
        self.values = getattr(self.settings, self.parameter)

    def initialize(self, events: Any) -> None:
        self._variations = [f"{self.parameter}Up", f"{self.parameter}Down"]

    def value(self, variation: str) -> float:
        """This calibrator's parameter value in ``variation``."""
        return self.settings.value(self.parameter, variation)

    def calibrate(self, events: Any, events_original_collections: Mapping[str, Any],
                  variation: str,
                  already_applied_calibrators: list[str] | None = None) -> dict[str, Any]:
        applied = set(already_applied_calibrators or ())
        shifts = {parameter: self.settings.value(parameter, variation)
                  for name, parameter in SHIFT_PARAMETERS.items()
                  if name in applied or name == self.name}
        if shifts.get("soft_met", 0.0) > 0:
            shifts.update(_soft_met_normals(events))
        pri = {name: events_original_collections[name] for name in PRI_FEATURES}
        return apply_systematics(pri, **shifts, remove_soft_jets=False)


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


#: The shift calibrators by name, and the challenge parameter each applies.
SHIFT_PARAMETERS: dict[str, str] = {
    cls.name: cls.parameter for cls in (TauEnergyScale, JetEnergyScale, SoftMet)
}


class PostProcess(Calibrator):
    """``higgsml_postprocess``: the challenge's ``postprocess`` (if the ``postprocess``
    parameter is true, the default), then the 12 ``DER_*`` features recomputed.

    With ``postprocess``, jets at 26 GeV or below are removed and the column
    ``higgsml_post_selection`` is the challenge's post-selection (tau pT >= 26, lepton
    pT >= 20), to use as the preselection; without, the jets stay and the column is all
    True. If no HiggsML shift calibrator ran before it, it first applies the challenge's
    nominal pass (MET recomputed, features rounded), as the challenge's ``systematics()``
    does at tes = jes = 1."""

    name = "higgsml_postprocess"
    has_variations = False
    isMC_only = False
    calibrated_collections = [*PRI_FEATURES, *DER_FEATURES, POST_SELECTION]
    params_section = SECTION

    def __init__(self, params: Any, metadata: Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(params, metadata, **kwargs)
        self.settings = settings(params, self.year)

    def calibrate(self, events: Any, events_original_collections: Mapping[str, Any],
                  variation: str,
                  already_applied_calibrators: list[str] | None = None) -> dict[str, Any]:
        pri = {name: events[name] for name in PRI_FEATURES}
        if not set(already_applied_calibrators or ()) & set(SHIFT_PARAMETERS):
            pri = apply_systematics(pri, remove_soft_jets=False)
        if self.settings.postprocess:
            pri = soft_jet_removal(pri)
            selected = post_selection_mask(pri)
        else:
            selected = ak.ones_like(events.event, dtype=bool)
        return {**pri, **derived_features(pri), POST_SELECTION: selected}


__all__ = ["HiggsMLSettings", "JetEnergyScale", "PostProcess", "SoftMet", "TauEnergyScale",
           "settings"]
