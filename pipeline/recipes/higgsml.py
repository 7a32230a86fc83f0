"""Features and systematic variations of the FAIR Universe HiggsML Uncertainty Challenge.

The challenge (H to tau tau, lepton plus hadronic tau) publishes 16 primary ``PRI_*``
features per event; the 12 derived ``DER_*`` features are functions of them. Its three
detector systematics act on the primary features, after which the derived features are
computed again:

* ``tes``, tau energy scale: the hadronic tau pT is multiplied by ``tes`` and
  ``(1 - tes)`` times the (original) tau pT vector is added to the missing transverse
  momentum (MET);
* ``jes``, jet energy scale: the leading and subleading jet pT and ``PRI_jet_all_pt`` are
  multiplied by ``jes`` and ``(1 - jes)`` times the (original) pT vectors of the two jets
  are added to the MET;
* ``soft_met``: a Gaussian of width ``soft_met`` GeV is added to MET x and y.

The functions here follow the challenge's own code, ``ingestion_program/systematics.py``
(``mom4_manipulate`` and ``postprocess``) and ``ingestion_program/derived_quantities.py``
(``DER_data``) of GitHub ``FAIR-Universe/HEP-Challenge``, operation for operation,
including its -25 sentinels for undefined jet quantities, its number-of-jets logic and its
rounding of the primary features to 3 decimals. The challenge's order is::

    pri = apply_systematics(pri, tes, jes, soft_met, normal_x, normal_y)
    pri = {name: column[post_selection_mask(pri)] for name, column in pri.items()}
    der = derived_features(pri)

``apply_systematics`` includes the challenge's removal of jets below 26 GeV (its
``postprocess`` step, which changes events but drops none), and ``post_selection_mask``
is the event selection of the same step. The derived features are computed after both.

All functions take columns as 1-D numpy arrays, pandas Series or 1-D awkward arrays,
eager or typetracer, and return awkward arrays. They use numpy ufuncs, ``np.round`` and
``ak.where`` only, so they run unchanged inside a dask-awkward graph. The arithmetic keeps
the input precision: float32 columns (as in the challenge's parquet file, whose columns
the challenge manipulates in place) give float32 results, float64 columns float64.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import awkward as ak
import numpy as np

PRI_FEATURES: tuple[str, ...] = (
    "PRI_lep_pt",
    "PRI_lep_eta",
    "PRI_lep_phi",
    "PRI_had_pt",
    "PRI_had_eta",
    "PRI_had_phi",
    "PRI_jet_leading_pt",
    "PRI_jet_leading_eta",
    "PRI_jet_leading_phi",
    "PRI_jet_subleading_pt",
    "PRI_jet_subleading_eta",
    "PRI_jet_subleading_phi",
    "PRI_n_jets",
    "PRI_jet_all_pt",
    "PRI_met",
    "PRI_met_phi",
)
"""The 16 primary features, in the challenge's column order."""

DER_FEATURES: tuple[str, ...] = (
    "DER_mass_transverse_met_lep",
    "DER_mass_vis",
    "DER_pt_h",
    "DER_deltaeta_jet_jet",
    "DER_mass_jet_jet",
    "DER_prodeta_jet_jet",
    "DER_deltar_had_lep",
    "DER_pt_tot",
    "DER_sum_pt",
    "DER_pt_ratio_lep_had",
    "DER_met_phi_centrality",
    "DER_lep_eta_centrality",
)
"""The 12 derived features, in the challenge's column order."""

UNDEFINED = -25.0
"""The challenge's value for an undefined quantity (missing jet, undefined centrality)."""
TAU_PT_MIN = 26.0
"""Events with a hadronic tau pT below this (GeV) are dropped after the systematics."""
LEPTON_PT_MIN = 20.0
"""Events with a lepton pT below this (GeV) are dropped after the systematics."""
JET_PT_MIN = 26.0
"""Leading/subleading jets with 0 <= pT <= this (GeV) are removed after the systematics."""
DECIMALS = 3
"""The primary features are rounded to this many decimals after the systematics."""
EPSILON = 1e-4
"""The challenge's shift of degenerate angles in the two centrality features."""

