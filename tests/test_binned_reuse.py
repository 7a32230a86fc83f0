"""The bins through which a compiled correction depends on an input
(:func:`pipeline.corrections.nodes.binned_by`), and :func:`evaluate_by_bin`, which keeps the
results of objects whose input stays in its bin, against plain evaluation, bit for bit, on
the real CMS payloads."""

from __future__ import annotations

import gc
import itertools

import numpy as np
import pytest
from correction_cases import PAYLOADS, argument_cases, read_payload

from pipeline.corrections import get_correction
from pipeline.corrections import reuse as reuse_module
from pipeline.corrections.compiled import compile_correction
from pipeline.corrections.loader import COMPILED_ENV, Evaluator
from pipeline.corrections.nodes import Axis, Constant, FormulaNode, RefusedValue, Table
from pipeline.corrections.reuse import evaluate_by_bin

BTAG = ("pog/2022_Summer22/BTV_btagging.json.gz", "deepJet_shape")


def same_bins(x: np.ndarray, edges: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Other values in the same bins of ``edges`` as ``x``: their lower edge for some,
    values inside the bin for the others; NaN stays NaN."""
    cls = np.searchsorted(edges, x, side="right")
    low = np.where(cls == 0, -np.inf, edges[np.maximum(cls - 1, 0)])
    high = np.where(cls == len(edges), np.inf, edges[np.minimum(cls, len(edges) - 1)])
    u = rng.uniform(size=len(x))
    with np.errstate(invalid="ignore"):  # inf - inf where the other branch is taken
        inside = np.where(np.isinf(low), high - 1 - 100 * u,
                          np.where(np.isinf(high), low + 100 * u, low + u * (high - low)))
    inside = np.minimum(inside, np.nextafter(high, -np.inf))
    moved = np.where(rng.uniform(size=len(x)) < 0.2, low, inside)
    moved = np.where(np.isfinite(moved), moved, inside)
    moved[np.isnan(x)] = np.nan
    assert (np.searchsorted(edges, moved, side="right") == cls).all()
    return moved


def outcome(compiled, args) -> bytes | str:
    try:
        return compiled.evaluate(*args).tobytes()
    except RefusedValue:
        return "refused"


@pytest.mark.parametrize("payload", PAYLOADS)
def test_values_in_the_same_bins_give_the_same_bits(payload):
    """Every real input of every correction that binned_by says is binned: moving each
    value within its bin changes no output bit (nor whether it is refused)."""
    rng = np.random.default_rng(11)
    binned = 0
    for spec in read_payload(payload)["corrections"]:
        compiled = compile_correction(spec)
        reals = [i for i, t in enumerate(compiled.types) if t == "real"]
        for args in itertools.islice(argument_cases(spec, rng, n=300, combinations=3), 4):
            for i in reals:
                edges = compiled.binned_by(i, *args)
                if edges is None:
                    continue
                moved = list(args)
                moved[i] = same_bins(np.asarray(args[i], dtype=np.float64), edges, rng)
                assert outcome(compiled, moved) == outcome(compiled, args), (
                    payload, spec["name"], i)
                binned += 1
    assert binned > 0


def test_binned_by_of_the_btag_payload_and_of_unbinned_inputs():
    btag = get_correction(*BTAG)
    jets = np.zeros(3)
    flavour = np.zeros(3, dtype=np.int64)
    for systematic in ("central", "up_hf", "down_cferr2"):  # pt: binnings only
        edges = btag.binned_by(3, systematic, flavour, jets, jets, jets)
        assert edges is not None and edges[0] == 20.0 and (np.diff(edges) > 0).all()
    assert btag.binned_by(4, "central", flavour, jets, jets, jets) is None  # formulas
    assert btag.binned_by(2, "central", flavour, jets, jets, jets).tolist() == [
        0.0, 0.8, 1.6, 2.5]
    uniform = Table.of((Axis(0, edges=("uniform", 4, 0.0, 8.0), flow="clamp"),),
                       [Constant(float(i)) for i in range(4)])
    assert uniform.binned_by(0) is None and uniform.binned_by(1) == frozenset()
    formula = FormulaNode(lambda x, p: x[0], (1,), (), ("x", (1,)))
    assert Table.of((Axis(0, edges=(0.0, 1.0), flow="clamp"),), [formula]).binned_by(1) is None


def test_correctionlib_alone_gives_no_bins(monkeypatch):
    monkeypatch.setenv(COMPILED_ENV, "0")
    btag = get_correction(*BTAG)
    assert btag.compiled is None
    jets = np.zeros(2)
    assert btag.binned_by(3, "central", np.zeros(2, dtype=np.int64), jets, jets, jets) is None


def jets(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Jets of every flavour and |eta| bin, pt from below the first edge to beyond the last,
    discriminants across [0, 1]."""
    return {"flavour": rng.choice(np.array([0, 4, 5]), n), "abseta": rng.uniform(0, 2.49, n),
            "disc": rng.uniform(0, 1, n),
            "pt": np.exp(rng.uniform(np.log(10.0), np.log(20000.0), n))}


def by_bin(evaluator: Evaluator, systematic: str, objects: dict[str, np.ndarray],
           positions: np.ndarray, pt: np.ndarray) -> np.ndarray:
    def arguments(which):
        at = positions[which]
        return (systematic, objects["flavour"][at], objects["abseta"][at], pt[which],
                objects["disc"][at])
    return evaluate_by_bin(evaluator, arguments, 3, pt,
                           [objects["flavour"], objects["abseta"], objects["disc"]], positions)


@pytest.mark.parametrize(("systematic", "refused"), [
    ("central", False), ("down_lfstats2", False), ("up_hf", False), ("up_cferr1", False),
    ("up_hf", True)])
def test_evaluate_by_bin_equals_evaluate(systematic, refused, monkeypatch):
    """Variations of the pt of the same jets (re-ordered and a subset selected, as a jet
    variation re-sorts them and the weight selects by pt) give the plain evaluation's bits;
    only the jets whose pt bin changed are evaluated again. ``refused``: the kernels refuse
    the jets above 5 TeV (as they would a value they cannot evaluate): correctionlib then
    evaluates every jet, as :meth:`Evaluator.evaluate` does, and no result of the kernels
    may be kept."""
    rng = np.random.default_rng(5)
    btag = get_correction(*BTAG)
    objects = jets(rng, 4000)
    if systematic != "central":  # the flavours the systematic has (the weight forces them)
        objects["flavour"] = np.where(objects["flavour"] == 4, 5, objects["flavour"]) if (
            "cferr" not in systematic) else np.full(4000, 4)
    evaluated = []
    kernels = Evaluator.kernels

    def counting(self, *args):
        if refused and (args[3] > 5000.0).any():
            raise RefusedValue("a value the kernels refuse")
        evaluated.append(len(args[1]))
        return kernels(self, *args)

    monkeypatch.setattr(Evaluator, "kernels", counting)
    reevaluated = 0
    for k, scale in enumerate([1.0, 1.02, 0.97, 1.3, 1.0]):
        order = rng.permutation(4000)
        pt = objects["pt"][order] * scale
        keep = pt > 15.0
        positions, pt = order[keep], pt[keep]
        args = (systematic, objects["flavour"][positions], objects["abseta"][positions], pt,
                objects["disc"][positions])
        assert outcome(btag.compiled, args) != "refused"
        evaluated.clear()
        out = by_bin(btag, systematic, objects, positions, pt)
        assert out.dtype == np.float64
        expected = btag.reference.evaluate(*args) if refused else btag.evaluate(*args)
        assert out.tobytes() == expected.tobytes(), (scale, k)
        if k and not refused:
            assert sum(evaluated) < len(pt) / 2, (scale, evaluated)
            reevaluated += sum(evaluated)
    assert refused or reevaluated > 0  # some jets changed bins


def test_records_go_with_their_objects():
    rng = np.random.default_rng(2)
    btag = get_correction(*BTAG)
    objects = jets(rng, 100)
    positions = np.arange(100)
    recent = reuse_module._recent()
    recent.clear()
    by_bin(btag, "central", objects, positions, objects["pt"])
    assert len(recent) == 1
    del objects
    gc.collect()
    assert len(recent) == 0
    for _ in range(3):  # the last two sets of objects are kept
        by_bin(btag, "central", jets(rng, 10), np.arange(10), np.full(10, 50.0))
    assert len(recent) <= 2
