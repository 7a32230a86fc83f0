"""Compiled correction kernels against correctionlib, on the real CMS payloads.

Every correction of every payload the defaults use is compiled and evaluated on values that
reach every bin, category and flow of its tree (and beyond its edges); the results must
equal correctionlib's to 1e-12 relative. Results of a cancellation may differ by a few units
in the last place of the cancelling terms: a JES uncertainty crossing zero, and the AK8
resolutions written as ``73.06 - 73.04 * exp(-pt / 2447000) + ...`` (about 0.03), where
numpy's vectorised ``exp`` (its AVX-512 code on some processors) and the C library's used by
correctionlib differ by an ulp: up to 6e-14 absolute on an AMD EPYC machine. Hence an
absolute tolerance of 2e-13: a few ulps of terms up to about 100, far below any physical
difference (a wrong bin or parameter differs by 1e-4 or more).
"""

from __future__ import annotations

import json
import logging

import awkward as ak
import correctionlib
import correctionlib.schemav2 as cs
import numpy as np
import pytest
from correction_cases import ATOL, PAYLOADS, RTOL, argument_cases, read_payload

from pipeline.corrections import get_compound, get_correction
from pipeline.corrections.compiled import compile_correction
from pipeline.corrections.formula import UnsupportedFormula, compile_formula
from pipeline.corrections.loader import COMPILED_ENV
from pipeline.corrections.nodes import NotCompiled, RefusedValue
from pipeline.inputs.datafiles import find_data_file


@pytest.mark.parametrize("payload", PAYLOADS)
def test_every_correction_equals_correctionlib(payload):
    rng = np.random.default_rng(7)
    data = read_payload(payload)
    reference = correctionlib.CorrectionSet.from_file(str(find_data_file(payload)))
    checked = 0
    for spec in data["corrections"]:
        compiled = compile_correction(spec)  # every correction of these payloads compiles
        for args in argument_cases(spec, rng):
            try:
                expected = reference[spec["name"]].evaluate(*args)
            except Exception:
                with pytest.raises(RefusedValue):  # correctionlib refuses: so do the kernels
                    compiled.evaluate(*args)
                continue
            np.testing.assert_allclose(compiled.evaluate(*args), expected, rtol=RTOL,
                                       atol=ATOL, err_msg=f"{payload}: {spec['name']} {args}")
            checked += 1
    assert checked > len(data["corrections"]) / 2


def test_compound_jec_and_awkward_arguments(tt_events):
    jec = get_compound("jet_jerc_Summer22_V3.json.gz",
                       "Summer22_22Sep2023_V3_MC_L1L2L3Res_AK4PFPuppi")
    jets = tt_events.Jet
    raw = jets.pt * (1 - jets.rawFactor)
    rho = tt_events.Rho.fixedGridRhoFastjetAll
    ours = jec.evaluate(jets.area, jets.eta, raw, rho)
    theirs = jec.reference.evaluate(jets.area, jets.eta, raw, rho)
    assert ak.all(ak.num(ours) == ak.num(jets))
    np.testing.assert_allclose(ak.flatten(ours), ak.flatten(theirs), rtol=RTOL, atol=0)
    # typetracers (graph planning) give the same type
    tracer = ak.Array(ak.to_layout(raw).to_typetracer(forget_length=True))
    assert str(jec.evaluate(jets.area, jets.eta, tracer, rho).type.content) == str(
        ours.type.content)


def test_refused_values_raise_correctionlibs_error():
    veto = get_correction("pog/2022_Summer22/JME_jetvetomaps.json.gz",
                          "Summer22_23Sep2023_RunCD_V1")
    with pytest.raises(RuntimeError) as ours:
        veto.evaluate("jetvetomap", np.array([0.0, 7.0]), np.array([0.0, 0.0]))
    with pytest.raises(RuntimeError) as theirs:
        veto.reference.evaluate("jetvetomap", np.array([0.0, 7.0]), np.array([0.0, 0.0]))
    assert str(ours.value) == str(theirs.value)
    with pytest.raises(IndexError):  # an unknown systematic, as correctionlib says
        get_correction("jet_jerc_Summer22_V3.json.gz",
                       "Summer22_22Sep2023_JRV1_MC_ScaleFactor_AK4PFPuppi").evaluate(
            np.array([0.1]), np.array([40.0]), "sideways")


def _one_formula_set(expression: str, n_variables: int = 1) -> correctionlib.CorrectionSet:
    names = ["x", "y"][:n_variables]
    correction = cs.Correction(
        name="f", version=1, output=cs.Variable(name="out", type="real"),
        inputs=[cs.Variable(name=n, type="real") for n in names],
        data=cs.Formula(nodetype="formula", expression=expression, parser="TFormula",
                        variables=names, parameters=[1.5, -2.0, 0.25]))
    return cs.CorrectionSet(schema_version=2, corrections=[correction]).to_evaluator()