# The primary features the challenge rounds after the systematics (all but PRI_n_jets).
_ROUNDED = tuple(name for name in PRI_FEATURES if name != "PRI_n_jets")


def _as_awkward(values: Any) -> ak.Array:
    """A column as an awkward array (awkward arrays, eager or typetracer, as they are)."""
    if isinstance(values, ak.Array):
        return values
    to_numpy = getattr(values, "to_numpy", None)  # a pandas Series
    if callable(to_numpy):
        values = to_numpy()
    return ak.Array(values)


def _columns(pri: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, ak.Array]:
    missing = [name for name in names if name not in _keys(pri)]
    if missing:
        raise KeyError(f"missing HiggsML primary feature(s): {', '.join(missing)}")
    return {name: _as_awkward(pri[name]) for name in names}


def _keys(pri: Any) -> Any:
    fields = getattr(pri, "fields", None)  # an awkward record array
    if isinstance(fields, list):
        return fields
    return pri.keys() if hasattr(pri, "keys") else pri


def _where(condition: ak.Array, values: ak.Array, otherwise: float) -> ak.Array:
    """``values`` where ``condition``, else the constant ``otherwise`` (dtype kept)."""
    return ak.where(condition, values, ak.full_like(values, otherwise))


def _phi_centrality_terms(
    met_phi: ak.Array, lep_phi: ak.Array, had_phi: ak.Array
) -> tuple[ak.Array, ak.Array]:
    """Numerator and denominator of the MET phi centrality (the challenge's A + B, |A, B|)."""
    side = np.sign(np.sin(had_phi - lep_phi))
    a = np.sin(met_phi - lep_phi) * side
    b = np.sin(had_phi - met_phi) * side
    return a + b, np.sqrt(a**2 + b**2)


