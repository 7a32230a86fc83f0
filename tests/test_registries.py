"""One registry idiom for calibrators, weights, cuts and expression functions.

A name defined twice is an error naming both definitions; a user's own object is named by
import path from the config, and a module that cannot be imported is named with the config
key; the recipes are plugins found through their entry points, never imported by the core.
"""

from __future__ import annotations

import pickle
import re
import subprocess
import sys
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot

from pipeline.analysis.loading import analysis_functions, load_config
from pipeline.calibration import CALIBRATORS, Calibrator, get_calibrator
from pipeline.cli import main
from pipeline.config import plugins
from pipeline.config.plugins import NameClashError, Registry
from pipeline.cuts import CUTS, Cut
from pipeline.errors import ConfigError, ExpressionError, UnknownNameError
from pipeline.inputs.datafiles import find_data_file
from pipeline.selection import FUNCTIONS, Expression
from pipeline.weights import WEIGHTS, Weight

HERE = re.escape(Path(__file__).name)


def _calibrate(self, events, orig, variation, already_applied_calibrators=None):
    return {}


def _clash_message(define) -> str:
    with pytest.raises(NameClashError) as info:
        define()
    return str(info.value)


def _define_calibrator() -> None:
    class JetsAgain(Calibrator):
        name = "jet_calibration"
        calibrate = _calibrate


def _define_weight() -> None:
    class PileupAgain(Weight):
        name = "pileup"


def _define_cut() -> None:
    class VetoAgain(Cut):
        name = "jet_veto_map"


def _define_function() -> None:
    @FUNCTIONS.register
    def jet_constituents(events):
        return events


@pytest.mark.parametrize(("define", "existing", "new"), [
    (_define_calibrator, r"pipeline\.calibration\.jets\.JetsCalibrator \(.*jets\.py:\d+\)",
     r"_define_calibrator\.<locals>\.JetsAgain"),
    (_define_weight, r"pipeline\.weights\.PileupWeight \(.*weights\.py:\d+\)",
     r"_define_weight\.<locals>\.PileupAgain"),
    (_define_cut, r"pipeline\.cuts\.JetVetoMap \(.*cuts\.py:\d+\)",
     r"_define_cut\.<locals>\.VetoAgain"),
    (_define_function, r"pipeline\.recipes\.toptagging\.jet_constituents",
     r"_define_function\.<locals>\.jet_constituents"),
], ids=["calibrator", "weight", "cut", "function"])
def test_a_name_defined_twice_is_an_error_naming_both(define, existing, new):
    text = _clash_message(define)
    assert re.search(f"already used by {existing}", text), text
    assert re.search(f"choose another name for test_registries\\.{new} \\(.*{HERE}:\\d+\\)",
                     text), text


def test_a_clash_with_a_plugin_names_it():
    def define() -> None:
        class TesAgain(Calibrator):
            name = "higgsml_tes"
            calibrate = _calibrate

    text = _clash_message(define)
    assert "pipeline.recipes.higgsml_calibrators" in text and "TauEnergyScale" in text, text
    assert "TesAgain" in text, text


def test_two_functions_of_one_name_clash():
    def first(x):
        return x

    def second(x):
        return 2 * x

    tools: Registry = Registry("tool", "calibrew.test_tools")
    tools.register(first)
    second.__name__ = "first"
    with pytest.raises(NameClashError, match=r"tool name 'first' is already used by "
                       rf"test_registries\..*first \(.*{HERE}:\d+\); choose another name for "
                       rf"test_registries\..*second \(.*{HERE}:\d+\)"):
        tools.register(second)


def _recreated() -> type[Calibrator]:
    class Recreated(Calibrator):
        name = "calibrew_test_recreated"
        calibrate = _calibrate

    return Recreated


def test_a_class_recreated_with_the_same_module_and_name_is_not_a_clash():
    # what cloudpickle does in a worker: the class is defined again, same module and qualname
    first, second = _recreated(), _recreated()
    assert first is not second
    assert CALIBRATORS["calibrew_test_recreated"] is second


def test_unknown_names_list_the_valid_ones_with_the_entry_points():
    with pytest.raises(UnknownNameError, match=r"unknown calibrator 'nope'; valid "
                       r"calibrators are: .*higgsml_tes.*jet_calibration"):
        get_calibrator("nope")
    with pytest.raises(UnknownNameError, match="unknown expression function 'nope'; valid "
                       "expression functions are: .*jet_constituents"):
        FUNCTIONS.resolve("nope")
    assert "jet_constituents" in FUNCTIONS and "jet_veto_map" in CUTS and "pileup" in WEIGHTS


def _python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_core_does_not_import_the_recipes():
    out = _python("""
        import sys
        import awkward as ak
        import pipeline.analysis.loading, pipeline.calibration, pipeline.cuts, pipeline.weights
        from pipeline.calibration import get_calibrator
        from pipeline.selection import Expression
        get_calibrator("jet_calibration")
        Expression("ak.num(Jet)", "doc").evaluate(ak.Array([{"Jet": [1.0]}]))
        print(sorted(m for m in sys.modules if m.startswith("pipeline.recipes")))
    """)
    assert out.strip() == "[]"


