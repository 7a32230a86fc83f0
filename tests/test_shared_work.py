"""Work shared across expressions, variations and fills gives what unshared work gives."""

from __future__ import annotations

import pickle

import awkward as ak
import hist
import numpy as np
import pytest

from pipeline.analysis.histogram_fill import HistogramLayout
from pipeline.config.models import HistogramSpec
from pipeline.corrections import get_correction
from pipeline.selection import Expression, ExpressionCache, forget_subexpressions

EVENTS = ak.Array([
    {"Jet": [{"pt": 40.0, "eta": 0.5}, {"pt": 20.0, "eta": 3.0}], "MET": {"pt": 10.0}},
    {"Jet": [], "MET": {"pt": 20.0}},
    {"Jet": [{"pt": 35.0, "eta": -1.0}], "MET": {"pt": 30.0}},
])


def test_subexpression_computed_once_per_events_and_names_recorded():
    forget_subexpressions()
    count = Expression("ak.num(Jet.pt[(Jet.pt > 30) & (abs(Jet.eta) < 2.4)])", "doc.a")
    select = Expression("Jet.pt[(Jet.pt > 30) & (abs(Jet.eta) < 2.4)]", "doc.b")
    assert count.evaluate(EVENTS).tolist() == [1, 0, 1]
    used: set[str] = set()
    first = select.evaluate(EVENTS, used=used)
    assert used == {"Jet"}  # a shared value still records what it read
    assert select.evaluate(EVENTS) is first  # the same subexpression: computed once
    other = ak.Array(EVENTS.to_list())  # other events: computed again
    assert select.evaluate(other) is not first
    assert select.evaluate(other).tolist() == first.tolist() == [[40.0], [], [35.0]]
    forget_subexpressions()
    assert select.evaluate(EVENTS) is not first


def test_names_given_to_one_call_are_not_shared():
    expr = Expression("Jet.pt * k", "doc.k")
    assert expr.evaluate(EVENTS, {"k": 2.0}).tolist() == [[80.0, 40.0], [], [70.0]]
    assert expr.evaluate(EVENTS, {"k": 3.0}).tolist() == [[120.0, 60.0], [], [105.0]]


def test_expression_cache_reuses_only_unchanged_collections():
    cache = ExpressionCache()
    jets, met = Expression("ak.num(Jet)", "doc.j"), Expression("MET.pt * 2", "doc.m")
    cache.start("nominal", set())
    nominal = [cache.evaluate(e, EVENTS) for e in (jets, met)]
    shifted = ak.with_field(EVENTS, EVENTS.MET.pt + 1, ["MET", "pt"])
    cache.start("metUp", {"MET"})
    assert cache.evaluate(jets, shifted) is nominal[0]
    assert cache.evaluate(met, shifted).tolist() == [22.0, 42.0, 62.0]
    cache.start("unknown", None)  # changes not known: everything again
    assert cache.evaluate(jets, shifted) is not nominal[0]


@pytest.mark.parametrize("axes", [
    [{"expr": "x", "bins": 7, "start": -1.5, "stop": 2.0}],
    [{"expr": "x", "edges": [-2.0, -0.5, 0.0, 0.1, 3.0]},
     {"expr": "y", "bins": 3, "start": 0.0, "stop": 1.0}],
])
def test_bin_sums_equal_a_boost_histogram_fill(axes):
    rng = np.random.default_rng(3)
    n = 5000
    values = [np.concatenate([rng.normal(0, 2, n - 4), [np.inf, -np.inf, 1e300, -0.0]])
              for _ in axes]
    weights = rng.normal(1, 0.3, n)
    layout = HistogramLayout("h", HistogramSpec(axes=axes), ("all",), ("nominal",))
    expected = layout.observables()
    expected.fill(*values, weight=weights)
    bins = layout.flow_bins(values)
    view = expected.view(flow=True)
    assert np.array_equal(layout.bin_sums(bins, weights), view["value"])
    assert np.array_equal(layout.bin_sums(bins, np.square(weights)), view["variance"])
    assert isinstance(expected, hist.Hist)


def test_evaluator_pickles_by_reference():
    sf = get_correction("jet_jerc_Summer22_V3.json.gz",
                        "Summer22_22Sep2023_JRV1_MC_ScaleFactor_AK4PFPuppi")
    copy = pickle.loads(pickle.dumps(sf))
    eta, pt = np.array([0.1, 2.2]), np.array([50.0, 400.0])
    assert np.array_equal(copy.evaluate(eta, pt, "up"), sf.evaluate(eta, pt, "up"))
