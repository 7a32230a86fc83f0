"""Jet constituents from PFNano and the ATLAS top-tagging preprocessing (seed 003).

References used here, independent of the code under test:

* a plain-Python loop over the raw uproot branches ``<Link>_jetIdx``/``<Link>_pFCandsIdx``;
* coffea's ``PFNanoAODSchema`` (``Jet.constituents.pf``) for the AK4 jets;
* the jets' own four-vectors (the sum of the constituents must give back the raw jet);
* a per-jet numpy version of ``constituent()`` of the ATLAS top tagging open-data tutorial
  (https://gitlab.cern.ch/atlas/ATLAS-top-tagging-open-data, ``utils.py``), written below on
  a zero-padded jet as the tutorial does.
"""

from __future__ import annotations

import warnings

import awkward as ak
import numpy as np
import pytest
import uproot

from pipeline.inputs.datafiles import find_data_file
from pipeline.inputs.nanoevents import read_eager
from pipeline.recipes.toptagging import (
    CONSTITUENT_FEATURES,
    jet_constituents,
    link_table,
    preprocess_constituents,
)

PFNANO = "pfnano.root"
COLLECTIONS = [("FatJet", "FatJetPFCands"), ("Jet", "JetPFCands")]
CAND_FIELDS = ("pt", "eta", "phi", "mass")


@pytest.fixture(scope="module")
def pfnano_file() -> str:
    return str(find_data_file(PFNANO))


@pytest.fixture(scope="module")
def events(pfnano_file):
    return read_eager(pfnano_file)


@pytest.fixture(scope="module")
def raw(pfnano_file):
    """The raw branches, one numpy array per event (no awkward, no coffea)."""
    branches = ["nFatJet", "nJet", *(f"PFCands_{f}" for f in CAND_FIELDS), "PFCands_puppiWeight"]
    for _, link in COLLECTIONS:
        branches += [f"{link}_jetIdx", f"{link}_pFCandsIdx"]
    return uproot.open(pfnano_file)["Events"].arrays(branches, library="np")


def _typetracer(array):
    return ak.Array(array.layout.to_typetracer(forget_length=True), behavior=array.behavior)


def _p4(pt, eta, phi, mass):
    """(E, px, py, pz) in float64 from pt, eta, phi, mass."""
    pt, eta, phi, mass = (np.asarray(x, dtype=np.float64) for x in (pt, eta, phi, mass))
    energy = np.sqrt((pt * np.cosh(eta)) ** 2 + mass**2)
    return np.stack([energy, pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)], axis=-1)


def _mass(p4):
    return np.sqrt(np.maximum(p4[..., 0] ** 2 - np.sum(p4[..., 1:] ** 2, axis=-1), 0))


# --------------------------------------------------------------------------- links


def test_link_tables_are_found_from_the_file(events):
    assert link_table(events, "FatJet") == "FatJetPFCands"
    assert link_table(events, "Jet") == "JetPFCands"
    with pytest.raises(KeyError, match="FatJetPFCands"):
        link_table(events, "Muon")


@pytest.mark.parametrize(("jets", "link"), COLLECTIONS)
def test_constituents_match_a_plain_loop_over_the_raw_branches(events, raw, jets, link):
    constituents = jet_constituents(events, jets)
    assert constituents.fields == ["pt", "eta", "phi", "mass", "E"]
    got = constituents.tolist()
    assert len(got) == len(raw[f"n{jets}"]) == 10
    n_jets_checked = n_rows = 0
    for ev, jets_of_event in enumerate(got):
        owner, index = raw[f"{link}_jetIdx"][ev], raw[f"{link}_pFCandsIdx"][ev]
        cands = {f: raw[f"PFCands_{f}"][ev] for f in CAND_FIELDS}
        assert len(jets_of_event) == raw[f"n{jets}"][ev]
        for j, jet in enumerate(jets_of_event):
            rows = [int(index[k]) for k in range(len(owner)) if owner[k] == j]
            rows = sorted(rows, key=lambda i, pt=cands["pt"]: -pt[i])  # stable, like ours
            expected = [tuple(float(cands[f][i]) for f in CAND_FIELDS) for i in rows]
            assert [tuple(c[f] for f in CAND_FIELDS) for c in jet] == expected, (ev, j)
            pts = [c["pt"] for c in jet]
            assert pts == sorted(pts, reverse=True)
            energy = _p4(*zip(*expected))[:, 0] if expected else np.zeros(0)
            np.testing.assert_allclose([c["E"] for c in jet], energy, rtol=1e-6)
            n_jets_checked += 1
            n_rows += len(rows)
    assert n_jets_checked == sum(raw[f"n{jets}"])  # 24 AK8, 64 AK4 jets
    assert n_rows == sum(len(x) for x in raw[f"{link}_jetIdx"])  # every link row used once


