"""Named definitions: every expression may use them; they give what the expressions written
out give, are computed once per variation and again only where a variation changed what
they read, and their mistakes are named."""

from __future__ import annotations

import ast

import awkward as ak
import numpy as np
import pytest

from pipeline.analysis.loading import analysis_vocabulary, load_parameters
from pipeline.analysis.processor import ChunkProcessor
from pipeline.config.models import AnalysisConfig
from pipeline.errors import ConfigError, ExpressionError
from pipeline.graph import build_dataset_graph
from pipeline.inputs.datasets import Dataset, preprocess
from pipeline.selection import Expression, ExpressionCache, Vocabulary, forget_subexpressions

METADATA = {"sample": "TTbar", "year": "2022_preEE", "isMC": True}
GOOD_JET = "(Jet.pt > 30) & (abs(Jet.eta) < 2.4)"
DEFINITIONS = {
    "good_jet": GOOD_JET,
    "jets": "Jet[good_jet]",
    "n_jets": "ak.num(jets)",
    "ht": "ak.sum(jets.pt, axis=1)",
    "trijet": "ak.combinations(jets, 3, fields=['a', 'b', 'c'])",
    "m3": "ak.max((trijet.a + trijet.b + trijet.c).mass, axis=1)",
}
#: the same analysis with every definition written out in place
WRITTEN_OUT = {
    "jets": f"Jet[{GOOD_JET}]",
    "n_jets": f"ak.num(Jet[{GOOD_JET}])",
    "ht": f"ak.sum(Jet[{GOOD_JET}].pt, axis=1)",
    "m3": (f"ak.max((ak.combinations(Jet[{GOOD_JET}], 3, fields=['a', 'b', 'c']).a"
           f" + ak.combinations(Jet[{GOOD_JET}], 3, fields=['a', 'b', 'c']).b"
           f" + ak.combinations(Jet[{GOOD_JET}], 3, fields=['a', 'b', 'c']).c).mass, axis=1)"),
}


def analysis(names: dict[str, str], definitions: dict[str, str]) -> AnalysisConfig:
    """The same analysis, its expressions given by ``names``."""
    return AnalysisConfig.model_validate({
        "datasets": {"tt": {"files": ["nano_tt_v12.root"], "metadata": METADATA}},
        "calibrators": ["jet_calibration"],
        "variations": {"shape": ["jet_calibration"]},
        "definitions": definitions,
        "preselection": {"three_jets": f"{names['n_jets']} >= 3"},
        "categories": {"inclusive": "True", "four_jets": f"{names['n_jets']} >= 4"},
        "histograms": {
            "ht": {"axes": [{"expr": names["ht"], "bins": 20, "start": 0, "stop": 1000}]},
            "m3": {"axes": [{"expr": names["m3"], "bins": 20, "start": 0, "stop": 800}]},
            "jet_pt": {"axes": [{"expr": f"{names['jets']}.pt", "bins": 20, "start": 0,
                                 "stop": 400}]},
        },
        "tables": {"events": {"columns": {"ht": names["ht"], "m3": names["m3"]},
                              "variations": "none"}},
    })


WITH_DEFINITIONS = analysis({n: n for n in WRITTEN_OUT}, DEFINITIONS)
WITHOUT = analysis(WRITTEN_OUT, {})


def test_definitions_give_what_the_expressions_written_out_give(tt_file, tt_events):
    params = load_parameters()
    dataset = preprocess(Dataset("tt", [tt_file], {**METADATA, "dataset": "tt"}), 70)
    graphs = [build_dataset_graph(dataset, cfg, params) for cfg in (WITH_DEFINITIONS, WITHOUT)]
    # the same columns read: a definition reads exactly what it names
    assert graphs[0].necessary_columns() == graphs[1].necessary_columns()
    assert len(graphs[0].plan.variations) > 1  # the jet variations run
    with_definitions, written_out = (ChunkProcessor(g.plan) for g in graphs)
    expected = written_out.histograms(tt_events)
    got = with_definitions.histograms(tt_events)
    assert got["m3"].sum(flow=True).value > 0  # some events have three jets
    for name, h in expected.items():
        assert np.array_equal(got[name].view(flow=True), h.view(flow=True)), name
    columns, _ = with_definitions.tables(tt_events)["events"]
    reference, _ = written_out.tables(tt_events)["events"]
    for name in ("ht", "m3"):
        assert np.array_equal(columns[name], reference[name], equal_nan=True), name


def test_digest_without_definitions_is_unchanged():
    plain = WITHOUT.model_dump(mode="json")
    del plain["definitions"]
    assert AnalysisConfig.model_validate(plain).digest() == WITHOUT.digest()
    assert WITH_DEFINITIONS.digest() != WITHOUT.digest()


EVENTS = ak.Array([
    {"Jet": [{"pt": 40.0}, {"pt": 20.0}], "MET": {"pt": 10.0}},
    {"Jet": [{"pt": 50.0}, {"pt": 35.0}], "MET": {"pt": 20.0}},
])


def counted_vocabulary(calls: list[str]) -> Vocabulary:
    """Definitions over the jets and over MET whose evaluations are recorded in ``calls``."""
    def jets_seen(jets):
        calls.append("jets")
        return jets

    def met_seen(met):
        calls.append("met")
        return met

    return Vocabulary({"jets_seen": jets_seen, "met_seen": met_seen}, {
        "jets": "jets_seen(Jet[Jet.pt > 30])",
        "met2": "met_seen(MET.pt * 2)",
    })


