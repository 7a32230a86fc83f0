"""``calibrew plot``: the plots of a run's merged result, as a physicist shows them.

For every histogram of a :class:`~pipeline.outputs.merged.MergedResult` (but the cutflow)
and every category, one file ``<dest>/<histogram>_<category>.png``:

* 1-D: the simulated processes stacked in the config's order (the first at the bottom),
  data as points with Garwood (central 68.3 %) Poisson intervals, the total simulation's
  uncertainty band (the shape systematics and the statistical uncertainty of the
  simulation, :func:`total_band`), and a ratio panel: data / simulation with the band around
  1, or, without data, the band relative to the simulation.
* 2-D: the total simulation, nominal, as a colour map. Histograms of more observables are
  skipped.

With ``variations=True``, also ``<dest>/variations/<histogram>_<category>.png`` (1-D): the
total simulation, nominal and per systematic its up and down, with their ratio to the
nominal; the ``top`` largest systematics (:func:`ranked_systematics`) in colour with a
legend entry, the others thin and grey.

Examples
--------
>>> import hist
>>> from pipeline.outputs.merged import MergedResult, ProcessInfo
>>> h = (hist.Hist.new.StrCat(["tt"], name="process").StrCat(["all"], name="category")
...      .StrCat(["nominal", "JESUp"], name="variation").Reg(2, 0, 10, name="x").Weight())
>>> h.fill(process="tt", category="all", variation="nominal", x=[1, 6, 7], weight=1.0)
Hist(...)
>>> h.fill(process="tt", category="all", variation="JESUp", x=[1, 6, 7, 8], weight=1.0)
Hist(...)
>>> result = MergedResult({"x": h}, {"tt": ProcessInfo("tt", "background", "tt", None,
...     ("tt_2022",), ("2022",), ("nominal", "JESUp"))}, {"2022": 8.0}, 13.6)
>>> total, low, high = total_band(result, "x", "all")
>>> total.tolist(), high.tolist()  # JES +1 in bin 2, mirrored -1; stat. sqrt(N)
([1.0, 2.0], [2.0, 3.732050807568877])
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from pipeline.analysis.histogram_fill import CUTFLOW
from pipeline.errors import InputFileError, OutputError, UnknownNameError
from pipeline.outputs.merged import MERGED_AXES, MergedResult, ProcessInfo, load_merged
from pipeline.outputs.systematics import shape_systematics, up_down
from pipeline.variations import NOMINAL

#: colours of the processes whose config names none, in stacking order: the colour-blind
#: safe palette CMS recommends (M. Petroff, arXiv:2107.02270)
PALETTE = ("#3f90da", "#ffa90e", "#bd1f01", "#94a4a2", "#832db6", "#a96b59", "#e76300",
           "#b9ac70", "#717581", "#92dadd")
#: the colours of :data:`PALETTE` a variations plot does not give a systematic
GREYS = ("#94a4a2", "#717581")
#: the legend entry of the band of :func:`total_band`
BAND_LABEL = "Syst. + stat. unc."
#: the file formats :func:`plot_merged` writes
FORMATS = ("png", "pdf", "svg")
DPI = 100


class Band(NamedTuple):
    """The total simulation (nominal) and the lower and upper edges of its uncertainty."""

    total: np.ndarray
    low: np.ndarray
    high: np.ndarray


def _safe(name: str) -> str:
    """``name`` as a file name: every run of other characters than ``[0-9A-Za-z_.-]`` is
    one ``_``."""
    return re.sub(r"[^0-9A-Za-z_.-]+", "_", name)


class _Slice:
    """One histogram's values and variances in one category: ``(process, variation, *obs)``."""

    def __init__(self, result: MergedResult, histogram: str, category: str):
        if histogram not in result.histograms:
            raise UnknownNameError("histogram", histogram, result.histograms)
        h = result.histograms[histogram]
        self.name, self.h = histogram, h
        problem = result.layout_problem(histogram)
        if problem is not None:
            raise InputFileError(f"histogram {histogram!r}: {problem}; rerun `calibrew merge`")
        try:
            index = h.axes["category"].index(category)
        except KeyError:
            raise UnknownNameError("category", category, list(h.axes["category"]),
                                   where=f"histogram {histogram!r}") from None
        view = h.view(flow=False)
        self.values = np.asarray(view["value"][:, index], dtype=float)
        self.variances = np.asarray(view["variance"][:, index], dtype=float)
        self._process = {name: i for i, name in enumerate(h.axes["process"])}
        self._variation = {name: i for i, name in enumerate(h.axes["variation"])}
        self.variations = list(self._variation)
        if NOMINAL not in self._variation:
            raise InputFileError(f"histogram {histogram!r} has no {NOMINAL!r} variation")
        self.mc = result.mc()
        self.data = result.data_processes()

    def process(self, process: str, variation: str = NOMINAL) -> np.ndarray:
        return self.values[self._process[process], self._variation[variation]]

    def total(self, processes: Iterable[ProcessInfo], variation: str = NOMINAL,
              variances: bool = False) -> np.ndarray:
        """The sum of ``processes`` (their values, or their ``variances``)."""
        source = self.variances if variances else self.values
        rows = [self._process[p.name] for p in processes]
        return source[rows, self._variation[variation]].sum(axis=0)