def derived_features(pri: Mapping[str, Any]) -> dict[str, ak.Array]:
    """The 12 derived ``DER_*`` features from the 16 primary ``PRI_*`` features.

    The challenge's ``DER_data``: leptons, taus and jets are massless four-vectors built
    from (pT, eta, phi); the MET is the transverse vector (``PRI_met``, ``PRI_met_phi``).
    The jet-jet features and the lepton eta centrality are -25 for events with fewer than
    two jets (``PRI_n_jets <= 1``); the leading (subleading) jet enters ``DER_pt_tot`` and
    ``DER_mass_jet_jet`` only if ``PRI_n_jets >= 1`` (``>= 2``). Negative squared masses
    from rounding are set to 0 in the two mass features that the challenge protects
    (transverse mass and jet-jet mass), not in ``DER_mass_vis``. The MET phi centrality
    is computed again with the lepton phi shifted by 1e-4 where it is undefined (tau and
    lepton back to back or aligned), and is -25 if still undefined; the lepton eta
    centrality divides by 1e-4 instead of by 0 when the two jets have the same eta.

    Parameters
    ----------
    pri
        The primary features by name (a dict, a pandas DataFrame or an awkward record
        array), each a 1-D numpy array, pandas Series or awkward array, eager or
        typetracer. Extra columns are ignored.

    Returns
    -------
    dict
        The derived features by name, in the order of :data:`DER_FEATURES`, as 1-D
        awkward arrays (also for numpy input), with the input's floating-point precision.
        The challenge finally casts them to float32; cast the result if that matters.

    Raises
    ------
    KeyError
        If a primary feature is missing.

    Notes
    -----
    The challenge reads the jets as present from ``PRI_n_jets`` alone. After the removal
    of soft jets in :func:`apply_systematics`, an event that had three or more jets can
    have ``PRI_n_jets >= 2`` with the subleading jet at the -25 sentinel (or
    ``PRI_n_jets >= 1`` with the leading jet at -25); the challenge then computes the
    jet-jet features, ``DER_pt_tot`` and the lepton centrality from the sentinel values
    (a jet of pT -25 at eta -25, phi -25), and so does this function.

    Examples
    --------
    >>> import numpy as np
    >>> pri = {name: np.array([-25.0]) for name in PRI_FEATURES}
    >>> pri.update(PRI_lep_pt=np.array([30.0]), PRI_lep_eta=np.array([0.0]),
    ...            PRI_lep_phi=np.array([0.0]), PRI_had_pt=np.array([30.0]),
    ...            PRI_had_eta=np.array([0.0]), PRI_had_phi=np.array([np.pi]),
    ...            PRI_n_jets=np.array([0.0]), PRI_jet_all_pt=np.array([0.0]),
    ...            PRI_met=np.array([0.0]), PRI_met_phi=np.array([0.0]))
    >>> der = derived_features(pri)
    >>> round(float(der["DER_mass_vis"][0]), 6)  # back-to-back massless: 2 * 30
    60.0
    >>> float(der["DER_mass_jet_jet"][0]), float(der["DER_sum_pt"][0])
    (-25.0, 60.0)
    """
    c = _columns(pri, PRI_FEATURES)
    lep_pt, lep_eta, lep_phi = c["PRI_lep_pt"], c["PRI_lep_eta"], c["PRI_lep_phi"]
    had_pt, had_eta, had_phi = c["PRI_had_pt"], c["PRI_had_eta"], c["PRI_had_phi"]
    j1_pt, j1_eta, j1_phi = (
        c["PRI_jet_leading_pt"],
        c["PRI_jet_leading_eta"],
        c["PRI_jet_leading_phi"],
    )
    j2_pt, j2_eta, j2_phi = (
        c["PRI_jet_subleading_pt"],
        c["PRI_jet_subleading_eta"],
        c["PRI_jet_subleading_phi"],
    )
    n_jets, met, met_phi = c["PRI_n_jets"], c["PRI_met"], c["PRI_met_phi"]
    has_j1 = n_jets >= 1
    has_j2 = n_jets >= 2

    # the challenge's calcul_int: massless four-vectors, jets zeroed when absent
    had_px, had_py = had_pt * np.cos(had_phi), had_pt * np.sin(had_phi)
    had_pz, had_p = had_pt * np.sinh(had_eta), had_pt * np.cosh(had_eta)
    lep_px, lep_py = lep_pt * np.cos(lep_phi), lep_pt * np.sin(lep_phi)
    lep_pz, lep_p = lep_pt * np.sinh(lep_eta), lep_pt * np.cosh(lep_eta)
    met_x, met_y = met * np.cos(met_phi), met * np.sin(met_phi)
    j1_px = _where(has_j1, j1_pt * np.cos(j1_phi), 0.0)
    j1_py = _where(has_j1, j1_pt * np.sin(j1_phi), 0.0)
    j1_pz = _where(has_j1, j1_pt * np.sinh(j1_eta), 0.0)
    j1_p = _where(has_j1, j1_pt * np.cosh(j1_eta), 0.0)
    j2_px = _where(has_j2, j2_pt * np.cos(j2_phi), 0.0)
    j2_py = _where(has_j2, j2_pt * np.sin(j2_phi), 0.0)
    j2_pz = _where(has_j2, j2_pt * np.sinh(j2_eta), 0.0)
    j2_p = _where(has_j2, j2_pt * np.cosh(j2_eta), 0.0)

    mt2 = (met + lep_pt) ** 2 - (met_x + lep_px) ** 2 - (met_y + lep_py) ** 2
    mass_transverse = np.sqrt(_where(mt2 >= 0, mt2, 0.0))

    mass_vis = np.sqrt(
        (lep_p + had_p) ** 2
        - (lep_px + had_px) ** 2
        - (lep_py + had_py) ** 2
        - (lep_pz + had_pz) ** 2
    )

    pt_h = np.sqrt((had_px + lep_px + met_x) ** 2 + (had_py + lep_py + met_y) ** 2)

    deltaeta_jj = _where(has_j2, abs(j2_eta - j1_eta), UNDEFINED)

    mjj2 = (j1_p + j2_p) ** 2 - (j1_px + j2_px) ** 2 - (j1_py + j2_py) ** 2 - (j1_pz + j2_pz) ** 2
    mass_jj = _where(has_j2, np.sqrt(_where(mjj2 >= 0, mjj2, 0.0)), UNDEFINED)

    prodeta_jj = _where(has_j2, j1_eta * j2_eta, UNDEFINED)

    dphi = abs(np.mod(lep_phi - had_phi + 3 * np.pi, 2 * np.pi) - np.pi)
    deltar = np.sqrt((lep_eta - had_eta) ** 2 + dphi**2)

    pt_tot = np.sqrt(
        (had_px + lep_px + met_x + j1_px + j2_px) ** 2
        + (had_py + lep_py + met_y + j1_py + j2_py) ** 2
    )

    sum_pt = had_pt + lep_pt + c["PRI_jet_all_pt"]
    pt_ratio = lep_pt / had_pt

    num, den = _phi_centrality_terms(met_phi, lep_phi, had_phi)
    num_shifted, den_shifted = _phi_centrality_terms(met_phi, lep_phi + EPSILON, had_phi)
    degenerate = den == 0
    num = ak.where(degenerate, num_shifted, num)
    den = ak.where(degenerate, den_shifted, den)
    undefined = den == 0
    # divide by den where defined, else by 1 (the challenge's den + (den == 0))
    met_phi_centrality = _where(~undefined, num / _where(~undefined, den, 1.0), UNDEFINED)

    difference = (j1_eta - j2_eta) ** 2
    mean = (j1_eta + j2_eta) / 2
    difference = ak.where(difference == 0, difference + EPSILON, difference)
    lep_eta_centrality = _where(
        has_j2, np.exp(-4 / difference * ((lep_eta - mean) ** 2)), UNDEFINED
    )

    values = (
        mass_transverse,
        mass_vis,
        pt_h,
        deltaeta_jj,
        mass_jj,
        prodeta_jj,
        deltar,
        pt_tot,
        sum_pt,
        pt_ratio,
        met_phi_centrality,
        lep_eta_centrality,
    )
    return dict(zip(DER_FEATURES, values, strict=True))