def test_ak4_constituents_agree_with_coffea_pfnano_schema(pfnano_file, events):
    """coffea builds Jet.constituents from Jet_nConstituents; the candidates are the same."""
    from coffea.nanoevents import NanoEventsFactory, PFNanoAODSchema

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pfnano = NanoEventsFactory.from_root({pfnano_file: "Events"}, mode="eager",
                                             schemaclass=PFNanoAODSchema).events()
        coffea_pf = pfnano.Jet.constituents.pf
    coffea_pt = ak.sort(coffea_pf.pt, axis=-1, ascending=False)
    ours = jet_constituents(events, "Jet")
    assert ak.all(ak.num(ours, axis=2) == events.Jet.nConstituents)
    assert ak.all(ours.pt == coffea_pt)
    order = ak.argsort(coffea_pf.pt, axis=-1, ascending=False, stable=True)
    assert ak.all(ours.eta == coffea_pf.eta[order])


def test_link_rows_in_any_order_and_bad_indices():
    """Rows out of jet order, -1 / out-of-range indices, jets and events without any."""
    cands = [{"pt": float(pt), "eta": 0.1 * i, "phi": -0.2 * i, "mass": 0.0}
             for i, pt in enumerate([5, 40, 20, 30, 10])]
    rows = [(2, 0), (0, 4), (1, 1), (0, 3), (-1, 2), (0, 2), (5, 0), (1, 9), (1, -1)]
    events = ak.Array([
        {"FatJet": [{"pt": 1.0}] * 4, "PFCands": cands,
         "FatJetPFCands": [{"jetIdx": j, "pFCandsIdx": i} for j, i in rows]},
        {"FatJet": [], "PFCands": cands[:2], "FatJetPFCands": []},
        {"FatJet": [{"pt": 1.0}], "PFCands": [], "FatJetPFCands": []},
    ])
    got = jet_constituents(events)
    assert got.pt.tolist() == [[[30.0, 20.0, 10.0], [40.0], [5.0], []], [], [[]]]
    assert got.eta.tolist()[0][0] == pytest.approx([0.3, 0.2, 0.4])


# --------------------------------------------------------------------------- four-vectors


def _closure(events, jets, weight):
    """|sum of constituents - raw jet| / E_jet per jet, and the relative mass difference.

    The jets are JEC-corrected; ``(1 - rawFactor) * p4`` is the jet as clustered.
    """
    constituents = ak.flatten(jet_constituents(events, jets, weight=weight), axis=1)
    summed = np.stack([
        np.asarray(ak.sum(x, axis=-1), dtype=np.float64)
        for x in (constituents.E, constituents.pt * np.cos(constituents.phi),
                  constituents.pt * np.sin(constituents.phi),
                  constituents.pt * np.sinh(constituents.eta))], axis=-1)
    jet = ak.flatten(events[jets])
    raw_jet = _p4(jet.pt, jet.eta, jet.phi, jet.mass) * (1 - ak.to_numpy(jet.rawFactor))[:, None]
    distance = np.linalg.norm(summed - raw_jet, axis=1) / raw_jet[:, 0]
    return distance, _mass(summed) / _mass(raw_jet) - 1


def test_ak4_chs_jets_are_the_plain_sum_of_their_candidates(events):
    # The AK4 jets are CHS jets: observed max |dp4|/E 0.30 %, mass within 0.64 % (64 jets);
    # the rest is the reduced float precision NanoAOD stores candidates and rawFactor with.
    distance, dmass = _closure(events, "Jet", weight=None)
    assert len(distance) == 64
    assert distance.max() < 0.005
    assert np.abs(dmass).max() < 0.01
    # Weighting by PUPPI breaks it (the CHS jet does not weight its candidates).
    distance_w, _ = _closure(events, "Jet", weight="puppiWeight")
    assert np.median(distance_w) > 0.05


def test_ak8_puppi_jets_are_the_puppi_weighted_sum(events):
    # The file stores unweighted candidates (FatJetPFCands_pt == PFCands_pt) next to
    # PFCands_puppiWeight; the AK8 jets are PUPPI jets: with the weights every jet closes
    # (observed max |dp4|/E 0.37 %, mass within 0.24 %, 24 jets), without them the pileup
    # candidates make the sum too heavy (median mass +4.4 %, up to +19 %).
    distance, dmass = _closure(events, "FatJet", weight="puppiWeight")
    assert len(distance) == 24
    assert distance.max() < 0.005
    assert np.abs(dmass).max() < 0.005
    distance_u, dmass_u = _closure(events, "FatJet", weight=None)
    assert np.median(dmass_u) > 0.02
    assert np.mean(distance_u < 0.005) < 0.8


