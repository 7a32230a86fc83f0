"""Histogram layout (axes from the config) and the files written per dataset.

Every histogram has a ``category`` axis, a ``variation`` axis (``nominal`` first) and up
to three observable axes, with weighted storage. Per dataset calibrew writes
``histograms.pkl`` (a dict of :class:`hist.Hist`, the ``cutflow`` among them) and
``histograms.root`` (one TH1/TH2/TH3 per histogram, category and variation).
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hist
import numpy as np

from pipeline.config import AxisSpec, HistogramSpec
from pipeline.outputs.atomic import atomic_path

CUTFLOW = "cutflow"


def axis_name(axis: AxisSpec, index: int) -> str:
    """The observable axis name: the config's ``name``, else one made from ``expr``."""
    if axis.name:
        return axis.name
    name = re.sub(r"[^0-9a-zA-Z_]+", "_", axis.expr).strip("_")
    return name or f"x{index}"


def observable_axis(axis: AxisSpec, index: int) -> Any:
    name = axis_name(axis, index)
    label = axis.label or axis.expr
    if axis.edges is not None:
        return hist.axis.Variable(axis.edges, name=name, label=label)
    assert axis.bins is not None and axis.start is not None and axis.stop is not None
    return hist.axis.Regular(axis.bins, axis.start, axis.stop, name=name, label=label)


def weighted_view(h: hist.Hist) -> Any:
    """The (value, variance) view of a weighted histogram, flow bins included."""
    return h.view(flow=True)


@dataclass(frozen=True)
class HistogramLayout:
    """What one histogram holds: its categories, variations and observable axes."""

    name: str
    spec: HistogramSpec
    categories: tuple[str, ...]
    variations: tuple[str, ...]

    def empty(self) -> hist.Hist:
        """A new, empty histogram of this layout."""
        return hist.Hist(
            hist.axis.StrCategory(list(self.categories), name="category", label="Category"),
            hist.axis.StrCategory(list(self.variations), name="variation", label="Variation"),
            *(observable_axis(a, i) for i, a in enumerate(self.spec.axes)),
            storage=hist.storage.Weight(),
        )

    def observables(self) -> hist.Hist:
        """An empty histogram of the observable axes only: one category and variation."""
        return hist.Hist(
            *(observable_axis(a, i) for i, a in enumerate(self.spec.axes)),
            storage=hist.storage.Weight(),
        )


def add_into(h: hist.Hist, index: tuple[int, ...], part: hist.Hist) -> None:
    """Add the weighted histogram ``part`` into the slice ``index`` of ``h`` (flow bins kept).

    ``index`` addresses leading category axes by position, e.g. ``(category, variation)``.
    """
    view, add = weighted_view(h), weighted_view(part)
    view.value[index] += add.value
    view.variance[index] += add.variance


def cutflow_histogram(steps: Sequence[str]) -> hist.Hist:
    """The cutflow: weighted sums (value), squares (variance) and raw counts per step."""
    return hist.Hist(
        hist.axis.StrCategory(list(steps), name="step", label="Selection step"),
        hist.axis.StrCategory(["weighted", "events"], name="kind"),
        storage=hist.storage.Weight(),
    )


def to_vector(h: hist.Hist) -> np.ndarray:
    """Flatten a weighted histogram (with flow bins) into one float64 vector."""
    view = weighted_view(h)
    return np.concatenate([np.ravel(view.value), np.ravel(view.variance)])


def from_vector(h: hist.Hist, vector: np.ndarray) -> hist.Hist:
    """Fill the empty histogram ``h`` from a vector made by :func:`to_vector`; return it."""
    view = weighted_view(h)
    n = view.value.size
    view.value[...] = vector[:n].reshape(view.shape)
    view.variance[...] = vector[n:].reshape(view.shape)
    return h


def write_pickle(histograms: Mapping[str, hist.Hist], path: Path) -> Path:
    """Write ``{name: Hist}`` to ``path`` atomically (never a half-written file)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(pickle.dumps(dict(histograms), protocol=pickle.HIGHEST_PROTOCOL))
    return path


def write_root(histograms: Mapping[str, hist.Hist], path: Path) -> Path:
    """Export to ROOT: ``<category>/<hist>`` (nominal) and ``<category>/<hist>_<variation>``.

    The cutflow goes to ``cutflow`` (weighted) and ``cutflow_events`` (raw counts).
    """
    import uproot

    with atomic_path(path) as tmp, uproot.recreate(tmp) as out:
        for name, h in histograms.items():
            if name == CUTFLOW:
                out["cutflow"] = h[:, "weighted"]
                out["cutflow_events"] = h[:, "events"]
                continue
            for category in h.axes["category"]:
                for variation in h.axes["variation"]:
                    key = name if variation == "nominal" else f"{name}_{variation}"
                    out[f"{category}/{key}"] = h[{"category": category, "variation": variation}]
    return path
