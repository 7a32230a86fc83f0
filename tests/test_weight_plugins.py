"""A user's weights: named on the workers by import path, their errors named (the weight, its
class, the variation, the line; then the dataset, the file and the chunk), their factors
checked (one number per event), their selections calling the analysis' functions."""

from __future__ import annotations

import json

import awkward as ak
import numpy as np
import pytest
import uproot
from pydantic import BaseModel

from pipeline.cli import main
from pipeline.errors import ConfigError, ExpressionError, WeightError
from pipeline.inputs.datafiles import find_data_file
from pipeline.weights import (
    Weight,
    WeightValues,
    canonical_weight_names,
    compute_weights,
    weight_variation_names,
)

MC = {"isMC": True, "year": "2022_preEE", "sample": "TTbar", "dataset": "tt"}


# --- the names the workers get ---------------------------------------------------------------

USER_WEIGHT = """
from pipeline.weights import Weight, WeightValues


class Flat(Weight):
    name = "calibrew_test_flat"

    def compute(self, events, variations):
        return WeightValues(events.genWeight * 0 + 1)
"""


def test_a_user_weight_is_named_by_its_import_path(user_modules):
    (user_modules / "calibrew_user_flat.py").write_text(USER_WEIGHT)
    assert canonical_weight_names(["calibrew_user_flat:Flat", "calibrew_test_flat"]) == (
        "calibrew_user_flat:Flat", "calibrew_user_flat:Flat")
    # the built-in ones keep their names (the plans of existing configs do not change)
    assert canonical_weight_names(["pileup", "pipeline.weights:MuonIdIsoWeight"]) == (
        "pileup", "muon_id_iso")


def test_a_weight_a_worker_cannot_import_keeps_its_name():
    class Local(Weight):
        name = "test_weight_plugins_local"

    assert canonical_weight_names(["test_weight_plugins_local"]) == ("test_weight_plugins_local",)


# --- errors after planning ---------------------------------------------------------------------

FAILING_WEIGHT = """
import os

import awkward as ak

from pipeline.weights import Weight, WeightValues


class FailsOnOneChunk(Weight):
    name = "calibrew_test_fails"

    def compute(self, events, variations):
        chunk = ak.min(events.event)  # read while planning too: the column is projected
        one = events.genWeight * 0 + 1
        if ak.backend(one) != "typetracer":
            with open(os.environ["CALIBREW_TEST_CALLS"], "a") as log:
                log.write(f"{int(chunk)}\\n")
            if int(chunk) == int(os.environ["CALIBREW_TEST_BAD_CHUNK"]):
                raise ValueError("no factor for this run")
        return WeightValues(one)
"""

CONFIG = """
datasets:
  tt:
    files: [{file}]
    metadata: {{sample: TTbar, year: 2022_preEE, isMC: true}}
calibrators: []
weights:
  common: {{inclusive: ['calibrew_user_failing:FailsOnOneChunk']}}
histograms:
  njet:
    axes: [{{expr: 'ak.num(Jet)', name: njet, bins: 10, start: 0, stop: 10}}]
"""


