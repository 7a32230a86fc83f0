"""Issue 16's done-when analysis: a one-lepton ttbar selection written as a new user would.

One lepton, at least four jets, two b-tag categories, HT and the mass of the three-jet
combination of highest summed pt (``ak.combinations``), a jet-scale calibrator and a per-jet
weight of the user's own module named by import path, every repeated expression a
``definitions:`` entry. A real run (``workers: 1``: fresh worker processes, which import the
user's module through ``PYTHONPATH``) must equal an eager computation written plainly here
with uproot and numpy, event by event; the same analysis with every definition pasted in
place must give bit-identical histograms; and the lazy run must equal the eager chunk
processor.
"""

from __future__ import annotations

import ast
import copy
import importlib
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pytest
import uproot
import yaml

from pipeline.analysis.loading import load_config, load_parameters
from pipeline.analysis.plan import make_plan
from pipeline.analysis.processor import ChunkProcessor
from pipeline.cli import main
from pipeline.graph import plan_variations
from pipeline.inputs.datafiles import find_data_file
from pipeline.inputs.nanoevents import read_eager
from pipeline.ml import open_table

TT = "nano_tt_v12.root"
CHUNKSIZE = 100  # two chunks of the 200 events
METADATA = {"sample": "TTbar", "year": "2022_preEE", "isMC": True}

USER_MODULE = '''
"""A ttbar analysis' own calibrator and weight."""

import awkward as ak
from pydantic import BaseModel

from pipeline.calibration import Calibrator
from pipeline.weights import Weight, WeightValues

SCALES = {"jscaleUp": 1.03, "jscaleDown": 0.97}


class JetScale(Calibrator):
    """Jet pt and mass scaled up and down by 3%."""

    name = "ttbar_jet_scale"
    has_variations = True
    calibrated_collections = ["Jet.pt", "Jet.mass"]

    def initialize(self, events):
        self._variations = ["jscaleUp", "jscaleDown"] if self.do_variations else []

    def calibrate(self, events, orig, variation, already_applied_calibrators=None):
        factor = SCALES.get(variation)
        if factor is None:  # the nominal: the jets as read
            return {"Jet.pt": orig["Jet.pt"], "Jet.mass": orig["Jet.mass"]}
        return {"Jet.pt": orig["Jet.pt"] * factor, "Jet.mass": orig["Jet.mass"] * factor}


class JetWeightSettings(BaseModel):
    selection: str


class JetWeight(Weight):
    """Product over the selected jets of 1 + 0.1 b-tag score; jwUp/jwDown: x1.05/x0.95."""

    name = "ttbar_jet_weight"
    settings_model = JetWeightSettings

    def inputs(self):
        return {"Jet"}

    def compute(self, events, variations):
        jets = self.selected(events, "Jet")
        w = ak.prod(1 + 0.1 * jets.btagDeepFlavB, axis=1)
        out = WeightValues(w)
        if variations:
            out.variations = {"jwUp": w * 1.05, "jwDown": w * 0.95}
        return out
'''

#: The analysis' named expressions, in order, each using the earlier ones.
DEFINITIONS = {
    "good_jet": "(Jet.pt > 30) & (abs(Jet.eta) < 2.4)",
    "jets": "Jet[good_jet]",
    "good_mu": "Muon[(Muon.pt > 30) & (abs(Muon.eta) < 2.4) & Muon.tightId]",
    "good_el": "Electron[(Electron.pt > 30) & (abs(Electron.eta) < 2.4) "
               "& (Electron.cutBased >= 4)]",
    "n_lep": "ak.num(good_mu) + ak.num(good_el)",
    "nb": "ak.sum(jets.btagDeepFlavB > 0.3, axis=1)",
    "ht": "ak.sum(jets.pt, axis=1)",
    "trijet": "ak.combinations(jets, 3, fields=['j1', 'j2', 'j3'])",
    "p4": "trijet.j1 + trijet.j2 + trijet.j3",
    "m3": "ak.firsts(p4[ak.argmax(p4.pt, axis=1, keepdims=True)].mass)",
}

