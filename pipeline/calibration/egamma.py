"""Electron and photon energy scale (data) and smearing (MC) from the EGM payloads.

Parameters, per period (``electron_scale_and_smearing`` / ``photon_scale_and_smearing``)::

    electron_scale_and_smearing:
      2022_preEE:
        json_path: pog/2022_Summer22/EGM_electronSS.json.gz
        scale: Scale          # inputs: valtype, gain, run, supercluster eta, r9, et
        smearing: Smearing    # inputs: valtype, supercluster eta, r9

Data: ``pt * Scale("total_correction", ...)``. MC: ``pt * (1 + rho z)`` with
``rho = Smearing("rho", ...)`` and z a standard normal keyed by (run, lumi, event, object
index). MC variations: ``{prefix}_scaleUp/Down`` = smeared pt x (1 +- Scale("total_uncertainty"))
and ``{prefix}_smearUp/Down`` = pt x (1 + (rho +- Smearing("err_rho")) z), the same z.
The input pt is kept as ``pt_original``. A period with no entry leaves the objects as they are;
so does an event record without the collection (e.g. no ``Photon`` in the file).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, RootModel

from pipeline.calibration import ops
from pipeline.calibration.calibrator import Calibrator
from pipeline.config.parameters import section
from pipeline.corrections import get_correction
from pipeline.errors import CalibrationError


class EgammaSettings(BaseModel):
    """Payload and correction names of one period."""

    model_config = ConfigDict(extra="forbid")
    json_path: str
    scale: str = "Scale"
    smearing: str = "Smearing"


class EgammaSection(RootModel[dict[str, EgammaSettings]]):
    """An electron or photon parameters section: :class:`EgammaSettings` per period."""


class _EgammaScaleCalibrator(Calibrator):
    """Shared implementation of the electron and photon calibrators."""

    collection: ClassVar[str] = ""
    variation_prefix: ClassVar[str] = ""
    params_section: ClassVar[str] = ""
    params_schema = EgammaSection

    def __init__(self, params: Any, metadata: Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(params, metadata, **kwargs)
        raw = section(params, self.params_section, self.year)
        self.settings = EgammaSettings.model_validate(raw) if raw is not None else None
        self._columns: dict[str, Any] = {}

    def supercluster_eta(self, objects: Any) -> Any:
        raise NotImplementedError

    def initialize(self, events: Any) -> None:
        self._variations = []
        self._columns = {}
        if self.settings is None or self.collection not in events.fields:
            return
        objects = events[self.collection]
        for field in ("pt", "r9", "seedGain", "eta"):
            if field not in objects.fields:
                raise CalibrationError(
                    f"calibrator {self.name!r}: column {self.collection}_{field} is missing "
                    "from the input file"
                )
        path, s = self.settings.json_path, self.settings
        pt = objects.pt
        eta_sc = self.supercluster_eta(objects)
        r9 = objects.r9
        if self.isMC:
            smearing = get_correction(path, s.smearing)
            rho = smearing.evaluate("rho", eta_sc, r9)
            z = ops.object_normal(events, objects, f"{self.name}:smear")
            nominal = pt * (1 + rho * z)
            self._columns["nominal"] = nominal
            if self.do_variations:
                gain = ops.values_astype(objects.seedGain, np.int64)
                run = ops.values_astype(events.run, np.float64)
                unc = get_correction(path, s.scale).evaluate(
                    "total_uncertainty", gain, run, eta_sc, r9, pt)
                err_rho = smearing.evaluate("err_rho", eta_sc, r9)
                prefix = self.variation_prefix
                self._columns[f"{prefix}_scaleUp"] = nominal * (1 + unc)
                self._columns[f"{prefix}_scaleDown"] = nominal * (1 - unc)
                self._columns[f"{prefix}_smearUp"] = pt * (1 + (rho + err_rho) * z)
                self._columns[f"{prefix}_smearDown"] = pt * (1 + (rho - err_rho) * z)
                self._variations = [v for v in self._columns if v != "nominal"]
        else:
            gain = ops.values_astype(objects.seedGain, np.int64)
            run = ops.values_astype(events.run, np.float64)
            scale = get_correction(path, s.scale).evaluate(
                "total_correction", gain, run, eta_sc, r9, pt)
            self._columns["nominal"] = pt * scale
        self._original_pt = pt

    def calibrate(
        self,
        events: Any,
        events_original_collections: Mapping[str, Any],
        variation: str,
        already_applied_calibrators: list[str] | None = None,
    ) -> dict[str, Any]:
        if not self._columns:
            return {}
        pt = self._columns.get(variation, self._columns["nominal"])
        return {f"{self.collection}.pt": pt,
                f"{self.collection}.pt_original": self._original_pt}


class ElectronsScaleCalibrator(_EgammaScaleCalibrator):
    """EGM electron energy scale (data) and smearing (MC); ``ele_scale``, ``ele_smear``."""

    name = "electron_scale_and_smearing"
    has_variations = True
    calibrated_collections = ["Electron.pt", "Electron.pt_original"]
    columns_read = ["Electron.pt", "Electron.eta", "Electron.deltaEtaSC", "Electron.r9",
                    "Electron.seedGain", "run"]
    collection = "Electron"
    variation_prefix = "ele"
    params_section = "electron_scale_and_smearing"

    def supercluster_eta(self, objects: Any) -> Any:
        if "deltaEtaSC" not in objects.fields:
            raise CalibrationError(
                f"calibrator {self.name!r}: column Electron_deltaEtaSC is missing from the "
                "input file"
            )
        return objects.eta + objects.deltaEtaSC


class PhotonsScaleCalibrator(_EgammaScaleCalibrator):
    """EGM photon energy scale (data) and smearing (MC); variations ``pho_scale``/``pho_smear``."""

    name = "photon_scale_and_smearing"
    has_variations = True
    calibrated_collections = ["Photon.pt", "Photon.pt_original"]
    columns_read = ["Photon.pt", "Photon.superclusterEta", "Photon.r9", "Photon.seedGain", "run"]
    collection = "Photon"
    variation_prefix = "pho"
    params_section = "photon_scale_and_smearing"

    def supercluster_eta(self, objects: Any) -> Any:
        if "superclusterEta" in objects.fields:
            return objects.superclusterEta
        return objects.eta