@pytest.mark.slow
def test_a_weight_that_raises_on_one_chunk_is_named_and_not_retried(
        tmp_path, user_modules, monkeypatch, capsys):
    (user_modules / "calibrew_user_failing.py").write_text(FAILING_WEIGHT)
    line = 1 + FAILING_WEIGHT.splitlines().index(
        '                raise ValueError("no factor for this run")')
    tt = find_data_file("nano_tt_v12.root").resolve()  # messages name resolved paths
    with uproot.open(tt) as file:
        bad = int(np.min(file["Events"]["event"].array(library="np")[100:150]))
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("CALIBREW_TEST_CALLS", str(calls))
    monkeypatch.setenv("CALIBREW_TEST_BAD_CHUNK", str(bad))
    (tmp_path / "analysis.yaml").write_text(CONFIG.format(file=tt))
    job = tmp_path / "job.yaml"
    job.write_text(f"config: analysis.yaml\noutput: {tmp_path / 'out'}\nworkers: 1\n"
                   "chunksize: 50\n")
    assert main(["run", str(job), "--no-progress", "--retries", "2"]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    assert ("weight 'calibrew_test_fails' (calibrew_user_failing:FailsOnOneChunk) failed in "
            "compute() of variation 'nominal': ValueError: no factor for this run (raised at "
            f"calibrew_user_failing.py:{line})") in captured.err, captured.err
    assert f"dataset 'tt', file {tt}, entries [100, 150) (chunk 2)" in captured.err
    failed = json.loads((tmp_path / "out" / "report.json").read_text())
    assert failed["status"] == "failed"
    (chunk,) = failed["chunks_failed"]
    assert chunk["attempts"] == 1 and not chunk["unreadable_input"]
    assert calls.read_text().split().count(str(bad)) == 1  # not computed again


class Constant(Weight):
    """A weight whose nominal factor is its class' ``factor`` (set by the tests)."""

    name = "test_weight_plugins_constant"
    factor: object = None

    def compute(self, events, variations):
        return WeightValues(type(self).factor)


EVENTS = ak.Array([{"genWeight": 2.0, "run": 1, "Jet": [{"pt": 40.0}]},
                   {"genWeight": 1.0, "run": 1, "Jet": [{"pt": 20.0}, {"pt": 60.0}]},
                   {"genWeight": 1.0, "run": 1, "Jet": []}])


def test_a_factor_is_one_number_per_event(monkeypatch):
    monkeypatch.setattr(Constant, "factor", ak.Array([1.0, 2.0]))
    with pytest.raises(WeightError, match=r"weight 'test_weight_plugins_constant' "
                       r"\(test_weight_plugins:Constant\) gave a nominal factor of 2 values "
                       r"for 3 events: a weight gives one number per event"):
        compute_weights(EVENTS, MC, None, [Constant.name], [])
    # per-object factors are refused while planning, on the typetracer
    monkeypatch.setattr(Constant, "factor", EVENTS.Jet.pt / 40)
    typetracer = ak.to_backend(EVENTS, "typetracer")
    with pytest.raises(WeightError, match=r"gave a nominal factor of type 3 \* var \* float64: a "
                       r"weight gives one number per event \(of per-object factors, take the "
                       r"product: ak\.prod\(factors, axis=1\)\)"):
        compute_weights(typetracer, MC, None, [Constant.name], [])
    monkeypatch.setattr(Constant, "factor", 0.5)  # a number is fine
    weights = compute_weights(EVENTS, MC, None, [Constant.name], [])
    assert weights.nominal.tolist() == [1.0, 0.5, 0.5]


class Raising(Weight):
    name = "test_weight_plugins_raising"

    def compute(self, events, variations):
        if ak.backend(events) == "typetracer":
            raise KeyError("missing")
        uproot.open("/no/such/file.root")
        return WeightValues(1.0)


def test_a_weight_error_names_the_weight_and_a_reader_error_passes():
    with pytest.raises(WeightError, match=r"weight 'test_weight_plugins_raising' "
                       r"\(test_weight_plugins:Raising\) failed in compute\(\): KeyError: "
                       r"'missing' \(raised at test_weight_plugins\.py:\d+\)"):
        weight_variation_names(MC, None, [Raising.name], [Raising.name],
                               ak.to_backend(EVENTS, "typetracer"))
    with pytest.raises(FileNotFoundError):  # the input cannot be read: not the weight's fault
        compute_weights(EVENTS, MC, None, [Raising.name], [], variation="jesUp")


def test_bad_settings_name_the_parameters_key():
    with pytest.raises(ConfigError, match=r"event_weights\.2022_preEE\.test_plugin_muons\."
                       r"selection: Input should be a valid string"):
        compute_weights(EVENTS, MC, _params(3), ["test_plugin_muons"], [])


# --- selections that call the analysis' functions ---------------------------------------------

class SelectionSettings(BaseModel):
    selection: str


class SelectedMuons(Weight):
    """0.9 per selected muon."""

    name = "test_plugin_muons"
    settings_model = SelectionSettings

    def inputs(self):
        return {"Muon"}

    def compute(self, events, variations):
        return WeightValues(0.9 ** ak.num(self.selected(events, "Muon")))


def _params(selection: object) -> dict:
    return {"event_weights": {"2022_preEE": {"test_plugin_muons": {"selection": selection}}}}


MUON_EVENTS = ak.Array([
    {"genWeight": 1.0, "run": 1, "Muon": [{"pt": 30.0}, {"pt": 50.0}], "Jet": [{"pt": 40.0}]},
    {"genWeight": 1.0, "run": 1, "Muon": [{"pt": 30.0}], "Jet": [{"pt": 20.0}]},
])
#: the analysis' functions (a plain mapping): the leading jet's pt
VOCABULARY = {"leading_jet_pt": lambda jets: ak.fill_none(ak.max(jets.pt, axis=1), 0.0)}


def _factor(events, selection, vocabulary=VOCABULARY):
    weights = compute_weights(events, MC, _params(selection), ["test_plugin_muons"], [],
                              vocabulary=vocabulary)
    return weights, weights.factors["test_plugin_muons"].tolist()


def test_a_weight_selection_calls_the_analysis_functions_and_records_what_it_read():
    selection = "Muon.pt > leading_jet_pt(Jet)"
    weights, factor = _factor(MUON_EVENTS, selection)
    # a plain computation: muons above the leading jet's pt
    assert factor == pytest.approx([0.9 ** 1, 0.9 ** 1])
    assert weights.inputs == {"test_plugin_muons": {"Muon", "Jet"}}
    # a variation that changed the jets computes the factor again: it differs
    assert weights.reusable({"Jet"}) == {}
    assert list(weights.reusable({"Electron"})) == ["test_plugin_muons"]
    softer = ak.with_field(MUON_EVENTS, MUON_EVENTS.Jet.pt / 2, ["Jet", "pt"])
    assert _factor(softer, selection)[1] == pytest.approx([0.9 ** 2, 0.9 ** 1])
    # a selection that reads the whole events: unknown inputs, never reused
    weights, _ = _factor(MUON_EVENTS, "events.Muon.pt > 40")
    assert weights.inputs == {"test_plugin_muons": None}
    assert weights.reusable({"Electron"}) == {}


def test_without_the_vocabulary_the_analysis_functions_are_unknown():
    with pytest.raises(ExpressionError, match=r"event_weights\.2022_preEE\.test_plugin_muons"
                       r"\.selection: .* no collection, column or definition 'leading_jet_pt'"):
        _factor(MUON_EVENTS, "Muon.pt > leading_jet_pt(Jet)", vocabulary=None)
