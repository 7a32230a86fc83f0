"""The statistical models of a fit: the combine datacard (with shapes.root) and the pyhf
workspace, from a small synthetic merged result, checked against plain computations."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hist
import numpy as np
import pyhf
import pytest
import uproot
from datacard_reader import parse_datacard

from pipeline.config.models import FitSpec
from pipeline.errors import OutputError
from pipeline.outputs.datacard import write_datacard
from pipeline.outputs.merged import MergedResult, ProcessInfo
from pipeline.outputs.root_names import root_name, tlatex
from pipeline.outputs.workspace import build_workspace, write_workspace

VARIATIONS = ["nominal", "JESUp", "JESDown", "isrUp"]
CATEGORIES = ["SR-2j", "CR"]  # "SR-2j" is not a valid ROOT name: written as SR_2j
FLOOR = 1e-6  # what a negative template bin becomes
LABEL = "Jet $p_T$ [GeV]"
# name, kind, label, variations it computed (two-sided JES only by tt; one-sided isr by tt
# and the signal)
PROCESSES = [
    ("ttH", "signal", "$t\\bar{t}H$", ("nominal", "isrUp")),
    ("tt", "background", "$t\\bar{t}$", ("nominal", "JESUp", "JESDown", "isrUp")),
    ("W+jets", "background", "W+jets", ("nominal",)),
    ("data", "data", "Data", ("nominal",)),
]
LUMI = 1.025


def _result(with_data: bool = True, signal: bool = True) -> MergedResult:
    """Four bins, two categories; every process' unused variations hold its nominal."""
    processes = [p for p in PROCESSES if with_data or p[1] != "data"]
    if not signal:
        processes = [(n, "background" if k == "signal" else k, lab, v)
                     for n, k, lab, v in processes]
    h = (hist.Hist.new.StrCat([p[0] for p in processes], name="process")
         .StrCat(CATEGORIES, name="category").StrCat(VARIATIONS, name="variation")
         .Reg(4, 0, 200, name="jet_pt", label=LABEL).Weight())
    rng = np.random.default_rng(7)
    view = h.view(flow=False)
    scale = {"ttH": 3.0, "tt": 40.0, "W+jets": 25.0}
    for i, (name, kind, _, computed) in enumerate(processes):
        for c in range(len(CATEGORIES)):
            if kind == "data":
                continue
            nominal = scale[name] * rng.uniform(0.5, 1.5, 4) * (1 + c)
            if name == "W+jets" and CATEGORIES[c] == "CR":
                nominal[3] = -0.4  # negative weights: floored
            for v, variation in enumerate(VARIATIONS):
                shift = rng.uniform(0.85, 1.15, 4) if variation in computed[1:] else 1.0
                view["value"][i, c, v] = nominal * shift
                view["variance"][i, c, v] = np.abs(nominal) * 0.05
    if with_data:
        total = view["value"][:len(processes) - 1, :, 0].sum(axis=0)
        view["value"][-1, :, :] = rng.poisson(np.clip(total, 0, None))[:, None, :]
        view["variance"][-1] = view["value"][-1]
    info = {name: ProcessInfo(name, kind, label, None, (name,), ("2022",), computed)  # type: ignore[arg-type]
            for name, kind, label, computed in processes}
    return MergedResult({"jet_pt": h}, info, {"2022": 10.0}, 13.6)


def _fit(**kwargs: object) -> FitSpec:
    return FitSpec.model_validate({
        "histogram": "jet_pt",
        "normalisation": {"lumi": {"value": LUMI},
                          "xsec_tt": {"value": 1.05, "processes": ["tt"]}},
        **kwargs})


def _slot(result: MergedResult, process: str, category: str,
          variation: str = "nominal") -> tuple[np.ndarray, np.ndarray]:
    one = result.histograms["jet_pt"][{"process": process, "category": category,
                                       "variation": variation}]
    return one.values(), one.variances()


def _floored(values: np.ndarray) -> np.ndarray:
    return np.array([FLOOR if v < 0 else v for v in values])


