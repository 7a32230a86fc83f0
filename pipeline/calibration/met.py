"""Type-1 MET from the calibrated jets (``met_rescaling``), for the nominal and every variation.

Parameters, per period (``met_rescaling``)::

    met_rescaling:
      2022_preEE:
        met: PuppiMET            # the collection written (pt, phi)
        raw_met: RawPuppiMET     # the uncorrected MET the propagation starts from
        jets: Jet                # calibrated jets (after jet_calibration)
        low_pt_jets: CorrT1METJet
        jet_type: AK4PFPuppi     # JEC of the low-pt jets: jets_calibration.jet_types.<jet_type>
        jet_pt: corrected        # corrected (T1, the default) or smeared (T1Smear)
        threshold: 15.0          # GeV, on the muon-subtracted propagated jet pt
        max_em_fraction: 0.9

Method: for every jet whose muon-subtracted propagated pt is above the threshold and whose
electromagnetic energy fraction (``chEmEF + neEmEF``) is below the maximum, the change
``pt - pt_raw`` (both muon-subtracted) is subtracted vectorially from the raw MET. The pt
propagated is, with ``jet_pt: corrected``, the JEC-corrected unsmeared pt (``Jet.pt_jec``):
the type-1 MET of NanoAOD's own ``PuppiMET`` and of nanoAOD-tools' ``MET_T1``; with
``jet_pt: smeared``, the JEC and JER pt (``Jet.pt``): nanoAOD-tools' ``MET_T1Smear``. The
threshold applies to the pt of that variant, in the current variation.

The low-pt jets that NanoAOD stores separately (``CorrT1METJet``, raw pt below 15 GeV; no
EM fractions) get the same JEC, and on MC the same JER smearing (hybrid: the closest
``GenJet`` within dR < R/2 and 3 sigma in pt, else a normal number keyed by the jet, as
nanoAOD-tools' jetmetUncertainties does) and the same JES uncertainty sources, and enter the
same way. Every jet variation propagates to the MET:

* ``{jet_type}_JES_<source>Up/Down``: the jets and the low-pt jets shifted by
  ``1 +- unc(eta, pt_jec)``, in either variant;
* ``{jet_type}_JERUp/Down``: with ``smeared``, the jets and low-pt jets smeared with the
  scale factor's up/down values; with ``corrected``, as nanoAOD-tools' ``MET_T1_pt_jerUp``
  and ``_jerDown``, the MET of the nominally smeared jets (the T1Smear nominal), in both
  directions: the effect of not smearing the MET is the JER uncertainty of the T1 MET.

MC variations ``met_unclusteredUp/Down`` add NanoAOD's unclustered-energy shift
(``ptUnclusteredUp`` / ``phiUnclusteredUp`` minus the stored MET) to the variant's nominal.
On data the JEC tag of the run era is looked up as by the jet calibrator
(:func:`pipeline.calibration.jets.jec_tag`): an era without a tag is an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError

from pipeline.calibration import ops
from pipeline.calibration.calibrator import Calibrator
from pipeline.calibration.columns import leaf_buffers, same_buffers
from pipeline.calibration.jets import (
    JET_RADIUS,
    JetsCalibrationParams,
    JetTypeSettings,
    jec_tag,
    jer_corrections,
    rho_of,
    smearing_factors,
)
from pipeline.config.parameters import format_validation_error, section
from pipeline.corrections import get_compound, get_correction
from pipeline.errors import CalibrationError, ConfigError

NOMINAL = "nominal"


class METSettings(BaseModel):
    """The ``met_rescaling`` parameters of one period."""

    model_config = ConfigDict(extra="forbid")
    met: str = "PuppiMET"
    raw_met: str = "RawPuppiMET"
    jets: str = "Jet"
    low_pt_jets: str | None = "CorrT1METJet"
    jet_type: str = "AK4PFPuppi"
    jet_pt: Literal["corrected", "smeared"] = Field(
        "corrected",
        description="the jet pt propagated: 'corrected' (JEC only: type-1 as NanoAOD's "
        "PuppiMET and nanoAOD-tools' MET_T1) or 'smeared' (JEC and JER: MET_T1Smear)")
    threshold: float = 15.0
    max_em_fraction: float = 0.9


def _sum_xy(pt: Any, phi: Any, selected: Any,
            counts: np.ndarray | None = None) -> tuple[Any, Any]:
    """Per-event sums of the selected objects' (px, py): jagged arrays, or flat numpy ones
    with ``counts`` objects per event (see :func:`ops.list_sums`)."""
    px = ops.where(selected, pt * np.cos(phi), 0.0)
    py = ops.where(selected, pt * np.sin(phi), 0.0)
    return ops.list_sums(px, counts), ops.list_sums(py, counts)


def type1_shift(jets: Any, pt_corr: Any, pt_raw: Any, threshold: float,
                max_em_fraction: float | None) -> tuple[Any, Any]:
    """(dx, dy) = sum over selected jets of (corrected - raw) pt vectors, muon-subtracted.

    Eager arrays are computed on their flat values (the same operations, summed per event
    in the same order); lazy ones and typetracers with awkward's operations.
    """
    columns = [pt_corr, pt_raw, jets.muonSubtrFactor, jets.phi, jets.chEmEF, jets.neEmEF]
    flat = ops.flat_positions_of(columns)
    counts = None
    if flat is not None:  # an eager chunk: on flat numpy arrays
        counts = flat[0][0]
        columns = [values[at] for _, values, at in flat]
    corr_pt, raw_pt, muon, phi, ch_em, ne_em = columns
    keep = 1 - muon
    corr, raw = corr_pt * keep, raw_pt * keep
    selected = corr > threshold
    if max_em_fraction is not None:
        selected = selected & ((ch_em + ne_em) < max_em_fraction)
    return _sum_xy(corr - raw, phi, selected, counts)


class METSection(RootModel[dict[str, METSettings]]):
    """The ``met_rescaling`` parameters section: :class:`METSettings` per period."""


class METCalibrator(Calibrator):
    """Type-1 propagation of the calibrated jets to the MET (run it after the jets)."""

    name = "met_rescaling"
    has_variations = True
    calibrated_collections = ["PuppiMET.pt", "PuppiMET.phi", "MET.pt", "MET.phi"]
    columns_read = ["RawPuppiMET.pt", "RawPuppiMET.phi", "Jet.muonSubtrFactor", "Jet.chEmEF",
                    "Jet.neEmEF", "CorrT1METJet.rawPt", "CorrT1METJet.eta",
                    "CorrT1METJet.phi", "CorrT1METJet.area", "CorrT1METJet.muonSubtrFactor",
                    "GenJet.pt", "GenJet.eta", "GenJet.phi"]
    params_section = "met_rescaling"
    params_schema = METSection

    def __init__(self, params: Any, metadata: Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(params, metadata, **kwargs)
        raw = section(params, self.params_section, self.year)
        self.settings: METSettings | None = None
        if raw is not None:
            try:
                self.settings = METSettings.model_validate(raw)
            except ValidationError as err:
                raise ConfigError("parameters", format_validation_error(
                    err, f"{self.params_section}.{self.year}")) from None
        self.jet_params = section(params, "jets_calibration") or {}

    def initialize(self, events: Any) -> None:
        self._variations = []
        self._low: dict[str, Any] | None = None
        self._low_terms: dict[Any, tuple[Any, Any]] = {}
        self._nominal: tuple[list[Any], tuple[Any, Any], dict[str, Any]] | None = None
        self._smeared_nominal: tuple[Any, Any] | None = None
        self._unclustered: dict[str, tuple[Any, Any]] = {}
        if self.settings is None:
            return
        s = self.settings
        for coll in (s.met, s.raw_met, s.jets):
            if coll not in events.fields:
                raise CalibrationError(
                    f"calibrator {self.name!r}: the events have no {coll!r} collection")
        if s.low_pt_jets and s.low_pt_jets in events.fields:
            self._low = self._low_pt_jets(events, events[s.low_pt_jets])
        met = events[s.met]
        if self.isMC and self.do_variations and "ptUnclusteredUp" in met.fields:
            x, y = met.pt * np.cos(met.phi), met.pt * np.sin(met.phi)
            for direction in ("Up", "Down"):
                pt, phi = met[f"ptUnclustered{direction}"], met[f"phiUnclustered{direction}"]
                self._unclustered[f"met_unclustered{direction}"] = (
                    pt * np.cos(phi) - x, pt * np.sin(phi) - y)
            self._variations = list(self._unclustered)

    # -- the low-pt jets (CorrT1METJet) ------------------------------------------------
    def _jet_settings(self) -> tuple[JetsCalibrationParams, JetTypeSettings]:
        assert self.settings is not None
        try:
            config = JetsCalibrationParams.model_validate(self.jet_params)
        except ValidationError as err:
            raise ConfigError("parameters",
                              format_validation_error(err, "jets_calibration")) from None
        try:
            return config, config.jet_types[self.settings.jet_type][self.year]
        except KeyError:
            raise CalibrationError(
                f"calibrator {self.name!r}: no jets_calibration payload for jet type "
                f"{self.settings.jet_type!r} in period {self.year!r}") from None

    def _low_pt_jets(self, events: Any, low: Any) -> dict[str, Any]:
        """JEC (and on MC the JER factors) of the low-pt jets, once per chunk, with the jet
        calibrator's payload for ``jet_type``."""
        assert self.settings is not None
        jet_type = self.settings.jet_type
        config, settings = self._jet_settings()
        tag = jec_tag(settings, jet_type, self.metadata)
        jec = get_compound(settings.json_path, f"{tag}_{settings.level}_{jet_type}")
        raw = low.rawPt
        pt = raw * jec.evaluate(low.area, low.eta, raw, rho_of(events))
        jer = None
        if (self.isMC and settings.jer
                and config.apply_jer_MC.get(self.year, {}).get(jet_type, True)):
            jer = self._low_pt_jer(events, low, settings, pt)
        columns = {"raw": raw, "pt": pt, "keep": 1 - low.muonSubtrFactor, "phi": low.phi,
                   "eta": low.eta}
        if jer is not None:
            columns.update({f"jer_{key}": factor for key, factor in jer.items()})
        # an eager chunk: the columns as flat numpy, the per-variation terms summed per event
        flat = ops.flat_numpy(columns)
        counts, columns = flat if flat is not None else (None, columns)
        return {"columns": columns, "counts": counts, "jer": jer is not None,
                "settings": settings}

    def _low_pt_jer(self, events: Any, low: Any, settings: JetTypeSettings,
                    pt: Any) -> dict[str, Any]:
        """Hybrid JER factors of the low-pt jets. NanoAOD stores no generator-jet index for
        them: as nanoAOD-tools' jetmetUncertainties, each is matched to the closest
        ``GenJet`` within dR < R/2 among those with |pt - pt_gen| < 3 sigma pt."""
        assert self.settings is not None
        jet_type = self.settings.jet_type
        if "GenJet" not in events.fields:
            raise CalibrationError(
                f"calibrator {self.name!r}: the events have no 'GenJet' collection, needed "
                f"to smear the low-pt jets {self.settings.low_pt_jets!r} (JER of {jet_type})")
        resolution, scale = jer_corrections(settings, jet_type)
        resolution = resolution.evaluate(low.eta, pt, rho_of(events))
        radius = JET_RADIUS.get(jet_type[:3], 0.4)
        gen = events.GenJet
        jets = ops.zip({"eta": low.eta, "phi": low.phi, "pt": pt, "res": resolution})
        gens = ops.zip({"eta": gen.eta, "phi": gen.phi, "pt": gen.pt})
        j, g = ops.unzip(ops.cartesian([jets, gens], axis=1, nested=True))
        delta_r = ops.delta_r(j.eta, j.phi, g.eta, g.phi)
        good = (delta_r < radius / 2) & (np.abs(j.pt - g.pt) < 3 * j.res * j.pt)
        delta_r = ops.where(good, delta_r, np.inf)
        best = ops.argmin(delta_r, axis=2, keepdims=True)
        best_dr = ops.fill_none(ops.firsts(delta_r[best], axis=2), np.inf)
        gen_pt = ops.fill_none(ops.firsts(g.pt[best], axis=2), 0.0)
        matched = best_dr < radius / 2
        z = ops.object_normal(events, low.rawPt, f"jer:{jet_type}:{self.settings.low_pt_jets}")
        energy = pt * np.cosh(low.eta)  # massless, as in jetmetUncertainties
        return smearing_factors(resolution, scale, low.eta, pt, energy, gen_pt, matched, z)

    def _jer_variation(self, variation: str) -> str | None:
        """``"up"``/``"down"`` for the JER variations of the propagated jet type."""
        assert self.settings is not None
        prefix = f"{self.settings.jet_type}_JER"
        return {f"{prefix}Up": "up", f"{prefix}Down": "down"}.get(variation)

    def _low_key(self, variation: str) -> Any:
        """What the low-pt jets propagate in ``variation``: ``"nominal"``, or a JER or JES
        variant."""
        assert self.settings is not None
        if self._low is None or not self.isMC:
            return NOMINAL
        jer = self._jer_variation(variation)
        if jer is not None and self._low["jer"]:
            return ("jer", jer if self.settings.jet_pt == "smeared" else "nominal")
        prefix = f"{self.settings.jet_type}_JES_"
        for direction, sign in (("Up", 1.0), ("Down", -1.0)):
            if variation.startswith(prefix) and variation.endswith(direction):
                return ("jes", variation[len(prefix):-len(direction)], sign)
        return NOMINAL

    def _low_term(self, key: Any) -> tuple[Any, Any]:
        """The type-1 term (dx, dy) of the low-pt jets for one variant, once per chunk."""
        if key in self._low_terms:
            return self._low_terms[key]
        assert self.settings is not None and self._low is not None
        low, jet_type = self._low, self.settings.jet_type
        columns = low["columns"]  # jagged, or flat numpy with the counts of an eager chunk
        pt = columns["pt"]
        if low["jer"]:
            if key[0] == "jer":
                pt = pt * columns[f"jer_{key[1]}"]
            elif self.settings.jet_pt == "smeared":
                pt = pt * columns["jer_nominal"]
        if key[0] == "jes":
            settings = low["settings"]
            unc = get_correction(settings.json_path, f"{settings.jec_mc}_{key[1]}_{jet_type}")
            pt = pt * (1 + key[2] * unc.evaluate(columns["eta"], columns["pt"]))
        keep = columns["keep"]
        term = _sum_xy((pt - columns["raw"]) * keep, columns["phi"],
                       (pt * keep) > self.settings.threshold, low["counts"])
        if key[0] != "jes":  # a JES variant is asked for once per chunk: not kept
            self._low_terms[key] = term
        return term

    # -- the calibrator API ------------------------------------------------------------
    def calibrate(
        self,
        events: Any,
        events_original_collections: Mapping[str, Any],
        variation: str,
        already_applied_calibrators: list[str] | None = None,
    ) -> dict[str, Any]:
        if self.settings is None:
            return {}
        s = self.settings
        jets = events[s.jets]
        corrected = s.jet_pt == "corrected" and "pt_jec" in jets.fields
        field = "pt_jec" if corrected else "pt"
        # the jets of a variation that left them alone are the nominal's: same shift, and
        # outside the unclustered variations the same outputs (the variation changes no MET)
        inputs = [leaf_buffers(jets[f]) for f in (field, "pt_raw", "rawFactor")
                  if f in jets.fields]
        known = self._nominal is not None and all(
            same_buffers(a, b) for a, b in zip(self._nominal[0], inputs))
        low_key = self._low_key(variation)
        jer_of_t1 = corrected and self._jer_variation(variation) is not None
        if known and low_key == NOMINAL and variation not in self._unclustered \
                and not jer_of_t1:
            assert self._nominal is not None
            return self._nominal[2]
        pt_raw = jets.pt_raw if "pt_raw" in jets.fields else jets.pt * (1 - jets.rawFactor)
        if jer_of_t1:
            # nanoAOD-tools' MET_T1_pt_jerUp/Down: the MET of the nominally smeared jets
            if self._smeared_nominal is None:
                raise CalibrationError(
                    f"calibrator {self.name!r}: variation {variation!r} of the unsmeared "
                    "type-1 MET needs the nominal calibrated first (calibration_loop does)")
            dx, dy = self._smeared_nominal
        elif known:
            assert self._nominal is not None
            dx, dy = self._nominal[1]
        else:
            dx, dy = type1_shift(jets, jets[field], pt_raw, s.threshold, s.max_em_fraction)
        out = self._met(events, dx, dy, variation, low_key)
        if variation == NOMINAL:
            # for the jet calibrator's JER variations (they need no variation of this one)
            if corrected and self.isMC:
                self._smeared_nominal = type1_shift(jets, jets.pt, pt_raw, s.threshold,
                                                    s.max_em_fraction)
            if all(i is not None for i in inputs):
                self._nominal = (inputs, (dx, dy), out)
        return out

    def _met(self, events: Any, dx: Any, dy: Any, variation: str,
             low_key: Any) -> dict[str, Any]:
        assert self.settings is not None
        s = self.settings
        # one number per event: on an eager chunk numpy's arithmetic (the same operations)
        raw = events[s.raw_met]
        pt, phi = ops.eager_values(raw.pt), ops.eager_values(raw.phi)
        x = pt * np.cos(phi) - ops.eager_values(dx)
        y = pt * np.sin(phi) - ops.eager_values(dy)
        if self._low is not None:
            low_dx, low_dy = self._low_term(low_key)
            x, y = x - ops.eager_values(low_dx), y - ops.eager_values(low_dy)
        if variation in self._unclustered:
            ux, uy = self._unclustered[variation]
            x, y = x + ops.eager_values(ux), y + ops.eager_values(uy)
        return {f"{s.met}.pt": ops.as_array(np.hypot(x, y)),
                f"{s.met}.phi": ops.as_array(np.arctan2(y, x))}
