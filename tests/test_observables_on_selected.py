"""Observables computed on the events of their histogram's categories only give the same
bits as computed on every event, read the same columns, and are computed on fewer events."""

from __future__ import annotations

import dask
import numpy as np
import pytest

from pipeline.analysis.evaluate import evaluate
from pipeline.analysis.loading import load_parameters
from pipeline.analysis.processor import ChunkProcessor
from pipeline.config.models import AnalysisConfig
from pipeline.graph import build_dataset_graph
from pipeline.inputs.datasets import Dataset, preprocess

METADATA = {"sample": "TTbar", "year": "2022_preEE", "isMC": True}


def analysis(evaluate_on: str) -> AnalysisConfig:
    """Histograms of every kind of observable: per event, lists, missing values, several
    axes, a combinatoric one, in categories with many, few and no events."""
    def histogram(*exprs: str, categories=None) -> dict:
        return {"axes": [{"expr": e, "bins": 20, "start": 0, "stop": 600} for e in exprs],
                "categories": categories, "evaluate_on": evaluate_on}

    return AnalysisConfig.model_validate({
        "datasets": {"tt": {"files": ["nano_tt_v12.root"], "metadata": METADATA}},
        "calibrators": ["jet_calibration"],
        "variations": {"shape": ["jet_calibration"]},
        "weights": ["pileup"],
        "definitions": {
            "jets": "Jet[(Jet.pt > 30) & (abs(Jet.eta) < 2.4)]",
            "trijet": "ak.combinations(jets, 3, fields=['a', 'b', 'c'])",
            "m3": "ak.max((trijet.a + trijet.b + trijet.c).mass, axis=1)",
        },
        "preselection": {"two_jets": "ak.num(jets) >= 2"},
        "categories": {"inclusive": "True", "four_jets": "ak.num(jets) >= 4",
                       "seven_jets": "ak.num(jets) >= 7", "none": "ak.num(jets) > 99"},
        "histograms": {
            "m3": histogram("m3", categories=["four_jets"]),
            "m3_all": histogram("m3"),
            "m3_none": histogram("m3", categories=["none"]),
            "m3_few": histogram("m3", categories=["seven_jets"]),
            "pt": histogram("jets.pt", categories=["four_jets", "seven_jets"]),
            "lead": histogram("ak.firsts(jets.pt)", "m3", categories=["seven_jets"]),
        },
    })


@pytest.fixture(scope="module")
def graphs(tt_file):
    params = load_parameters()
    dataset = preprocess(Dataset("tt", [tt_file], {**METADATA, "dataset": "tt"}), 70)
    return {on: build_dataset_graph(dataset, analysis(on), params)
            for on in ("all", "selected", "auto")}


def test_the_plan_says_which_observables_are_computed_on_the_selected_events(graphs):
    assert graphs["all"].plan.on_selected == frozenset()
    assert graphs["selected"].plan.on_selected == {"m3", "m3_all", "m3_none", "m3_few", "pt",
                                                   "lead"}
    # auto: the combinatoric ones (ak.combinations through a definition)
    assert graphs["auto"].plan.on_selected == {"m3", "m3_all", "m3_none", "m3_few", "lead"}


def test_same_bits_and_columns_on_the_selected_events(graphs, tt_events):
    columns = graphs["all"].necessary_columns()
    assert graphs["selected"].necessary_columns() == columns
    assert graphs["auto"].necessary_columns() == columns
    results = {on: ChunkProcessor(g.plan).histograms(tt_events) for on, g in graphs.items()}
    assert len(graphs["all"].plan.variations) > 1
    reference = results["all"]
    assert reference["m3_few"].sum(flow=True).value > 0  # few events, not none
    assert reference["m3_none"].sum(flow=True).value == 0
    for on in ("selected", "auto"):
        for name, h in reference.items():
            assert np.array_equal(results[on][name].view(flow=True), h.view(flow=True)), (
                on, name)


def test_lazy_on_the_selected_events_equals_lazy_on_all_and_eager(graphs, tt_events):
    lazy = {}
    for on in ("all", "selected"):
        (vector,) = dask.compute(graphs[on].total(), scheduler="sync")
        lazy[on] = graphs[on].plan.unpack(vector)
    eager = ChunkProcessor(graphs["all"].plan).histograms(tt_events)
    for name, h in eager.items():
        assert np.array_equal(lazy["selected"][name].view(flow=True),
                              lazy["all"][name].view(flow=True)), name
        # three chunks summed against one: the order of the additions differs
        np.testing.assert_allclose(lazy["selected"][name].values(flow=True),
                                   h.values(flow=True), rtol=1e-12, atol=0, err_msg=name)


def test_the_observables_are_computed_on_the_events_of_the_categories(graphs, tt_events):
    values = evaluate(graphs["selected"].plan, tt_events)
    nominal = next(values.variations)
    masks = dict(nominal.categories)
    for name, categories in (("m3_few", ["seven_jets"]), ("pt", ["four_jets", "seven_jets"])):
        observables = nominal.observables[name]
        expected = np.asarray(masks[categories[0]]) | np.asarray(masks[categories[-1]])
        assert np.array_equal(np.asarray(observables.subset), expected)
        assert 0 < len(observables.values[0]) == np.count_nonzero(expected) < len(tt_events)
    assert nominal.observables["m3_none"].subset is not None
    assert len(nominal.observables["m3_none"].values[0]) == 0
