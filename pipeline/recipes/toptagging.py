"""Jet constituents from PFNano and the ATLAS top-tagging constituent preprocessing.

Seed 003 trains taggers on the ATLAS top tagging open data (JINST 19 P08018): per large-R
jet, up to 200 constituents ``(pt, eta, phi, E)``, pT-ordered, and the preprocessing of the
open-data tutorial, ``constituent()`` in ``utils.py`` (formerly ``preprocessing.py``) of
https://gitlab.cern.ch/atlas/ATLAS-top-tagging-open-data. This module builds the same
inputs from CMS PFNano:

* :func:`jet_constituents` groups the PF candidates of each jet through the PFNano link
  table (``FatJetPFCands`` for AK8, ``JetPFCands`` for AK4: one row per (jet, candidate)
  pair with ``jetIdx`` and ``pFCandsIdx``) into an events -> jets -> constituents array;
* :func:`preprocess_constituents` applies the tutorial preprocessing to the jagged lists
  (no padding: padding to a fixed length is done when the table is written).

Both use awkward operations and numpy ufuncs only, so they run on eager arrays and on the
typetracers used to find the columns a run reads.

coffea exposes the same links only partly: ``NanoAODSchema`` (the project's reader) keeps
``FatJetPFCands``/``JetPFCands`` as plain collections of indices and builds
``Jet.constituents`` (the link rows, not the candidates) only from ``Jet_nConstituents``,
assuming the link table is ordered by jet; ``PFNanoAODSchema`` adds ``.pf``/``.jet`` on the
link rows, but ``FatJet.constituents`` needs a ``FatJet_nConstituents`` branch that PFNano
files may lack. :func:`jet_constituents` uses the indices alone and assumes no ordering.
"""

from __future__ import annotations

from typing import Any

import awkward as ak
import numpy as np

__all__ = ["CONSTITUENT_FEATURES", "jet_constituents", "link_table", "preprocess_constituents"]

CONSTITUENT_FEATURES = ("eta", "phi", "log_pt", "log_e", "log_pt_rel", "log_e_rel", "delta_r")
"""The fields of :func:`preprocess_constituents`, in the order of the ATLAS tutorial."""

_LINK_FIELDS = ("jetIdx", "pFCandsIdx")
_KNOWN_LINKS = {"GenJet": "GenJetCands", "GenJetAK8": "GenFatJetCands"}


def link_table(events: Any, jets: str) -> str:
    """Name of the PFNano collection linking the jets ``jets`` to their candidates.

    The link table is the collection ``<jets>PFCands`` (``FatJetPFCands``, ``JetPFCands``)
    or, for generator jets, ``GenJetCands`` / ``GenFatJetCands``; it must carry the index
    fields ``jetIdx`` and ``pFCandsIdx``.

    Parameters
    ----------
    events : ak.Array
        Events (NanoEvents or any record array with the collections as fields).
    jets : str
        The jet collection, e.g. ``"FatJet"`` or ``"Jet"``.

    Returns
    -------
    str
        The name of the link collection.

    Raises
    ------
    KeyError
        If the events have no link table for ``jets``.

    Examples
    --------
    >>> import awkward as ak
    >>> events = ak.Array([{"FatJetPFCands": [{"jetIdx": 0, "pFCandsIdx": 0}]}])
    >>> link_table(events, "FatJet")
    'FatJetPFCands'
    """
    fields = set(events.fields)
    for name in (f"{jets}PFCands", f"{jets}Cands", _KNOWN_LINKS.get(jets)):
        if name is not None and name in fields and set(_LINK_FIELDS) <= set(
                events[name].fields):
            return name
    found = sorted(f for f in fields
                   if events[f].fields and set(_LINK_FIELDS) <= set(events[f].fields))
    raise KeyError(f"no link table from {jets!r} to PF candidates (a collection "
                   f"'{jets}PFCands' with fields jetIdx and pFCandsIdx); link tables in "
                   f"these events: {found}")