def test_a_recipe_calibrator_and_function_are_found_by_their_entry_points():
    out = _python("""
        import sys
        from pipeline.calibration import CALIBRATORS, get_calibrator
        from pipeline.selection import Expression
        assert "higgsml_tes" in list(CALIBRATORS)
        assert "pipeline.recipes.higgsml_calibrators" not in sys.modules
        cls = get_calibrator("higgsml_tes")
        print(cls.__module__, cls.__name__, CALIBRATORS["higgsml_tes"] is cls)
        Expression("preprocess_constituents(Jet)", "doc")
        print("pipeline.recipes.toptagging" in sys.modules)
    """)
    assert out.split("\n")[:2] == ["pipeline.recipes.higgsml_calibrators TauEnergyScale True",
                                   "True"]


PLUGIN = """
from pipeline.config.plugins import Registry


def triple(x):
    return 3 * x


class Thing:
    name = ""

    def __init_subclass__(cls):
        THINGS[cls.name] = cls


THINGS = Registry("thing", "calibrew.test_things", Thing)


class Hammer(Thing):
    name = "hammer"
"""


@pytest.fixture()
def plugin(user_modules, monkeypatch):
    """A module of plugins, declared by (fake) entry points of two groups."""
    (user_modules / "calibrew_user_plugin.py").write_text(PLUGIN)
    points = [EntryPoint("triple", "calibrew_user_plugin:triple", "calibrew.test_tools"),
              EntryPoint("mallet", "calibrew_user_plugin:Hammer", "calibrew.test_things")]
    monkeypatch.setattr(plugins, "entry_points",
                        lambda group: [p for p in points if p.group == group])


def test_an_entry_point_is_imported_when_its_name_is_looked_up(plugin):
    tools: Registry = Registry("tool", "calibrew.test_tools")
    assert list(tools) == ["triple"] and "triple" in tools
    assert "calibrew_user_plugin" not in sys.modules
    assert tools["triple"](2) == 6 and "calibrew_user_plugin" in sys.modules


def test_an_entry_point_and_its_class_have_one_name(plugin):
    from calibrew_user_plugin import THINGS

    with pytest.raises(NameClashError, match="entry point 'mallet' of group "
                       "calibrew.test_things names calibrew_user_plugin.Hammer .*, which is "
                       "registered as 'hammer'"):
        THINGS["mallet"]


# --- the user's own weight, cut and function, by import path --------------------------------

USER_WEIGHT = """
from pipeline.weights import Weight, WeightValues


class DoubleWeight(Weight):
    name = "calibrew_test_double"

    def compute(self, events, variations):
        one = events.genWeight * 0 + 1
        out = WeightValues(2 * one)
        if variations:
            out.variations = {"doubleUp": 3 * one, "doubleDown": one}
        return out
"""

USER_CUT = """
import awkward as ak

from pipeline.cuts import Cut


class MinJets(Cut):
    name = "calibrew_test_min_jets"

    def evaluate(self, events):
        return ak.num(events.Jet) >= self.settings["n"]
"""

USER_FUNCTION = """
import awkward as ak


def leading_pt(jets):
    return ak.fill_none(ak.firsts(jets.pt), -1.0)
"""

CONFIG = """
parameters: [params.yaml]
datasets:
  tt:
    files: [{file}]
    metadata: {{sample: TTbar, year: 2022_preEE, isMC: true}}
calibrators: []
weights:
  common: {{inclusive: ['{weight}']}}
variations:
  weights:
    common: {{inclusive: ['{weight}']}}
functions: ['{function}']
preselection:
  jets: '{cut}'
histograms:
  lead:
    axes: [{{expr: 'leading_pt(Jet)', name: pt, bins: 20, start: 0, stop: 400}}]
"""


def _analysis(tmp_path: Path, weight: str = "calibrew_user_weight:DoubleWeight",
              cut: str = "@calibrew_user_cut:MinJets",
              function: str = "calibrew_user_function:leading_pt") -> Path:
    (tmp_path / "params.yaml").write_text(
        "selections:\n  2022_preEE:\n    calibrew_test_min_jets: {n: 7}\n")
    path = tmp_path / "analysis.yaml"
    path.write_text(CONFIG.format(file=find_data_file("nano_tt_v12.root"), weight=weight,
                                  cut=cut, function=function))
    return path


def _write_user_modules(folder: Path) -> None:
    (folder / "calibrew_user_weight.py").write_text(USER_WEIGHT)
    (folder / "calibrew_user_cut.py").write_text(USER_CUT)
    (folder / "calibrew_user_function.py").write_text(USER_FUNCTION)


