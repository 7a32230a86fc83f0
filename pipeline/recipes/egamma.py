"""e/gamma energy correction derived from simulation, and the calibrator that applies it (seed 001).

The recipe, run twice:

1. **Derive** (simulation). Generator electrons or photons are matched to reconstructed
   objects of the same event by deltaR: the match of a generator object is the
   *highest-pT* reconstructed object within ``deltaR <= max_dr`` (:func:`best_match_index`);
   generator objects without one are kept, flagged unmatched (:func:`match_table`). On the
   matched pairs, ``gen_pt - reco_pt`` is regressed linearly on ``|eta|``
   (:func:`fit_linear_correction`), an *additive* correction as in the HGCAL e/gamma
   notebook, and written as a correctionlib payload (:func:`write_correction_payload`).
2. **Apply** (next run). The calibrator :class:`DerivedEnergyCorrection` replaces
   ``<collection>.pt`` by the payload's corrected pt::

       corrected_pt = pt + a + b * min(|eta|, eta_max)

   where ``|eta|`` is the supercluster pseudorapidity for electrons
   (``eta + deltaEtaSC``) and photons (``superclusterEta``, or ``eta`` in files without
   it), as in :mod:`pipeline.calibration.egamma`, and ``eta`` for other collections
   (:func:`correction_abs_eta`). Derive with the same ``|eta|`` (pass
   ``reco_eta=correction_abs_eta(...)`` to :func:`match_table`) so both runs agree.

Parameters of the calibrator, per period::

    derived_energy_correction:
      2022_preEE:
        json_path: /path/to/egamma_eta_linear.json.gz   # or a data-file name
        correction: egamma_eta_linear                    # the default
        collection: Electron                             # the default; or Photon

A period without an entry leaves the objects as they are, as does an event record without
the configured collection.
"""

from __future__ import annotations

import gzip
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import awkward as ak
import correctionlib.schemav2 as cs
import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.calibration import ops
from pipeline.calibration.calibrator import CALIBRATORS, Calibrator
from pipeline.config.parameters import format_validation_error, section
from pipeline.corrections import get_correction
from pipeline.errors import CalibrationError, ConfigError
from pipeline.outputs.atomic import atomic_path

#: Name of the correction in the payloads written by default.
DEFAULT_CORRECTION = "egamma_eta_linear"

__all__ = [
    "DEFAULT_CORRECTION",
    "DerivedCorrectionSettings",
    "DerivedEnergyCorrection",
    "best_match_index",
    "correction_abs_eta",
    "correction_payload",
    "fit_inputs",
    "fit_linear_correction",
    "match_table",
    "write_correction_payload",
]


# --- matching ---------------------------------------------------------------------------------


def best_match_index(gen: Any, reco: Any, max_dr: float) -> Any:
    """Index of the highest-pT reconstructed object within ``max_dr`` of each generator object.

    Parameters
    ----------
    gen
        Jagged generator objects (events x objects) with fields ``eta`` and ``phi``.
    reco
        Jagged reconstructed objects of the same events with fields ``pt``, ``eta``, ``phi``.
    max_dr
        Cone size: a reconstructed object is a candidate if
        ``deltaR = hypot(deta, dphi) <= max_dr``, ``dphi`` folded into [-pi, pi).

    Returns
    -------
    Array of type ``var * ?int64``, one entry per generator object: the index into ``reco``
    (same event) of the candidate with the highest pT (the first one on a tie), or None
    when there is no candidate. Several generator objects may share a match.

    Notes
    -----
    Awkward operations only (a nested ``cartesian``, a mask and ``argmax`` with
    ``keepdims``): runs on eager arrays, on typetracers and on dask-awkward arrays.

    Examples
    --------
    >>> import awkward as ak
    >>> gen = ak.Array([[{"eta": 0.0, "phi": 3.1}, {"eta": 2.0, "phi": 0.0}], [],
    ...                 [{"eta": -1.0, "phi": 0.5}]])
    >>> reco = ak.Array([[{"pt": 10.0, "eta": 0.05, "phi": -3.1},
    ...                   {"pt": 30.0, "eta": 0.0, "phi": 3.05},
    ...                   {"pt": 50.0, "eta": 1.0, "phi": 0.0}],
    ...                  [{"pt": 5.0, "eta": 0.0, "phi": 0.0}], []])
    >>> best_match_index(gen, reco, 0.1).tolist()
    [[1, None], [], [None]]
    """
    pairs = ops.cartesian(
        {"gen": gen[["eta", "phi"]], "reco": reco[["pt", "eta", "phi"]]}, axis=1, nested=True
    )
    dr = ops.delta_r(pairs.gen.eta, pairs.gen.phi, pairs.reco.eta, pairs.reco.phi)
    pt_in_cone = ops.mask(pairs.reco.pt, dr <= max_dr)
    best = ops.argmax(pt_in_cone, axis=2, keepdims=True)  # [[i]] or [[None]] per gen object
    return best[:, :, 0]


