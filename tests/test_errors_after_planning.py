"""Errors after planning name the config key (histogram, its axis, table column), the
variation, the dataset, the file and the chunk, not only awkward's or numpy's message.

An axis or a column of the wrong kind (records, tuples, strings, lists of lists) fails at
planning, on the typetracers, before any chunk runs; an error that only real data shows is
one message with the key, the variation and the chunk, and is not retried."""

from __future__ import annotations

import json
import re
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot
import yaml
from demo_job import write_job

from pipeline.analysis.loading import load_parameters
from pipeline.analysis.plan import make_plan
from pipeline.analysis.processor import ChunkProcessor
from pipeline.cli import main
from pipeline.config.models import AnalysisConfig
from pipeline.errors import ChunkFault, ExpressionError, WeightError
from pipeline.graph import ChunkTask
from pipeline.inputs.datafiles import find_data_file

METADATA = {"sample": "TTbar", "year": "2022_preEE", "isMC": True, "dataset": "tt"}


def plan(histograms: dict | None = None, tables: dict | None = None):
    cfg = AnalysisConfig.model_validate({
        "datasets": {"tt": {"files": ["nano_tt_v12.root"],
                            "metadata": {k: v for k, v in METADATA.items() if k != "dataset"}}},
        "calibrators": [],
        "categories": {"inclusive": "True", "two_jets": "ak.num(Jet) >= 2"},
        "histograms": histograms or {},
        "tables": tables or {},
    })
    return make_plan(cfg, load_parameters(), METADATA, ["nominal"])


def axis(expr: str) -> dict:
    return {"expr": expr, "bins": 10, "start": 0, "stop": 500}


def typetracer(events):
    return ak.Array(events.layout.to_typetracer(forget_length=True), behavior=events.behavior)


# --- a histogram axis of the wrong kind: at planning, on the typetracers ----------------------

WRONG_AXES = [
    ("Jet", r"'Jet' gives records \(var \* \{\w+: .+\.\.\.\): a histogram axis needs "
     r"one number per event or per object; pick one number of each, e.g\. Jet\.pt"),
    ("ak.combinations(Jet.pt, 3)", r"'ak\.combinations\(Jet\.pt, 3\)' gives tuples \(var \* "
     r"\(float32, float32, float32\)\): .*; pick one number of each, e\.g\. "
     r"\(ak\.combinations\(Jet\.pt, 3\)\)\['0'\] \(ak\.combinations and ak\.cartesian name the "
     r"parts with fields=\[\.\.\.\]\)"),
    ("ak.combinations(Jet, 2)", r"gives tuples .* e\.g\. \(ak\.combinations\(Jet, 2\)\)"
     r"\['0'\]\.pt"),
    ("Jet.pt[:, None] * Jet.pt", r"gives lists of lists \(var \* var \* float32\): .*; "
     r"flatten the inner lists"),
]


@pytest.mark.parametrize(("expr", "message"), WRONG_AXES, ids=[a for a, _ in WRONG_AXES])
def test_an_axis_of_the_wrong_kind_fails_on_the_typetracer(tt_events, expr, message):
    p = plan({"h": {"axes": [axis("ak.num(Jet)"), axis(expr)]}})
    with pytest.raises(ExpressionError) as info:
        ChunkProcessor(p).trace(typetracer(tt_events))
    text = str(info.value)
    assert text.startswith("histograms.h.axes[1].expr: "), text
    assert re.search(message, text), text
    assert text.endswith("\n  in variation 'nominal'"), text


@pytest.mark.parametrize("expr", ["ak.num(Jet)", "Jet.pt", "ak.firsts(Jet.pt)", "1.5",
                                  "ak.combinations(Jet.pt, 2)['0']"])
def test_axes_of_numbers_pass_the_check_and_fill(tt_events, expr):
    """The check lets numbers through, one per event or a list per event (missing values,
    constants): the histogram equals a plain count of the values in the selected events."""
    p = plan({"h": {"axes": [axis(expr)]}})
    ChunkProcessor(p).trace(typetracer(tt_events))
    h = ChunkProcessor(p).histograms(tt_events)
    value = eval(expr, {"ak": ak}, {"Jet": tt_events.Jet})
    weight = ak.to_numpy(tt_events.genWeight).astype(np.float64)
    two_jets = ak.to_numpy(ak.num(tt_events.Jet) >= 2)
    for category, mask in [("inclusive", np.ones(len(weight), bool)), ("two_jets", two_jets)]:
        values, weights = [], []
        for i in np.flatnonzero(mask):
            row = value if isinstance(value, float) else ak.to_list(value[i])
            for v in (row if isinstance(row, list) else [row]):
                if v is not None:
                    values.append(v)
                    weights.append(weight[i])
        expected = np.histogram(values, np.linspace(0, 500, 11), weights=weights)[0]
        got = h["h"][{"category": category, "variation": "nominal"}].values()
        np.testing.assert_allclose(got, expected, rtol=1e-12)


