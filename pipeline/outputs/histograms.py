"""The histogram files written per dataset.

Per dataset calibrew writes ``histograms.pkl`` (a dict of :class:`hist.Hist`, the ``cutflow``
among them). The histograms' layout and filling are :mod:`pipeline.analysis.histogram_fill`'s;
the ROOT export is the merged result's (:mod:`pipeline.outputs.merge`).
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import hist

from pipeline.outputs.atomic import atomic_path


class WrittenHistograms(Mapping[str, dict[str, Any]]):
    """The histograms of a run's datasets, read from their ``histograms.pkl`` when asked
    for (so that a run of many datasets holds none of them in memory).

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = write_pickle({"n": hist.Hist.new.Reg(2, 0, 1).Double()}, folder / "h.pkl")
    >>> written = WrittenHistograms({"tt": folder / "h.pkl"})
    >>> list(written), list(written["tt"])
    (['tt'], ['n'])
    """

    def __init__(self, paths: Mapping[str, Path] | None = None) -> None:
        self.paths: dict[str, Path] = dict(paths or {})

    def __getitem__(self, dataset: str) -> dict[str, Any]:
        loaded: dict[str, Any] = pickle.loads(self.paths[dataset].read_bytes())
        return loaded

    def __iter__(self) -> Iterator[str]:
        return iter(self.paths)

    def __len__(self) -> int:
        return len(self.paths)


def write_pickle(histograms: Mapping[str, hist.Hist], path: Path) -> Path:
    """Write ``{name: Hist}`` to ``path`` atomically (never a half-written file)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(pickle.dumps(dict(histograms), protocol=pickle.HIGHEST_PROTOCOL))
    return path