BINS = {"ht": {"bins": 25, "start": 0, "stop": 1000}, "m3": {"bins": 25, "start": 0, "stop": 500}}
CATEGORIES = {"1b": "nb == 1", "2b": "nb >= 2"}
SHAPE = ["jscaleUp", "jscaleDown"]
WEIGHTS = ["jwUp", "jwDown"]


def analysis(definitions: bool) -> dict[str, Any]:
    """The analysis config: with ``definitions`` (and the plain-list form of weights and
    variations), or written out, every definition pasted in place (and the dict form)."""
    paste = (lambda text: text) if definitions else written_out
    weights = ["calibrew_ttbar_user:JetWeight"]
    shape, varied = ["ttbar_jet_scale"], ["ttbar_jet_weight"]  # varied: by registry name
    plugins = {"weights": weights, "variations": {"shape": shape, "weights": varied}}
    if not definitions:
        plugins = {"weights": common(weights),
                   "variations": {"shape": common(shape), "weights": common(varied)}}
    return {
        "parameters": ["params.yaml"],
        "datasets": {"tt": {"files": [str(find_data_file(TT))], "metadata": METADATA}},
        "calibrators": ["calibrew_ttbar_user:JetScale"],
        **plugins,
        **({"definitions": DEFINITIONS} if definitions else {}),
        "preselection": {"one_lepton": paste("n_lep == 1"),
                         "four_jets": paste("ak.num(jets) >= 4")},
        "categories": {name: paste(text) for name, text in CATEGORIES.items()},
        "histograms": {name: {"axes": [{"expr": paste(name), **bins}]}
                       for name, bins in BINS.items()},
        "tables": {"ttbar": {"columns": {name: paste(name) for name in ("m3", "ht", "nb")}}},
    }


def common(names: list[str]) -> dict[str, Any]:
    """The dict form of a list of names common to every sample."""
    return {"common": {"inclusive": names}}


def written_out(text: str) -> str:
    """``text`` with every definition's name replaced by its expression, written out.

    >>> written_out("ak.num(jets) >= 4")
    'ak.num(Jet[(Jet.pt > 30) & (abs(Jet.eta) < 2.4)]) >= 4'
    """
    bodies: dict[str, ast.expr] = {}

    class Paste(ast.NodeTransformer):
        def visit_Name(self, node: ast.Name) -> ast.expr:
            return copy.deepcopy(bodies[node.id]) if node.id in bodies else node

    for name, body in DEFINITIONS.items():
        bodies[name] = Paste().visit(ast.parse(body, mode="eval")).body
    return ast.unparse(Paste().visit(ast.parse(text, mode="eval")))


def weight_parameters(definitions: bool) -> dict[str, Any]:
    """The weight's settings: its jets are those of ``good_jet``."""
    selection = "good_jet" if definitions else written_out("good_jet")
    return {"event_weights": {"2022_preEE": {"ttbar_jet_weight": {"selection": selection}}}}


# --- the eager computation, written plainly ---------------------------------------------

BRANCHES = ["event", "genWeight", "Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass", "Jet_btagDeepFlavB",
            "Muon_pt", "Muon_eta", "Muon_tightId", "Electron_pt", "Electron_eta",
            "Electron_cutBased"]
SCALES = {"jscaleUp": 1.03, "jscaleDown": 0.97}
WEIGHT_FACTORS = {"jwUp": 1.05, "jwDown": 0.95}
#: How far the run's values may be from these float64 ones: the run computes in float32
#: (NanoAOD's jet pt, mass and b-tag scores; coffea's four-vector sums), and the three-jet
#: mass, a difference of squares (E^2 - p^2), loses more digits (2e-6 seen) than the sums.
RTOL = {"ht": 1e-6, "m3": 1e-5, "weight": 1e-6}


def read_branches() -> dict[str, np.ndarray]:
    """The branches as numpy arrays, one array per event for the jagged ones."""
    with uproot.open(find_data_file(TT)) as file:
        return file["Events"].arrays(BRANCHES, library="np")