def apply_systematics(
    pri: Mapping[str, Any],
    tes: float = 1.0,
    jes: float = 1.0,
    soft_met: float = 0.0,
    normal_x: Any = None,
    normal_y: Any = None,
    *,
    remove_soft_jets: bool = True,
) -> dict[str, ak.Array]:
    """The primary features after the tau and jet energy scales and the soft-MET term.

    The challenge's ``mom4_manipulate`` followed by the jet part of its ``postprocess``,
    in this order:

    1. MET x, y from ``PRI_met`` and ``PRI_met_phi``;
    2. if ``tes != 1``: ``PRI_had_pt *= tes``, and MET += (1 - tes) x the tau pT vector
       before scaling (computed as the challenge does, scaled vector x (1 - tes) / tes);
    3. if ``jes != 1``: the leading jet pT (if ``PRI_n_jets > 0``), the subleading jet pT
       (if ``PRI_n_jets > 1``) and ``PRI_jet_all_pt`` (always, so including any third and
       further jets) are multiplied by ``jes``; MET += (1 - jes) x each of the two jet pT
       vectors before scaling (jets beyond the second do not enter the MET);
    4. if ``soft_met > 0``: MET x += ``soft_met * normal_x``, MET y += ``soft_met *
       normal_y``;
    5. ``PRI_met`` and ``PRI_met_phi`` recomputed from MET x, y (phi by ``arctan2``, in
       [-pi, pi]), also when nothing changed, and every primary feature except
       ``PRI_n_jets`` rounded to 3 decimals (``np.round``, as pandas' ``round``);
    6. if ``remove_soft_jets`` (the challenge's ``postprocess``, applied when it builds its
       test sets): :func:`soft_jet_removal`, which removes a subleading jet with
       0 <= pT <= 26 GeV, then a leading jet in the same range, as if it never existed.
       No event is dropped here; see :func:`post_selection_mask`.

    All shifts are applied in this one pass and the features are rounded once, as the
    challenge does: two passes one after the other (tes, round, then jes from the rounded
    MET) give other MET values (about 14 % of the events of the challenge's sample at
    tes = 1.03, jes = 0.97).

    Parameters
    ----------
    pri
        The 16 primary features by name (a dict, a pandas DataFrame or an awkward record
        array), each a 1-D numpy array, pandas Series or awkward array, eager or
        typetracer. Extra columns are ignored.
    tes, jes
        The tau and jet energy scale factors (1 is nominal), positive.
    soft_met
        The width in GeV of the Gaussian soft-MET term; 0 (or negative, as in the
        challenge) adds none.
    normal_x, normal_y
        One standard-normal number per event each (arrays like the columns), for MET x
        and y, supplied by the caller; needed only if ``soft_met > 0``. The challenge draws
        ``RandomState(seed).normal(0, soft_met, n)`` for x, then the same for y, which is
        ``soft_met`` times the standard normals ``RandomState(seed).standard_normal(2 * n)``
        split in two.
    remove_soft_jets
        Apply step 6 (default, as the challenge's test sets do); ``False`` gives the
        output of the challenge's ``mom4_manipulate`` alone.

    Returns
    -------
    dict
        The 16 primary features by name, in the order of :data:`PRI_FEATURES`, as 1-D
        awkward arrays with the input's floating-point precision (for float32 input the
        same float32 arithmetic as the challenge's pandas code, except the soft-MET term,
        which promotes MET to the precision of the normals, as in the challenge).

    Raises
    ------
    ValueError
        If ``tes`` or ``jes`` is not positive, or ``soft_met > 0`` without both normals.
    KeyError
        If a primary feature is missing.

    Examples
    --------
    >>> import numpy as np
    >>> pri = {name: np.array([-25.0]) for name in PRI_FEATURES}
    >>> pri.update(PRI_lep_pt=np.array([30.0]), PRI_lep_eta=np.array([0.0]),
    ...            PRI_lep_phi=np.array([0.0]), PRI_had_pt=np.array([40.0]),
    ...            PRI_had_eta=np.array([0.0]), PRI_had_phi=np.array([0.0]),
    ...            PRI_n_jets=np.array([0.0]), PRI_jet_all_pt=np.array([0.0]),
    ...            PRI_met=np.array([10.0]), PRI_met_phi=np.array([0.0]))
    >>> out = apply_systematics(pri, tes=1.1)
    >>> float(out["PRI_had_pt"][0]), float(out["PRI_met"][0])  # MET 10 + (1 - 1.1) * 40
    (44.0, 6.0)
    >>> out = apply_systematics(pri, soft_met=2.0, normal_x=np.array([1.5]),
    ...                         normal_y=np.array([0.0]))
    >>> float(out["PRI_met"][0])  # MET x 10 + 2 * 1.5
    13.0
    """
    if not tes > 0 or not jes > 0:
        raise ValueError(f"tes and jes must be positive, got tes={tes}, jes={jes}")
    if soft_met > 0 and (normal_x is None or normal_y is None):
        raise ValueError("soft_met > 0 needs normal_x and normal_y (one per event each)")
    out = _columns(pri, PRI_FEATURES)
    n_jets = out["PRI_n_jets"]

    met_x = out["PRI_met"] * np.cos(out["PRI_met_phi"])
    met_y = out["PRI_met"] * np.sin(out["PRI_met_phi"])

    if tes != 1.0:
        had_pt = out["PRI_had_pt"] * tes
        out["PRI_had_pt"] = had_pt
        factor = (1.0 - tes) / tes
        met_x = met_x + had_pt * np.cos(out["PRI_had_phi"]) * factor
        met_y = met_y + had_pt * np.sin(out["PRI_had_phi"]) * factor

    if jes != 1.0:
        j1 = n_jets > 0
        j2 = n_jets > 1
        j1_pt = ak.where(j1, out["PRI_jet_leading_pt"] * jes, out["PRI_jet_leading_pt"])
        j2_pt = ak.where(j2, out["PRI_jet_subleading_pt"] * jes, out["PRI_jet_subleading_pt"])
        out["PRI_jet_leading_pt"] = j1_pt
        out["PRI_jet_subleading_pt"] = j2_pt
        out["PRI_jet_all_pt"] = out["PRI_jet_all_pt"] * jes
        factor = (1.0 - jes) / jes
        for present, pt, phi in (
            (j1, j1_pt, out["PRI_jet_leading_phi"]),
            (j2, j2_pt, out["PRI_jet_subleading_phi"]),
        ):
            pt = _where(present, pt, 0.0)
            phi = _where(present, phi, 0.0)
            met_x = met_x + pt * np.cos(phi) * factor
            met_y = met_y + pt * np.sin(phi) * factor

    if soft_met > 0:
        met_x = met_x + soft_met * _as_awkward(normal_x)
        met_y = met_y + soft_met * _as_awkward(normal_y)

    out["PRI_met"] = np.sqrt(met_x**2 + met_y**2)
    out["PRI_met_phi"] = np.arctan2(met_y, met_x)

    for name in _ROUNDED:
        out[name] = np.round(out[name], DECIMALS)

    if remove_soft_jets:
        out = soft_jet_removal(out)
    return out


