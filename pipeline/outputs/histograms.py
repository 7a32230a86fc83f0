"""Histogram layout (axes from the config) and the files written per dataset.

Every histogram has a ``category`` axis, a ``variation`` axis (``nominal`` first) and up
to three observable axes, with weighted storage. Per dataset calibrew writes
``histograms.pkl`` (a dict of :class:`hist.Hist`, the ``cutflow`` among them) and
``histograms.root`` (one TH1/TH2/TH3 per histogram, category and variation).
"""

from __future__ import annotations

import functools
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hist
import numpy as np

from pipeline.config.models import AxisSpec, HistogramSpec
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

    @functools.cached_property
    def _observable_axes(self) -> tuple[Any, ...]:
        return tuple(self.observables().axes)

    def flow_bins(self, observables: Sequence[np.ndarray]) -> np.ndarray:
        """Each entry's flat bin in the observables' view with flow bins (boost-histogram's
        own ``axis.index``: underflow and overflow as a fill would place them).

        Examples
        --------
        >>> from pipeline.config.models import HistogramSpec
        >>> spec = HistogramSpec(axes=[{"expr": "x", "bins": 2, "start": 0, "stop": 2}])
        >>> layout = HistogramLayout("h", spec, ("all",), ("nominal",))
        >>> layout.flow_bins([np.array([-1.0, 0.5, 1.5, 7.0])]).tolist()
        [0, 1, 2, 3]
        >>> layout.bin_sums(layout.flow_bins([np.array([0.5, 0.7])]), np.array([1.0, 2.0]))
        array([0., 3., 0., 0.])
        """
        flat = np.zeros(len(observables[0]) if observables else 0, dtype=np.int64)
        for axis, values in zip(self._observable_axes, observables):
            flat = flat * axis.extent + (np.asarray(axis.index(values), dtype=np.int64) + 1)
        return flat

    def bin_sums(self, bins: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Weights summed per bin (flow view shape), in entry order as a fill adds them."""
        shape = tuple(a.extent for a in self._observable_axes)
        return np.bincount(bins, weights=weights, minlength=int(np.prod(shape))).reshape(shape)


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