def three_jet_mass(pt: np.ndarray, eta: np.ndarray, phi: np.ndarray,
                   mass: np.ndarray) -> tuple[float, float]:
    """The mass of the three jets of highest summed pt (the first such triplet in the
    order of ``ak.combinations``), and by how much (relative) its pt beats the runner-up."""
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    energy = np.sqrt(px ** 2 + py ** 2 + pz ** 2 + mass ** 2)
    best, best_pt, second_pt = (0, 0, 0), -1.0, -1.0
    n = len(pt)
    for i in range(n):
        for j in range(i + 1, n):
            for k in range(j + 1, n):
                triplet_pt = np.hypot(px[i] + px[j] + px[k], py[i] + py[j] + py[k])
                if triplet_pt > best_pt:
                    best, best_pt, second_pt = (i, j, k), triplet_pt, best_pt
                elif triplet_pt > second_pt:
                    second_pt = triplet_pt
    idx = list(best)
    m2 = energy[idx].sum() ** 2 - px[idx].sum() ** 2 - py[idx].sum() ** 2 - pz[idx].sum() ** 2
    return float(np.sqrt(m2)), (best_pt - second_pt) / best_pt


def expected_events(b: dict[str, np.ndarray], variation: str) -> dict[str, np.ndarray]:
    """The events passing the preselection in ``variation``: their event number, b-tag
    count, HT, three-jet mass and weight (generator weight times the jet weight).

    The jet selection uses the scaled pt: the calibrator changes ``Jet.pt`` before any
    expression runs. The calibrator scales float32 values by a Python float (float32
    arithmetic), so the scaled pt and mass are computed so here, then taken as float64.
    """
    factor = np.float32(SCALES.get(variation, 1.0))
    rows: dict[str, list[Any]] = {k: [] for k in ("event", "nb", "ht", "m3", "weight", "gap")}
    for i in range(len(b["event"])):
        pt, mass = b["Jet_pt"][i] * factor, b["Jet_mass"][i] * factor
        good = (pt > 30) & (np.abs(b["Jet_eta"][i]) < 2.4)
        n_mu = np.count_nonzero((b["Muon_pt"][i] > 30) & (np.abs(b["Muon_eta"][i]) < 2.4)
                                & b["Muon_tightId"][i])
        n_el = np.count_nonzero((b["Electron_pt"][i] > 30) & (np.abs(b["Electron_eta"][i]) < 2.4)
                                & (b["Electron_cutBased"][i] >= 4))
        if n_mu + n_el != 1 or np.count_nonzero(good) < 4:
            continue
        btag = b["Jet_btagDeepFlavB"][i][good].astype(np.float64)
        m3, gap = three_jet_mass(*(x[good].astype(np.float64) for x in (
            pt, b["Jet_eta"][i], b["Jet_phi"][i], mass)))
        weight = float(b["genWeight"][i]) * np.prod(1 + 0.1 * btag)
        for key, value in (("event", b["event"][i]), ("nb", np.count_nonzero(btag > 0.3)),
                           ("ht", pt[good].astype(np.float64).sum()), ("m3", m3),
                           ("weight", weight), ("gap", gap)):
            rows[key].append(value)
    return {k: np.array(v) for k, v in rows.items()}


def in_category(events: dict[str, np.ndarray], category: str) -> np.ndarray:
    return events["nb"] == 1 if category == "1b" else events["nb"] >= 2


def edges(bins: Mapping[str, float]) -> np.ndarray:
    return np.linspace(bins["start"], bins["stop"], int(bins["bins"]) + 1)


def expected_histograms(b: dict[str, np.ndarray]) -> dict[str, dict[tuple[str, str], Any]]:
    """``np.histogram`` of HT and the three-jet mass per (category, variation): the sums
    of weights and of squared weights; the shape variations at their events and jets, the
    weight variations at the nominal ones."""
    out: dict[str, dict[tuple[str, str], Any]] = {"ht": {}, "m3": {}}
    events = {v: expected_events(b, v) for v in ["nominal", *SHAPE]}
    for variation in ["nominal", *SHAPE, *WEIGHTS]:
        ev = events.get(variation, events["nominal"])
        weight = ev["weight"] * WEIGHT_FACTORS.get(variation, 1.0)
        for category in CATEGORIES:
            mask = in_category(ev, category)
            for name, bins in BINS.items():
                out[name][category, variation] = [np.histogram(
                    ev[name][mask], edges(bins), weights=w[mask])[0]
                    for w in (weight, weight ** 2)]
    return out