def soft_jet_removal(pri: Mapping[str, Any]) -> dict[str, ak.Array]:
    """The jet part of the challenge's ``postprocess``: jets at 26 GeV or below removed.

    A subleading jet with 0 <= pT <= 26 GeV (both ends included, pandas' ``between``),
    then a leading jet in the same range, is removed as if it never existed: its pT is
    subtracted from ``PRI_jet_all_pt`` (not rounded again), its pT, eta and phi become -25
    and ``PRI_n_jets`` decreases by 1. No event is dropped; see
    :func:`post_selection_mask`. Nothing else is recomputed: the input is the output of
    :func:`apply_systematics` with ``remove_soft_jets=False`` (the challenge's
    ``mom4_manipulate``).

    Parameters
    ----------
    pri
        The 16 primary features by name, as for :func:`apply_systematics`.

    Returns
    -------
    dict
        The 16 primary features by name, in the order of :data:`PRI_FEATURES`.

    Raises
    ------
    KeyError
        If a primary feature is missing.

    Examples
    --------
    >>> import numpy as np
    >>> pri = {name: np.array([-25.0]) for name in PRI_FEATURES}
    >>> pri.update(PRI_n_jets=np.array([2.0]), PRI_jet_leading_pt=np.array([40.0]),
    ...            PRI_jet_subleading_pt=np.array([26.0]), PRI_jet_all_pt=np.array([66.0]))
    >>> out = soft_jet_removal(pri)
    >>> float(out["PRI_n_jets"][0]), float(out["PRI_jet_all_pt"][0])
    (1.0, 40.0)
    """
    out = _columns(pri, PRI_FEATURES)
    for jet in ("subleading", "leading"):
        pt = out[f"PRI_jet_{jet}_pt"]
        soft = (pt >= 0) & (pt <= JET_PT_MIN)
        out["PRI_jet_all_pt"] = ak.where(soft, out["PRI_jet_all_pt"] - pt, out["PRI_jet_all_pt"])
        for quantity in ("pt", "eta", "phi"):
            name = f"PRI_jet_{jet}_{quantity}"
            out[name] = _where(~soft, out[name], UNDEFINED)
        out["PRI_n_jets"] = ak.where(soft, out["PRI_n_jets"] - 1, out["PRI_n_jets"])
    return out