def test_weight_scales_pt_and_mass_and_drops_zero_weights(events, raw):
    weighted = jet_constituents(events, "Jet", weight="puppiWeight").tolist()
    n_dropped = 0
    for ev, jets_of_event in enumerate(weighted):
        owner, index = raw["JetPFCands_jetIdx"][ev], raw["JetPFCands_pFCandsIdx"][ev]
        cands = {f: raw[f"PFCands_{f}"][ev].astype(np.float64) for f in CAND_FIELDS}
        w = raw["PFCands_puppiWeight"][ev].astype(np.float64)
        for j, jet in enumerate(jets_of_event):
            rows = [int(index[k]) for k in range(len(owner)) if owner[k] == j]
            n_dropped += sum(w[i] <= 0 for i in rows)
            rows = sorted((i for i in rows if w[i] > 0), key=lambda i: -cands["pt"][i] * w[i])
            expected = [(cands["pt"][i] * w[i], cands["eta"][i], cands["phi"][i],
                         cands["mass"][i] * w[i]) for i in rows]
            got = [tuple(c[f] for f in CAND_FIELDS) for c in jet]
            np.testing.assert_allclose(np.array(got).reshape(-1, 4),
                                       np.array(expected).reshape(-1, 4), rtol=1e-6)
    assert n_dropped > 0  # 660 of the 1801 AK4 link rows have puppiWeight 0 here


# --------------------------------------------------------------------------- preprocessing


def tutorial_constituent(pt, eta, phi, energy, max_constits=80, n_pad=200):
    """``constituent()`` of the ATLAS tutorial, for one jet, on its zero-padded arrays.

    The tutorial's steps: cut at ``max_constits``; centre the hardest constituent and wrap
    phi once at +-pi; rotate by ``alpha = arctan2(phi_1, eta_1) + pi/2`` with
    ``eta' = eta cos + phi sin``, ``phi' = -eta sin + phi cos``; reflect eta if the third
    constituent has ``eta < 0``; ``R``; logs of pt, E and of their fractions of the jet sums;
    finally zero every padded (``pt == 0``) entry.
    """
    n = len(pt)
    pad = np.zeros(n_pad)
    pt, eta, phi, energy = (np.concatenate([np.asarray(x, dtype=np.float64), pad])[:n_pad]
                            for x in (pt, eta, phi, energy))
    pt, eta, phi, energy = (x[:max_constits] for x in (pt, eta, phi, energy))
    mask = pt == 0
    eta = eta - eta[0]
    phi = phi - phi[0]
    phi = np.where(phi > np.pi, phi - 2 * np.pi, phi)
    phi = np.where(phi < -np.pi, phi + 2 * np.pi, phi)
    alpha = np.arctan2(phi[1], eta[1]) + np.pi / 2
    eta, phi = (eta * np.cos(alpha) + phi * np.sin(alpha),
                -eta * np.sin(alpha) + phi * np.cos(alpha))
    eta = eta * (-1 if eta[2] < 0 else 1)
    radius = np.sqrt(eta**2 + phi**2)
    with np.errstate(divide="ignore"):
        features = [eta, phi, np.log(pt), np.log(energy), np.log(pt / pt.sum()),
                    np.log(energy / energy.sum()), radius]
    out = np.stack(features, axis=-1)
    out[mask] = 0
    return out[:min(n, max_constits)]


def _as_float64(constituents):
    return ak.zip({f: ak.values_astype(constituents[f], np.float64)
                   for f in constituents.fields})


def _equal(a, b):
    """Same structure and the same values in every field."""
    return a.fields == b.fields and all(
        ak.all(ak.num(a[f], axis=-1) == ak.num(b[f], axis=-1), axis=None)
        and ak.all(a[f] == b[f], axis=None) for f in a.fields)