# --- a table column or collection of the wrong kind: at planning too --------------------------

WRONG_TABLES = [
    ({"columns": {"lead": "ak.firsts(Jet)"}}, "tables.t.columns.lead",
     r"'ak\.firsts\(Jet\)' gives records \(\?\{.*\): a table holds numbers; pick one number "
     r"of each, e\.g\. \(ak\.firsts\(Jet\)\)\.pt"),
    ({"level": "object", "objects": "Jet", "columns": {"pair": "ak.combinations(Jet.pt, 2)"}},
     "tables.t.columns.pair", r"gives tuples .*: a table holds numbers"),
    ({"columns": {"name": "'ttbar'"}}, "tables.t.columns.name",
     r"\"'ttbar'\" gives a str \('ttbar'\): a table holds numbers"),
    ({"columns": {"n": "ak.num(Jet)"},
      "collections": {"pairs": {"expr": "ak.combinations(Jet, 2)", "fields": ["0"]}}},
     "tables.t.collections.pairs.expr", r"\"ak\.combinations\(Jet, 2\)\['0'\]\" gives records "
     r".*: a collection holds one number per object in each field"),
]


@pytest.mark.parametrize(("table", "key", "message"), WRONG_TABLES,
                         ids=[k for _, k, _ in WRONG_TABLES])
def test_a_table_value_of_the_wrong_kind_fails_on_the_typetracer(tt_events, table, key,
                                                                 message):
    p = plan(tables={"t": table})
    with pytest.raises(ExpressionError) as info:
        ChunkProcessor(p).trace(typetracer(tt_events))
    text = str(info.value)
    assert text.startswith(f"{key}: "), text
    assert re.search(message, text), text


# --- what only real data shows: named by to_numpy, returned as a fault (not retried) ----------

def test_axes_of_other_lengths_name_the_histogram_and_are_not_retried(tt_events):
    """Jets and electrons in one 2-D histogram: their lists differ in length in some events,
    which the typetracers cannot show; the chunk task returns the named error."""
    p = plan({"h": {"axes": [axis("Jet.pt"), axis("Electron.pt")]}})
    ChunkProcessor(p).trace(typetracer(tt_events))  # planning passes
    assert not np.array_equal(ak.num(tt_events.Jet), ak.num(tt_events.Electron))
    fault = ChunkTask(ChunkProcessor(p))(tt_events)
    assert isinstance(fault, ChunkFault) and isinstance(fault.error, ExpressionError)
    text = str(fault.error)
    assert text.startswith(
        "histograms.h: cannot fill 'Jet.pt', 'Electron.pt' (its axes give one number per "
        "event, or lists of the same length in each event): ValueError: cannot broadcast "
        "nested list"), text  # awkward's own message, whole
    assert text.endswith("\n  in variation 'nominal'"), text



PER_JET_WEIGHT = """
from pipeline.weights import Weight, WeightValues


class PerJet(Weight):
    name = "calibrew_test_per_jet"

    def compute(self, events, variations):
        return WeightValues(events.Jet.pt * 0 + 2.0)  # a list per event: the mistake
"""


def test_a_weight_of_one_value_per_jet_is_refused(tt_events, user_modules):
    """A weight must be one number per event: a list per event would be flattened and its
    values taken by event index, filling wrong numbers without a word."""
    (user_modules / "calibrew_per_jet.py").write_text(PER_JET_WEIGHT)
    cfg = AnalysisConfig.model_validate({
        "datasets": {"tt": {"files": ["nano_tt_v12.root"],
                            "metadata": {k: v for k, v in METADATA.items() if k != "dataset"}}},
        "calibrators": [],
        "weights": {"common": {"inclusive": ["calibrew_per_jet:PerJet"]}},
        "histograms": {"n": {"axes": [axis("ak.num(Jet)")]}},
    })
    p = make_plan(cfg, load_parameters(), METADATA, ["nominal"])
    jets = int(ak.sum(ak.num(tt_events.Jet)))
    assert jets != len(tt_events)
    with pytest.raises(WeightError) as info:
        ChunkProcessor(p).histograms(tt_events)
    assert str(info.value).startswith(
        "weight 'calibrew_test_per_jet' (calibrew_per_jet:PerJet) gave a nominal factor of "
        "type 200 * var * float32")
    assert "a weight gives one number per event" in str(info.value)
    assert str(info.value).endswith("\n  in variation 'nominal'")


# --- in a run: the key, the variation, the dataset, the file, the chunk -----------------------

def _with_analysis(job: Path, change) -> None:
    """Change the analysis config of ``job`` (a job written by demo_job.write_job)."""
    cfg = job.with_name(job.name.replace(".job.yaml", ".analysis.yaml"))
    config = yaml.safe_load(cfg.read_text())
    change(config)
    cfg.write_text(yaml.safe_dump(config))


