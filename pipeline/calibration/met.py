"""Type-1 MET from the calibrated jets (``met_rescaling``), for the nominal and every variation.

Parameters, per period (``met_rescaling``)::

    met_rescaling:
      2022_preEE:
        met: PuppiMET            # the collection written (pt, phi)
        raw_met: RawPuppiMET     # the uncorrected MET the propagation starts from
        jets: Jet                # calibrated jets (after jet_calibration)
        low_pt_jets: CorrT1METJet
        jet_type: AK4PFPuppi     # JEC of the low-pt jets: jets_calibration.jet_types.<jet_type>
        threshold: 15.0          # GeV, on the muon-subtracted corrected jet pt
        max_em_fraction: 0.9

Method: for every jet with muon-subtracted corrected pt above the threshold and an
electromagnetic energy fraction (``chEmEF + neEmEF``) below the maximum, the change
``pt_corr - pt_raw`` (both muon-subtracted) is subtracted vectorially from the raw MET. The
low-pt jets that NanoAOD stores separately (``CorrT1METJet``, raw pt below 15 GeV) get the
same JEC and enter the same way. The jets are those of the current variation, so every jet
variation propagates to the MET. MC variations ``met_unclusteredUp/Down`` add NanoAOD's
unclustered-energy shift (``ptUnclusteredUp`` / ``phiUnclusteredUp`` minus the stored MET).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import awkward as ak
import numpy as np
from pydantic import BaseModel, ConfigDict

from pipeline.calibration import ops
from pipeline.calibration.calibrator import Calibrator
from pipeline.calibration.columns import leaf_buffers, same_buffers
from pipeline.calibration.jets import JetsCalibrationParams, rho_of
from pipeline.corrections import get_compound
from pipeline.errors import CalibrationError
from pipeline.parameters import section


class METSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    met: str = "PuppiMET"
    raw_met: str = "RawPuppiMET"
    jets: str = "Jet"
    low_pt_jets: str | None = "CorrT1METJet"
    jet_type: str = "AK4PFPuppi"
    threshold: float = 15.0
    max_em_fraction: float = 0.9


def _sum_xy(pt: Any, phi: Any, selected: Any) -> tuple[Any, Any]:
    """Per-event sums of the selected objects' (px, py)."""
    px = ops.where(selected, pt * np.cos(phi), 0.0)
    py = ops.where(selected, pt * np.sin(phi), 0.0)
    return ops.sum(px, axis=1), ops.sum(py, axis=1)


def _flat_lists(arrays: list[Any]) -> tuple[np.ndarray, list[np.ndarray]] | None:
    """(offsets, flat values) of eager lists of the same lengths; None otherwise."""
    if not all(isinstance(a, ak.Array) and a.ndim == 2 for a in arrays):
        return None
    if ak.backend(*arrays) != "cpu":
        return None
    layouts = [ak.to_layout(a) for a in arrays]
    if not all(isinstance(x, ak.contents.ListOffsetArray)
               and isinstance(x.content, ak.contents.NumpyArray) for x in layouts):
        return None
    offsets = layouts[0].offsets.data
    if not all(x.offsets.data is offsets or np.array_equal(x.offsets.data, offsets)
               for x in layouts[1:]):
        return None
    start, stop = int(offsets[0]), int(offsets[-1])
    return offsets, [np.asarray(x.content.data)[start:stop] for x in layouts]


def _sum_flat(offsets: np.ndarray, values: np.ndarray) -> ak.Array:
    """Per-list sums, adding entry after entry as awkward's sum does."""
    counts = np.diff(offsets)
    event = np.repeat(np.arange(len(counts)), counts)
    return ak.Array(np.bincount(event, weights=values, minlength=len(counts)))


def type1_shift(jets: Any, pt_corr: Any, pt_raw: Any, threshold: float,
                max_em_fraction: float | None) -> tuple[Any, Any]:
    """(dx, dy) = sum over selected jets of (corrected - raw) pt vectors, muon-subtracted.

    Eager arrays are computed on their flat values (the same operations, summed per event
    in the same order); lazy ones and typetracers with awkward's operations.
    """
    flat = _flat_lists([pt_corr, pt_raw, jets.muonSubtrFactor, jets.phi, jets.chEmEF,
                        jets.neEmEF])
    if flat is not None:
        offsets, (corr_pt, raw_pt, muon, phi, ch_em, ne_em) = flat
        keep = 1 - muon
        corr, raw = corr_pt * keep, raw_pt * keep
        selected = corr > threshold
        if max_em_fraction is not None:
            selected = selected & ((ch_em + ne_em) < max_em_fraction)
        shift = corr - raw
        return (_sum_flat(offsets, np.where(selected, shift * np.cos(phi), 0.0)),
                _sum_flat(offsets, np.where(selected, shift * np.sin(phi), 0.0)))
    keep = 1 - jets.muonSubtrFactor
    corr, raw = pt_corr * keep, pt_raw * keep
    selected = corr > threshold
    if max_em_fraction is not None:
        selected = selected & ((jets.chEmEF + jets.neEmEF) < max_em_fraction)
    return _sum_xy(corr - raw, jets.phi, selected)


