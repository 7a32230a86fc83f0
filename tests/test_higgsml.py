"""The HiggsML Uncertainty Challenge recipe against the challenge's own 1000-event sample.

``pipeline.recipes.higgsml`` follows the challenge's ``systematics.py`` and
``derived_quantities.py`` (GitHub FAIR-Universe/HEP-Challenge). The derived features are
checked against the ``DER_*`` columns of the challenge's file; the systematics against an
independent, straightforward per-event loop over the definitions written here.
"""

from __future__ import annotations

import math

import awkward as ak
import numpy as np
import pandas as pd
import pytest

from pipeline.inputs.datafiles import find_data_file
from pipeline.recipes.higgsml import (
    DER_FEATURES,
    PRI_FEATURES,
    apply_systematics,
    derived_features,
    post_selection_mask,
)

FILE = "FAIR_Universe_HiggsML_data.parquet"

# A value rounded to 3 decimals may round the other way when the arithmetic before the
# rounding differs in its last bits (float32 here, float64 in the loop): one unit of the
# third decimal, plus float32 noise of the challenge's precision (6e-8 relative, a few
# operations, on values up to ~500 GeV).
ROUNDING_ATOL = 1e-3 + 1e-4
ROUNDING_RTOL = 1e-6


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return pd.read_parquet(find_data_file(FILE))


@pytest.fixture(scope="module")
def pri(frame) -> dict[str, np.ndarray]:
    """The primary features as the challenge stores and manipulates them (float32)."""
    return {name: frame[name].to_numpy() for name in PRI_FEATURES}


def _numpy(columns) -> dict[str, np.ndarray]:
    return {name: ak.to_numpy(values) for name, values in columns.items()}


def _wrapped(delta: np.ndarray) -> np.ndarray:
    """An angle difference in [-pi, pi] (phi = pi and phi = -pi are the same direction)."""
    return np.mod(delta + np.pi, 2 * np.pi) - np.pi


# ---------------------------------------------------------------------------------------
# the file and the feature lists
# ---------------------------------------------------------------------------------------


def test_feature_lists_are_the_file_columns_in_order(frame):
    columns = list(frame.columns)
    assert list(PRI_FEATURES) == [c for c in columns if c.startswith("PRI_")]
    assert list(DER_FEATURES) == [c for c in columns if c.startswith("DER_")]
    assert len(PRI_FEATURES) == 16
    assert len(DER_FEATURES) == 12


# ---------------------------------------------------------------------------------------
# derived features
# ---------------------------------------------------------------------------------------

# The three invariant masses come from differences of squares (E^2 - p^2). The challenge
# computes them in float32, so their squares carry an absolute error of float32 epsilon
# (6e-8) times the squared energy scale: a transverse mass of 0.03 GeV in the file is
# 0.027 GeV in float64 (8e-3 absolute, 6e5 relative). They are compared as squares,
# to 5e-6 x scale^2 (the largest seen in float64 is 4e-7 x scale^2). A massive tau
# (0.8 GeV) in the visible mass would be off by ~6e-5 x scale^2 and fail.
MASS_SQUARE_RTOL = 5e-6
# Everything else: float32 noise of the challenge's computation, rtol 1e-5 (the largest
# seen is 2e-6 relative) and atol 1e-4 (the largest seen is 3e-5 GeV, in DER_pt_tot);
# both well below the 1e-3 to which the primary inputs are rounded.
DER_RTOL = 1e-5
DER_ATOL = 1e-4


