"""One-sided systematics: a calibrator or a weight declares the sources varied one way only
(``one_sided = ("jscale",)``); ``{source}Up`` is their only variation (a ``Down`` listed is
never computed), and the results mirror the ``Up`` around the nominal."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
import uproot

from pipeline.calibration import Calibrator, CalibratorsManager
from pipeline.cli import main
from pipeline.errors import CalibrationError, WeightError
from pipeline.inputs.datafiles import find_data_file
from pipeline.outputs.merged import load_merged
from pipeline.weights import Weight, WeightValues, compute_weights, weight_variation_names

MC = {"isMC": True, "year": "2022_preEE", "sample": "TTbar", "dataset": "tt"}
LUMI_2022 = 7.9804  # fb^-1, pipeline/defaults/luminosity.yaml
SCALE_UP = 1.1


def _counting_calibrator(label: str, variations: list[str], sources: tuple[str, ...]) -> type:
    """A calibrator scaling the jets' pt up by 10% in ``jscaleUp``, with the one-sided
    ``sources``; it counts its calls."""

    class Counting(Calibrator):
        has_variations = True
        calibrated_collections = ["Jet.pt"]
        one_sided = sources
        calls: list[str] = []
        name = label

        def initialize(self, events):
            self._variations = list(variations)

        def calibrate(self, events, orig, variation, already_applied_calibrators=None):
            type(self).calls.append(variation)
            return {"Jet.pt": orig["Jet.pt"] * (SCALE_UP if variation == "jscaleUp" else 1.0)}

    return Counting


EVENTS = ak.Array([{"Jet": [{"pt": 10.0}, {"pt": 20.0}]}, {"Jet": [{"pt": 30.0}]}])


@pytest.mark.parametrize("variations", [["jscaleUp"], ["jscaleUp", "jscaleDown"]],
                         ids=["up-only", "down-listed"])
def test_a_one_sided_source_runs_its_up_alone(variations):
    cls = _counting_calibrator(f"test_one_sided_{len(variations)}", variations, ("jscale",))
    manager = CalibratorsManager([cls], EVENTS, None, MC)
    assert manager.get_available_variations(cls.name) == ["jscaleUp"]
    out = dict(manager.calibration_loop(EVENTS, variations_for_calibrators=[cls.name]))
    assert list(out) == ["nominal", "jscaleUp"]
    assert cls.calls == ["nominal", "jscaleUp"]  # no pass for a Down
    assert out["jscaleUp"].Jet.pt.tolist() == [[10.0 * SCALE_UP, 20.0 * SCALE_UP],
                                               [30.0 * SCALE_UP]]


def test_an_undeclared_lone_up_says_how_to_declare_it():
    cls = _counting_calibrator("test_one_sided_undeclared", ["jscaleUp"], ())
    with pytest.raises(CalibrationError, match=r"calibrator 'test_one_sided_undeclared' "
                       r"declares variation 'jscaleUp' without its twin 'jscaleDown'; a "
                       r"source varied one way only is declared one-sided in the calibrator's "
                       r"class: "
                       r"one_sided = \('jscale',\)"):
        CalibratorsManager([cls], EVENTS, None, MC)


def test_a_one_sided_source_that_gives_its_down_alone_is_an_error():
    cls = _counting_calibrator("test_one_sided_down_alone", ["jscaleDown"], ("jscale",))
    with pytest.raises(CalibrationError, match="'jscaleDown' without its twin 'jscaleUp'$"):
        CalibratorsManager([cls], EVENTS, None, MC)


@pytest.mark.parametrize(("sources", "message"), [
    ("jscale", r"one_sided must be a tuple of source names, e\.g\. one_sided = \('topPt',\), "
               r"not 'jscale'"),
    (("jscale up",), r"one_sided entry 'jscale up' must be a source name"),
    ((3,), r"one_sided entry 3 must be a source name"),
])
def test_one_sided_is_checked_when_the_class_is_defined(sources, message):
    with pytest.raises(CalibrationError, match=rf"calibrator 'test_one_sided_bad': {message}"):
        class BadOneSided(Calibrator):
            name = "test_one_sided_bad"
            one_sided = sources
    with pytest.raises(WeightError, match=rf"weight 'test_one_sided_bad': {message}"):
        class BadWeight(Weight):
            name = "test_one_sided_bad"
            one_sided = sources


# --- weights ----------------------------------------------------------------------------

class TopPtWeight(Weight):
    """A weight varied one way only (it also returns a Down, which is dropped)."""

    name = "test_one_sided_top_pt"
    one_sided = ("topPt",)

    def inputs(self):
        return {"GenPart"}

    def compute(self, events, variations):
        one = events.genWeight * 0 + 1
        out = WeightValues(one * 0.9)
        if variations:
            out.variations = {"topPtUp": one * 0.8, "topPtDown": one}
        return out


class LoneUpWeight(Weight):
    """A weight that returns a lone Up without declaring its source one-sided."""

    name = "test_one_sided_lone_up"

    def compute(self, events, variations):
        one = events.genWeight * 0 + 1
        return WeightValues(one, {"loneUp": 2 * one} if variations else {})


WEIGHT_EVENTS = ak.Array([{"genWeight": 2.0, "run": 1}, {"genWeight": -1.0, "run": 1}])


def test_a_one_sided_weight_fills_its_up_slot_only():
    names = ["test_one_sided_top_pt"]
    w = compute_weights(WEIGHT_EVENTS, MC, None, names, names)
    assert list(w.variations) == ["topPtUp"]
    assert w.nominal.tolist() == [2.0 * 0.9, -1.0 * 0.9]
    assert w.variations["topPtUp"].tolist() == [2.0 * 0.8, -1.0 * 0.8]


def test_an_undeclared_lone_weight_up_is_refused_at_planning():
    typetracer = ak.to_backend(WEIGHT_EVENTS, "typetracer")
    names = ["test_one_sided_top_pt"]
    assert weight_variation_names(MC, None, names, names, typetracer) == ["topPtUp"]
    names = ["test_one_sided_lone_up"]
    with pytest.raises(WeightError, match=r"weight 'test_one_sided_lone_up' declares variation "
                       r"'loneUp' without its twin 'loneDown'; .* one_sided = \('lone',\)"):
        weight_variation_names(MC, None, names, names, typetracer)


# --- a run: the results mirror the Up -----------------------------------------------------

USER_CALIBRATOR = f"""
import os