@pytest.mark.parametrize(("jets", "weight", "n_keep"), [
    ("FatJet", None, 80), ("FatJet", "puppiWeight", 80), ("Jet", None, 80),
    ("FatJet", None, 10), ("Jet", None, 3),
])
def test_preprocessing_matches_the_tutorial_per_jet(events, jets, weight, n_keep):
    constituents = jet_constituents(events, jets, weight=weight)
    # Compared in float64 (the tutorial's 3rd-constituent sign test must see the same
    # numbers); the float32 result is compared more loosely below.
    ours = preprocess_constituents(_as_float64(constituents), n_keep=n_keep)
    ours32 = preprocess_constituents(constituents, n_keep=n_keep)
    assert ours32.fields == list(CONSTITUENT_FEATURES)
    assert all(ours32[f].type.content.content.content.primitive == "float32"
               for f in CONSTITUENT_FEATURES)
    n_jets = 0
    for ev in range(len(constituents)):
        for j in range(len(constituents[ev])):
            jet = constituents[ev][j]
            expected = tutorial_constituent(jet.pt, jet.eta, jet.phi, jet.E, n_keep)
            got = np.stack([ak.to_numpy(ours[ev][j][f]) for f in CONSTITUENT_FEATURES], -1)
            got32 = np.stack([ak.to_numpy(ours32[ev][j][f]) for f in CONSTITUENT_FEATURES], -1)
            assert got.shape == expected.shape == (min(len(jet), n_keep), 7)
            np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)
            np.testing.assert_allclose(got32, expected, rtol=1e-5, atol=2e-5)
            n_jets += 1
    assert n_jets == ak.sum(ak.num(constituents, axis=1))


@pytest.mark.parametrize("n_keep", [80, 10])
def test_preprocessed_geometry(events, n_keep):
    """Leading at (0, 0), second on the negative phi axis, third at eta >= 0, logs."""
    constituents = _as_float64(jet_constituents(events, "FatJet", weight="puppiWeight"))
    out = ak.flatten(preprocess_constituents(constituents, n_keep), axis=1)
    kept = ak.flatten(constituents, axis=1)[:, :n_keep]
    assert ak.all(ak.num(out, axis=1) == np.minimum(ak.num(kept, axis=1), n_keep))
    assert ak.max(ak.num(out, axis=1)) == min(n_keep, 84)
    assert ak.all(out.eta[:, 0] == 0) and ak.all(out.phi[:, 0] == 0)
    assert ak.all(out.delta_r[:, 0] == 0)
    assert ak.max(abs(out.eta[:, 1])) < 1e-12
    assert ak.all(out.phi[:, 1] < 0)
    np.testing.assert_allclose(ak.to_numpy(-out.phi[:, 1]), ak.to_numpy(out.delta_r[:, 1]))
    assert ak.all(out.eta[:, 2] >= 0)
    np.testing.assert_allclose(ak.to_numpy(ak.flatten(out.log_pt)),
                               np.log(ak.to_numpy(ak.flatten(kept.pt))), rtol=1e-6)
    # the relative logs are fractions of the sums over the *kept* constituents
    np.testing.assert_allclose(ak.to_numpy(ak.sum(np.exp(out.log_pt_rel), axis=1)), 1)
    np.testing.assert_allclose(ak.to_numpy(ak.sum(np.exp(out.log_e_rel), axis=1)), 1)
    # the angular distance to the leading constituent is rotation invariant
    deta = kept.eta - kept.eta[:, 0]
    dphi = (kept.phi - kept.phi[:, 0] + np.pi) % (2 * np.pi) - np.pi
    np.testing.assert_allclose(ak.to_numpy(ak.flatten(out.delta_r)),
                               ak.to_numpy(ak.flatten(np.sqrt(deta**2 + dphi**2))), atol=1e-9)