def match_table(gen: Any, reco: Any, max_dr: float, reco_eta: Any = None) -> Any:
    """Every generator object with its best match (see :func:`best_match_index`) and a flag.

    Parameters
    ----------
    gen
        Jagged generator objects with fields ``pt``, ``eta``, ``phi``.
    reco
        Jagged reconstructed objects with fields ``pt``, ``eta``, ``phi``.
    max_dr
        Cone size of the match.
    reco_eta
        The reconstructed pseudorapidity to report (e.g. :func:`correction_abs_eta`);
        ``reco.eta`` by default. The match itself always uses ``reco.eta``.

    Returns
    -------
    Jagged records, one per generator object (unmatched ones included), with fields
    ``gen_pt``, ``gen_eta``, ``gen_phi``, ``matched`` (bool), ``reco_index``, ``reco_pt``
    and ``reco_eta`` (the last three None when unmatched).

    Examples
    --------
    >>> import awkward as ak
    >>> gen = ak.Array([[{"pt": 20.0, "eta": 0.0, "phi": 0.0},
    ...                  {"pt": 9.0, "eta": 2.0, "phi": 1.0}]])
    >>> reco = ak.Array([[{"pt": 18.0, "eta": 0.01, "phi": 0.0}]])
    >>> table = match_table(gen, reco, 0.1)
    >>> table.matched.tolist(), table.reco_pt.tolist()
    ([[True, False]], [[18.0, None]])
    """
    index = best_match_index(gen, reco, max_dr)
    eta = reco.eta if reco_eta is None else reco_eta
    return ops.zip({
        "gen_pt": gen.pt,
        "gen_eta": gen.eta,
        "gen_phi": gen.phi,
        "matched": ~ops.is_none(index, axis=1),
        "reco_index": index,
        "reco_pt": reco.pt[index],
        "reco_eta": eta[index],
    })