def _mass_scales(pri: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    p = {name: values.astype(np.float64) for name, values in pri.items()}
    two_jets = p["PRI_n_jets"] >= 2
    return {
        "DER_mass_transverse_met_lep": p["PRI_met"] + p["PRI_lep_pt"],
        "DER_mass_vis": p["PRI_lep_pt"] * np.cosh(p["PRI_lep_eta"])
        + p["PRI_had_pt"] * np.cosh(p["PRI_had_eta"]),
        "DER_mass_jet_jet": np.where(
            two_jets,
            p["PRI_jet_leading_pt"] * np.cosh(p["PRI_jet_leading_eta"])
            + p["PRI_jet_subleading_pt"] * np.cosh(p["PRI_jet_subleading_eta"]),
            1.0,
        ),
    }


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_derived_features_reproduce_the_file(frame, pri, dtype):
    # float32 is the challenge's own precision (its file and its pandas arithmetic);
    # float64 is what a pipeline that upcasts gets. The same tolerances hold for both.
    inputs = {name: values.astype(dtype) for name, values in pri.items()}
    der = _numpy(derived_features(inputs))
    assert list(der) == list(DER_FEATURES)
    scales = _mass_scales(pri)
    for name in DER_FEATURES:
        got = der[name].astype(np.float64)
        expected = frame[name].to_numpy().astype(np.float64)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        # the -25 sentinels sit exactly where the file has them
        np.testing.assert_array_equal(got == -25, expected == -25, err_msg=name)
        if name in scales:
            np.testing.assert_array_less(
                np.abs(got**2 - expected**2), MASS_SQUARE_RTOL * scales[name] ** 2 + 1e-12
            )
        else:
            np.testing.assert_allclose(got, expected, rtol=DER_RTOL, atol=DER_ATOL, err_msg=name)


def test_derived_features_sentinels_and_jet_counts(frame, pri):
    # The jet-jet features are defined exactly for the events with two or more jets;
    # and the sample has events of each kind, so the check above covers both branches.
    der = _numpy(derived_features(pri))
    two_jets = pri["PRI_n_jets"] >= 2
    assert 0 < two_jets.sum() < len(two_jets)
    for name in ("DER_deltaeta_jet_jet", "DER_mass_jet_jet", "DER_prodeta_jet_jet"):
        assert np.all(der[name][~two_jets] == -25)
        assert np.all(der[name][two_jets] != -25)
    assert np.all(der["DER_lep_eta_centrality"][~two_jets] == -25)
    centrality = der["DER_lep_eta_centrality"][two_jets]
    assert np.all((centrality >= 0) & (centrality <= 1))


def test_derived_features_degenerate_angles():
    # Tau and lepton at the same phi: sign(sin(dphi)) = 0 makes the MET centrality 0/0;
    # the challenge recomputes it with the lepton phi shifted by 1e-4 (finite, not -25).
    # Two jets at the same eta: the lepton centrality divides by 1e-4 instead of 0.
    pri = {name: np.array([1.0]) for name in PRI_FEATURES}
    pri.update(
        PRI_lep_pt=np.array([30.0]),
        PRI_lep_eta=np.array([0.5]),
        PRI_lep_phi=np.array([1.0]),
        PRI_had_pt=np.array([40.0]),
        PRI_had_eta=np.array([-0.5]),
        PRI_had_phi=np.array([1.0]),
        PRI_met=np.array([20.0]),
        PRI_met_phi=np.array([2.0]),
        PRI_n_jets=np.array([2.0]),
        PRI_jet_leading_pt=np.array([50.0]),
        PRI_jet_subleading_pt=np.array([40.0]),
        PRI_jet_leading_eta=np.array([0.5]),
        PRI_jet_subleading_eta=np.array([0.5]),
    )
    der = _numpy(derived_features(pri))
    # shifted lepton: sign(sin(-1e-4)) = -1, A = -sin(1), B = -sin(-1): A + B = 0
    assert der["DER_met_phi_centrality"][0] == pytest.approx(0.0, abs=1e-3)
    # lepton exactly at the jets' mean eta: exp(-4 / 1e-4 * 0) = 1
    assert der["DER_lep_eta_centrality"][0] == 1.0
    pri["PRI_lep_eta"] = np.array([0.6])  # exp(-4 / 1e-4 * 0.01) = exp(-400)
    assert derived_features(pri)["DER_lep_eta_centrality"][0] == pytest.approx(np.exp(-400))


def test_collinear_masses_are_clipped_at_zero():
    # Collinear massless pairs (lepton and MET; the two jets) have a squared mass of 0
    # that rounding makes slightly negative for some angles; the challenge sets it to 0
    # (sqrt(x * (x >= 0))): no NaN, and exactly 0 where the squared mass came out < 0.
    phi = np.linspace(-3.0, 3.0, 301)
    pt = np.full_like(phi, 35.7)
    pri = {name: np.full_like(phi, 1.0) for name in PRI_FEATURES}
    pri.update(
        PRI_lep_pt=pt,
        PRI_lep_phi=phi,
        PRI_lep_eta=np.full_like(phi, 0.4),
        PRI_had_pt=np.full_like(phi, 40.0),
        PRI_had_phi=phi + 1.0,
        PRI_met=pt,
        PRI_met_phi=phi,
        PRI_n_jets=np.full_like(phi, 2.0),
        PRI_jet_leading_pt=1.5 * pt,
        PRI_jet_subleading_pt=pt,
        PRI_jet_leading_eta=np.full_like(phi, 1.3),
        PRI_jet_subleading_eta=np.full_like(phi, 1.3),
        PRI_jet_leading_phi=phi,
        PRI_jet_subleading_phi=phi,
    )
    der = _numpy(derived_features(pri))
    met_x, met_y = pt * np.cos(phi), pt * np.sin(phi)
    mt2 = (pt + pt) ** 2 - (met_x + met_x) ** 2 - (met_y + met_y) ** 2
    assert 0 < (mt2 < 0).sum() < len(phi)
    for name in ("DER_mass_transverse_met_lep", "DER_mass_jet_jet"):
        assert not np.isnan(der[name]).any(), name
        assert np.all((der[name] >= 0) & (der[name] < 1e-4)), name
    assert np.all(der["DER_mass_transverse_met_lep"][mt2 < 0] == 0)


def test_derived_features_input_kinds_agree(frame, pri):
    # a dict of numpy arrays, a DataFrame and an awkward record array give the same values
    from_numpy = _numpy(derived_features(pri))
    from_frame = _numpy(derived_features(frame))
    from_record = _numpy(derived_features(ak.zip({n: ak.Array(v) for n, v in pri.items()})))
    for name in DER_FEATURES:
        np.testing.assert_array_equal(from_frame[name], from_numpy[name])
        np.testing.assert_array_equal(from_record[name], from_numpy[name])


def test_missing_feature_raises(pri):
    partial = {name: values for name, values in pri.items() if name != "PRI_met"}
    with pytest.raises(KeyError, match="PRI_met"):
        derived_features(partial)
    with pytest.raises(KeyError, match="PRI_met"):
        apply_systematics(partial, tes=1.03)


# ---------------------------------------------------------------------------------------
# systematics: an independent per-event loop over the challenge's definitions
# ---------------------------------------------------------------------------------------


def _reference_event(
    event: dict[str, float],
    tes: float,
    jes: float,
    soft_met: float,
    nx: float,
    ny: float,
    remove_soft_jets: bool,
) -> dict[str, float]:
    """One event's primary features after the systematics, straight from the definitions."""
    out = dict(event)
    met_x = event["PRI_met"] * math.cos(event["PRI_met_phi"])
    met_y = event["PRI_met"] * math.sin(event["PRI_met_phi"])
    # tau energy scale: MET absorbs (1 - tes) times the original tau pT vector
    tau_pt, tau_phi = event["PRI_had_pt"], event["PRI_had_phi"]
    out["PRI_had_pt"] = tes * tau_pt
    met_x += (1 - tes) * tau_pt * math.cos(tau_phi)
    met_y += (1 - tes) * tau_pt * math.sin(tau_phi)
    # jet energy scale: the two leading jets if present, and the scalar sum of all jets
    for jet, present in (
        ("leading", event["PRI_n_jets"] >= 1),
        ("subleading", event["PRI_n_jets"] >= 2),
    ):
        if present:
            pt, phi = event[f"PRI_jet_{jet}_pt"], event[f"PRI_jet_{jet}_phi"]
            out[f"PRI_jet_{jet}_pt"] = jes * pt
            met_x += (1 - jes) * pt * math.cos(phi)
            met_y += (1 - jes) * pt * math.sin(phi)
    out["PRI_jet_all_pt"] = jes * event["PRI_jet_all_pt"]
    # soft term
    if soft_met > 0:
        met_x += soft_met * nx
        met_y += soft_met * ny
    out["PRI_met"] = math.hypot(met_x, met_y)
    out["PRI_met_phi"] = math.atan2(met_y, met_x)
    for name in out:
        if name != "PRI_n_jets":
            out[name] = round(out[name], 3)
    # jets at or below 26 GeV (the subleading first) are removed as if they never existed
    if remove_soft_jets:
        for jet in ("subleading", "leading"):
            pt = out[f"PRI_jet_{jet}_pt"]
            if 0 <= pt <= 26:
                out["PRI_jet_all_pt"] -= pt
                for quantity in ("pt", "eta", "phi"):
                    out[f"PRI_jet_{jet}_{quantity}"] = -25.0
                out["PRI_n_jets"] -= 1
    return out


def _reference(pri, tes, jes, soft_met=0.0, nx=None, ny=None, remove_soft_jets=True):
    n = len(pri["PRI_met"])
    nx = np.zeros(n) if nx is None else nx
    ny = np.zeros(n) if ny is None else ny
    rows = [
        _reference_event(
            {name: float(pri[name][i]) for name in PRI_FEATURES},
            tes,
            jes,
            soft_met,
            float(nx[i]),
            float(ny[i]),
            remove_soft_jets,
        )
        for i in range(n)
    ]
    return {name: np.array([row[name] for row in rows]) for name in PRI_FEATURES}


def _assert_pri_close(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    for name in PRI_FEATURES:
        g = got[name].astype(np.float64)
        e = expected[name]
        if name == "PRI_met_phi":
            # phi = +pi and -pi are the same: compare the wrapped difference
            np.testing.assert_array_less(np.abs(_wrapped(g - e)), ROUNDING_ATOL, err_msg=name)
        else:
            np.testing.assert_allclose(g, e, rtol=ROUNDING_RTOL, atol=ROUNDING_ATOL, err_msg=name)


def test_nominal_leaves_primary_features_unchanged(pri):
    # The challenge still recomputes MET (pt, phi) from x, y and rounds everything. The
    # inputs are already on the 3-decimal grid and the float32 round trip is far from a
    # rounding boundary, so the values come back identical (to float32 representation).
    out = _numpy(apply_systematics(pri, remove_soft_jets=False))
    assert list(out) == list(PRI_FEATURES)
    for name in PRI_FEATURES:
        assert out[name].dtype == pri[name].dtype, name
        np.testing.assert_allclose(out[name], pri[name], rtol=1e-6, atol=0, err_msg=name)


def test_nominal_removes_only_soft_jets(pri):
    # With the jet removal (the default), the events changed are exactly those with a
    # leading or subleading jet in [0, 26] GeV; the sample has such events.
    out = _numpy(apply_systematics(pri))
    soft = np.zeros(len(pri["PRI_met"]), dtype=bool)
    for jet in ("leading", "subleading"):
        pt = pri[f"PRI_jet_{jet}_pt"]
        soft |= (pt >= 0) & (pt <= 26)
    assert soft.sum() > 10
    changed = np.zeros_like(soft)
    for name in PRI_FEATURES:
        changed |= out[name] != pri[name]
    np.testing.assert_array_equal(changed, soft)
    np.testing.assert_array_equal(out["PRI_met"], pri["PRI_met"])


@pytest.mark.parametrize(
    ("tes", "jes", "remove_soft_jets"),
    [
        (1.0, 1.0, True),
        (1.03, 1.0, False),
        (1.03, 1.0, True),
        (1.0, 1.02, False),
        (1.0, 1.02, True),
        (0.97, 0.98, True),
    ],
)
def test_energy_scales_match_per_event_loop(pri, tes, jes, remove_soft_jets):
    got = _numpy(apply_systematics(pri, tes=tes, jes=jes, remove_soft_jets=remove_soft_jets))
    expected = _reference(pri, tes, jes, remove_soft_jets=remove_soft_jets)
    _assert_pri_close(got, expected)
    # the variation does something the tolerance would see
    if tes != 1.0:
        assert np.max(np.abs(got["PRI_had_pt"] - pri["PRI_had_pt"])) > 1.0
    if tes != 1.0 or jes != 1.0:
        assert np.max(np.abs(got["PRI_met"] - pri["PRI_met"])) > 0.1


def _met_xy(pri) -> np.ndarray:
    met = pri["PRI_met"].astype(np.float64)
    phi = pri["PRI_met_phi"].astype(np.float64)
    return np.array([met * np.cos(phi), met * np.sin(phi)])


def _assert_xy_close(shift: np.ndarray, expected: np.ndarray, met: np.ndarray) -> None:
    """MET x, y shifts agree, given MET pt and phi rounded to 1e-3 after the variation.

    x = MET cos(phi) from values rounded by up to 5e-4 GeV and 5e-4 rad carries up to
    5e-4 + 5e-4 * MET (the inputs are rounded too, to the same grid); allow twice that.
    """
    tolerance = np.broadcast_to(1e-3 + 1e-3 * met.astype(np.float64), shift.shape)
    np.testing.assert_array_less(np.abs(shift - expected), tolerance)
    # the expected shift is not lost in the tolerance
    assert np.mean(np.abs(expected) > 10 * tolerance) > 0.1


def test_tes_scales_tau_and_moves_met(pri):
    got = _numpy(apply_systematics(pri, tes=1.03, remove_soft_jets=False))
    # tau pT scaled, to the 3-decimal rounding; the jets untouched
    np.testing.assert_allclose(got["PRI_had_pt"], 1.03 * pri["PRI_had_pt"], atol=ROUNDING_ATOL)
    np.testing.assert_array_equal(got["PRI_jet_all_pt"], pri["PRI_jet_all_pt"])
    # MET moved by -0.03 times the original tau pT vector
    shift = _met_xy(got) - _met_xy(pri)
    tau = pri["PRI_had_pt"] * np.array([np.cos(pri["PRI_had_phi"]), np.sin(pri["PRI_had_phi"])])
    _assert_xy_close(shift, (1 - 1.03) * tau, got["PRI_met"])


def test_jes_scales_two_jets_and_the_scalar_sum(pri):
    got = _numpy(apply_systematics(pri, jes=1.02, remove_soft_jets=False))
    n_jets = pri["PRI_n_jets"]
    for jet, present in (("leading", n_jets >= 1), ("subleading", n_jets >= 2)):
        pt = pri[f"PRI_jet_{jet}_pt"]
        np.testing.assert_allclose(
            got[f"PRI_jet_{jet}_pt"], np.where(present, 1.02 * pt, -25.0), atol=ROUNDING_ATOL
        )
    # PRI_jet_all_pt includes third and further jets, all scaled; it is 0 without jets
    np.testing.assert_allclose(
        got["PRI_jet_all_pt"], 1.02 * pri["PRI_jet_all_pt"], atol=ROUNDING_ATOL
    )
    np.testing.assert_array_equal(got["PRI_had_pt"], pri["PRI_had_pt"])
    # MET moved by -0.02 times the two leading jets' pT vectors (only those two)
    shift = _met_xy(got) - _met_xy(pri)
    jets = np.zeros_like(shift)
    for jet, present in (("leading", n_jets >= 1), ("subleading", n_jets >= 2)):
        pt, phi = pri[f"PRI_jet_{jet}_pt"], pri[f"PRI_jet_{jet}_phi"]
        jets += np.where(present, pt, 0.0) * np.array([np.cos(phi), np.sin(phi)])
    _assert_xy_close(shift, (1 - 1.02) * jets, got["PRI_met"])
    # events with no jets keep their MET
    no_jets = n_jets == 0
    np.testing.assert_array_equal(got["PRI_met"][no_jets], pri["PRI_met"][no_jets])


def test_soft_met_shifts_met_by_sigma_times_normals(pri):
    n = len(pri["PRI_met"])
    rng = np.random.default_rng(20240817)  # a local generator, as the caller would pass
    nx, ny = rng.standard_normal(n), rng.standard_normal(n)
    sigma = 3.0
    got = _numpy(apply_systematics(pri, soft_met=sigma, normal_x=nx, normal_y=ny))
    shift = _met_xy(got) - _met_xy(pri)
    _assert_xy_close(shift, sigma * np.array([nx, ny]), got["PRI_met"])
    # nothing else changes but the removal of soft jets, as at nominal
    nominal = _numpy(apply_systematics(pri))
    for name in PRI_FEATURES:
        if name not in ("PRI_met", "PRI_met_phi"):
            np.testing.assert_array_equal(got[name], nominal[name], err_msg=name)
    # and the whole set agrees with the loop, also combined with the energy scales
    _assert_pri_close(got, _reference(pri, 1.0, 1.0, sigma, nx, ny))
    combined = _numpy(apply_systematics(pri, 1.03, 0.98, sigma, nx, ny))
    _assert_pri_close(combined, _reference(pri, 1.03, 0.98, sigma, nx, ny))


def test_soft_met_needs_normals_and_ignores_non_positive_widths(pri):
    with pytest.raises(ValueError, match="normal_x"):
        apply_systematics(pri, soft_met=1.0)
    with pytest.raises(ValueError, match="positive"):
        apply_systematics(pri, tes=0.0)
    nominal = _numpy(apply_systematics(pri))
    ones = np.ones(len(pri["PRI_met"]))
    # the challenge adds the soft term only for soft_met > 0
    for width in (0.0, -1.0):
        out = _numpy(apply_systematics(pri, soft_met=width, normal_x=ones, normal_y=ones))
        np.testing.assert_array_equal(out["PRI_met"], nominal["PRI_met"])


def test_challenge_soft_met_stream_is_sigma_times_standard_normals():
    # The challenge draws RandomState(seed).normal(0, soft_met, n) for x, then for y.
    # Its stream is reproduced by passing these standard normals (as the docstring says).
    n, sigma, seed = 50, 2.5, 31415
    random_state = np.random.RandomState(seed=seed)
    px = random_state.normal(0, sigma, size=n)
    py = random_state.normal(0, sigma, size=n)
    z = np.random.RandomState(seed=seed).standard_normal(2 * n)
    np.testing.assert_allclose(px, sigma * z[:n], rtol=1e-15)
    np.testing.assert_allclose(py, sigma * z[n:], rtol=1e-15)


# ---------------------------------------------------------------------------------------
# post-selection and the removal of soft jets
# ---------------------------------------------------------------------------------------


def test_post_selection_mask(pri):
    out = apply_systematics(pri, tes=0.97)
    mask = ak.to_numpy(post_selection_mask(out))
    had = ak.to_numpy(out["PRI_had_pt"])
    lep = ak.to_numpy(out["PRI_lep_pt"])
    expected = np.array([tau >= 26 and lepton >= 20 for tau, lepton in zip(had, lep)])
    np.testing.assert_array_equal(mask, expected)
    assert 0 < (~mask).sum() < len(mask)  # the tau cut removes events on this sample
    edges = {"PRI_had_pt": np.array([26.0, 25.999, 40.0, 40.0]),
             "PRI_lep_pt": np.array([20.0, 30.0, 20.0, 19.999])}  # fmt: skip
    assert post_selection_mask(edges).tolist() == [True, False, True, False]


def _one_event(**values: float) -> dict[str, np.ndarray]:
    event = {name: np.array([-25.0]) for name in PRI_FEATURES}
    event.update(
        PRI_lep_pt=np.array([30.0]),
        PRI_lep_eta=np.array([0.1]),
        PRI_lep_phi=np.array([0.2]),
        PRI_had_pt=np.array([40.0]),
        PRI_had_eta=np.array([-0.3]),
        PRI_had_phi=np.array([2.0]),
        PRI_met=np.array([15.0]),
        PRI_met_phi=np.array([-1.0]),
    )
    event.update({name: np.array([value]) for name, value in values.items()})
    return event


def test_soft_jet_threshold_includes_26():
    # pandas' between(0, 26) includes both ends: a 26.000 GeV jet is removed, 26.001 kept
    for pt, removed in ((26.0, True), (26.001, False)):
        event = _one_event(
            PRI_n_jets=2.0,
            PRI_jet_leading_pt=80.0,
            PRI_jet_leading_eta=1.0,
            PRI_jet_leading_phi=0.5,
            PRI_jet_subleading_pt=pt,
            PRI_jet_subleading_eta=-1.0,
            PRI_jet_subleading_phi=-0.5,
            PRI_jet_all_pt=80.0 + pt,
        )
        out = _numpy(apply_systematics(event))
        assert out["PRI_n_jets"][0] == (1.0 if removed else 2.0)
        assert out["PRI_jet_subleading_eta"][0] == (-25.0 if removed else -1.0)
        assert out["PRI_jet_all_pt"][0] == pytest.approx(80.0 if removed else 80.0 + pt)
        assert out["PRI_jet_leading_pt"][0] == 80.0


def test_soft_jet_removal_keeps_the_challenge_jet_count_quirk(pri):
    # The challenge only decrements PRI_n_jets: an event with three or more jets whose
    # subleading jet falls below 26 GeV keeps PRI_n_jets >= 2 with the subleading jet at
    # -25, and its jet-jet features are then computed from the sentinels. Reproduced as is.
    out = apply_systematics(pri)
    n_jets = ak.to_numpy(out["PRI_n_jets"])
    sub_pt = ak.to_numpy(out["PRI_jet_subleading_pt"])
    quirk = (n_jets >= 2) & (sub_pt == -25)
    assert quirk.sum() > 0
    assert np.all(pri["PRI_n_jets"][quirk] >= 3)
    der = _numpy(derived_features(out))
    assert np.all(der["DER_deltaeta_jet_jet"][quirk] != -25)
    lead_eta = ak.to_numpy(out["PRI_jet_leading_eta"])[quirk]
    np.testing.assert_allclose(
        der["DER_deltaeta_jet_jet"][quirk], np.abs(-25 - lead_eta), rtol=1e-6
    )


# ---------------------------------------------------------------------------------------
# typetracers (dask-awkward's graph building)
# ---------------------------------------------------------------------------------------


def _typetracer(values: np.ndarray) -> ak.Array:
    return ak.Array(ak.Array(values).layout.to_typetracer(forget_length=True))


def test_typetracer_inputs(pri):
    tracers = {name: _typetracer(values) for name, values in pri.items()}
    normals = _typetracer(np.zeros(len(pri["PRI_met"])))
    eager = apply_systematics(pri, 1.03, 0.98, 2.0, np.zeros(1000), np.zeros(1000))
    varied = apply_systematics(tracers, 1.03, 0.98, 2.0, normals, normals)
    assert list(varied) == list(PRI_FEATURES)
    for name, values in varied.items():
        assert ak.backend(values) == "typetracer", name
        # same type as the eager result, with the length unknown
        assert str(values.type.content) == str(eager[name].type.content), name
    mask = post_selection_mask(varied)
    assert ak.backend(mask) == "typetracer"
    assert str(mask.type.content) == "bool"
    der = derived_features({name: values[mask] for name, values in varied.items()})
    assert list(der) == list(DER_FEATURES)
    eager_der = derived_features(eager)
    for name, values in der.items():
        assert ak.backend(values) == "typetracer", name
        assert str(values.type.content) == str(eager_der[name].type.content), name
    # a record array of typetracers works as well
    record = derived_features(ak.zip(tracers))
    assert set(record) == set(DER_FEATURES)


# ---------------------------------------------------------------------------------------
# combined systematics: the recipe's calibrators against the challenge's own code
# ---------------------------------------------------------------------------------------
#
# The reference below is the challenge's definition, transcribed operation for operation
# from GitHub FAIR-Universe/HEP-Challenge at commit 31816a0d8c8dda03d4b28d9e824674821756962b
# (2025-05-15): ingestion_program/systematics.py (``mom4_manipulate``, ``postprocess`` and
# their driver ``systematics(..., dopostprocess=...)``) and
# ingestion_program/derived_quantities.py (``DER_data``). It works on a pandas DataFrame
# of the file's float32 columns, as the challenge does, and shares no code with
# pipeline.recipes. Its ``V4`` four-vectors are reduced to the px, py they give the MET
# (their pz and E never reach it). The challenge's soft term draws
# ``RandomState(seed).normal(0, soft_met, n)``, which numpy's legacy generator computes as
# ``0 + soft_met * gauss``: the standard normals ``gauss`` are passed in (the recipe's,
# keyed by event identity) instead of the seeded stream.

_CHALLENGE_ROUNDED = (
    "PRI_had_pt", "PRI_had_eta", "PRI_had_phi", "PRI_lep_pt", "PRI_lep_eta", "PRI_lep_phi",
    "PRI_met", "PRI_met_phi", "PRI_jet_leading_pt", "PRI_jet_leading_eta",
    "PRI_jet_leading_phi", "PRI_jet_subleading_pt", "PRI_jet_subleading_eta",
    "PRI_jet_subleading_phi", "PRI_jet_all_pt",
)  # fmt: skip


def _challenge_mom4_manipulate(data, tes, jes, soft_met, gauss_x, gauss_y):
    """systematics.py ``mom4_manipulate(data, systTauEnergyScale, systJetEnergyScale,
    soft_met)``."""
    # vmet.setPtEtaPhiM(PRI_met, 0, PRI_met_phi, 0)
    met_px = data["PRI_met"] * np.cos(data["PRI_met_phi"])
    met_py = data["PRI_met"] * np.sin(data["PRI_met_phi"])
    if tes != 1.0:
        data["PRI_had_pt"] *= tes
        tau_px = data["PRI_had_pt"] * np.cos(data["PRI_had_phi"])
        tau_py = data["PRI_had_pt"] * np.sin(data["PRI_had_phi"])
        # vtauDeltaMinus.scaleFixedM((1 - tes) / tes); vmet += vtauDeltaMinus
        tau_px *= (1.0 - tes) / tes
        tau_py *= (1.0 - tes) / tes
        met_px += tau_px
        met_py += tau_py
    if jes != 1.0:
        data["PRI_jet_leading_pt"] = np.where(
            data["PRI_n_jets"] > 0, data["PRI_jet_leading_pt"] * jes, data["PRI_jet_leading_pt"]
        )
        data["PRI_jet_subleading_pt"] = np.where(
            data["PRI_n_jets"] > 1,
            data["PRI_jet_subleading_pt"] * jes,
            data["PRI_jet_subleading_pt"],
        )
        data["PRI_jet_all_pt"] *= jes
        for jet, more_than in (("leading", 0), ("subleading", 1)):
            pt = data[f"PRI_jet_{jet}_pt"].where(data["PRI_n_jets"] > more_than, other=0)
            phi = data[f"PRI_jet_{jet}_phi"].where(data["PRI_n_jets"] > more_than, other=0)
            jet_px = pt * np.cos(phi)
            jet_py = pt * np.sin(phi)
            jet_px *= (1.0 - jes) / jes
            jet_py *= (1.0 - jes) / jes
            met_px += jet_px
            met_py += jet_py
    if soft_met > 0:
        # v4_soft_term.px = RandomState.normal(0, soft_met), then .py; vmet = vmet + v4
        met_px = met_px + (0.0 + soft_met * gauss_x)
        met_py = met_py + (0.0 + soft_met * gauss_y)
    data["PRI_met"] = np.sqrt(met_px**2 + met_py**2)  # V4.pt()
    data["PRI_met_phi"] = np.arctan2(met_py, met_px)  # V4.phi()
    for name in _CHALLENGE_ROUNDED:
        data[name] = data[name].round(decimals=3)
    return data


def _challenge_postprocess(data):
    """systematics.py ``postprocess(data)``."""
    data = data.drop(data[data.PRI_had_pt < 26].index)
    data = data.reset_index(drop=True)  # the challenge's reset_index(..., inplace=True)
    for jet in ("subleading", "leading"):
        mask = data[f"PRI_jet_{jet}_pt"].between(0, 26)
        data.loc[mask, "PRI_jet_all_pt"] -= data[f"PRI_jet_{jet}_pt"]
        data.loc[mask, f"PRI_jet_{jet}_pt"] = -25
        data.loc[mask, f"PRI_jet_{jet}_eta"] = -25
        data.loc[mask, f"PRI_jet_{jet}_phi"] = -25
        data.loc[mask, "PRI_n_jets"] -= 1
    data = data.drop(data[data.PRI_lep_pt < 20].index)
    return data


def _challenge_der_data(data):
    """derived_quantities.py ``DER_data(data)`` (calcul_int, the f_DER_* functions, the
    final cast of float64 columns to float32)."""
    from numpy import cos, cosh, exp, sin, sinh, sqrt

    d = data
    d["had_px"] = d.PRI_had_pt * cos(d.PRI_had_phi)
    d["had_py"] = d.PRI_had_pt * sin(d.PRI_had_phi)
    d["had_pz"] = d.PRI_had_pt * sinh(d.PRI_had_eta)
    d["p_had"] = d.PRI_had_pt * cosh(d.PRI_had_eta)
    d["lep_px"] = d.PRI_lep_pt * cos(d.PRI_lep_phi)
    d["lep_py"] = d.PRI_lep_pt * sin(d.PRI_lep_phi)
    d["lep_pz"] = d.PRI_lep_pt * sinh(d.PRI_lep_eta)
    d["p_lep"] = d.PRI_lep_pt * cosh(d.PRI_lep_eta)
    d["met_x"] = d.PRI_met * cos(d.PRI_met_phi)
    d["met_y"] = d.PRI_met * sin(d.PRI_met_phi)
    for jet, n_min in (("leading", 1), ("subleading", 2)):
        pt, eta, phi = d[f"PRI_jet_{jet}_pt"], d[f"PRI_jet_{jet}_eta"], d[f"PRI_jet_{jet}_phi"]
        d[f"jet_{jet}_px"] = pt * cos(phi) * (d.PRI_n_jets >= n_min)
        d[f"jet_{jet}_py"] = pt * sin(phi) * (d.PRI_n_jets >= n_min)
        d[f"jet_{jet}_pz"] = pt * sinh(eta) * (d.PRI_n_jets >= n_min)
        d[f"p_jet_{jet}"] = pt * cosh(eta) * (d.PRI_n_jets >= n_min)

    ci = (d.PRI_met + d.PRI_lep_pt) ** 2 - (d.met_x + d.lep_px) ** 2 - (d.met_y + d.lep_py) ** 2
    d["DER_mass_transverse_met_lep"] = sqrt(ci * (ci >= 0))
    d["DER_mass_vis"] = sqrt(
        (d.p_lep + d.p_had) ** 2
        - (d.lep_px + d.had_px) ** 2
        - (d.lep_py + d.had_py) ** 2
        - (d.lep_pz + d.had_pz) ** 2
    )
    d["DER_pt_h"] = sqrt(
        (d.had_px + d.lep_px + d.met_x) ** 2 + (d.had_py + d.lep_py + d.met_y) ** 2
    )
    d["DER_deltaeta_jet_jet"] = abs(d.PRI_jet_subleading_eta - d.PRI_jet_leading_eta) * (
        d.PRI_n_jets >= 2
    ) - 25 * (d.PRI_n_jets < 2)
    ci = (
        (d.p_jet_leading + d.p_jet_subleading) ** 2
        - (d.jet_leading_px + d.jet_subleading_px) ** 2
        - (d.jet_leading_py + d.jet_subleading_py) ** 2
        - (d.jet_leading_pz + d.jet_subleading_pz) ** 2
    )
    d["DER_mass_jet_jet"] = sqrt(ci * (ci >= 0)) * (d.PRI_n_jets >= 2) - 25 * (d.PRI_n_jets <= 1)
    d["DER_prodeta_jet_jet"] = d.PRI_jet_leading_eta * d.PRI_jet_subleading_eta * (
        d.PRI_n_jets >= 2
    ) - 25 * (d.PRI_n_jets <= 1)
    d2_eta = (d.PRI_lep_eta - d.PRI_had_eta) ** 2
    d2_phi = (np.abs(np.mod(d.PRI_lep_phi - d.PRI_had_phi + 3 * np.pi, 2 * np.pi) - np.pi)) ** 2
    d["DER_deltar_had_lep"] = sqrt(d2_eta + d2_phi)
    d["DER_pt_tot"] = sqrt(
        (d.had_px + d.lep_px + d.met_x + d.jet_leading_px + d.jet_subleading_px) ** 2
        + (d.had_py + d.lep_py + d.met_y + d.jet_leading_py + d.jet_subleading_py) ** 2
    )
    d["DER_sum_pt"] = d.PRI_had_pt + d.PRI_lep_pt + d.PRI_jet_all_pt
    d["DER_pt_ratio_lep_had"] = d.PRI_lep_pt / d.PRI_had_pt

    def a(met, lep, had):
        return sin(met - lep) * np.sign(sin(had - lep))

    def b(met, lep, had):
        return sin(had - met) * np.sign(sin(had - lep))

    d["A"] = a(d.PRI_met_phi, d.PRI_lep_phi, d.PRI_had_phi)
    d["B"] = b(d.PRI_met_phi, d.PRI_lep_phi, d.PRI_had_phi)
    d["num"] = d.A + d.B
    d["denum"] = sqrt(d.A**2 + d.B**2)
    d["DER_met_phi_centrality"] = d.num / (d.denum + (d.denum == 0)) * (d.denum != 0) - 25 * (
        d.denum == 0
    )
    mask = d.denum == 0
    d.loc[mask, "A"] = a(d.PRI_met_phi, d.PRI_lep_phi + 0.0001, d.PRI_had_phi)
    d.loc[mask, "B"] = b(d.PRI_met_phi, d.PRI_lep_phi + 0.0001, d.PRI_had_phi)
    d.loc[mask, "num"] = d.A + d.B
    d.loc[mask, "denum"] = sqrt(d.A**2 + d.B**2)
    d.loc[mask, "DER_met_phi_centrality"] = d.num / (d.denum + (d.denum == 0)) * (
        d.denum != 0
    ) - 25 * (d.denum == 0)

    d["difference"] = (d.PRI_jet_leading_eta - d.PRI_jet_subleading_eta) ** 2
    d["moyenne"] = (d.PRI_jet_leading_eta + d.PRI_jet_subleading_eta) / 2
    mask = d["difference"] == 0.0
    d["DER_lep_eta_centrality"] = exp(
        -4 / (d.difference) * ((d.PRI_lep_eta - d.moyenne) ** 2)
    ) * (d.PRI_n_jets >= 2) - 25 * (d.PRI_n_jets <= 1)
    d.loc[mask, "DER_lep_eta_centrality"] = exp(
        -4 / (d.difference + 0.0001) * ((d.PRI_lep_eta - d.moyenne) ** 2)
    ) * (d.PRI_n_jets >= 2) - 25 * (d.PRI_n_jets <= 1)

    doubles = d.select_dtypes(include=["float64"]).columns
    d[doubles] = d[doubles].astype(np.float32)
    return d


def challenge_systematics(frame, tes, jes, soft_met=0.0, gauss_x=None, gauss_y=None,
                          dopostprocess=True):  # fmt: skip
    """systematics.py ``systematics(data_set, tes, jes, soft_met, dopostprocess)`` on the
    file's 16 PRI columns; ``row`` (the row number in the file) rides along, as the
    challenge's extra columns do, to say which events it kept."""
    data = frame[list(PRI_FEATURES)].copy()
    data["row"] = np.arange(len(frame))
    data = _challenge_mom4_manipulate(data.copy(), tes, jes, soft_met, gauss_x, gauss_y)
    if dopostprocess:
        data = _challenge_postprocess(data)
    return _challenge_der_data(data)


GRID = [(tes, jes) for tes in (0.97, 1.0, 1.03) for jes in (0.97, 1.0, 1.03)]
SOFT_MET_UP = 1.5  # GeV: the soft_metUp variation of the tests below


def _higgsml_params(tes: float, jes: float, postprocess: bool | None,
                    up: float = 1.01, down: float = 0.99) -> dict:  # fmt: skip
    period: dict = {
        "tes": {"nominal": tes, "up": up, "down": down},
        "jes": {"nominal": jes, "up": up, "down": down},
        "soft_met": {"nominal": 0.0, "up": SOFT_MET_UP, "down": 0.0},
    }
    if postprocess is not None:
        period["postprocess"] = postprocess
    return {"higgsml_systematics": {"HiggsML": period}}


@pytest.fixture(scope="module")
def file_events():
    from pipeline.inputs.parquet import read_parquet_eager

    return read_parquet_eager(str(find_data_file(FILE)))


def _recipe_gauss(events) -> tuple[np.ndarray, np.ndarray]:
    """The soft-MET standard normals the recipe draws (pipeline.rng, by event identity)."""
    from pipeline.rng import normal

    identity = (events.run, events.luminosityBlock, events.event, events.event * 0)
    return (np.asarray(normal(*identity, "higgsml:soft_met:x")),
            np.asarray(normal(*identity, "higgsml:soft_met:y")))  # fmt: skip


def _assert_bitwise(got: dict, expected: pd.DataFrame, kept: np.ndarray, what: str) -> None:
    """Every PRI and DER column of ``got`` (one value per file row) cast to float32 (the
    table's type, the challenge's final cast) equals the challenge's, on its kept rows."""
    assert np.array_equal(expected["row"].to_numpy(), np.flatnonzero(kept)), what
    for name in (*PRI_FEATURES, *DER_FEATURES):
        values = np.asarray(got[name]).astype(np.float32)[kept]
        np.testing.assert_array_equal(
            values, expected[name].to_numpy().astype(np.float32), err_msg=f"{what}: {name}"
        )


@pytest.mark.parametrize("postprocess", [True, False], ids=["postprocess", "no_postprocess"])
@pytest.mark.parametrize(("tes", "jes"), GRID)
def test_calibrator_chain_equals_the_challenge_bit_for_bit(frame, file_events, tes, jes,
                                                           postprocess):  # fmt: skip
    # The recipe's calibrator sequence, its nominal values set to a (tes, jes) grid point:
    # the nominal branch has both scales shifted at once, the soft_metUp branch all three.
    # Each must equal the challenge's single pass (shifts, one rounding, postprocess or
    # not, DER) bit for bit, and its post-selection must keep exactly the challenge's rows.
    from omegaconf import OmegaConf

    from pipeline.calibration.calibrator import get_calibrator
    from pipeline.calibration.manager import CalibratorsManager
    from pipeline.config.parameters import defaults

    params = OmegaConf.merge(defaults(), _higgsml_params(tes, jes, postprocess))
    names = ["higgsml_tes", "higgsml_jes", "higgsml_soft_met", "higgsml_postprocess"]
    manager = CalibratorsManager([get_calibrator(n) for n in names], file_events, params,
                                 {"isMC": True, "year": "HiggsML", "sample": "HiggsML"})
    gauss_x, gauss_y = _recipe_gauss(file_events)
    for variation, soft_met in (("nominal", 0.0), ("soft_metUp", SOFT_MET_UP)):
        events = manager.calibrate(file_events, variation)
        expected = challenge_systematics(frame, tes, jes, soft_met, gauss_x, gauss_y,
                                         dopostprocess=postprocess)  # fmt: skip
        kept = ak.to_numpy(events["higgsml_post_selection"])
        assert kept.dtype == bool
        if postprocess:
            assert 0 < (~kept).sum()  # the challenge drops events with tau pT < 26
        else:
            assert kept.all()
        _assert_bitwise({name: ak.to_numpy(events[name]) for name in expected.columns
                         if name in events.fields}, expected, kept,
                        f"tes={tes} jes={jes} {variation}")  # fmt: skip


def test_combined_shifts_differ_from_one_shift_after_the_other(frame):
    # Why the single pass matters: rounding MET after the tau shift and starting the jet
    # shift from the rounded MET (as two rounded passes do) gives other values than the
    # challenge's single pass on this sample.
    once = challenge_systematics(frame, 1.03, 0.97, dopostprocess=False)
    first = challenge_systematics(frame, 1.03, 1.0, dopostprocess=False)
    twice = challenge_systematics(first, 1.0, 0.97, dopostprocess=False)
    assert (once["PRI_met"].to_numpy() != twice["PRI_met"].to_numpy()).any()


def test_postprocess_parameter_is_validated(file_events):
    from omegaconf import OmegaConf

    from pipeline.calibration.calibrator import get_calibrator
    from pipeline.config.parameters import defaults
    from pipeline.errors import ConfigError

    params = OmegaConf.merge(defaults(), {"higgsml_systematics": {"HiggsML": {
        "postprocess": "maybe", "tess": {"nominal": 1.0, "up": 1.0, "down": 1.0}}}})
    with pytest.raises(ConfigError) as err:
        get_calibrator("higgsml_postprocess")(params, {"isMC": True, "year": "HiggsML"})
    message = str(err.value)
    assert "higgsml_systematics.HiggsML.postprocess" in message
    assert "higgsml_systematics.HiggsML.tess" in message


# Two periods of one run: the recipe's dataset with the post-processing at a grid corner,
# and the same file as a second dataset of another period without it, at the other corner.
RUN_CASES = {
    # dataset: (period, postprocess, nominal tes = jes, up, down)
    "HiggsML": ("HiggsML", True, 1.03, 0.97, 1.0),
    "HiggsML_raw": ("HiggsML_raw", False, 0.97, 1.03, 1.0),
}


@pytest.fixture(scope="module")
def grid_run(project_root, tmp_path_factory):
    """jobs/recipe_higgsml.yaml run with the RUN_CASES parameters (one extra dataset)."""
    import yaml

    from pipeline.cli import main

    tmp_path = tmp_path_factory.mktemp("higgsml_grid")
    jobs = project_root / "jobs"
    spec = yaml.safe_load((jobs / "recipe_higgsml.yaml").read_text())
    config_path = (jobs / spec["config"]).resolve()
    config = yaml.safe_load(config_path.read_text())
    config["parameters"] = [str((config_path.parent / p).resolve())
                            for p in config.get("parameters", [])]  # fmt: skip
    dataset = config["datasets"]["HiggsML"]
    dataset["files"] = [str(find_data_file(f)) for f in dataset["files"]]
    params: dict = {"higgsml_systematics": {}}
    for name, (period, postprocess, nominal, up, down) in RUN_CASES.items():
        config["datasets"][name] = {**dataset,
                                    "metadata": {**dataset["metadata"], "year": period}}
        grid = _higgsml_params(nominal, nominal, postprocess, up=up, down=down)
        params["higgsml_systematics"][period] = grid["higgsml_systematics"]["HiggsML"]
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    spec.update(config=str(tmp_path / "config.yaml"), output=str(tmp_path / "out"),
                parameters=[str(tmp_path / "grid.yaml")], workers=1)
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    assert main(["run", str(tmp_path / "job.yaml"), "--no-progress"]) == 0
    return tmp_path / "out"


@pytest.mark.parametrize("dataset", list(RUN_CASES))
def test_recipe_tables_equal_the_challenge_at_combined_shifts(grid_run, frame, dataset):
    # The whole recipe (jobs/recipe_higgsml.yaml) with the grid set through its parameters:
    # nominal (tes, jes) = (x, x) and every Up/Down variation of one scale then has the
    # other shifted too; soft_metUp has all three. Each variation's rows and columns in the
    # table equal the challenge's single pass, with and without its post-processing.
    from pipeline.ml import open_table
    from pipeline.rng import normal

    _, postprocess, nominal, up, down = RUN_CASES[dataset]
    table = open_table(grid_run / dataset / "features.zarr")
    nominal_rows = table.to_numpy(["event", "run", "luminosityBlock", "pass"], variation=None)
    rows = nominal_rows["event"].astype(np.int64)  # the row number in the file
    # a row per event that passes in some variation (all of them without post-processing)
    assert len(np.unique(rows)) == len(rows) and (len(rows) == len(frame)) != postprocess
    ids = (nominal_rows["run"], nominal_rows["luminosityBlock"], nominal_rows["event"],
           nominal_rows["event"] * 0)  # fmt: skip
    gauss_x = np.empty(len(frame))
    gauss_y = np.empty(len(frame))
    gauss_x[rows] = normal(*ids, "higgsml:soft_met:x")
    gauss_y[rows] = normal(*ids, "higgsml:soft_met:y")
    cases = {
        "nominal": (nominal, nominal, 0.0),
        "tesUp": (up, nominal, 0.0), "tesDown": (down, nominal, 0.0),
        "jesUp": (nominal, up, 0.0), "jesDown": (nominal, down, 0.0),
        "soft_metUp": (nominal, nominal, SOFT_MET_UP), "soft_metDown": (nominal, nominal, 0.0),
    }  # fmt: skip
    assert set(table.variations()) == set(cases) - {"nominal"}
    names = [*PRI_FEATURES, *DER_FEATURES]
    nominal_columns = table.to_numpy(names, variation=None)
    for variation, (tes, jes, soft_met) in cases.items():
        expected = challenge_systematics(frame, tes, jes, soft_met, gauss_x, gauss_y,
                                         dopostprocess=postprocess)  # fmt: skip
        stored = table.variations().get(variation, [])
        got = {}
        for name in (*names, "pass"):
            if variation != "nominal" and name in stored:
                values = np.concatenate([p["variations"][variation][name][...]
                                         for p in table.parts])  # fmt: skip
            else:
                values = nominal_columns[name] if name != "pass" else nominal_rows["pass"]
            got[name] = np.zeros(len(frame), dtype=values.dtype)  # rows not stored fail
            got[name][rows] = values
        kept = got.pop("pass").astype(bool)
        assert kept.all() != postprocess, variation
        _assert_bitwise(got, expected, kept, f"{variation} (tes={tes}, jes={jes})")