class METCalibrator(Calibrator):
    """Type-1 propagation of the calibrated jets to the MET (run it after the jets)."""

    name = "met_rescaling"
    has_variations = True
    calibrated_collections = ["PuppiMET.pt", "PuppiMET.phi", "MET.pt", "MET.phi"]
    columns_read = ["RawPuppiMET.pt", "RawPuppiMET.phi", "Jet.muonSubtrFactor", "Jet.chEmEF",
                    "Jet.neEmEF", "CorrT1METJet.rawPt", "CorrT1METJet.eta",
                    "CorrT1METJet.phi", "CorrT1METJet.area", "CorrT1METJet.muonSubtrFactor"]
    params_section = "met_rescaling"

    def __init__(self, params: Any, metadata: Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(params, metadata, **kwargs)
        raw = section(params, self.params_section, self.year)
        self.settings = METSettings.model_validate(raw) if raw is not None else None
        self.jet_params = section(params, "jets_calibration") or {}

    def initialize(self, events: Any) -> None:
        self._variations = []
        self._low_pt: tuple[Any, Any] | None = None
        self._nominal: tuple[list[Any], tuple[Any, Any], dict[str, Any]] | None = None
        self._unclustered: dict[str, tuple[Any, Any]] = {}
        if self.settings is None:
            return
        s = self.settings
        for coll in (s.met, s.raw_met, s.jets):
            if coll not in events.fields:
                raise CalibrationError(
                    f"calibrator {self.name!r}: the events have no {coll!r} collection")
        if s.low_pt_jets and s.low_pt_jets in events.fields:
            self._low_pt = self._low_pt_shift(events, events[s.low_pt_jets])
        met = events[s.met]
        if self.isMC and self.do_variations and "ptUnclusteredUp" in met.fields:
            x, y = met.pt * np.cos(met.phi), met.pt * np.sin(met.phi)
            for direction in ("Up", "Down"):
                pt, phi = met[f"ptUnclustered{direction}"], met[f"phiUnclustered{direction}"]
                self._unclustered[f"met_unclustered{direction}"] = (
                    pt * np.cos(phi) - x, pt * np.sin(phi) - y)
            self._variations = list(self._unclustered)

    def _low_pt_shift(self, events: Any, low: Any) -> tuple[Any, Any]:
        """JEC of the low-pt jets (the jet calibrator's payload for ``jet_type``)."""
        assert self.settings is not None
        config = JetsCalibrationParams.model_validate(self.jet_params)
        try:
            settings = config.jet_types[self.settings.jet_type][self.year]
        except KeyError:
            raise CalibrationError(
                f"calibrator {self.name!r}: no jets_calibration payload for jet type "
                f"{self.settings.jet_type!r} in period {self.year!r}") from None
        tag = settings.jec_mc if self.isMC else settings.jec_data.get(
            str(self.metadata.get("era", "")), settings.jec_mc)
        jec = get_compound(settings.json_path,
                           f"{tag}_{settings.level}_{self.settings.jet_type}")
        raw = low.rawPt
        corr = raw * jec.evaluate(low.area, low.eta, raw, rho_of(events))
        keep = 1 - low.muonSubtrFactor
        return _sum_xy((corr - raw) * keep, low.phi, (corr * keep) > self.settings.threshold)

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
        # the jets of a variation that left them alone are the nominal's: same shift, and
        # outside the unclustered variations the same outputs (the variation changes no MET)
        inputs = [leaf_buffers(jets[f]) for f in ("pt", "pt_raw", "rawFactor")
                  if f in jets.fields]
        known = self._nominal is not None and all(
            same_buffers(a, b) for a, b in zip(self._nominal[0], inputs))
        if known and variation not in self._unclustered:
            assert self._nominal is not None
            return self._nominal[2]
        if known:
            assert self._nominal is not None
            dx, dy = self._nominal[1]
        else:
            pt_raw = jets.pt_raw if "pt_raw" in jets.fields else jets.pt * (1 - jets.rawFactor)
            dx, dy = type1_shift(jets, jets.pt, pt_raw, s.threshold, s.max_em_fraction)
        out = self._met(events, dx, dy, variation)
        if variation == "nominal" and all(i is not None for i in inputs):
            self._nominal = (inputs, (dx, dy), out)
        return out

    def _met(self, events: Any, dx: Any, dy: Any, variation: str) -> dict[str, Any]:
        assert self.settings is not None
        s = self.settings
        raw = events[s.raw_met]
        x = raw.pt * np.cos(raw.phi) - dx
        y = raw.pt * np.sin(raw.phi) - dy
        if self._low_pt is not None:
            x, y = x - self._low_pt[0], y - self._low_pt[1]
        if variation in self._unclustered:
            ux, uy = self._unclustered[variation]
            x, y = x + ux, y + uy
        return {f"{s.met}.pt": np.hypot(x, y), f"{s.met}.phi": np.arctan2(y, x)}
