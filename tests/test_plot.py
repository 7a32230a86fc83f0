"""The plots of a merged result (``pipeline.outputs.plot``): the files, the band, the stack."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import hist
import numpy as np
import pytest
from matplotlib.colors import to_hex
from matplotlib.patches import StepPatch

from pipeline.analysis.histogram_fill import CUTFLOW
from pipeline.errors import UnknownNameError
from pipeline.outputs import plot
from pipeline.outputs.merged import MergedResult, ProcessInfo, ProcessKind

PNG = b"\x89PNG\r\n\x1a\n"
PROCESSES = ("ttbar", "wjets", "data")
CATEGORIES = ("2j1b", "3j/2b")  # the "/" must not become a folder
VARIATIONS = ("nominal", "JESUp", "JESDown", "topPtUp")  # JES two-sided, topPt one-sided


def _info(name: str, kind: ProcessKind, label: str, color: str | None) -> ProcessInfo:
    return ProcessInfo(name, kind, label, color, (f"{name}_2022",), ("2022_preEE",),
                       VARIATIONS if kind != "data" else ("nominal",))


def _hist(*observables: hist.axis.Regular) -> hist.Hist:
    return hist.Hist(hist.axis.StrCategory(PROCESSES, name="process"),
                     hist.axis.StrCategory(CATEGORIES, name="category"),
                     hist.axis.StrCategory(VARIATIONS, name="variation"), *observables,
                     storage=hist.storage.Weight())


def _result(seed: int = 1) -> MergedResult:
    """Two MC processes and data, two categories, a 1-D, a 2-D, a 3-D histogram and the
    cutflow; random values (data's variation slots hold junk: it must never count)."""
    rng = np.random.default_rng(seed)
    pt = hist.axis.Regular(12, 20, 200, name="pt", label="Jet $p_{T}$ [GeV]")
    eta = hist.axis.Regular(5, -2.5, 2.5, name="eta", label=r"Jet $\eta$")
    histograms = {"jet_pt": _hist(pt), "pt_vs_eta": _hist(pt, eta),
                  "three": _hist(pt, eta, hist.axis.Regular(2, 0, 1, name="z")),
                  CUTFLOW: _hist(hist.axis.Regular(3, 0, 3, name="step"))}
    for h in histograms.values():
        view: Any = h.view(flow=False)
        shape = view["value"].shape
        falling = np.exp(-np.arange(shape[3]) / 4.0).reshape((1, 1, 1, -1)
                                                             + (1,) * (len(shape) - 4))
        view["value"] = 1000 * falling * rng.uniform(0.3, 1.0, shape)
        view["variance"] = view["value"] * rng.uniform(0.01, 0.2, shape)
        mc = view["value"][0, :, 0] + view["value"][1, :, 0]
        view["value"][2, :, :] = rng.poisson(1.1 * mc)[:, None]
        view["variance"][2, :, :] = view["value"][2, :, :]
        if len(shape) == 4:
            view["value"][2, :, :, -1] = 0  # an empty data bin: no point, no nan in the ratio
            view["value"][:2, :, :, -2] = 0  # an empty MC bin: ratio not defined there
            view["variance"][:2, :, :, -2] = 0
    processes = {"ttbar": _info("ttbar", "background", r"$t\bar{t}$", None),
                 "wjets": _info("wjets", "background", "W+jets", "#e76300"),
                 "data": _info("data", "data", "Data", None)}
    return MergedResult(histograms, processes, {"2022_preEE": 7.9804, "2022_postEE": 26.6717},
                        13.6)


def _fixed() -> MergedResult:
    """Three bins, numbers chosen by hand (see ``test_band_on_fixed_numbers``)."""
    h = _hist(hist.axis.Regular(3, 0, 3, name="x"))
    view: Any = h.view(flow=False)
    c = 0  # category 2j1b
    values = {("ttbar", "nominal"): [10, 20, 2], ("wjets", "nominal"): [5, 0, 1],
              ("ttbar", "JESUp"): [12, 22, 1], ("wjets", "JESUp"): [5, 1, 1],
              ("ttbar", "JESDown"): [9, 17, 5], ("wjets", "JESDown"): [4, 0, 1],
              ("ttbar", "topPtUp"): [11, 18, 2], ("wjets", "topPtUp"): [5, 0, 0]}
    for (process, variation), numbers in values.items():
        view["value"][PROCESSES.index(process), c, VARIATIONS.index(variation)] = numbers
    view["variance"][0, c, 0] = [1, 4, 0.25]
    view["variance"][1, c, 0] = [1, 0, 0]
    view["value"][2, c] = [[14, 25, 0]] * len(VARIATIONS)  # data: not part of the total
    view["variance"][2, c] = [[14, 25, 0]] * len(VARIATIONS)
    processes = {"ttbar": _info("ttbar", "background", "tt", None),
                 "wjets": _info("wjets", "background", "W", None),
                 "data": _info("data", "data", "Data", None)}
    return MergedResult({"x": h}, processes, {"2022_preEE": 8.0}, 13.6)


def test_band_on_fixed_numbers():
    total, low, high = plot.total_band(_fixed(), "x", "2j1b")
    # total [15, 20, 3]; stat2 [2, 4, 0.25]
    # JES: up - nom [2, 3, -1], down - nom [-2, -3, 3] -> up2 [4, 9, 9], down2 [4, 9, 1]
    # topPt one-sided: up - nom [1, -2, -1], mirrored [-1, 2, 1] -> +[1, 4, 1] to both
    assert total.tolist() == [15, 20, 3]
    np.testing.assert_allclose(high, [15 + math.sqrt(7), 20 + math.sqrt(17), 3 + math.sqrt(10.25)])
    np.testing.assert_allclose(low, [15 - math.sqrt(7), 20 - math.sqrt(17), 1.5])


def test_band_mirrors_the_one_sided_systematic():
    result = _fixed()
    up, down = plot.systematic_variations(result, "x", "2j1b")["topPt"]
    assert up.tolist() == [16, 18, 2] and down.tolist() == [14, 22, 4]
    assert list(plot.systematic_variations(result, "x", "2j1b")) == ["JES", "topPt"]


def test_band_is_never_below_zero():
    result = _fixed()
    view: Any = result.histograms["x"].view(flow=False)
    view["value"][0, 0, VARIATIONS.index("topPtUp"), 2] = 12  # up +9 -> mirrored down -9 < -3
    total, low, high = plot.total_band(result, "x", "2j1b")
    assert total[2] == 3 and low[2] == 0
    np.testing.assert_allclose(high[2], 3 + math.sqrt(9 + 81 + 0.25))
    assert (low >= 0).all()


def _plain_band(result: MergedResult, histogram: str, category: str):
    """The band, bin by bin, in plain Python from the histogram's own slicing."""
    h = result.histograms[histogram]
    mc = [p for p in result.processes.values() if p.kind != "data"]

    def total(variation: str, variances: bool = False) -> list[float]:
        parts = [h[{"process": p.name, "category": category, "variation": variation}]
                 for p in mc]
        arrays = [part.variances() if variances else part.values() for part in parts]
        return [float(sum(a[i] for a in arrays)) for i in range(len(arrays[0]))]

    nominal, stat2 = total("nominal"), total("nominal", variances=True)
    out = []
    for i, n in enumerate(nominal):
        up2 = down2 = 0.0
        for name in ("JES", "topPt"):
            u = total(f"{name}Up")[i] - n
            d = total(f"{name}Down")[i] - n if name == "JES" else -u
            up2 += max(u, d, 0.0) ** 2
            down2 += min(u, d, 0.0) ** 2
        out.append((n, max(n - math.sqrt(down2 + stat2[i]), 0.0), n + math.sqrt(up2 + stat2[i])))
    return out


@pytest.mark.parametrize("category", CATEGORIES)
def test_band_equals_a_plain_computation(category):
    result = _result()
    band = plot.total_band(result, "jet_pt", category)
    np.testing.assert_allclose(np.stack(band, axis=1), _plain_band(result, "jet_pt", category))
    assert (band.low >= 0).all() and (band.low <= band.total).all()


def test_stack_is_the_sum_of_mc_and_data_the_points():
    result = _result()
    h = result.histograms["jet_pt"]
    fig = plot.figure_1d(result, "jet_pt", "2j1b")
    ax, rax = fig.axes
    stairs = [p for p in ax.patches if isinstance(p, StepPatch)]
    top = max(stairs, key=lambda p: float(np.nansum(p.get_data()[0]))).get_data()[0]
    cut = {"category": "2j1b", "variation": "nominal"}
    mc = h[{"process": "ttbar", **cut}].values() + h[{"process": "wjets", **cut}].values()
    data = h[{"process": "data", **cut}].values()
    np.testing.assert_allclose(top, mc)
    np.testing.assert_allclose(plot.total_band(result, "jet_pt", "2j1b").total, mc)
    assert not np.allclose(top, mc + data)
    points = ax.containers[0]  # the data errorbar
    x, y = points.lines[0].get_data()
    shown = data > 0
    np.testing.assert_allclose(y, data[shown])
    np.testing.assert_allclose(x, h.axes["pt"].centers[shown])
    rx, ry = rax.containers[0].lines[0].get_data()
    assert np.isfinite(ry).all() and len(rx) == int((shown & (mc > 0)).sum())
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [
        "Data", "W+jets", r"$t\bar{t}$", plot.BAND_LABEL]  # the top of the stack first
    # ttbar (first, at the bottom) has no colour: the palette's first; wjets its own
    bottom = min(stairs, key=lambda p: float(np.nansum(p.get_data()[0])))
    assert to_hex(bottom.get_facecolor()) == plot.PALETTE[0]
    assert [to_hex(h.get_facecolor()) for h in legend.legend_handles[1:3]] == [
        "#e76300", plot.PALETTE[0]]


def test_garwood_intervals():
    from scipy.stats import poisson

    low, high = plot.garwood(np.array([0.0, 1.0, 4.0]))
    # the tables' Garwood 68.3 % intervals: 0 -> [0, 1.841], 1 -> [0.173, 3.300],
    # 4 -> [2.086, 7.163]
    np.testing.assert_allclose(low, [0, 1 - 0.1727, 4 - 2.0856], atol=2e-4)
    np.testing.assert_allclose(high, [1.8410, 3.2995 - 1, 7.1627 - 4], atol=2e-4)
    # by definition: P(X >= n | lower) = P(X <= n | upper) = (1 - 0.6827) / 2
    n = np.array([3.0, 27.0, 100.0])
    low, high = plot.garwood(n)
    np.testing.assert_allclose(poisson.sf(n - 1, n - low), 0.158655, rtol=1e-4)
    np.testing.assert_allclose(poisson.cdf(n, n + high), 0.158655, rtol=1e-4)


def test_ranked_systematics():
    ranked = plot.ranked_systematics(_fixed(), "x", "2j1b")
    # JES: max(|up|, |down|) per bin [2, 3, 3] -> 8; topPt: [1, 2, 1] -> 4
    assert ranked == [("JES", 8.0), ("topPt", 4.0)]


def _is_png(path: Path) -> bool:
    return path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG


def test_plot_merged_writes_one_png_per_histogram_and_category(tmp_path):
    written = plot.plot_merged(_result(), tmp_path / "plots", variations=True, top=1)
    expected = {f"{name}_{cat}.png" for name in ("jet_pt", "pt_vs_eta")
                for cat in ("2j1b", "3j_2b")}
    assert {p.name for p in written if p.parent == tmp_path / "plots"} == expected
    assert {p.name for p in written if p.parent.name == "variations"} == {
        "jet_pt_2j1b.png", "jet_pt_3j_2b.png"}  # 1-D only; cutflow and 3-D skipped
    assert len(written) == 6
    assert all(_is_png(p) for p in written)
    assert sorted(written) == sorted((tmp_path / "plots").rglob("*.png"))


def test_variations_plot_colours_only_the_top(tmp_path):
    result = _result()
    fig = plot.figure_variations(result, "jet_pt", "2j1b", top=1)
    largest = plot.ranked_systematics(result, "jet_pt", "2j1b")[0][0]
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["Nominal (total MC)", largest, "Up", "Down", "1 more"]
    colours = {to_hex(p.get_edgecolor()) for p in fig.axes[1].patches}
    assert colours == {plot.PALETTE[0], "#b0b0b0"}
    fig = plot.figure_variations(result, "jet_pt", "2j1b", top=5)  # only 2: both coloured
    assert {to_hex(p.get_edgecolor()) for p in fig.axes[1].patches} == set(plot.PALETTE[:2])


def test_simulation_only_and_other_formats(tmp_path):
    result = _result()
    result.processes = {k: v for k, v in result.processes.items() if v.kind != "data"}
    result.energy_tev = None
    written = plot.plot_merged(result, tmp_path, formats=("png", "pdf"))
    assert len(written) == 8
    assert all(p.read_bytes()[:5] == b"%PDF-" for p in written if p.suffix == ".pdf")
    fig = plot.figure_1d(result, "jet_pt", "2j1b")
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "Simulation Preliminary" in " ".join(texts)
    assert any("34.7 $" in t for t in texts) and not any("TeV" in t for t in texts)


def test_cms_label_with_data():
    texts = [t.get_text() for t in plot.figure_1d(_result(), "jet_pt", "2j1b").axes[0].texts]
    joined = " ".join(texts)
    assert "Preliminary" in joined and "Simulation" not in joined
    assert any("34.7 $\\mathrm{fb^{-1}}$" in t and "13.6 TeV" in t for t in texts), texts
    assert "2j1b" in texts


def test_unknown_format_and_histogram(tmp_path):
    with pytest.raises(UnknownNameError, match="plot format 'jpeg'"):
        plot.plot_merged(_result(), tmp_path, formats=("jpeg",))
    with pytest.raises(UnknownNameError, match="histogram 'nope'"):
        plot.total_band(_result(), "nope", "2j1b")
