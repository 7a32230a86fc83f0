"""``calibrew plot``: one PNG per histogram and category, nominal with its variations.

1-D histograms: the nominal as a step line, the total of the variations (shape and
weight) as a shaded band (per source, the larger of the up and down shifts in each bin, summed in
quadrature over sources), and a ratio panel with every variation's up/down over nominal.
2-D histograms: the nominal as a colour map. 3-D histograms are skipped.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.analysis.histogram_fill import CUTFLOW
from pipeline.errors import InputFileError


def _sources(variations: list[str]) -> dict[str, tuple[str, str]]:
    """``{source: (up, down)}`` for the variations that come in Up/Down pairs."""
    out = {}
    for var in variations:
        if var.endswith("Up") and var[:-2] + "Down" in variations:
            out[var[:-2]] = (var, var[:-2] + "Down")
    return out


def variation_band(h: Any, category: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nominal values and the lower/upper edges of the quadrature-summed variation band."""
    nominal = h[{"category": category, "variation": "nominal"}].values()
    up2 = np.zeros_like(nominal)
    down2 = np.zeros_like(nominal)
    for up_name, down_name in _sources(list(h.axes["variation"])).values():
        up = h[{"category": category, "variation": up_name}].values() - nominal
        down = h[{"category": category, "variation": down_name}].values() - nominal
        up2 += np.maximum(np.maximum(up, down), 0) ** 2
        down2 += np.minimum(np.minimum(up, down), 0) ** 2
    return nominal, nominal - np.sqrt(down2), nominal + np.sqrt(up2)


def _safe(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_.-]+", "_", name)


def plot_histogram(h: Any, name: str, category: str, path: Path, title: str = "") -> Path:
    """Draw one histogram of one category to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mplhep

    plt.style.use(mplhep.style.CMS)
    observables = [ax for ax in h.axes if ax.name not in ("category", "variation")]
    if len(observables) == 2:
        fig, ax = plt.subplots(figsize=(10, 8))
        mplhep.hist2dplot(h[{"category": category, "variation": "nominal"}], ax=ax)
        ax.set_title(f"{title} {name} [{category}]", fontsize=14)
    else:
        fig, (ax, rax) = plt.subplots(2, 1, figsize=(10, 10), sharex=True,
                                      gridspec_kw={"height_ratios": (3, 1), "hspace": 0.05})
        edges = observables[0].edges
        nominal, low, high = variation_band(h, category)
        mplhep.histplot(nominal, edges, ax=ax, color="black", label="nominal")
        if len(h.axes["variation"]) > 1:
            ax.fill_between(edges, np.r_[low, low[-1]], np.r_[high, high[-1]], step="post",
                            color="tab:blue", alpha=0.3, label="variations (sum in quadrature)")
        with np.errstate(divide="ignore", invalid="ignore"):
            for i, (source, (up, down)) in enumerate(_sources(list(h.axes["variation"])).items()):
                color = plt.cm.tab20(i % 20)
                for var, style in ((up, "-"), (down, "--")):
                    values = h[{"category": category, "variation": var}].values()
                    ratio = np.where(nominal > 0, values / nominal, np.nan)
                    rax.stairs(ratio, edges, color=color, linestyle=style, linewidth=1,
                               label=source if style == "-" else None)
        rax.axhline(1, color="black", linewidth=1)
        rax.set_ylim(0.5, 1.5)
        rax.set_ylabel("variation / nominal")
        rax.set_xlabel(observables[0].label)
        ax.set_ylabel("Weighted events")
        ax.set_title(f"{title} {name} [{category}]", fontsize=14)
        ax.legend(fontsize=12)
        if len(_sources(list(h.axes["variation"]))) <= 14:
            rax.legend(fontsize=7, ncol=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_output(output: Path, dest: Path | None = None) -> list[Path]:
    """Plot every histogram of every dataset in a run's ``output`` directory."""
    dest = dest or output / "plots"
    files = sorted(output.glob("*/histograms.pkl"))
    if not files:
        raise InputFileError(f"no */histograms.pkl under {output}: is it a calibrew run output?")
    written = []
    for file in files:
        dataset = file.parent.name
        with open(file, "rb") as fh:
            histograms = pickle.load(fh)
        for name, h in histograms.items():
            if name == CUTFLOW or len(h.axes) > 4:
                continue
            for category in h.axes["category"]:
                target = dest / dataset / f"{_safe(name)}_{_safe(category)}.png"
                written.append(plot_histogram(h, name, category, target, title=dataset))
    return written