def jet_constituents(events: Any, jets: str = "FatJet", candidates: str = "PFCands",
                     links: str | None = None, *, weight: str | None = None) -> Any:
    """The PF candidates of each jet, sorted by decreasing pt.

    For each jet of ``events[jets]``, the candidates ``events[candidates][pFCandsIdx]`` of
    the link rows with ``jetIdx`` equal to the jet's index, as records
    ``(pt, eta, phi, mass, E)`` with ``E = sqrt((pt cosh eta)^2 + mass^2)``. The link table
    may list the rows in any order; rows whose indices are out of range (``-1`` or past the
    end of a collection) are skipped. Jets without candidates get an empty list.

    Branches read (AK8 defaults): ``nFatJet`` (only the jet counts), ``nFatJetPFCands``,
    ``FatJetPFCands_jetIdx``, ``FatJetPFCands_pFCandsIdx``, ``nPFCands``, ``PFCands_pt``,
    ``PFCands_eta``, ``PFCands_phi``, ``PFCands_mass`` (and ``PFCands_<weight>`` with
    ``weight``); for AK4 the same with ``Jet``/``JetPFCands``.

    Parameters
    ----------
    events : ak.Array
        Events with the collections ``jets``, ``candidates`` and the link table.
    jets : str
        The jet collection (``"FatJet"`` for AK8, ``"Jet"`` for AK4).
    candidates : str
        The candidate collection the link table's ``pFCandsIdx`` points into.
    links : str or None
        The link table; found with :func:`link_table` when None.
    weight : str or None
        A per-candidate field to scale each four-momentum by (pt and mass; eta and phi
        are unchanged), candidates of weight <= 0 being dropped. The PFNano files seen so
        far store *unweighted* candidates next to ``puppiWeight``: the AK4 (CHS) jets are
        the plain sum of their candidates, the AK8 (PUPPI) jets the sum weighted by
        ``puppiWeight``, so pass ``weight="puppiWeight"`` for PUPPI jets of such files.

    Returns
    -------
    ak.Array
        events -> jets -> constituents, records with fields ``pt, eta, phi, mass, E``.

    Examples
    --------
    >>> import awkward as ak
    >>> events = ak.Array([{
    ...     "FatJet": [{"pt": 300.0}, {"pt": 200.0}],
    ...     "PFCands": [{"pt": 10.0, "eta": 0.1, "phi": 0.2, "mass": 0.0},
    ...                 {"pt": 50.0, "eta": 0.0, "phi": 0.1, "mass": 0.14},
    ...                 {"pt": 30.0, "eta": 1.0, "phi": -2.0, "mass": 0.0}],
    ...     "FatJetPFCands": [{"jetIdx": 0, "pFCandsIdx": 0},
    ...                       {"jetIdx": 1, "pFCandsIdx": 2},
    ...                       {"jetIdx": 0, "pFCandsIdx": 1}]}])
    >>> constituents = jet_constituents(events)
    >>> constituents.pt.tolist()
    [[[50.0, 10.0], [30.0]]]
    >>> constituents.fields
    ['pt', 'eta', 'phi', 'mass', 'E']
    """
    links = link_table(events, jets) if links is None else links
    link = events[links]
    cands = events[candidates]
    owner, index = link["jetIdx"], link["pFCandsIdx"]
    # Only the counts of the jet collection are needed: the offsets of any of its fields.
    jet_index = ak.local_index(events[jets], axis=1)
    n_jets = ak.num(jet_index, axis=1)
    n_cands = ak.num(cands, axis=1)
    valid = (owner >= 0) & (owner < n_jets) & (index >= 0) & (index < n_cands)
    owner, index = owner[valid], index[valid]

    pt, mass = cands["pt"][index], cands["mass"][index]
    eta, phi = cands["eta"][index], cands["phi"][index]
    if weight is not None:
        w = cands[weight][index]
        keep = w > 0
        owner, w = owner[keep], w[keep]
        pt, mass, eta, phi = pt[keep] * w, mass[keep] * w, eta[keep], phi[keep]
    linked = ak.zip({"owner": owner, "pt": pt, "eta": eta, "phi": phi, "mass": mass})

    # Group by jet: order the rows by (jet, decreasing pt) with two stable sorts...
    linked = linked[ak.argsort(linked["pt"], axis=1, ascending=False, stable=True)]
    linked = linked[ak.argsort(linked["owner"], axis=1, stable=True)]
    # ... and count the rows of every jet, empty jets included: each jet index is added
    # once to the owners, so the run lengths of the sorted keys are one per jet, in order.
    keys = ak.sort(ak.concatenate([linked["owner"], jet_index], axis=1), axis=1)
    counts = ak.run_lengths(keys) - 1
    flat = ak.unflatten(ak.flatten(linked, axis=1), ak.flatten(counts, axis=1), axis=0)
    grouped = ak.unflatten(flat, ak.num(counts, axis=1), axis=0)
    if "original_index" in events[jets].fields:
        # jets re-sorted by a calibrator: jetIdx counts the jets in the file's order
        grouped = grouped[events[jets].original_index]

    energy = np.sqrt((grouped["pt"] * np.cosh(grouped["eta"])) ** 2 + grouped["mass"] ** 2)
    out = ak.zip({"pt": grouped["pt"], "eta": grouped["eta"], "phi": grouped["phi"],
                  "mass": grouped["mass"], "E": energy})
    return ak.without_parameters(out)  # the branch docs (``__doc__``) no longer apply


