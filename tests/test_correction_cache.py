"""The disk cache of compiled corrections (pipeline.corrections.loader) on the real payloads.

A correction served from a cold cache (compiled from the payload's JSON, then written) and
from a warm one (read back, the JSON never parsed) must give the very bits that compiling
the JSON directly gives, and correctionlib's values to the tolerance of
test_compiled_corrections.py; a changed payload or a corrupt or unwritable cache must not
change a result.
"""

from __future__ import annotations

import itertools
import json
import os
import pickle

import correctionlib
import numpy as np
import pytest
from correction_cases import ATOL, PAYLOADS, RTOL, argument_cases, read_payload

from pipeline.corrections import get_compound, get_correction, loader
from pipeline.corrections.compiled import compile_correction
from pipeline.corrections.nodes import RefusedValue
from pipeline.errors import UnknownNameError
from pipeline.inputs.datafiles import find_data_file

JEC = "Summer22_22Sep2023_V3_MC_L1L2L3Res_AK4PFPuppi"


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    """An empty cache directory, and no compiled correction or payload held in memory."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    forget()
    yield tmp_path / "xdg" / "calibrew" / "corrections"
    forget()


def forget() -> None:
    """Drop what this process holds: the next look-up is a new worker's."""
    for cached in (loader._compiled, loader._index, loader._payload, loader._load):
        cached.cache_clear()


def no_json(monkeypatch) -> None:
    """Parsing a payload's JSON fails the test: everything must come from the cache."""
    def refuse(*args):
        raise AssertionError(f"payload parsed: {args[0]}")
    monkeypatch.setattr(loader, "_payload", refuse)


def _cases(spec: dict, rng: np.random.Generator) -> list:
    return list(argument_cases(spec, rng, n=500, combinations=12))


def _evaluate(compiled, args):
    try:
        return compiled.evaluate(*args)
    except RefusedValue:
        return "refused"


def _results(payload: str, data: dict) -> dict:
    """Each correction's kernel results on the same arguments, through get_correction."""
    rng = np.random.default_rng(11)
    out = {}
    for spec in data["corrections"]:
        evaluator = get_correction(payload, spec["name"])
        assert evaluator.compiled is not None
        out[spec["name"]] = [_evaluate(evaluator.compiled, a) for a in _cases(spec, rng)]
    return out


def _same(a, b) -> bool:
    """Equal lists of results: the same bits, or "refused" in both."""
    return all((x, y) == ("refused", "refused") if isinstance(x, str) or isinstance(y, str)
               else np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("payload", PAYLOADS)
def test_cold_and_warm_cache_give_the_compiled_bits(payload, cache, monkeypatch):
    data = read_payload(payload)
    cold = _results(payload, data)
    assert any(cache.glob("*.pickle"))
    forget()
    with monkeypatch.context() as m:
        no_json(m)
        warm = _results(payload, data)
    rng = np.random.default_rng(11)
    reference = correctionlib.CorrectionSet.from_file(str(find_data_file(payload)))
    for spec in data["corrections"]:
        direct = compile_correction(spec)  # no cache at all
        cases = _cases(spec, rng)
        plain = [_evaluate(direct, a) for a in cases]
        assert _same(cold[spec["name"]], plain), spec["name"]
        assert _same(warm[spec["name"]], plain), spec["name"]
        for args, ours in zip(cases, warm[spec["name"]], strict=True):
            if isinstance(ours, str):
                with pytest.raises(Exception):  # noqa: B017 (correctionlib's own error type)
                    reference[spec["name"]].evaluate(*args)
            else:
                np.testing.assert_allclose(ours, reference[spec["name"]].evaluate(*args),
                                           rtol=RTOL, atol=ATOL, err_msg=spec["name"])


def test_compound_from_a_warm_cache_needs_neither_json_nor_correctionlib(cache, monkeypatch):
    rng = np.random.default_rng(3)
    args = (rng.uniform(0.2, 0.8, 300), rng.uniform(-5, 5, 300),
            np.exp(rng.uniform(2, 7, 300)), rng.uniform(0, 60, 300))
    cold = get_compound("jet_jerc_Summer22_V3.json.gz", JEC).evaluate(*args)
    forget()
    with monkeypatch.context() as m:
        no_json(m)
        warm = get_compound("jet_jerc_Summer22_V3.json.gz", JEC)
        assert np.array_equal(warm.evaluate(*args), cold)
        assert loader._load.cache_info().currsize == 0  # correctionlib's set not loaded
        with pytest.raises(UnknownNameError, match="L1L2L3Res_AK4PFPuppi"):  # close match
            get_compound("jet_jerc_Summer22_V3.json.gz", JEC[:-1] + "y")
    np.testing.assert_allclose(warm.evaluate(*args), warm.reference.evaluate(*args),
                               rtol=RTOL, atol=0)


def _pileup_copy(path, change: float) -> tuple[str, int]:
    """The pileup payload with the nominal weight of one bin multiplied by ``change``."""
    data = read_payload("pog/2022_Summer22/LUM_puWeights.json.gz")
    nominal = data["corrections"][0]["data"]["content"][0]["value"]
    assert nominal["nodetype"] == "binning"
    nominal["content"][30] *= change
    path.write_text(json.dumps(data))
    return data["corrections"][0]["name"], int(nominal["edges"][30])


def test_a_changed_payload_is_compiled_again(cache, tmp_path):
    path = tmp_path / "pu.json"
    name, mu = _pileup_copy(path, 1.0)
    first = get_correction(str(path), name).evaluate(np.array([mu + 0.5]), "nominal")
    stat = path.stat()
    _pileup_copy(path, 2.0)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    changed = get_correction(str(path), name)
    again = changed.evaluate(np.array([mu + 0.5]), "nominal")
    assert again[0] == 2 * first[0]
    reference = correctionlib.CorrectionSet.from_file(str(path))[name]
    assert np.array_equal(again, reference.evaluate(np.array([mu + 0.5]), "nominal"))


def test_a_corrupt_cache_is_compiled_again_and_rewritten(cache, monkeypatch):
    payload = "pog/2022_Summer22/MUO_muon_Z.json.gz"
    data = read_payload(payload)
    cold = _results(payload, data)
    entries = sorted(cache.glob("*.pickle"))
    for i, entry in enumerate(entries):  # garbage, a truncated pickle, a wrong object
        entry.write_bytes([b"not a pickle", entry.read_bytes()[:40],
                           pickle.dumps({"not": "a node"})][i % 3])
    forget()
    assert _same(_flat(_results(payload, data)), _flat(cold))
    assert sorted(cache.glob("*.pickle")) == entries
    forget()
    with monkeypatch.context() as m:  # rewritten: served from the cache now
        no_json(m)
        assert _same(_flat(_results(payload, data)), _flat(cold))


def _flat(results: dict) -> list:
    return list(itertools.chain.from_iterable(results.values()))


def test_an_unwritable_cache_only_compiles(cache, monkeypatch, tmp_path):
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where the cache directory would be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    payload = "pog/2022_Summer22/EGM_electron.json.gz"
    data = read_payload(payload)
    results = _results(payload, data)
    rng = np.random.default_rng(11)
    for spec in data["corrections"]:
        direct = compile_correction(spec)
        assert _same(results[spec["name"]], [_evaluate(direct, a) for a in _cases(spec, rng)])
