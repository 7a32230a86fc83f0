"""The merged result of a run: every dataset's histograms, normalised, in processes.

``<output>/histograms.pkl`` holds ``{name: Hist}`` with the axes ``process``, ``category``,
``variation`` and the observables (weighted storage): MC normalised to the luminosity of
its period, data as counted. ``<output>/merged.json`` describes the processes (kind,
label, colour, datasets, periods, the variations each really computed), the luminosity and
the centre-of-mass energy. :func:`load_merged` reads both; :mod:`pipeline.outputs.merge`
writes them.

Where a process did not compute a variation (data, or a sample whose config runs fewer),
that variation's slot holds the process' nominal: the axis is shared by all processes.

Examples
--------
>>> import hist
>>> h = (hist.Hist.new.StrCat(["tt", "data"], name="process")
...      .StrCat(["inclusive"], name="category").StrCat(["nominal"], name="variation")
...      .Reg(2, 0, 10, name="x").Weight())
>>> result = MergedResult({"x": h}, {
...     "tt": ProcessInfo("tt", "background", "$t\\\\bar{t}$", None, ("tt_2022",),
...                       ("2022_preEE",), ("nominal",)),
...     "data": ProcessInfo("data", "data", "Data", None, ("run_c",), ("2022_preEE",),
...                         ("nominal",))}, {"2022_preEE": 7.98}, 13.6)
>>> [p.name for p in result.mc()], result.data_processes()[0].name
(['tt'], 'data')
>>> result.total_luminosity()
7.98
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipeline.errors import InputFileError

ProcessKind = Literal["data", "background", "signal"]
MERGED_HISTOGRAMS = "histograms.pkl"
MERGED_ROOT = "histograms.root"
MERGED_INFO = "merged.json"
#: the first axes of a merged histogram, before its observables
MERGED_AXES = ("process", "category", "variation")


@dataclass(frozen=True)
class ProcessInfo:
    """A process of the merged result.

    ``label`` is matplotlib text (``$...$`` mathtext allowed); ``variations`` are those its
    datasets computed (the others hold its nominal), ``"nominal"`` first.
    """

    name: str
    kind: ProcessKind
    label: str
    color: str | None
    datasets: tuple[str, ...]
    periods: tuple[str, ...]
    variations: tuple[str, ...]

    @property
    def is_data(self) -> bool:
        return self.kind == "data"


@dataclass
class MergedResult:
    """The merged histograms of a run and what they are.

    ``histograms``: ``{name: Hist(process, category, variation, *observables)}``;
    ``processes``: by name, in stacking order (the config's); ``luminosity``: fb^-1 per
    period of the processes; ``energy_tev``: the centre-of-mass energy (``None`` when the
    periods differ in it); ``notes``: what the merge left out or assumed, for people.
    """

    histograms: Mapping[str, Any]
    processes: dict[str, ProcessInfo]
    luminosity: dict[str, float]
    energy_tev: float | None
    notes: list[str] = field(default_factory=list)

    def mc(self) -> list[ProcessInfo]:
        """The simulated processes (backgrounds and signals), in stacking order."""
        return [p for p in self.processes.values() if not p.is_data]

    def data_processes(self) -> list[ProcessInfo]:
        return [p for p in self.processes.values() if p.is_data]

    def signals(self) -> list[ProcessInfo]:
        return [p for p in self.processes.values() if p.kind == "signal"]

    def total_luminosity(self) -> float:
        """The integrated luminosity of all periods, fb^-1."""
        return float(sum(self.luminosity.values()))

    def layout_problem(self, histogram: str) -> str | None:
        """What is wrong with the layout of merged ``histogram`` (it must be there), or
        ``None``: its first axes are ``process``, ``category`` and ``variation``, and every
        process of the result is on its process axis."""
        h = self.histograms[histogram]
        names = [ax.name for ax in h.axes]
        if tuple(names[:3]) != MERGED_AXES:
            return f"it has the axes {names}; a merged histogram's first are {list(MERGED_AXES)}"
        missing = [p for p in self.processes if p not in set(h.axes["process"])]
        if missing:
            return f"the processes {', '.join(missing)} are not on its process axis"
        return None

    def info(self) -> dict[str, Any]:
        """What ``merged.json`` holds (everything but the histograms)."""
        return {"processes": {name: asdict(p) for name, p in self.processes.items()},
                "luminosity_fb": self.luminosity, "energy_tev": self.energy_tev,
                "notes": self.notes}


def load_merged(output: str | Path) -> MergedResult:
    """The merged result written into a run's ``output`` directory.

    Raises :class:`~pipeline.errors.InputFileError` naming the file when it is missing
    (``calibrew merge`` writes it) or unreadable.
    """
    folder = Path(output)
    paths = folder / MERGED_HISTOGRAMS, folder / MERGED_INFO
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise InputFileError(f"{' and '.join(missing)} not found: is {folder} the output of "
                             "a finished calibrew run? A run writes them when its simulation "
                             "can be normalised; `calibrew merge JOB` writes them again")
    try:
        histograms = pickle.loads(paths[0].read_bytes())
        info = json.loads(paths[1].read_text())
        processes = {}
        for name, entry in info["processes"].items():
            fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                                      for k, v in entry.items()}
            processes[name] = ProcessInfo(**fields)
        return MergedResult(histograms, processes, dict(info["luminosity_fb"]),
                            info["energy_tev"], list(info.get("notes", [])))
    except (OSError, ValueError, KeyError, TypeError, pickle.UnpicklingError) as err:
        raise InputFileError(f"{folder}: the merged result cannot be read "
                             f"({type(err).__name__}: {err}); rerun `calibrew merge "
                             f"{folder}`") from err
