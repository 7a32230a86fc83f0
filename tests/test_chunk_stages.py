"""The chunk function's two stages: evaluate (awkward, typetracers alike), then accumulate
(numpy only), with the feature tables' parts going to the sinks it is given."""

from __future__ import annotations

import dataclasses

import awkward as ak
import numpy as np
import pytest

from pipeline.analysis.evaluate import evaluate
from pipeline.analysis.loading import load_parameters
from pipeline.analysis.plan import make_plan
from pipeline.analysis.processor import ChunkProcessor
from pipeline.analysis.to_numpy import chunk_arrays, variation_arrays
from pipeline.config.models import AnalysisConfig
from pipeline.table_layout import Column, PaddedColumn, RaggedColumn

METADATA = {"sample": "TTbar", "year": "2022_preEE", "isMC": True, "dataset": "tt"}


def plan():
    cfg = AnalysisConfig.model_validate({
        "datasets": {"tt": {"files": ["nano_tt_v12.root"],
                            "metadata": {k: v for k, v in METADATA.items() if k != "dataset"}}},
        "calibrators": [],
        "preselection": {"one_jet": "ak.num(Jet) >= 1"},
        "categories": {"inclusive": "True", "two_jets": "ak.num(Jet) >= 2"},
        "histograms": {
            "lead": {"axes": [{"expr": "ak.firsts(Jet.pt)", "bins": 10, "start": 0,
                               "stop": 500}]},
            "mixed": {"axes": [{"expr": "Jet.pt", "bins": 10, "start": 0, "stop": 500},
                               {"expr": "ak.num(Jet)", "bins": 5, "start": 0, "stop": 10}]},
        },
        "tables": {
            "events": {"columns": {"n": "ak.num(Jet)"},
                       "collections": {"lead": {"expr": "Jet[:, :2]", "fields": ["pt"],
                                                "layout": "padded", "length": 2}}},
            "jets": {"level": "object", "objects": "Jet", "select": "obj.pt > 30",
                     "columns": {"pt": "obj.pt", "first": "ak.firsts(Jet.pt)"}},
        },
    })
    return make_plan(cfg, load_parameters(), METADATA, ["nominal"])


class MemorySink:
    """A table sink (``part_done`` / ``write_part``) that keeps the parts in memory."""

    def __init__(self, done=()):
        self.done = set(done)
        self.parts = {}

    def part_done(self, index):
        return index in self.done

    def write_part(self, index, columns, attrs=None):
        self.parts[index] = (dict(columns), dict(attrs or {}))
        return len(next(iter(columns.values())))