# --- the runs --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def user_module(tmp_path_factory):
    """The user's module, importable by the client and by the workers (PYTHONPATH)."""
    folder = tmp_path_factory.mktemp("usermods")
    (folder / "calibrew_ttbar_user.py").write_text(USER_MODULE)
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(folder))
        patch.setenv("PYTHONPATH", os.pathsep.join(
            p for p in (str(folder), os.environ.get("PYTHONPATH")) if p))
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-cache"))
        importlib.invalidate_caches()
        yield folder


def write_analysis(folder: Path, definitions: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(weight_parameters(definitions)))
    config = folder / "analysis.yaml"
    config.write_text(yaml.safe_dump(analysis(definitions), sort_keys=False))
    return config


@pytest.fixture(scope="module")
def runs(user_module, tmp_path_factory):
    """Run each form of the analysis once (on first use): its output folder by form."""
    done: dict[str, tuple[Path, int]] = {}

    def run(form: str) -> Path:
        if form not in done:
            folder = tmp_path_factory.mktemp(form)
            config = write_analysis(folder, definitions=form == "definitions")
            job = folder / "job.yaml"
            job.write_text(f"config: {config.name}\noutput: {folder / 'out'}\nsite: local\n"
                           f"workers: 1\nchunksize: {CHUNKSIZE}\n")
            done[form] = folder, main(["run", str(job), "--no-progress"])
        folder, code = done[form]
        assert code == 0, f"the run of the {form} form failed: see the first test's output"
        return folder

    return run


def histograms(folder: Path) -> dict[str, Any]:
    with open(folder / "out" / "tt" / "histograms.pkl", "rb") as fh:
        return pickle.load(fh)


def bit_identical(h: Any, other: Any, name: str) -> None:
    """The same sums of weights and of squared weights, flow bins included."""
    np.testing.assert_array_equal(h.values(flow=True), other.values(flow=True), err_msg=name)
    np.testing.assert_array_equal(h.variances(flow=True), other.variances(flow=True),
                                  err_msg=name)


FORMS = ["definitions", "written_out"]


@pytest.mark.slow
@pytest.mark.parametrize("form", FORMS)
def test_the_histograms_equal_an_eager_computation(runs, form):
    got = histograms(runs(form))
    b = read_branches()
    nominal = expected_events(b, "nominal")
    # not vacuous: both categories have events, and the cutflow counts them exactly
    counts = {c: int(np.count_nonzero(in_category(nominal, c))) for c in CATEGORIES}
    assert len(nominal["event"]) == 65 and counts == {"1b": 14, "2b": 50}, counts
    cutflow = got["cutflow"]
    for step, n in [("four_jets", 65), *((f"category: {c}", n) for c, n in counts.items())]:
        assert cutflow[{"step": step, "kind": "events"}].value == n, step
    for name, expected in expected_histograms(b).items():
        h = got[name]
        assert [ax.name for ax in h.axes][:2] == ["category", "variation"]
        assert list(h.axes["category"]) == list(CATEGORIES)
        assert set(h.axes["variation"]) == {"nominal", *SHAPE, *WEIGHTS}
        np.testing.assert_array_equal(h.axes[2].edges, edges(BINS[name]))
        for (category, variation), (sums, squares) in expected.items():
            # sums of weights (float32 b-tag products, summed in another order): an entry
            # in another bin would change two bins by a whole weight (hundreds)
            one = h[{"category": category, "variation": variation}]
            where = f"{name} {category} {variation}"
            np.testing.assert_allclose(one.values(), sums, rtol=RTOL["weight"], err_msg=where)
            np.testing.assert_allclose(one.variances(), squares, rtol=2 * RTOL["weight"],
                                       err_msg=where)