def systematic_variations(result: MergedResult, histogram: str,
                          category: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{systematic: (up, down)}`` of the total simulation of ``histogram`` in ``category``.

    The systematics are the variation axis' :func:`~pipeline.outputs.systematics.
    shape_systematics`; a one-sided one's ``down`` is its ``up`` mirrored around the nominal.
    Data is not part of the total.
    """
    s = _Slice(result, histogram, category)
    nominal = s.total(s.mc)
    out = {}
    for syst in shape_systematics(s.variations):
        down = None if syst.down is None else s.total(s.mc, syst.down)
        out[syst.name] = up_down(nominal, s.total(s.mc, syst.up), down)
    return out


def total_band(result: MergedResult, histogram: str, category: str) -> Band:
    """The total simulation of ``histogram`` in ``category`` and its uncertainty band.

    Per bin, over the shape systematics, the up and down shifts of the total simulation
    (``variation - nominal``) are summed in quadrature apart: ``up2 += max(up_shift,
    down_shift, 0) ** 2``, ``down2 += min(up_shift, down_shift, 0) ** 2`` (a one-sided
    systematic mirrored); each is combined in quadrature with the statistical uncertainty of
    the simulation (the sum of its variances). The lower edge is never below zero.
    """
    s = _Slice(result, histogram, category)
    total = s.total(s.mc)
    stat2 = s.total(s.mc, variances=True)
    up2, down2 = np.zeros_like(total), np.zeros_like(total)
    for up, down in systematic_variations(result, histogram, category).values():
        up_shift, down_shift = up - total, down - total
        up2 += np.maximum(np.maximum(up_shift, down_shift), 0) ** 2
        down2 += np.minimum(np.minimum(up_shift, down_shift), 0) ** 2
    return Band(total, np.maximum(total - np.sqrt(down2 + stat2), 0),
                total + np.sqrt(up2 + stat2))


def ranked_systematics(result: MergedResult, histogram: str,
                       category: str) -> list[tuple[str, float]]:
    """The systematics of ``histogram`` in ``category``, largest first, with their size: the
    sum over bins of ``max(|up - nominal|, |down - nominal|)`` of the total simulation."""
    nominal = _Slice(result, histogram, category)
    total = nominal.total(nominal.mc)
    sizes = {name: float(np.maximum(abs(up - total), abs(down - total)).sum())
             for name, (up, down) in systematic_variations(result, histogram, category).items()}
    return sorted(sizes.items(), key=lambda item: -item[1])


def lumi_text(luminosity: float) -> str:
    """``luminosity`` (fb^-1) to 3 significant digits, without an exponent.

    >>> lumi_text(34.653), lumi_text(7.98), lumi_text(137.64), lumi_text(1234.0)
    ('34.7', '7.98', '138', '1230')
    """
    return np.format_float_positional(float(f"{luminosity:.3g}"), trim="-")


def garwood(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The lower and upper error bars of ``counts``: Garwood's central 68.3 % Poisson interval.

    >>> low, high = garwood(np.array([0.0, 4.0]))
    >>> np.round(low, 3).tolist(), np.round(high, 3).tolist()
    ([0.0, 1.914], [1.841, 3.163])
    """
    from scipy import stats

    counts = np.asarray(counts, dtype=float)
    lower = np.where(counts > 0, stats.chi2.ppf(0.158655, 2 * counts) / 2, 0.0)
    upper = stats.chi2.ppf(1 - 0.158655, 2 * (counts + 1)) / 2
    return counts - lower, upper - counts


def _colors(processes: Sequence[ProcessInfo]) -> list[str]:
    """Each process' colour: its own, else the next of :data:`PALETTE` not taken."""
    taken = {p.color for p in processes if p.color}
    free = iter([c for c in PALETTE if c not in taken] or PALETTE)
    out = []
    for p in processes:
        if p.color:
            out.append(p.color)
        else:
            color = next(free, None)
            if color is None:
                free = iter(PALETTE)
                color = next(free)
            out.append(color)
    return out


def _figure(**kwargs: Any) -> Any:
    """A figure drawn by Agg, outside pyplot: no global state, nothing to close."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _cms_label(ax: Any, result: MergedResult, data: bool) -> None:
    import mplhep

    luminosity = result.total_luminosity()
    size = {} if data else {"fontsize": 21}  # "Simulation Preliminary" next to the lumi text
    mplhep.cms.label(text="Preliminary", data=data, ax=ax, loc=0, **size,
                     lumi=lumi_text(luminosity) if luminosity > 0 else None,
                     com=result.energy_tev)


def _category_text(ax: Any, category: str, **kwargs: Any) -> None:
    ax.text(0.04, 0.955, category, transform=ax.transAxes, ha="left", va="top",
            fontsize="small", **kwargs)


def _fill(ax: Any, edges: np.ndarray, low: np.ndarray, high: np.ndarray, **kwargs: Any) -> None:
    """A band per bin between ``low`` and ``high``; bins where either is not finite are empty."""
    valid = np.isfinite(low) & np.isfinite(high)
    x = np.repeat(edges, 2)[1:-1]
    ax.fill_between(x, np.repeat(np.where(valid, low, 0), 2),
                    np.repeat(np.where(valid, high, 0), 2), where=np.repeat(valid, 2),
                    linewidth=0, **kwargs)


def _band_style() -> dict[str, Any]:
    return {"facecolor": "none", "edgecolor": "#555555", "hatch": "////"}


def _nice_limit(deviation: float, candidates: Sequence[float]) -> float:
    """The smallest of ``candidates`` that holds ``deviation`` (else the largest)."""
    return next((c for c in candidates if deviation <= c), candidates[-1])


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / denominator, np.nan)


def figure_1d(result: MergedResult, histogram: str, category: str) -> Any:
    """The plot of a 1-D ``histogram`` in ``category``: a :class:`matplotlib.figure.Figure`
    whose axes are the main panel (stack, band, data) and the ratio panel.

    Data (the sum of the data processes) is drawn in its non-empty bins, with Garwood
    intervals (:func:`garwood`); ratio points beyond the panel (0.5 to 1.5, widened to 0 to 2
    when a point needs it) are red arrows at its edge.
    """
    import mplhep
    from matplotlib.patches import Patch
    from matplotlib.ticker import MultipleLocator

    s = _Slice(result, histogram, category)
    axis = s.h.axes[3]
    edges, centers = np.asarray(axis.edges), np.asarray(axis.centers)
    band = total_band(result, histogram, category)
    fig = _figure(figsize=(10, 10))
    ax, rax = fig.subplots(2, 1, sharex=True,
                           gridspec_kw={"height_ratios": (3, 1), "hspace": 0.06})
    handles: list[Any] = []
    labels: list[str] = []
    if s.mc:
        colors = _colors(s.mc)
        mplhep.histplot([s.process(p.name) for p in s.mc], edges, ax=ax, stack=True,
                        histtype="fill", color=colors, label=[p.label for p in s.mc],
                        edgecolor="black", linewidth=0.4)
        # the legend lists the top of the stack first, as the eye reads it
        handles += [Patch(facecolor=c, edgecolor="black", linewidth=0.4) for c in colors][::-1]
        labels += [p.label for p in s.mc][::-1]
        _fill(ax, edges, band.low, band.high, label=BAND_LABEL, **_band_style())
        handles.append(ax.collections[-1])
        labels.append(BAND_LABEL)
    top = float(np.max(band.high, initial=0.0))
    ratio_band = (_ratio(band.low, band.total), _ratio(band.high, band.total))
    _fill(rax, edges, *ratio_band, **_band_style())
    rax.axhline(1, color="black", linewidth=1)
    if s.data:
        counts = s.total(s.data)
        shown = counts > 0  # empty bins: no point
        err_low, err_high = garwood(counts)
        points = ax.errorbar(centers[shown], counts[shown],
                             yerr=(err_low[shown], err_high[shown]), fmt="o", color="black",
                             markersize=6, linewidth=1.5, label="Data")
        handles.insert(0, points)
        labels.insert(0, " + ".join(dict.fromkeys(p.label for p in s.data)) or "Data")
        top = max(top, float(np.max((counts + err_high)[shown], initial=0.0)))
        ratio = _ratio(counts, band.total)
        ratio_low, ratio_high = _ratio(err_low, band.total), _ratio(err_high, band.total)
        ok = shown & np.isfinite(ratio)
        deviation = float(np.max(np.abs(ratio[ok] - 1), initial=0.0))
        limit = _nice_limit(deviation, (0.5, 1.0))
        rax.errorbar(centers[ok], ratio[ok], yerr=(ratio_low[ok], ratio_high[ok]), fmt="o",
                     color="black", markersize=6, linewidth=1.5)
        for side, marker in ((1 + limit, "^"), (1 - limit, "v")):  # beyond the panel: arrows
            beyond = ok & ((ratio > side) if marker == "^" else (ratio < side))
            rax.plot(centers[beyond], np.full(beyond.sum(), side - 0.12 * (side - 1)),
                     marker=marker, color="#bd1f01", linestyle="none", markersize=8)
        rax.set_ylabel("Data / MC")
    else:
        spread = np.abs(np.concatenate(ratio_band) - 1)
        deviation = float(np.max(spread[np.isfinite(spread)], initial=0.0))
        limit = _nice_limit(deviation, (0.05, 0.1, 0.2, 0.5, 1.0))
        rax.set_ylabel("Rel. unc.")
    rax.set_ylim(1 - limit, 1 + limit)
    if limit >= 1:
        rax.yaxis.set_major_locator(MultipleLocator(0.5))
    rax.set_xlim(edges[0], edges[-1])
    rax.set_xlabel(axis.label)
    ax.set_ylabel("Events / bin")
    ax.set_ylim(0, top * 1.5 if top > 0 else 1)
    ax.legend(handles, labels, loc="upper right", fontsize="x-small",
              ncol=2 if len(labels) > 5 else 1)
    _cms_label(ax, result, data=bool(s.data))
    _category_text(ax, category)
    mplhep.yscale_legend(ax, soft_fail=True)
    ax.yaxis.get_major_ticks()[0].label1.set_visible(False)  # the 0 would touch the ratio's
    return fig


def figure_2d(result: MergedResult, histogram: str, category: str) -> Any:
    """The plot of a 2-D ``histogram`` in ``category``: the total simulation, nominal, as a
    colour map (a :class:`matplotlib.figure.Figure`)."""
    s = _Slice(result, histogram, category)
    xaxis, yaxis = s.h.axes[3], s.h.axes[4]
    fig = _figure(figsize=(11, 9))
    ax = fig.subplots()
    mesh = ax.pcolormesh(np.asarray(xaxis.edges), np.asarray(yaxis.edges), s.total(s.mc).T,
                         cmap="viridis")
    fig.colorbar(mesh, ax=ax, pad=0.02, label="Events / bin (MC)")
    ax.set_xlabel(xaxis.label)
    ax.set_ylabel(yaxis.label)
    _cms_label(ax, result, data=False)
    _category_text(ax, category, bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
    return fig


def figure_variations(result: MergedResult, histogram: str, category: str, top: int) -> Any:
    """The variations of the total simulation of a 1-D ``histogram`` in ``category``: the
    nominal and each systematic's up (solid) and down (dashed), above, and their ratio to the
    nominal, below; the ``top`` largest (:func:`ranked_systematics`) in colour with a legend
    entry, the others thin and grey (counted in one entry, "N more")."""
    from matplotlib.lines import Line2D

    s = _Slice(result, histogram, category)
    axis = s.h.axes[3]
    edges = np.asarray(axis.edges)
    nominal = s.total(s.mc)
    shifts = systematic_variations(result, histogram, category)
    ranked = [name for name, _ in ranked_systematics(result, histogram, category)]
    palette = [c for c in PALETTE if c not in GREYS]  # grey is for the others
    coloured = {name: palette[i % len(palette)] for i, name in enumerate(ranked[:max(top, 0)])}
    fig = _figure(figsize=(10, 10))
    ax, rax = fig.subplots(2, 1, sharex=True,
                           gridspec_kw={"height_ratios": (2, 1.3), "hspace": 0.06})
    handles: list[Any] = [ax.stairs(nominal, edges, color="black", linewidth=2)]
    labels = ["Nominal (total MC)"]
    deviation, highest = 0.0, float(np.max(nominal, initial=0.0))
    for name in reversed(ranked):  # the largest drawn last, on top
        color = coloured.get(name, "#b0b0b0")
        width = 1.8 if name in coloured else 0.7
        for values, style in zip(shifts[name], ("-", "--"), strict=True):
            ratio = _ratio(values, nominal)
            finite = ratio[np.isfinite(ratio)]
            deviation = max(deviation, float(np.max(np.abs(finite - 1), initial=0.0)))
            rax.stairs(ratio, edges, color=color, linewidth=width, linestyle=style,
                       baseline=None)
            if name in coloured:
                ax.stairs(values, edges, color=color, linewidth=width, linestyle=style,
                          baseline=None)
                highest = max(highest, float(np.max(values, initial=0.0)))
    for name, color in coloured.items():
        handles.append(Line2D([], [], color=color, linewidth=1.8))
        labels.append(name)
    handles += [Line2D([], [], color="black", linestyle="-", linewidth=1),
                Line2D([], [], color="black", linestyle="--", linewidth=1)]
    labels += ["Up", "Down"]
    if len(ranked) > len(coloured):
        handles.append(Line2D([], [], color="#b0b0b0", linewidth=0.7))
        labels.append(f"{len(ranked) - len(coloured)} more")
    rax.axhline(1, color="black", linewidth=1)
    limit = _nice_limit(deviation * 1.15, (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0))
    rax.set_ylim(1 - limit, 1 + limit)
    rax.set_xlim(edges[0], edges[-1])
    rax.set_ylabel("Variation / nominal")
    rax.set_xlabel(axis.label)
    ax.set_ylabel("Events / bin")
    ax.set_ylim(0, highest * 1.25 or 1)
    # beside the plot, titled with the category: systematics' names are long
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0),
              fontsize="x-small", title=category, title_fontsize="small", alignment="left")
    _cms_label(ax, result, data=False)
    ax.yaxis.get_major_ticks()[0].label1.set_visible(False)
    return fig


def _observables(h: Any) -> int:
    return len(h.axes) - len(MERGED_AXES)


def _save(fig: Any, path: Path, formats: Sequence[str]) -> list[Path]:
    written = []
    for fmt in formats:
        target = path.parent / f"{path.name}.{fmt}"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(target, dpi=DPI, bbox_inches="tight")
        except OSError as err:
            raise OutputError(f"{target}: cannot write the plot ({err})") from err
        written.append(target)
    return written


def plot_merged(result: MergedResult, dest: Path, *, variations: bool = False, top: int = 5,
                formats: Sequence[str] = ("png",)) -> list[Path]:
    """Draw every histogram of ``result`` in every category to ``dest``; the files written.

    Parameters
    ----------
    result
        The merged result (:func:`~pipeline.outputs.merged.load_merged`).
    dest
        The folder: ``<histogram>_<category>.<format>`` (names made file-safe), and with
        ``variations`` also ``variations/<histogram>_<category>.<format>``.
    variations
        Also draw, per 1-D histogram and category, the total simulation's variations.
    top
        In the variations plots, how many systematics (the largest) get a colour and a
        legend entry.
    formats
        File formats, of :data:`FORMATS`.

    The cutflow and histograms of more than two observables are skipped. Figures are drawn
    without pyplot (Agg, no global state), so it is safe in a notebook or a worker.

    Examples
    --------
    >>> import tempfile, hist
    >>> from pipeline.outputs.merged import MergedResult, ProcessInfo
    >>> h = (hist.Hist.new.StrCat(["tt"], name="process").StrCat(["all"], name="category")
    ...      .StrCat(["nominal"], name="variation").Reg(4, 0, 100, name="pt", label="$p_T$ [GeV]")
    ...      .Weight())
    >>> _ = h.fill(process="tt", category="all", variation="nominal", pt=[10, 30, 30, 60])
    >>> result = MergedResult({"pt": h}, {"tt": ProcessInfo("tt", "background", "tt", None,
    ...     ("tt_2022",), ("2022",), ("nominal",))}, {"2022": 8.0}, 13.6)
    >>> [p.name for p in plot_merged(result, Path(tempfile.mkdtemp()))]
    ['pt_all.png']
    """
    formats = [fmt.lower().lstrip(".") for fmt in formats]
    for fmt in formats:
        if fmt not in FORMATS:
            raise UnknownNameError("plot format", fmt, FORMATS)
    import matplotlib.style
    import mplhep

    dest = Path(dest)
    written: list[Path] = []
    with matplotlib.style.context(mplhep.style.CMS):
        for name, h in result.histograms.items():
            if name == CUTFLOW or not 1 <= _observables(h) <= 2:
                continue
            for category in h.axes["category"]:
                stem = f"{_safe(name)}_{_safe(str(category))}"
                if _observables(h) == 1:
                    fig = figure_1d(result, name, category)
                else:
                    fig = figure_2d(result, name, category)
                written += _save(fig, dest / stem, formats)
                if variations and _observables(h) == 1 and systematic_variations(
                        result, name, category):
                    fig = figure_variations(result, name, category, top)
                    written += _save(fig, dest / "variations" / stem, formats)
    return written


def plot_output(output: str | Path, dest: str | Path | None = None, *, variations: bool = False,
                top: int = 5, formats: Sequence[str] = ("png",)) -> list[Path]:
    """Draw the merged result of the run in ``output`` (:func:`plot_merged`); ``dest``
    defaults to ``<output>/plots``."""
    output = Path(output)
    return plot_merged(load_merged(output), Path(dest) if dest else output / "plots",
                       variations=variations, top=top, formats=formats)