def test_an_axis_of_tuples_stops_the_run_at_planning(tmp_path, capsys):
    """The three-jet mistake: ``ak.combinations`` without picking a field. The run stops
    while planning, before any chunk, and writes nothing."""
    job = write_job(tmp_path, "m3")
    _with_analysis(job, lambda c: c["histograms"].update(
        {"m3": {"axes": [axis("ak.combinations(Jet.pt, 3)")]}}))
    assert main(["run", str(job), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    tt = find_data_file("nano_tt_v12.root").resolve()
    assert re.search(
        r"histograms\.m3\.axes\[0\]\.expr: 'ak\.combinations\(Jet\.pt, 3\)' gives tuples "
        r"\(var \* \(float64, float64, float64\)\): a histogram axis needs one number per "
        r"event or per object; pick one number of each, e\.g\. \(ak\.combinations\(Jet\.pt, "
        r"3\)\)\['0'\].*\n\s+in variation 'nominal'\n\s+in dataset 'tt', file "
        + re.escape(str(tt)) + ", read to plan the run", err), err
    assert not (tmp_path / "m3").exists()  # nothing written, not even the directory


FRAGILE = """
import awkward as ak
import numpy as np

CHUNK = set({events})  # the event numbers of one chunk
SEEN = []


def fragile(pt, event):
    '''The MET's pt; raises when it is computed a second time for that chunk (in a
    variation).'''
    if ak.backend(pt) == "typetracer" or not CHUNK & set(ak.to_list(event)):
        return pt
    if SEEN:
        raise ValueError("no value for this chunk")
    SEEN.append(True)
    return pt
"""


def test_an_axis_failing_on_one_chunk_names_histogram_variation_and_chunk(
        tmp_path, user_modules, capsys):
    """An analysis function (by import path) raises in a variation of chunk 2 only: one
    message, the key first, then the variation, the dataset, the file, the entries and the
    chunk; the chunk is tried once."""
    tt = find_data_file("nano_tt_v12.root").resolve()
    with uproot.open(tt) as file:
        events = file["Events"]["event"].array(library="np", entry_start=40, entry_stop=60)
    (user_modules / "calibrew_fragile.py").write_text(
        FRAGILE.format(events=sorted(int(e) for e in events)))
    job = write_job(tmp_path, "fragile", job_keys="retries: 2\n")

    def change(config: dict) -> None:
        config["functions"] = ["calibrew_fragile:fragile"]
        config["histograms"]["fragile_met"] = {"axes": [axis("fragile(PuppiMET.pt, event)")]}

    _with_analysis(job, change)
    assert main(["run", str(job), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    found = re.search(
        r"histograms\.fragile_met\.axes\[0\]\.expr: cannot evaluate 'fragile\(PuppiMET\.pt, "
        r"event\)': ValueError: no value for this chunk\n\s+in variation '(\w+)'\n\s+in "
        r"dataset 'tt', file " + re.escape(str(tt)) + r", entries \[40, 60\) \(chunk 2\); "
        r"not retried", err)
    assert found, err
    assert found.group(1) != "nominal" and found.group(1).endswith(("Up", "Down"))
    report = json.loads((tmp_path / "fragile" / "report.json").read_text())
    assert report["status"] == "failed" and "fragile_met" in report["error"]
    (chunk,) = report["datasets"]["tt"]["chunks_failed"]
    assert chunk["chunk"] == 2 and chunk["attempts"] == 1 and not chunk["unreadable_input"]
    assert not (tmp_path / "fragile" / "tt" / "histograms.pkl").exists()


RAISING_CUT = '''
from pipeline.cuts import Cut


class NoVetoMap(Cut):
    name = "calibrew_test_no_veto_map"

    def evaluate(self, events):
        raise KeyError("no veto map for run 356000")
'''


def test_a_cut_of_the_user_that_raises_is_named_by_its_key(tt_events, user_modules):
    (user_modules / "calibrew_raising_cut.py").write_text(RAISING_CUT)
    cfg = AnalysisConfig.model_validate({
        "datasets": {"tt": {"files": ["nano_tt_v12.root"],
                            "metadata": {k: v for k, v in METADATA.items() if k != "dataset"}}},
        "calibrators": [],
        "preselection": {"veto": "@calibrew_raising_cut:NoVetoMap"},
        "histograms": {"n": {"axes": [axis("ak.num(Jet)")]}},
    })
    params = load_parameters()
    params.selections["2022_preEE"]["calibrew_test_no_veto_map"] = {"map": "none"}
    p = make_plan(cfg, params, METADATA, ["nominal"])
    with pytest.raises(ExpressionError) as info:
        ChunkProcessor(p).histograms(tt_events)
    assert str(info.value) == (
        "preselection.veto: cut '@calibrew_test_no_veto_map' (calibrew_raising_cut:NoVetoMap) "
        "failed: KeyError: 'no veto map for run 356000'\n  in variation 'nominal'")