@pytest.mark.slow
@pytest.mark.parametrize("form", FORMS)
def test_the_table_equals_an_eager_computation(runs, form):
    table = open_table(runs(form) / "out" / "tt" / "ttbar.zarr")
    b = read_branches()
    for variation in ["nominal", *SHAPE]:
        expected = expected_events(b, variation)
        got = table.to_numpy(["event", "nb", "ht", "m3", "weight"], variation=variation)
        np.testing.assert_array_equal(got["event"], expected["event"], err_msg=variation)
        np.testing.assert_array_equal(got["nb"], expected["nb"], err_msg=variation)
        for name in ("ht", "m3", "weight"):
            np.testing.assert_allclose(got[name], expected[name], rtol=RTOL[name],
                                       err_msg=f"{name} {variation}")
    assert table.weight_variations() == WEIGHTS
    nominal = expected_events(b, "nominal")
    varied = table.to_numpy(["weight_variations"])["weight_variations"]
    for i, name in enumerate(WEIGHTS):
        np.testing.assert_allclose(varied[:, i], nominal["weight"] * WEIGHT_FACTORS[name],
                                   rtol=RTOL["weight"], err_msg=name)


def test_the_values_are_far_from_bin_edges_and_ties():
    """Why the run's float32 values must fill the bins this float64 computation fills: no
    HT or three-jet mass lies within twice its tolerance of a bin edge, and the triplet of
    highest pt beats the next one by far more than float32 rounding (1e-6)."""
    b = read_branches()
    for variation in ["nominal", *SHAPE]:
        ev = expected_events(b, variation)
        for name, bins in BINS.items():
            distance = np.abs(ev[name][:, None] - edges(bins)[None, :]).min(axis=1)
            assert np.all(distance > 2 * RTOL[name] * ev[name]), (variation, name)
        assert ev["gap"].min() > 1e-4, variation


@pytest.mark.slow
def test_definitions_change_no_result(runs):
    """The analysis with definitions and written out: bit-identical histograms and table."""
    with_definitions, written = (histograms(runs(form)) for form in FORMS)
    assert with_definitions.keys() == written.keys()
    for name, h in with_definitions.items():
        # the same bins (an axis is named after its expression, which definitions shorten)
        assert [list(a) for a in h.axes[:2]] == [list(a) for a in written[name].axes[:2]]
        for mine, theirs in zip(h.axes[2:], written[name].axes[2:], strict=True):
            assert np.array_equal(mine.edges, theirs.edges), name
        bit_identical(h, written[name], name)
    tables = [open_table(runs(form) / "out" / "tt" / "ttbar.zarr") for form in FORMS]
    for variation in ["nominal", *SHAPE]:
        one, other = (t.to_numpy(variation=variation) for t in tables)
        assert one.keys() == other.keys()
        for column in one:
            np.testing.assert_array_equal(one[column], other[column],
                                          err_msg=f"{column} {variation}")


@pytest.mark.slow
@pytest.mark.parametrize("form", FORMS)
def test_the_run_equals_the_eager_chunk_processor(runs, form):
    folder = runs(form)
    cfg = load_config(folder / "analysis.yaml")
    params = load_parameters(cfg.parameters)
    metadata = {**METADATA, "dataset": "tt"}
    path = str(find_data_file(TT))
    chunks = [read_eager(path, start=start, stop=start + CHUNKSIZE) for start in (0, CHUNKSIZE)]
    meta = ak.Array(chunks[0].layout.to_typetracer(forget_length=True),
                    behavior=chunks[0].behavior)
    shape, weights = plan_variations(cfg, params, metadata, meta)
    processor = ChunkProcessor(make_plan(cfg, params, metadata, shape + weights, shape))
    first, second = (processor.histograms(events) for events in chunks)
    run = histograms(folder)
    assert first.keys() == run.keys()
    for name, h in run.items():
        bit_identical(h, first[name] + second[name], name)