@pytest.mark.parametrize("expression", [
    "-x^2", "2^3^2", "x-1-2", "x/2*3", "[0]*x+[1]", "-[1]*x", "x>1&&x<3||x==0",
    "max(x,[0])+min(-x,[2])", "exp(-x*x)*sqrt(abs(x))", "pow(abs(x),[2])-log10(1+abs(x))",
    "atan2(x,y)+erf(y)", "cosh(x/4)-tanh(y)", "1e-3*x + 2.5e2", "x[0]*x[1]", "(x!=2)+(x>=y)",
])
def test_formula_grammar_equals_correctionlib(expression):
    n_variables = 2 if "y" in expression or "x[1]" in expression else 1
    reference = _one_formula_set(expression, n_variables)["f"]
    x = np.array([-3.0, -1.0, 0.0, 0.5, 1.0, 2.0, 2.5, 3.0, 7.0])
    args = (x, x[::-1].copy())[:n_variables]
    function = compile_formula(expression, n_variables)
    ours = np.broadcast_to(function(list(args), [1.5, -2.0, 0.25]), x.shape)
    np.testing.assert_allclose(ours, reference.evaluate(*args), rtol=RTOL, atol=0)


def test_unreadable_formula_is_refused():
    with pytest.raises(UnsupportedFormula):
        compile_formula("gamma(x)", 1)
    with pytest.raises(UnsupportedFormula):
        compile_formula("x +", 1)


def test_uncompiled_node_falls_back_to_correctionlib_once(tmp_path, caplog, monkeypatch):
    correction = cs.Correction(
        name="smear", version=1, output=cs.Variable(name="out", type="real"),
        inputs=[cs.Variable(name="pt", type="real"), cs.Variable(name="event", type="int")],
        data=cs.HashPRNG(nodetype="hashprng", inputs=["pt", "event"],
                         distribution="normal"))
    path = tmp_path / "smear.json"
    path.write_text(cs.CorrectionSet(schema_version=2, corrections=[correction]).model_dump_json())
    with pytest.raises(NotCompiled):
        compile_correction(json.loads(path.read_text())["corrections"][0])
    monkeypatch.setenv("CALIBREW_DATA", str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="pipeline.corrections.loader"):
        first = get_correction(str(path), "smear")
        get_correction(str(path), "smear")
    assert first.compiled is None
    notices = [r for r in caplog.records if "evaluated by correctionlib" in r.getMessage()]
    assert len(notices) == 1 and "hashprng" in notices[0].getMessage()
    pt, event = np.array([10.0, 20.0]), np.array([1, 2])
    assert np.array_equal(first.evaluate(pt, event), first.reference.evaluate(pt, event))


def test_environment_switch_uses_correctionlib(monkeypatch):
    monkeypatch.setenv(COMPILED_ENV, "0")
    assert get_correction("pog/2022_Summer22/LUM_puWeights.json.gz",
                          "Collisions2022_355100_357900_eraBCD_GoldenJson").compiled is None


def test_a_nested_binning_refuses_only_the_values_that_reach_it():
    """A binning inside one bin of its parent, over a part of it with ``flow: error`` (the
    b-tag shape payload's ``up_hf`` for light jets beyond 200 GeV): the values of the other
    bins never reach it, and correctionlib evaluates them; so do the kernels."""
    inner = cs.Binning(nodetype="binning", input="x", edges=[1.0, 1.5, 2.0],
                       content=[10.0, 20.0], flow="error")
    correction = cs.Correction(
        name="nested", version=1, output=cs.Variable(name="out", type="real"),
        inputs=[cs.Variable(name="x", type="real")],
        data=cs.Binning(nodetype="binning", input="x", edges=[0.0, 1.0, 2.0, 3.0],
                        content=[1.0, inner, 3.0], flow="error"))
    reference = cs.CorrectionSet(schema_version=2,
                                 corrections=[correction]).to_evaluator()["nested"]
    compiled = compile_correction(json.loads(correction.model_dump_json()))
    x = np.array([0.5, 1.2, 1.7, 2.5])
    assert np.array_equal(compiled.evaluate(x), reference.evaluate(x))  # [1, 10, 20, 3]
    with pytest.raises(RefusedValue):  # beyond the outer edges: refused by both
        compiled.evaluate(np.array([0.5, 3.5]))


def test_btag_shape_up_hf_is_compiled_beyond_the_pt_edges():
    btag = get_correction("pog/2022_Summer22/BTV_btagging.json.gz", "deepJet_shape")
    flavour = np.array([0, 0, 0, 5, 5])
    abseta = np.array([1.16, 0.9, 2.0, 1.2, 0.3])
    pt = np.array([938.6, 212.3, 450.0, 260.0, 35.0])  # beyond 200 GeV: the flow node
    disc = np.array([0.6372, 0.0601, 0.99, 0.5, 0.2])
    ours = btag.compiled.evaluate("up_hf", flavour, abseta, pt, disc)  # not refused
    np.testing.assert_allclose(ours, btag.reference.evaluate("up_hf", flavour, abseta, pt,
                                                             disc), rtol=RTOL, atol=ATOL)