def fit_inputs(table: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(|reco_eta|, gen_pt, reco_pt)`` of the matched rows of a :func:`match_table` (eager).

    Examples
    --------
    >>> import awkward as ak
    >>> gen = ak.Array([[{"pt": 20.0, "eta": -1.0, "phi": 0.0}], [{"pt": 5.0, "eta": 0.0,
    ...                  "phi": 0.0}]])
    >>> reco = ak.Array([[{"pt": 18.0, "eta": -1.02, "phi": 0.0}], []])
    >>> [a.tolist() for a in fit_inputs(match_table(gen, reco, 0.1))]
    [[1.02], [20.0], [18.0]]
    """
    rows = ak.flatten(table[table.matched], axis=1)
    return (
        np.abs(ak.to_numpy(ak.drop_none(rows.reco_eta))).astype(np.float64),
        ak.to_numpy(rows.gen_pt).astype(np.float64),
        ak.to_numpy(ak.drop_none(rows.reco_pt)).astype(np.float64),
    )


# --- fit ----------------------------------------------------------------------------------------


def fit_linear_correction(
    abs_eta: Any, gen_pt: Any, reco_pt: Any, weights: Any = None
) -> tuple[float, float]:
    """Least-squares fit of ``gen_pt - reco_pt = a + b * abs_eta``; returns ``(a, b)``.

    Parameters
    ----------
    abs_eta, gen_pt, reco_pt
        One-dimensional arrays of the matched pairs (numpy, or anything ``np.asarray`` takes).
    weights
        Optional non-negative weights ``w``: minimises ``sum w (y - a - b x)^2``
        (``np.polyfit`` with ``w=sqrt(weights)``).

    Raises
    ------
    ValueError
        Arrays of different lengths or not one-dimensional, non-finite values, negative
        weights, or fewer than two distinct ``abs_eta`` values with non-zero weight.

    Examples
    --------
    >>> x = np.array([0.1, 0.8, 1.5, 2.2])
    >>> gen = np.array([30.0, 40.0, 50.0, 60.0])
    >>> a, b = fit_linear_correction(x, gen, gen - (0.5 + 2.0 * x))
    >>> round(a, 9), round(b, 9)
    (0.5, 2.0)
    """
    x = np.asarray(abs_eta, dtype=np.float64)
    y = np.asarray(gen_pt, dtype=np.float64) - np.asarray(reco_pt, dtype=np.float64)
    if x.ndim != 1 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(
            "abs_eta, gen_pt and reco_pt must be one-dimensional arrays of the same length; "
            f"got shapes {np.shape(abs_eta)}, {np.shape(gen_pt)}, {np.shape(reco_pt)}"
        )
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != x.shape:
        raise ValueError(f"weights have shape {w.shape}; the data have {x.shape}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y)) and np.all(np.isfinite(w))):
        raise ValueError("abs_eta, gen_pt, reco_pt and weights must be finite")
    if np.any(w < 0):
        raise ValueError("weights must be non-negative")
    if len(np.unique(x[w > 0])) < 2:
        raise ValueError(
            "fit_linear_correction needs at least two distinct abs_eta values with non-zero "
            f"weight; got {len(x)} pairs"
        )
    sw = np.sqrt(w)
    design = np.stack([sw, sw * x], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, sw * y, rcond=None)
    return float(a), float(b)


# --- payload --------------------------------------------------------------------------------


def correction_payload(
    a: float,
    b: float,
    name: str = DEFAULT_CORRECTION,
    eta_max: float = 3.0,
    description: str = (
        "Additive eta-dependent e/gamma energy correction from a linear fit of "
        "(gen pt - reco pt) on |eta| of generator-matched objects"
    ),
    version: int = 1,
) -> dict[str, Any]:
    """A correctionlib (schema v2) document holding the correction ``name``.

    The correction has inputs ``abs_eta`` and ``pt`` (both real) and returns the corrected pt,
    ``pt + a + b * min(|abs_eta|, eta_max)`` (a TFormula ``formula`` node with parameters
    ``[a, b, eta_max]``): beyond ``eta_max`` the correction stays at its value there.

    Raises
    ------
    ValueError
        ``a`` or ``b`` not finite, or ``eta_max`` not a positive finite number.

    Examples
    --------
    >>> import correctionlib
    >>> doc = correction_payload(0.5, 2.0)
    >>> cset = correctionlib.CorrectionSet.from_string(json.dumps(doc))
    >>> cset["egamma_eta_linear"].evaluate(1.0, 40.0), cset["egamma_eta_linear"].evaluate(5.0, 40.0)
    (42.5, 46.5)
    """
    a, b, eta_max = float(a), float(b), float(eta_max)
    if not (math.isfinite(a) and math.isfinite(b)):
        raise ValueError(f"correction coefficients must be finite; got a={a}, b={b}")
    if not (math.isfinite(eta_max) and eta_max > 0):
        raise ValueError(f"eta_max must be a positive finite number; got {eta_max}")
    doc = {
        "schema_version": 2,
        "description": f"calibrew e/gamma derived correction {name!r}",
        "corrections": [
            {
                "name": name,
                "description": f"{description}; corrected pt = pt + a + b * min(|eta|, "
                f"eta_max) with a = {a!r}, b = {b!r}, eta_max = {eta_max!r}",
                "version": int(version),
                "inputs": [
                    {"name": "abs_eta", "type": "real",
                     "description": "|eta| (supercluster eta for electrons and photons)"},
                    {"name": "pt", "type": "real", "description": "uncorrected pt [GeV]"},
                ],
                "output": {"name": "corrected_pt", "type": "real",
                           "description": "corrected pt [GeV]"},
                "data": {
                    "nodetype": "formula",
                    "expression": "y + [0] + [1]*min(abs(x), [2])",
                    "parser": "TFormula",
                    "variables": ["abs_eta", "pt"],
                    "parameters": [a, b, eta_max],
                },
            }
        ],
    }
    cs.CorrectionSet.model_validate(doc)  # raises pydantic.ValidationError if malformed
    return doc


def write_correction_payload(
    path: str | os.PathLike[str], a: float, b: float, **kwargs: Any
) -> Path:
    """Write :func:`correction_payload` ``(a, b, **kwargs)`` to ``path``; return the path.

    A name ending in ``.gz`` is gzip-compressed JSON, anything else plain JSON. The file is
    replaced atomically (a reader sees the old payload or the new one).

    Examples
    --------
    >>> import tempfile, correctionlib
    >>> path = write_correction_payload(Path(tempfile.mkdtemp()) / "c.json.gz", 0.5, 2.0)
    >>> correctionlib.CorrectionSet.from_file(str(path))["egamma_eta_linear"].evaluate(1.0, 40.0)
    42.5
    """
    target = Path(path)
    text = json.dumps(correction_payload(a, b, **kwargs), indent=1)
    with atomic_path(target) as tmp:
        if target.name.endswith(".gz"):
            with gzip.open(tmp, "wt", encoding="utf-8") as fh:
                fh.write(text)
        else:
            tmp.write_text(text, encoding="utf-8")
    return target


# --- calibrator -----------------------------------------------------------------------------


def correction_abs_eta(objects: Any, collection: str) -> Any:
    """The ``|eta|`` the correction is evaluated at, for objects of ``collection``.

    ``Electron``: ``|eta + deltaEtaSC|`` (supercluster eta); ``Photon``: ``|superclusterEta|``
    when the file has it, else ``|eta|``; any other collection: ``|eta|``.

    Raises
    ------
    CalibrationError
        Electrons without ``deltaEtaSC``.

    Examples
    --------
    >>> import awkward as ak
    >>> ele = ak.Array([[{"eta": -1.0, "deltaEtaSC": -0.25}]])
    >>> correction_abs_eta(ele, "Electron").tolist()
    [[1.25]]
    """
    if collection == "Electron":
        if "deltaEtaSC" not in objects.fields:
            raise CalibrationError(
                "column Electron_deltaEtaSC (supercluster eta - eta) is missing from the input "
                "file"
            )
        return np.abs(objects.eta + objects.deltaEtaSC)
    if collection == "Photon" and "superclusterEta" in objects.fields:
        return np.abs(objects.superclusterEta)
    return np.abs(objects.eta)


class DerivedCorrectionSettings(BaseModel):
    """Settings of one period: the payload, the correction in it, the collection to correct."""

    model_config = ConfigDict(extra="forbid")
    json_path: str
    correction: str = DEFAULT_CORRECTION
    collection: str = "Electron"


class DerivedEnergyCorrection(Calibrator):
    """Apply a derived e/gamma pt correction (:func:`correction_payload`) to one collection.

    Reads ``derived_energy_correction.<period>`` = ``{json_path, correction, collection}``
    and replaces ``<collection>.pt`` by the correction evaluated at
    (:func:`correction_abs_eta`, current pt). No variations. A period without an entry, or
    events without the collection, are left unchanged.

    ``calibrated_collections`` is a class attribute the manager reads before any instance
    exists (to keep the originals), so it lists every collection the calibrator may
    correct: ``Electron.pt`` and ``Photon.pt``; the configured ``collection`` must be one of
    them (checked on construction). Only the configured one is returned. To correct another
    collection, subclass with a new ``name`` and ``calibrated_collections``.

    The correction applies to the pt the calibrator receives: placed after a calibrator that
    changes the same collection (e.g. ``electron_scale_and_smearing``), it corrects that
    calibrator's output in every variation. Otherwise it evaluates once per chunk and returns
    the same array for every variation, so variations are not seen to change the collection.

    Examples
    --------
    >>> import tempfile, awkward as ak
    >>> from pipeline.calibration import CalibratorsManager
    >>> path = write_correction_payload(Path(tempfile.mkdtemp()) / "c.json", 1.0, 2.0)
    >>> params = {"derived_energy_correction": {"2022_preEE": {"json_path": str(path)}}}
    >>> events = ak.Array([{"Electron": [{"pt": 20.0, "eta": 0.5, "deltaEtaSC": 0.0}]}])
    >>> manager = CalibratorsManager([DerivedEnergyCorrection], events, params,
    ...                              {"isMC": False, "year": "2022_preEE"})
    >>> manager.calibrate(events, "nominal").Electron.pt.tolist()
    [[22.0]]
    """

    name = "derived_energy_correction"
    has_variations = False
    isMC_only = False
    calibrated_collections = ["Electron.pt", "Photon.pt"]
    columns_read = ["Electron.pt", "Electron.eta", "Electron.deltaEtaSC",
                    "Photon.pt", "Photon.superclusterEta", "Photon.eta"]
    params_section: ClassVar[str] = "derived_energy_correction"

    def __init__(
        self, params: Any, metadata: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(params, metadata, **kwargs)
        where = f"{self.params_section}.{self.year}"
        raw = section(params, self.params_section, self.year)
        self.settings: DerivedCorrectionSettings | None = None
        if raw is not None:
            try:
                self.settings = DerivedCorrectionSettings.model_validate(raw)
            except ValidationError as err:
                raise ConfigError("parameters", format_validation_error(err, where)) from err
            key = f"{self.settings.collection}.pt"
            if key not in self.calibrated_collections:
                allowed = [c.split(".")[0] for c in self.calibrated_collections if "." in c]
                raise ConfigError(
                    "parameters",
                    [(f"{where}.collection",
                      f"{self.name!r} corrects one of {allowed}, not "
                      f"{self.settings.collection!r}")],
                )
        self._correction: Any = None
        self._nominal: Any = None

    @property
    def collection(self) -> str | None:
        """The collection corrected for this period, or None (no settings)."""
        return self.settings.collection if self.settings is not None else None

    def initialize(self, events: Any) -> None:
        self._variations = []
        self._correction = None
        self._nominal = None
        if self.settings is None or self.settings.collection not in events.fields:
            return
        fields = events[self.settings.collection].fields
        for field in ("pt", "eta"):
            if field not in fields:
                raise CalibrationError(
                    f"calibrator {self.name!r}: column {self.settings.collection}_{field} is "
                    "missing from the input file"
                )
        self._correction = get_correction(self.settings.json_path, self.settings.correction)

    def corrected_pt(self, objects: Any) -> Any:
        """The payload's corrected pt of ``objects`` (of the configured collection)."""
        assert self.settings is not None and self._correction is not None
        abs_eta = correction_abs_eta(objects, self.settings.collection)
        return self._correction.evaluate(abs_eta, objects.pt)

    def _inputs_changed_upstream(self, applied: Sequence[str]) -> bool:
        """Whether a calibrator that ran before this one may have changed the collection."""
        assert self.settings is not None
        for name in applied:
            cls = CALIBRATORS.get(name)
            if cls is None:
                return True
            if any(key.split(".")[0] == self.settings.collection
                   for key in cls.calibrated_collections):
                return True
        return False

    def calibrate(
        self,
        events: Any,
        events_original_collections: Mapping[str, Any],
        variation: str,
        already_applied_calibrators: list[str] | None = None,
    ) -> dict[str, Any]:
        if self._correction is None or self.settings is None:
            return {}
        key = f"{self.settings.collection}.pt"
        objects = events[self.settings.collection]
        if self._inputs_changed_upstream(already_applied_calibrators or []):
            return {key: self.corrected_pt(objects)}
        if self._nominal is None:
            self._nominal = self.corrected_pt(objects)
        return {key: self._nominal}