import awkward as ak

from pipeline.calibration import Calibrator


class ScaleJets(Calibrator):
    name = "calibrew_test_jscale"
    has_variations = True
    calibrated_collections = ["Jet.pt"]
    one_sided = ("jscale",)

    def initialize(self, events):
        self._variations = ["jscaleUp"]

    def calibrate(self, events, orig, variation, already_applied_calibrators=None):
        pt = orig["Jet.pt"]
        chunk = ak.min(events.event)  # read while planning too: the column is projected
        if ak.backend(pt) != "typetracer":  # the chunks' calls, not the planning's
            with open(os.environ["CALIBREW_TEST_CALLS"], "a") as log:
                log.write(f"{{int(chunk)}} {{variation}}\\n")
        return {{"Jet.pt": pt * ({SCALE_UP} if variation == "jscaleUp" else 1.0)}}
"""

CONFIG = """
datasets:
  tt:
    files: [{file}]
    metadata: {{sample: TTbar, year: 2022_preEE, isMC: true, xsec: 2.0}}
calibrators: ['calibrew_user_scale:ScaleJets']
variations:
  shape:
    common: {{inclusive: [calibrew_test_jscale]}}
histograms:
  ht:
    axes: [{{expr: 'ak.sum(Jet.pt, axis=1)', name: ht, bins: 20, start: 0, stop: 2000}}]
processes:
  ttbar: {{datasets: [tt], kind: signal}}
pseudo_data: {{fluctuate: false}}
fit: {{histogram: ht}}
"""


def _expected() -> tuple[dict[str, np.ndarray], float, np.ndarray]:
    """The histograms of the nominal and of jscaleUp, computed here from the file; the
    normalisation; the smallest event number of each chunk of 50."""
    with uproot.open(find_data_file("nano_tt_v12.root")) as file:
        arrays = file["Events"].arrays(["Jet_pt", "genWeight", "event"])
    gen = ak.to_numpy(arrays.genWeight).astype(np.float64)
    edges = np.linspace(0, 2000, 21)
    out = {}
    for variation, factor in [("nominal", 1.0), ("jscaleUp", SCALE_UP)]:
        ht = ak.to_numpy(ak.sum(arrays.Jet_pt * factor, axis=1)).astype(np.float64)
        out[variation] = np.histogram(ht, edges, weights=gen)[0]
    scale = 2.0 * 1000 * LUMI_2022 / gen.sum()
    return out, scale, ak.to_numpy(arrays.event).reshape(4, 50).min(axis=1)


@pytest.mark.slow
def test_a_one_sided_calibrator_in_a_run_is_mirrored_in_the_results(tmp_path, user_modules,
                                                                   monkeypatch):
    (user_modules / "calibrew_user_scale.py").write_text(USER_CALIBRATOR)
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("CALIBREW_TEST_CALLS", str(calls))
    config = tmp_path / "analysis.yaml"
    config.write_text(CONFIG.format(file=find_data_file("nano_tt_v12.root")))
    job = tmp_path / "job.yaml"
    out = tmp_path / "out"
    job.write_text(f"config: {config.name}\noutput: {out}\nworkers: 1\nchunksize: 50\n")
    assert main(["run", str(job), "--no-progress"]) == 0

    expected, scale, chunks = _expected()
    # calibrate() ran twice per chunk: the nominal and jscaleUp, never a Down
    lines = sorted(calls.read_text().splitlines())
    assert lines == sorted(f"{e} {v}" for e in chunks for v in ("nominal", "jscaleUp"))

    merged = load_merged(out)
    assert merged.processes["ttbar"].variations == ("nominal", "jscaleUp")
    h = merged.histograms["ht"]
    for variation in ("nominal", "jscaleUp"):
        got = h[{"process": "ttbar", "category": "inclusive", "variation": variation}]
        np.testing.assert_allclose(got.values(), scale * expected[variation], rtol=1e-10)
    down = scale * (2 * expected["nominal"] - expected["jscaleUp"])
    down[down < 0] = 1e-6  # the statistical models' floor of a negative mirrored bin
    assert np.count_nonzero(down > 1e-6) >= 5
    with uproot.open(out / "fit" / "shapes.root") as shapes:
        np.testing.assert_allclose(shapes["inclusive/ttbar_jscaleDown"].values(),
                                   down, rtol=1e-10)
        np.testing.assert_allclose(shapes["inclusive/ttbar_jscaleUp"].values(),
                                   scale * expected["jscaleUp"], rtol=1e-10)
    assert "jscale" in (out / "fit" / "datacard.txt").read_text()