def _expected(result: MergedResult, process: str, category: str,
              syst: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Plain expectation of a template: (nominal) or (up, down); one-sided mirrored."""
    nominal = _slot(result, process, category)[0]
    if syst is None:
        return _floored(nominal), _slot(result, process, category)[1]
    up = _slot(result, process, category, f"{syst}Up")[0]
    computed = dict((p[0], p[3]) for p in PROCESSES)[process]
    down = (_slot(result, process, category, f"{syst}Down")[0]
            if f"{syst}Down" in computed else 2 * nominal - up)
    return _floored(up), _floored(down)


# --------------------------------------------------------------------------- pyhf workspace

def test_workspace_validates_fits_and_finds_mu_on_asimov() -> None:
    spec = build_workspace(_result(), _fit())
    workspace = pyhf.Workspace(spec)  # validates against pyhf's schema
    model = workspace.model()
    assert model.config.poi_name == "mu"
    best = pyhf.infer.mle.fit(workspace.data(model), model)
    assert np.all(np.isfinite(best))
    init = np.array(model.config.suggested_init())
    init[model.config.poi_index] = 1.0
    asimov = model.expected_data(init)
    best = pyhf.infer.mle.fit(asimov, model)
    assert best[model.config.poi_index] == pytest.approx(1.0, abs=1e-3)


def test_workspace_yields_and_modifiers_are_the_histograms() -> None:
    result = _result()
    spec = build_workspace(result, _fit())
    assert [c["name"] for c in spec["channels"]] == ["SR_2j", "CR"]
    for channel, category in zip(spec["channels"], CATEGORIES, strict=True):
        samples = {s["name"]: s for s in channel["samples"]}
        assert list(samples) == ["ttH", "tt", "W_jets"]
        for process in ("ttH", "tt", "W+jets"):
            sample = samples[root_name(process)]
            nominal, variances = _expected(result, process, category)
            np.testing.assert_allclose(sample["data"], nominal)
            modifiers = {m["name"]: m for m in sample["modifiers"]}
            assert ("mu" in modifiers) == (process == "ttH")
            np.testing.assert_allclose(modifiers[f"staterror_{channel['name']}"]["data"],
                                       np.sqrt(variances))
            assert modifiers["lumi"]["data"] == {"hi": LUMI, "lo": pytest.approx(1 / LUMI)}
            assert ("xsec_tt" in modifiers) == (process == "tt")
            computed = {"ttH": {"isr"}, "tt": {"JES", "isr"}, "W+jets": set()}[process]
            assert {n for n, m in modifiers.items() if m["type"] == "histosys"} == computed
            for syst in computed:
                up, down = _expected(result, process, category, syst)
                np.testing.assert_allclose(modifiers[syst]["data"]["hi_data"], up)
                np.testing.assert_allclose(modifiers[syst]["data"]["lo_data"], down)
        data = _slot(result, "data", category)[0]
        observed = {o["name"]: o["data"] for o in spec["observations"]}[channel["name"]]
        np.testing.assert_allclose(observed, data)
    assert spec["measurements"][0]["name"] == "calibrew"


def test_workspace_without_data_is_asimov(tmp_path: Path) -> None:
    result = _result(with_data=False)
    path = write_workspace(result, _fit(), tmp_path / "ws.json")
    workspace = pyhf.Workspace(json.loads(path.read_text()))
    assert workspace.measurement_names == ["calibrew_asimov"]
    for category in CATEGORIES:
        total = np.sum([_expected(result, p, category)[0] for p in ("ttH", "tt", "W+jets")], axis=0)
        np.testing.assert_allclose(workspace.observations[root_name(category)], total)
    model = workspace.model()
    best = pyhf.infer.mle.fit(workspace.data(model), model)
    assert best[model.config.poi_index] == pytest.approx(1.0, abs=1e-3)


def test_no_signal_names_the_config_key(tmp_path: Path) -> None:
    for write in (lambda r: build_workspace(r, _fit()),
                  lambda r: write_datacard(r, _fit(), tmp_path)):
        with pytest.raises(OutputError, match=r"processes\.<name>\.kind"):
            write(_result(signal=False))


def test_bad_fit_config_is_an_output_error(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="fit.categories: 'SR'"):
        build_workspace(_result(), _fit(categories=["SR"]))
    with pytest.raises(OutputError, match="fit.histogram: 'met'"):
        build_workspace(_result(), _fit(histogram="met"))
    with pytest.raises(OutputError, match="fit.normalisation.JES: the name of a shape "):
        build_workspace(_result(), _fit(normalisation={"JES": {"value": 1.1}}))
    double = _result()
    double.histograms = {"jet_pt": hist.Hist(*double.histograms["jet_pt"].axes)}
    with pytest.raises(OutputError, match="has no variances"):
        build_workspace(double, _fit())
    with pytest.raises(OutputError, match=r"fit.normalisation.lumi.processes: data"):
        build_workspace(_result(), _fit(normalisation={"lumi": {"value": 1.1,
                                                                "processes": ["data"]}}))


# --------------------------------------------------------------------------- datacard

def test_datacard_names_every_shape_with_the_right_values(tmp_path: Path) -> None:
    result = _result()
    paths = write_datacard(result, _fit(), tmp_path)
    assert paths == [tmp_path / "datacard.txt", tmp_path / "shapes.root"]
    card = parse_datacard(paths[0].read_text())
    shapes = card["shapes"]
    assert shapes == ["shapes", "*", "*", "shapes.root", "$CHANNEL/$PROCESS",
                      "$CHANNEL/$PROCESS_$SYSTEMATIC"]
    columns = card["columns"]
    systematics = card["systematics"]
    assert card["counts"] == {"imax": "2", "jmax": "2", "kmax": str(len(systematics))}
    assert set(systematics) == {"JES", "isr", "lumi", "xsec_tt"}
    assert card["mcstats"] == [["*", "autoMCStats", "0"]]
    by_name = {root_name(c): c for c in CATEGORIES}
    by_process = {root_name(p[0]): p[0] for p in PROCESSES}
    assert [c[0] for c in columns] == ["SR_2j"] * 3 + ["CR"] * 3

    def key(pattern: str, channel: str, process: str, syst: str = "") -> str:
        return (pattern.replace("$CHANNEL", channel).replace("$PROCESS", process)
                .replace("$SYSTEMATIC", syst))

    with uproot.open(paths[1]) as shapes_file:
        for channel, observed in card["observation"].items():
            data = _slot(result, "data", by_name[channel])[0]
            th1 = shapes_file[key(shapes[4], channel, "data_obs")]
            np.testing.assert_allclose(th1.values(), data)
            assert observed == pytest.approx(data.sum())
        for i, (channel, process, index, rate) in enumerate(columns):
            category, name = by_name[channel], by_process[process]
            assert rate == "-1"
            assert (index <= 0) == (name == "ttH")
            th1 = shapes_file[key(shapes[4], channel, process)]
            nominal, variances = _expected(result, name, category)
            np.testing.assert_allclose(th1.values(), nominal)
            np.testing.assert_allclose(th1.variances(), variances)
            assert th1.member("fXaxis").member("fTitle") == "Jet p_{T} [GeV]"
            label = dict((p[0], p[2]) for p in PROCESSES)[name]
            assert th1.member("fTitle") == tlatex(label)
            computed = {"ttH": {"isr"}, "tt": {"JES", "isr"}, "W+jets": set()}[name]
            for syst, (kind, values) in systematics.items():
                if kind == "shape":
                    assert values[i] == ("1" if syst in computed else "-")
                    if syst not in computed:
                        assert key(shapes[5], channel, process, syst) + "Up" not in \
                            shapes_file
                        continue
                    up, down = _expected(result, name, category, syst)
                    np.testing.assert_allclose(
                        shapes_file[key(shapes[5], channel, process, syst + "Up")].values(),
                        up)
                    np.testing.assert_allclose(
                        shapes_file[key(shapes[5], channel, process, syst + "Down")].values(),
                        down)
        assert "CR/W_jets" in shapes_file
    lumi_kind, lumi = systematics["lumi"]
    assert lumi_kind == "lnN" and [float(v) for v in lumi] == [LUMI] * 6
    xsec = systematics["xsec_tt"][1]
    assert xsec == ["-", "1.05", "-", "-", "1.05", "-"]


def test_mirrored_down_differs_from_up_and_nominal(tmp_path: Path) -> None:
    """The one-sided isr's Down is 2 nominal - up, not the nominal slot of isrDown."""
    result = _result()
    write_datacard(result, _fit(), tmp_path)
    nominal, _ = _slot(result, "tt", "CR")
    up, _ = _slot(result, "tt", "CR", "isrUp")
    with uproot.open(tmp_path / "shapes.root") as f:
        np.testing.assert_allclose(f["CR/tt_isrDown"].values(), 2 * nominal - up)
        assert not np.allclose(f["CR/tt_isrDown"].values(), nominal)


def test_negative_bins_are_floored_and_reported(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    result = _result()
    assert _slot(result, "W+jets", "CR")[0][3] < 0
    with caplog.at_level(logging.WARNING):
        write_datacard(result, _fit(), tmp_path)
    with uproot.open(tmp_path / "shapes.root") as f:
        assert f["CR/W_jets"].values()[3] == FLOOR
        assert f["CR/W_jets"].variances()[3] == pytest.approx(0.4 * 0.05)
    text = (tmp_path / "datacard.txt").read_text()
    assert "# CR/W+jets nominal: 1 negative bin(s)" in text
    assert "CR/W+jets nominal: 1 negative bin(s)" in caplog.text
    spec = build_workspace(result, _fit())
    w_jets = spec["channels"][1]["samples"][2]
    assert w_jets["name"] == "W_jets" and w_jets["data"][3] == FLOOR


def test_datacard_without_data_says_asimov(tmp_path: Path) -> None:
    result = _result(with_data=False)
    write_datacard(result, _fit(categories=["CR"]), tmp_path)
    text = (tmp_path / "datacard.txt").read_text()
    assert any(line.startswith("#") and "Asimov" in line for line in text.splitlines())
    card = parse_datacard(text)
    total = np.sum([_expected(result, p, "CR")[0] for p in ("ttH", "tt", "W+jets")], axis=0)
    assert card["counts"]["imax"] == "1"
    assert card["observation"] == {"CR": pytest.approx(total.sum())}
    with uproot.open(tmp_path / "shapes.root") as f:
        np.testing.assert_allclose(f["CR/data_obs"].values(), total)
        assert "SR_2j" not in f


def test_names_that_collide_as_root_names_are_refused() -> None:
    result = _result()
    h = result.histograms["jet_pt"]
    clash = (hist.Hist.new.StrCat(["a-b", "a_b", "data"], name="process")
             .StrCat(["CR"], name="category").StrCat(["nominal"], name="variation")
             .Reg(1, 0, 1, name="x").Weight())
    info = {n: ProcessInfo(n, "signal" if n == "a-b" else "background", n, None, (n,),
                           ("2022",), ("nominal",)) for n in ("a-b", "a_b")}
    with pytest.raises(OutputError, match="processes: 'a-b' and 'a_b'"):
        build_workspace(MergedResult({"jet_pt": clash}, info, {}, 13.6),
                        FitSpec(histogram="jet_pt"))
    assert h.axes["process"][0] == "ttH"


# --------------------------------------------------------------------------- TLatex

@pytest.mark.parametrize(("text", "expected"), [
    ("Jet $p_T$ [GeV]", "Jet p_{T} [GeV]"),
    ("$\\eta$", "#eta"),
    ("$t\\bar{t}$", "t#bar{t}"),
    ("$H_T$", "H_{T}"),
    ("$p_T^{miss}$", "p_{T}^{miss}"),
    ("$p_{T}^{\\mathrm{miss}}$ [GeV]", "p_{T}^{miss} [GeV]"),
    ("$m_{\\ell\\ell}$", "m_{#it{l}#it{l}}"),
    ("$\\Delta\\phi(j_1, j_2)$", "#Delta#phi(j_{1},j_{2})"),
    ("$\\sqrt{s}$", "#sqrt{s}"),
    ("$E_T^{\\mathrm{miss}} \\to \\nu\\bar\\nu$", "E_{T}^{miss}#rightarrow#nu#bar{#nu}"),
    ("$\\frac{1}{N} \\frac{dN}{dx}$", "#frac{1}{N}#frac{dN}{dx}"),
    ("n_jets (no math)", "n_jets (no math)"),
    ("cost in \\$", "cost in $"),
    ("unbalanced $x", "unbalanced $x"),
])
def test_tlatex(text: str, expected: str) -> None:
    assert tlatex(text) == expected
    assert "\\" not in tlatex(text)  # a backslash would hand the title to TMathText