def _nth(values: Any, n: int) -> Any:
    """The ``n``-th entry of each innermost list, 0 where the list is shorter.

    A sum over the (at most one) selected entry: no option type, and the dtype is kept.
    """
    return ak.sum(values[..., n:n + 1], axis=-1)


def preprocess_constituents(constituents: Any, n_keep: int = 80) -> Any:
    """The ATLAS top-tagging preprocessing of jet constituents.

    Follows ``constituent()`` of the ATLAS top tagging open-data tutorial
    (https://gitlab.cern.ch/atlas/ATLAS-top-tagging-open-data, ``utils.py``), step by step,
    on jagged lists instead of zero-padded arrays:

    0. sort by decreasing pt and keep the ``n_keep`` leading constituents (the tutorial
       cuts at ``max_constits`` first: every later sum runs over the kept constituents);
    1. centre: subtract the leading constituent's eta and phi, then wrap phi once into
       ``[-pi, pi]`` (``phi > pi`` -> ``phi - 2 pi``, ``phi < -pi`` -> ``phi + 2 pi``);
    2. rotate by ``alpha = arctan2(phi_2, eta_2) + pi/2`` (``eta' = eta cos a + phi sin a``,
       ``phi' = -eta sin a + phi cos a``): the second constituent lands on the *negative*
       phi axis, at ``(0, -R_2)``;
    3. flip eta of the whole jet if the third constituent has ``eta < 0`` (eta = 0 is
       not flipped);
    4. ``delta_r = sqrt(eta^2 + phi^2)`` of the preprocessed coordinates;
    5. ``log_pt = log pt``, ``log_e = log E``, ``log_pt_rel = log(pt / sum pt)``,
       ``log_e_rel = log(E / sum E)``, sums over the kept constituents of the jet.

    As in the tutorial, constituents with ``pt == 0`` (zero padding) get all features 0.
    Jets with fewer than two (three) constituents are not rotated (flipped); in the
    tutorial the zero padding then sets the angle, which moves only padded entries.

    Parameters
    ----------
    constituents : ak.Array
        Lists of constituents (any nesting, e.g. events -> jets -> constituents), records
        with fields ``pt``, ``eta``, ``phi`` and ``E`` (or ``energy``).
    n_keep : int
        How many leading constituents to keep (80 in the tutorial's training setup).

    Returns
    -------
    ak.Array
        The same nesting, records with fields :data:`CONSTITUENT_FEATURES`, pt-ordered,
        at most ``n_keep`` per jet; not padded.

    Examples
    --------
    >>> import awkward as ak
    >>> jet = ak.Array([[{"pt": 100.0, "eta": 0.5, "phi": 3.1, "E": 120.0},
    ...                  {"pt": 50.0, "eta": 0.5, "phi": -3.1, "E": 60.0},
    ...                  {"pt": 10.0, "eta": 0.3, "phi": 3.0, "E": 12.0}]])
    >>> features = preprocess_constituents(jet)
    >>> features.fields
    ['eta', 'phi', 'log_pt', 'log_e', 'log_pt_rel', 'log_e_rel', 'delta_r']
    >>> [round(x, 4) + 0 for x in features.eta[0].tolist()]  # + 0 turns -0.0 into 0.0
    [0.0, 0.0, 0.2]
    >>> [round(x, 4) + 0 for x in features.phi[0].tolist()]
    [0.0, -0.0832, 0.1]
    >>> ak.num(preprocess_constituents(jet, n_keep=2), axis=-1).tolist()
    [2]
    """
    if not isinstance(n_keep, (int, np.integer)) or isinstance(n_keep, bool) or n_keep < 1:
        raise ValueError(f"n_keep must be a positive integer, got {n_keep!r}")
    fields = constituents.fields
    energy_field = "E" if "E" in fields else "energy"
    if not {"pt", "eta", "phi", energy_field} <= set(fields):
        raise KeyError(f"constituents need fields pt, eta, phi and E; got {fields}")

    order = ak.argsort(constituents["pt"], axis=-1, ascending=False, stable=True)
    kept = constituents[order][..., :n_keep]
    pt, eta, phi, energy = kept["pt"], kept["eta"], kept["phi"], kept[energy_field]

    # 1. Centre the leading constituent; fix the phi discontinuity at +-pi.
    eta = eta - _nth(eta, 0)
    phi = phi - _nth(phi, 0)
    phi = ak.where(phi > np.pi, phi - 2 * np.pi, phi)
    phi = ak.where(phi < -np.pi, phi + 2 * np.pi, phi)

    # 2. Rotate the second constituent onto the negative phi axis.
    alpha = np.arctan2(_nth(phi, 1), _nth(eta, 1)) + np.pi / 2
    cos, sin = np.cos(alpha), np.sin(alpha)
    eta, phi = eta * cos + phi * sin, -eta * sin + phi * cos

    # 3. Reflect so that the third constituent has positive eta.
    eta = ak.where(_nth(eta, 2) < 0, -eta, eta)

    # 4. Distance to the leading constituent in the preprocessed plane.
    radius = np.sqrt(eta**2 + phi**2)

    # 5. Logarithms of pt and E, absolute and relative to the jet's (kept) sums. Zero-pt
    # entries (zero padding in the tutorial) get all features 0 below; their logs are
    # taken of 1 instead of 0 (no -inf, no warning). Adding booleans keeps the dtype.
    padding = pt == 0
    sum_pt, sum_e = ak.sum(pt, axis=-1), ak.sum(energy, axis=-1)
    pt, energy = pt + padding, ak.where(padding, pt + 1, energy)
    log_pt = np.log(pt)
    log_e = np.log(energy)
    log_pt_rel = np.log(pt / (sum_pt + (sum_pt == 0)))
    log_e_rel = np.log(energy / (sum_e + (sum_e == 0)))

    zero = pt * 0  # zeros of the input's dtype: float32 stays float32, as in the tutorial
    values = dict(zip(CONSTITUENT_FEATURES,
                      (eta, phi, log_pt, log_e, log_pt_rel, log_e_rel, radius)))
    out = ak.zip({name: ak.where(padding, zero, value) for name, value in values.items()})
    return ak.without_parameters(out)