@pytest.mark.slow
@pytest.mark.parametrize("varied_by", ["import path", "registry name"])
def test_user_weight_cut_and_function_by_import_path_in_a_run(tmp_path, user_modules,
                                                              varied_by):
    """With ``variations.weights`` naming the user's weight by its registry name (and
    ``weights`` by import path), the worker, a fresh process, still finds it: the plan names
    it by its import path."""
    _write_user_modules(user_modules)
    config = _analysis(tmp_path)
    if varied_by == "registry name":
        text = config.read_text()
        by_path = ("variations:\n  weights:\n    common: {inclusive: "
                   "['calibrew_user_weight:DoubleWeight']}")
        assert by_path in text
        config.write_text(text.replace(by_path, "variations:\n  weights:\n    common: "
                                       "{inclusive: ['calibrew_test_double']}"))
    job = tmp_path / "job.yaml"
    job.write_text(f"config: {config.name}\noutput: {tmp_path / 'out'}\nworkers: 1\n")
    assert main(["run", str(job), "--no-progress"]) == 0
    with open(tmp_path / "out" / "tt" / "histograms.pkl", "rb") as fh:
        h = pickle.load(fh)["lead"]

    with uproot.open(find_data_file("nano_tt_v12.root")) as file:
        arrays = file["Events"].arrays(["nJet", "Jet_pt", "genWeight"])
    selected = arrays[arrays.nJet >= 7]
    lead = ak.to_numpy(ak.firsts(selected.Jet_pt)).astype(np.float64)
    gen = ak.to_numpy(selected.genWeight).astype(np.float64)
    edges = np.linspace(0, 400, 21)
    for variation, factor in [("nominal", 2), ("doubleUp", 3), ("doubleDown", 1)]:
        expected = np.histogram(lead, edges, weights=gen * factor)[0]
        got = h[{"category": "inclusive", "variation": variation}].values()
        np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert 0 < len(selected) < len(arrays)


@pytest.mark.parametrize(("key", "kind", "entry"), [
    (r"weights\.common\.inclusive\[0\]", "weight", {"weight": "calibrew_user_broken:W"}),
    (r"preselection\.jets", "cut", {"cut": "@calibrew_user_broken:C"}),
    (r"functions\[0\]", "expression function", {"function": "calibrew_user_broken:f"}),
])
def test_an_import_error_is_shown_with_the_config_key(tmp_path, user_modules, key, kind,
                                                      entry):
    _write_user_modules(user_modules)
    (user_modules / "calibrew_user_broken.py").write_text(
        "import awkward\nraise RuntimeError('no payload here')\n")
    path = _analysis(tmp_path, **entry)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert str(path) in text, text
    assert re.search(rf"{key}: cannot load {kind} '{entry[next(iter(entry))].lstrip('@')}': "
                     r"module 'calibrew_user_broken' raised while importing: RuntimeError: "
                     r"no payload here \(at .*calibrew_user_broken\.py, line 2\)", text), text


@pytest.mark.parametrize(("entry", "message"), [
    ({"weight": "calibrew_user_weight:Double"},
     r"has no attribute 'Double'; weights defined there: DoubleWeight"),
    ({"weight": "calibrew_user_function:leading_pt"}, r"'leading_pt' .* is not a Weight subclass"),
    ({"cut": "@calibrew_user_cut:MinJet"}, r"has no attribute 'MinJet'; cuts defined there: "
     r"MinJets"),
    ({"function": "calibrew_user_function:lead"},
     r"has no attribute 'lead'; expression functions defined there: leading_pt"),
    ({"function": "calibrew_user_weight:DoubleWeight"}, r"is not a function"),
    ({"cut": "@calibrew_user_missing:C"}, r"module 'calibrew_user_missing' not found"),
    ({"cut": "@jet_veto"}, r"preselection\.jets: unknown cut 'jet_veto'; valid cuts are: "
     r".*jet_veto_map"),
    ({"function": "calibrew_user_clash:jet_constituents"},
     r"functions\[0\]: expression function 'jet_constituents' is already "
     r"pipeline\.recipes\.toptagging\.jet_constituents"),
    ({"function": "calibrew_user_clash:abs"}, r"'abs' is a name of the expression language"),
])
def test_a_wrong_import_path_says_what_is_wrong(tmp_path, user_modules, entry, message):
    _write_user_modules(user_modules)
    (user_modules / "calibrew_user_clash.py").write_text(
        "def jet_constituents(events):\n    return events\n\n\ndef abs(x):\n    return x\n")
    with pytest.raises(ConfigError, match=message):
        load_config(_analysis(tmp_path, **entry))


def test_an_analysis_function_is_the_analysis_own(tmp_path, user_modules):
    _write_user_modules(user_modules)
    cfg = load_config(_analysis(tmp_path))
    functions = analysis_functions(cfg)
    assert list(functions) == ["leading_pt"] and "leading_pt" not in FUNCTIONS
    records = [{"Jet": [{"pt": 50.0}, {"pt": 30.0}]}, {"Jet": []}]
    own = Expression("leading_pt(Jet)", "histograms.lead.axes[0].expr", functions)
    assert own.evaluate(ak.Array(records)).tolist() == [50.0, -1.0]
    with pytest.raises(ExpressionError, match="no collection, column or definition 'leading_pt'"):
        Expression("leading_pt(Jet)", "histograms.lead.axes[0].expr").evaluate(
            ak.Array(records))