def post_selection_mask(pri: Mapping[str, Any]) -> ak.Array:
    """The events the challenge keeps after the systematics: tau pT >= 26, lepton pT >= 20.

    The event selection of the challenge's ``postprocess``, to apply to the output of
    :func:`apply_systematics` before :func:`derived_features`. The challenge drops the
    events with ``PRI_had_pt < 26`` and those with ``PRI_lep_pt < 20`` (so an event with a
    NaN pT would be kept, as here). On the challenge's nominal sample the tau cut removes
    events (its input goes down to a tau pT of about 23 GeV); the lepton cut removes none,
    as no systematic changes the lepton.

    Parameters
    ----------
    pri
        The primary features by name; only ``PRI_had_pt`` and ``PRI_lep_pt`` are read.

    Returns
    -------
    awkward.Array
        A 1-D boolean array, True for the events kept.

    Examples
    --------
    >>> import numpy as np
    >>> mask = post_selection_mask({"PRI_had_pt": np.array([25.9, 26.0, 40.0]),
    ...                             "PRI_lep_pt": np.array([30.0, 20.0, 19.9])})
    >>> mask.tolist()
    [False, True, False]
    """
    c = _columns(pri, ("PRI_had_pt", "PRI_lep_pt"))
    return ~(c["PRI_had_pt"] < TAU_PT_MIN) & ~(c["PRI_lep_pt"] < LEPTON_PT_MIN)
