"""Observables with missing values: a missing value is not filled, and stays in its place.

``ak.firsts(Jet.pt[Jet.pt > 200])`` is missing (None) in the events without such a jet; the
histograms must leave those events out (and only those), and a table column stores the
sentinel in their rows. The references are plain numpy loops over the events.
"""

from __future__ import annotations

import awkward as ak
import dask
import numpy as np
import pytest

from pipeline.analysis.loading import load_parameters
from pipeline.analysis.plan import make_plan
from pipeline.analysis.processor import ChunkProcessor
from pipeline.config.models import AnalysisConfig
from pipeline.graph import build_dataset_graph
from pipeline.inputs.datasets import Dataset, preprocess

METADATA = {"sample": "TTbar", "year": "2022_preEE", "isMC": True}
HARD = "ak.firsts(Jet.pt[Jet.pt > 200])"


def config(histograms=None, tables=None) -> AnalysisConfig:
    return AnalysisConfig.model_validate({
        "datasets": {"tt": {"files": ["nano_tt_v12.root"], "metadata": METADATA}},
        "calibrators": [],
        "categories": {"inclusive": "True", "two_jets": "ak.num(Jet) >= 2"},
        "histograms": histograms or {},
        "tables": tables or {},
    })


def processor(histograms=None, tables=None) -> ChunkProcessor:
    cfg = config(histograms, tables)
    return ChunkProcessor(make_plan(cfg, load_parameters(), {**METADATA, "dataset": "tt"},
                                    ["nominal"]))


def axis(expr: str, name: str, bins: int, start: float, stop: float) -> dict:
    return {"expr": expr, "name": name, "bins": bins, "start": start, "stop": stop}


HISTOGRAMS = {
    "hard": {"axes": [axis(HARD, "pt", 10, 0, 1000)]},
    "hard_eta": {"axes": [axis(HARD, "pt", 10, 0, 1000),
                          axis("ak.firsts(Jet.eta)", "eta", 5, -5, 5)]},
    "above_50": {"axes": [axis("ak.mask(Jet.pt, Jet.pt > 50)", "pt", 10, 0, 1000)]},
}


def test_missing_values_are_not_filled(tt_events):
    h = processor(HISTOGRAMS).histograms(tt_events)

    pts = ak.to_list(tt_events.Jet.pt)
    etas = ak.to_list(tt_events.Jet.eta)
    weights = ak.to_numpy(tt_events.genWeight).astype(np.float64)
    expected = {c: {"hard": np.zeros(10), "hard_eta": np.zeros((10, 5)),
                    "above_50": np.zeros(10)} for c in ("inclusive", "two_jets")}
    for i, jets in enumerate(pts):
        for c in expected:
            if c == "two_jets" and len(jets) < 2:
                continue
            hard = [pt for pt in jets if pt > 200]
            if hard:  # events without a hard jet are not filled
                b = min(int(hard[0] // 100), 9)
                expected[c]["hard"][b] += weights[i]
                if etas[i]:
                    e = int((etas[i][0] + 5) // 2)
                    expected[c]["hard_eta"][b, e] += weights[i]
            for pt in jets:
                if pt > 50:  # masked jets are missing values: not filled
                    expected[c]["above_50"][min(int(pt // 100), 9)] += weights[i]
    assert sum(expected["inclusive"]["hard"] != 0) > 1  # the reference is not empty
    for name in ("hard", "hard_eta", "above_50"):
        for c in ("inclusive", "two_jets"):
            values = h[name][{"category": c, "variation": "nominal"}].values()
            np.testing.assert_allclose(values, expected[c][name], rtol=1e-12, err_msg=name)


def test_missing_values_in_the_lazy_graph(tt_file, tt_events):
    ds = preprocess(Dataset("tt", [tt_file], {**METADATA, "dataset": "tt"}), 70)
    graph = build_dataset_graph(ds, config(HISTOGRAMS), load_parameters())
    (vector,) = dask.compute(graph.total(), scheduler="sync")
    lazy = graph.plan.unpack(vector)
    eager = processor(HISTOGRAMS).histograms(tt_events)
    for name in HISTOGRAMS:
        np.testing.assert_array_equal(lazy[name].values(flow=True),
                                      eager[name].values(flow=True), err_msg=name)


@pytest.mark.parametrize("level", ["event", "object"])
def test_a_table_column_with_missing_values_takes_the_sentinel(tt_events, level):
    table = {"columns": {"hard_pt": {"expr": HARD, "sentinel": -1}, "n": "ak.num(Jet)"}}
    if level == "object":
        table.update(level="object", objects="Jet")
    columns, _ = processor(tables={"t": table}).tables(tt_events)["t"]

    expected_pt, expected_n = [], []
    for jets in ak.to_list(tt_events.Jet.pt):
        hard = [pt for pt in jets if pt > 200]
        rows = 1 if level == "event" else len(jets)
        expected_pt += [hard[0] if hard else -1.0] * rows
        expected_n += [len(jets)] * rows
    assert -1.0 in expected_pt and any(v > 0 for v in expected_pt)
    np.testing.assert_array_equal(columns["hard_pt"], np.asarray(expected_pt, np.float32))
    np.testing.assert_array_equal(columns["n"], expected_n)