def test_a_definition_is_computed_once_per_variation_and_reused_where_unchanged():
    calls: list[str] = []
    words = counted_vocabulary(calls)
    expressions = [Expression(text, f"doc.{i}", words) for i, text in enumerate(
        ["ak.num(jets) >= 1", "ak.num(jets) >= 2", "ak.sum(jets.pt, axis=1)",
         "ak.num(jets) + met2"])]
    cache = ExpressionCache()
    cache.start("nominal", set(), EVENTS)
    used: set[str] = set()
    nominal = [cache.evaluate(e, EVENTS) for e in expressions]
    expressions[3].evaluate(EVENTS, used=used)
    assert sorted(calls) == ["jets", "met"]  # once each, shared by four expressions
    assert used == {"Jet", "MET"}  # what the definitions read is what the expression read
    assert nominal[3].tolist() == [21.0, 42.0]

    calls.clear()
    met_up = ak.with_field(EVENTS, EVENTS.MET.pt + 1, ["MET", "pt"])
    cache.start("metUp", {"MET"}, met_up)
    assert cache.evaluate(expressions[3], met_up).tolist() == [23.0, 44.0]
    assert calls == ["met"]  # the jets' definition is the nominal's: not computed again

    calls.clear()
    jet_up = ak.with_field(EVENTS, EVENTS.Jet.pt * 2, ["Jet", "pt"])
    cache.start("jetUp", {"Jet"}, jet_up)
    assert cache.evaluate(expressions[3], jet_up).tolist() == [22.0, 42.0]
    assert calls == ["jets"]  # the MET definition is the nominal's

    calls.clear()
    cache.start("unknown", None, jet_up)  # changes not known: everything again
    cache.evaluate(expressions[3], jet_up)
    assert sorted(calls) == ["jets", "met"]
    forget_subexpressions()


@pytest.mark.parametrize(("definitions", "key", "message"), [
    ({"jets": "Jet[good]", "good": "ak.num(jets) > 0"}, "definitions.jets",
     "uses itself, through jets -> good -> jets"),
    ({"jets": "jets[Jet.pt > 30]"}, "definitions.jets", "uses itself"),
    ({"np": "Jet.pt"}, "definitions.np", "a name of the expression language"),
    ({"events": "Jet.pt"}, "definitions.events", "a name of the expression language"),
    ({"my jets": "Jet"}, "definitions.my jets", "must be a Python identifier"),
    ({"jets": "Jet[Jet.pt >]"}, "definitions.jets", "invalid expression"),
    ({"jet_constituents": "Jet"}, "definitions.jet_constituents",
     "already an expression function"),
])
def test_a_bad_definition_is_named(definitions, key, message):
    with pytest.raises(ConfigError) as info:
        Vocabulary({}, definitions)
    assert info.value.problems[0][0] == key
    assert message in info.value.problems[0][1]


def test_definitions_may_come_in_any_order():
    """A file written back with sorted keys (yaml.safe_dump) means the same."""
    ordered = Vocabulary({}, DEFINITIONS)
    shuffled = Vocabulary({}, dict(sorted(DEFINITIONS.items())))
    assert list(shuffled.definitions) != list(DEFINITIONS)
    for name in DEFINITIONS:
        assert ast.dump(shuffled.bodies[name]) == ast.dump(ordered.bodies[name]), name


def test_a_table_alias_named_like_a_definition_is_refused():
    cfg = analysis({n: n for n in WRITTEN_OUT}, {**DEFINITIONS})
    cfg.tables["events"].aliases["jets"] = "Jet"
    with pytest.raises(ConfigError, match=r"tables\.events\.aliases\.jets: 'jets' is already "
                                          r"a definition"):
        analysis_vocabulary(cfg)


def test_a_failing_definition_is_named_with_the_expression_using_it():
    words = Vocabulary({}, {"jets": "Jet[Jet.pt > 30]", "lead": "jets.ptt"})
    with pytest.raises(ExpressionError) as info:
        Expression("ak.firsts(lead)", "histograms.lead.axes[0].expr", words).evaluate(EVENTS)
    assert str(info.value).startswith(
        "definitions.lead: cannot evaluate 'jets.ptt' (used by histograms.lead.axes[0].expr): "
        "no field 'ptt'")
    words = Vocabulary({}, {"jets": "Jte[Jte.pt > 30]"})
    with pytest.raises(ExpressionError, match=r"definitions\.jets: .*no collection, column or "
                                              r"definition 'Jte' in the events; did you mean "
                                              r"'Jet'\?"):
        Expression("ak.num(jets)", "categories.c", words).evaluate(EVENTS)


def test_a_definition_may_not_hide_a_collection():
    words = Vocabulary({}, {"MET": "Jet.pt"})
    with pytest.raises(ExpressionError, match=r"definitions\.MET: the events have a collection "
                                              r"or column 'MET'.*\(used by categories\.c\)"):
        Expression("ak.num(MET) > 0", "categories.c", words).evaluate(EVENTS)


def test_a_subexpression_calling_another_function_of_the_same_name_is_not_shared():
    forget_subexpressions()
    first = Expression("f(Jet.pt)", "doc.a", {"f": lambda pt: pt * 2})
    second = Expression("f(Jet.pt)", "doc.b", {"f": lambda pt: pt * 3})
    assert first.evaluate(EVENTS).tolist() == [[80.0, 40.0], [100.0, 70.0]]
    assert second.evaluate(EVENTS).tolist() == [[120.0, 60.0], [150.0, 105.0]]
    with pytest.raises(ExpressionError, match="no collection, column or definition 'f'"):
        Expression("f(Jet.pt)", "doc.c").evaluate(EVENTS)
    forget_subexpressions()