def _numpy_only(value, where="values"):
    """Every leaf of ``value`` (dataclasses, dicts, lists, tuples) is numpy or a plain
    Python value: no awkward array reaches the accumulators."""
    assert not isinstance(value, ak.Array), where
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            _numpy_only(getattr(value, f.name), f"{where}.{f.name}")
    elif isinstance(value, dict):
        for key, item in value.items():
            _numpy_only(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _numpy_only(item, f"{where}[{i}]")
    elif isinstance(value, (RaggedColumn, PaddedColumn)):
        _numpy_only(vars(value), where)
    else:
        assert value is None or isinstance(value, (np.ndarray, np.generic, str, int, float,
                                                   bool)), (where, type(value))


def test_the_accumulators_receive_numpy_only(tt_events):
    p = plan()
    chunk = evaluate(p, tt_events, [t.name for t in p.tables])
    arrays = chunk_arrays(chunk)
    _numpy_only(arrays)
    seen = 0
    for values in chunk.variations:
        assert isinstance(values.observables["lead"].values[0], ak.Array)  # evaluate: awkward
        numpy = variation_arrays(values, arrays.n_events, {t.name: t for t in p.tables})
        _numpy_only(numpy)
        assert set(numpy.tables) == {"events", "jets"}
        seen += 1
    assert seen == 1


def test_evaluate_runs_the_same_on_typetracers(tt_events):
    p = plan()
    tracer = ak.Array(tt_events.layout.to_typetracer(forget_length=True),
                      behavior=tt_events.behavior)
    lazy = evaluate(p, tracer, [t.name for t in p.tables])
    eager = evaluate(p, tt_events, [t.name for t in p.tables])
    for traced, computed in zip(lazy.variations, eager.variations):
        assert len(traced.arrays()) == len(computed.arrays())
        for a, b in zip(traced.arrays(), computed.arrays()):
            assert type(a) is type(b)
            if isinstance(a, ak.Array):
                assert ak.backend(a) == "typetracer" and ak.backend(b) == "cpu"
                assert a.type.content == b.type.content


def _same_columns(a: dict[str, Column], b: dict[str, Column]) -> None:
    assert list(a) == list(b)
    for name in a:
        if isinstance(a[name], np.ndarray):
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
        else:
            for key, value in vars(a[name]).items():
                other = vars(b[name])[key]
                for k in value if isinstance(value, dict) else [None]:
                    np.testing.assert_array_equal(value[k] if k else value,
                                                  other[k] if k else other, err_msg=name)


def test_table_parts_go_to_the_sinks(tt_events):
    p = plan()
    sinks = {"events": MemorySink(), "jets": MemorySink(done={3})}
    processor = ChunkProcessor(p, sinks)
    vector = processor(tt_events, np.array([3]))
    assert sinks["events"].parts.keys() == {3}
    assert not sinks["jets"].parts  # a part already written is not computed again
    eager = ChunkProcessor(p)
    columns, attrs = eager.tables(tt_events)["events"]
    _same_columns(sinks["events"].parts[3][0], columns)
    assert sinks["events"].parts[3][1] == attrs
    histograms = eager.histograms(tt_events)
    np.testing.assert_array_equal(
        np.asarray(vector)[0], np.concatenate([
            np.concatenate([np.ravel(h.view(flow=True).value),
                            np.ravel(h.view(flow=True).variance)])
            for h in histograms.values()]))


def test_tracing_writes_nothing(tt_events):
    p = plan()
    sinks = {"events": MemorySink(), "jets": MemorySink()}
    tracer = ak.Array(tt_events.layout.to_typetracer(forget_length=True),
                      behavior=tt_events.behavior)
    out = ChunkProcessor(p, sinks)(tracer, np.array([0]))
    assert ak.backend(out) == "typetracer"
    assert not sinks["events"].parts and not sinks["jets"].parts


def test_missing_values_and_mixed_axes_fill_as_before(tt_events):
    """Missing leading jets are not filled; a 2-D fill of jets against a per-event value
    broadcasts in each category: the references are plain loops over the events."""
    h = ChunkProcessor(plan()).histograms(tt_events)
    pts = ak.to_list(tt_events.Jet.pt)
    w = ak.to_numpy(tt_events.genWeight).astype(np.float64)
    lead = {c: np.zeros(10) for c in ("inclusive", "two_jets")}
    mixed = {c: np.zeros((10, 5)) for c in ("inclusive", "two_jets")}

    def bin_of(x, width, n):  # None: overflow, not in values()
        return int(x // width) if x < width * n else None

    for i, jets in enumerate(pts):
        for c in lead:
            if len(jets) < (2 if c == "two_jets" else 1):
                continue
            if bin_of(jets[0], 50, 10) is not None:
                lead[c][bin_of(jets[0], 50, 10)] += w[i]
            for pt in jets:
                if bin_of(pt, 50, 10) is not None and bin_of(len(jets), 2, 5) is not None:
                    mixed[c][bin_of(pt, 50, 10), bin_of(len(jets), 2, 5)] += w[i]
    for c in lead:
        got = h["lead"][{"category": c, "variation": "nominal"}].values()
        np.testing.assert_allclose(got, lead[c], rtol=1e-12)
        got = h["mixed"][{"category": c, "variation": "nominal"}].values()
        np.testing.assert_allclose(got, mixed[c], rtol=1e-12)


@pytest.mark.parametrize("name", ["events", "jets"])
def test_tables_are_the_same_from_the_sink_and_eagerly(tt_events, name):
    p = plan()
    sinks = {"events": MemorySink(), "jets": MemorySink()}
    ChunkProcessor(p, sinks)(tt_events, np.array([0]))
    columns, _ = ChunkProcessor(p).tables(tt_events)[name]
    _same_columns(sinks[name].parts[0][0], columns)
