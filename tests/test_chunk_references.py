"""A chunk's arrays are freed by reference counting as soon as the chunk is done with them.

Python's cyclic collector runs after enough new objects, not enough memory: arrays held by a
reference cycle stay until it runs, and a worker's memory grows with the variations of a
chunk (the demo's 200k-event chunks: 0.6 GiB). These tests run with the collector off and
check, with weak references, that nothing the chunk function makes is kept by a cycle.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import awkward as ak
import numpy as np
import pytest

from pipeline.analysis.histogram_fill import Entries, HistogramFiller, HistogramLayout
from pipeline.analysis.loading import load_config, load_parameters
from pipeline.analysis.plan import make_plan
from pipeline.analysis.processor import ChunkProcessor
from pipeline.calibration import CalibratorsManager, JetsCalibrator
from pipeline.config.models import HistogramSpec
from pipeline.config.parameters import defaults
from pipeline.graph import plan_variations
from pipeline.selection import Expression, ExpressionCache, forget_subexpressions
from pipeline.variations import NOMINAL

ROOT = Path(__file__).resolve().parents[1]
METADATA = {"sample": "TTbar", "year": "2022_preEE", "isMC": True, "dataset": "tt"}


@pytest.fixture()
def no_cyclic_collection() -> Iterator[None]:
    """The cyclic collector off (what earlier tests left collected first)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_an_evaluated_expression_keeps_no_events(no_cyclic_collection):
    """The values of an expression's subexpressions (``Jet.pt > 30``, ``Jet[...]``) and the
    events they were computed on go when the cache lets them go: no cycle keeps them."""
    events = ak.Array([{"Jet": [{"pt": 40.0}, {"pt": 20.0}]}, {"Jet": []}])
    cache = ExpressionCache()
    cache.start(NOMINAL, set(), events)
    value = cache.evaluate(Expression("ak.num(Jet[Jet.pt > 30])", "doc"), events)
    assert value.tolist() == [1, 0]
    released = weakref.ref(events)
    del cache, value, events
    forget_subexpressions()
    assert released() is None


def test_each_variation_is_freed_before_the_next_but_one(no_cyclic_collection, tt_events,
                                                          monkeypatch):
    """Demo chain: when a variation is calibrated, the calibrated events of the variations
    before the previous one are gone (the nominal's, which later variations reuse, stay);
    at the end of the chunk, all of them."""
    cfg = load_config(ROOT / "configs" / "demo.yaml")
    params = load_parameters(cfg.parameters)
    events = tt_events[:200]
    shape, weights = plan_variations(cfg, params, METADATA, events)
    processor = ChunkProcessor(make_plan(cfg, params, METADATA, shape + weights,
                                         shape_variations=shape))
    calibrated: list[tuple[str, weakref.ref]] = []
    alive_too_long: list[str] = []
    calibrate = CalibratorsManager.calibrate

    def recording(manager, events, variation):
        alive_too_long.extend(v for v, ref in calibrated[:-1] if ref() is not None)
        out = calibrate(manager, events, variation)
        if not any(out is kept for kept in manager._nominal_events):
            calibrated.append((variation, weakref.ref(out)))
        return out

    monkeypatch.setattr(CalibratorsManager, "calibrate", recording)
    processor.histograms(events)
    assert len(calibrated) > 20  # the JES sources, JER, electron scale and smearing, MET
    assert alive_too_long == []
    assert [v for v, ref in calibrated if ref() is not None] == []


def test_a_jes_uncertainty_goes_after_its_up_and_down(no_cyclic_collection, tt_events):
    """The jet calibrator evaluates a JES source's uncertainty once for its Up and Down
    variations and lets it go after them; a variation calibrated again is the same."""
    events = tt_events[:500]
    manager = CalibratorsManager([JetsCalibrator], events, defaults(), METADATA)
    jets = manager.calibrator_sequence[0]
    key = ("AK4PFPuppi", "Regrouped_Absolute")
    up, down = (f"AK4PFPuppi_JES_{key[1]}{d}" for d in ("Up", "Down"))
    manager.calibrate(events, NOMINAL)
    first = manager.calibrate(events, up).Jet.pt
    uncertainty = weakref.ref(jets._jes_uncertainty[key][0])
    manager.calibrate(events, down)
    assert key not in jets._jes_uncertainty
    assert uncertainty() is None
    assert ak.array_equal(manager.calibrate(events, up).Jet.pt, first)


def test_the_filler_expands_one_weight_slot_at_a_time(no_cyclic_collection, monkeypatch):
    """Each slot's event weights are taken per entry when that slot is filled: the per-entry
    weights of the slots before it are gone (a nominal has one slot per weight variation)."""
    spec = HistogramSpec(axes=[{"expr": "x", "bins": 4, "start": 0, "stop": 4}])
    slots = ("nominal", "aUp", "aDown", "bUp")
    layout = HistogramLayout("h", spec, ("all",), slots)
    filler = HistogramFiller([layout], ["all events"])
    entries = Entries([np.array([0.5, 1.5, 2.5, 3.5, 0.5])], np.array([0, 0, 1, 2, 2]))
    weights = [np.array([1.0, 2.0, 3.0]) * (i + 1) for i in range(len(slots))]
    seen: list[weakref.ref] = []
    most_alive = 0
    bin_sums = HistogramLayout.bin_sums

    def recording(self, bins, w):
        nonlocal most_alive
        most_alive = max(most_alive, sum(ref() is not None for ref in seen))
        seen.append(weakref.ref(w))
        return bin_sums(self, bins, w)

    monkeypatch.setattr(HistogramLayout, "bin_sums", recording)
    filler.fill("nominal", {"h": {"all": entries}}, list(zip(slots, weights)),
                [("all", np.array([True, False, True]))])
    assert len(seen) == 2 * len(slots)  # values and squares of each slot
    assert most_alive <= 1  # the slot's own per-entry weights, while its squares are summed
    values = filler.histograms["h"].view(flow=True).value[0]
    assert values[:len(slots), 1:5].tolist() == [[w[0] + w[2], w[0], 0.0, w[2]] for w in weights]