def test_preprocessing_worked_examples():
    def jet(*constituents):
        return [{"pt": pt, "eta": eta, "phi": phi, "E": e} for pt, eta, phi, e in constituents]

    jets = ak.Array([
        # across the phi boundary: phi 3.1 and -3.1 are 2 pi - 6.2 apart
        jet((100.0, 0.5, 3.1, 120.0), (50.0, 0.5, -3.1, 60.0), (10.0, 0.3, 3.0, 12.0)),
        # second above the leading one, rotated to below; the third then needs a flip;
        # given out of pt order
        jet((10.0, 0.1, 0.05, 10.0), (100.0, 0.0, 0.0, 100.0), (50.0, 0.0, 0.1, 50.0)),
        jet(), jet((7.0, 1.0, 1.0, 8.0)), jet((7.0, 1.0, 1.0, 8.0), (3.0, 1.3, 0.6, 4.0)),
    ])
    out = preprocess_constituents(jets)
    assert out.eta.tolist()[:2] == [pytest.approx([0, 0, 0.2]), pytest.approx([0, 0, 0.1])]
    assert out.phi.tolist()[:2] == [pytest.approx([0, -(2 * np.pi - 6.2), 0.1]),
                                    pytest.approx([0, -0.1, -0.05])]
    assert out.log_pt.tolist()[1] == pytest.approx(np.log([100, 50, 10]))
    assert out.log_e_rel.tolist()[0] == pytest.approx(np.log(np.array([120, 60, 12]) / 192))
    assert out.delta_r.tolist()[4] == pytest.approx([0, 0.5])
    assert out.eta.tolist()[2:] == [[], [0], pytest.approx([0, 0])]
    assert out.phi.tolist()[2:] == [[], [0], pytest.approx([0, -0.5])]
    with pytest.raises(ValueError, match="n_keep"):
        preprocess_constituents(jets, n_keep=0)
    # regular zero-padded rows, one of them with no constituent at all: zeros, no nan
    padded = ak.zip({"pt": np.array([[0.0, 0, 0], [5, 3, 0]]),
                     "eta": np.array([[0.0, 0, 0], [0.2, 0.2, 0]]),
                     "phi": np.array([[0.0, 0, 0], [0.1, 0.4, 0]]),
                     "E": np.array([[0.0, 0, 0], [6, 4, 0]])})
    out = preprocess_constituents(padded)
    assert all(out[f].tolist()[0] == [0, 0, 0] for f in CONSTITUENT_FEATURES)
    assert out.phi.tolist()[1] == pytest.approx([0, -0.3, 0])
    assert out.log_pt_rel.tolist()[1] == pytest.approx([np.log(5 / 8), np.log(3 / 8), 0])


def test_preprocessing_any_nesting_and_zero_padding(events):
    constituents = _as_float64(jet_constituents(events, "FatJet"))
    nested = preprocess_constituents(constituents, 30)
    # one level less (jets -> constituents) and one more (a list around each event)
    flat = preprocess_constituents(ak.flatten(constituents, axis=1), 30)
    assert _equal(ak.flatten(nested, axis=1), flat)
    deeper = preprocess_constituents(ak.unflatten(constituents, 1), 30)
    assert ak.num(deeper, axis=1).tolist() == [1] * 10
    assert _equal(ak.flatten(deeper, axis=1), nested)
    # zero-padded regular arrays, as in the open-data files: padded entries are all 0
    jets = ak.flatten(constituents, axis=1)
    padded = ak.zip({f: ak.to_regular(ak.fill_none(ak.pad_none(jets[f], 120, clip=True), 0.0))
                     for f in ("pt", "eta", "phi", "E")})
    from_padded = preprocess_constituents(padded, 30)
    n = ak.num(flat, axis=1)
    assert _equal(from_padded[ak.local_index(from_padded.eta) < n], flat)
    for f in CONSTITUENT_FEATURES:
        assert ak.all(from_padded[f][ak.local_index(from_padded.eta) >= n] == 0)


# --------------------------------------------------------------------------- typetracers


@pytest.mark.parametrize(("jets", "weight"), [("FatJet", None), ("Jet", "puppiWeight")])
def test_functions_run_on_typetracers(events, jets, weight):
    eager = jet_constituents(events, jets, weight=weight)
    traced = jet_constituents(_typetracer(events), jets, weight=weight)
    assert ak.backend(traced) == "typetracer"
    assert traced.layout.form == eager.layout.form
    features = preprocess_constituents(traced, 80)
    assert ak.backend(features) == "typetracer"
    assert features.layout.form == preprocess_constituents(eager, 80).layout.form
    # also on a typetracer of the constituents alone
    alone = preprocess_constituents(_typetracer(eager), 5)
    assert ak.backend(alone) == "typetracer"
    assert alone.fields == list(CONSTITUENT_FEATURES)


def test_columns_read(pfnano_file):
    """What dask-awkward finds the two functions read: the branches of the docstring."""
    import dask_awkward as dak

    from pipeline.inputs.nanoevents import read_lazy

    lazy = read_lazy({pfnano_file: {"object_path": "Events", "steps": [[0, 10]]}})
    graph = dak.map_partitions(
        lambda ev: preprocess_constituents(jet_constituents(ev, weight="puppiWeight")), lazy)
    (columns,) = dak.report_necessary_columns(graph).values()
    assert set(columns) == {
        "nFatJet", "nFatJetPFCands", "FatJetPFCands_jetIdx", "FatJetPFCands_pFCandsIdx",
        "nPFCands", "PFCands_pt", "PFCands_eta", "PFCands_phi", "PFCands_mass",
        "PFCands_puppiWeight"}
    assert ak.num(graph.compute(), axis=1).tolist() == [3, 2, 2, 2, 2, 2, 2, 4, 2, 3]
