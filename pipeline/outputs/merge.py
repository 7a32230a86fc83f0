"""Merge a run's per-dataset histograms into processes, normalised to the luminosity.

Each simulated dataset is scaled by ``xsec x luminosity / sum of generator weights``: the
cross-section (pb) from its metadata, the integrated luminosity of its period (fb^-1,
parameter ``luminosity.<period>.fb``), the generator weights summed over every event of the
chunks processed (before any selection). Collision data keep scale 1. The merge reads one
dataset at a time and adds it into the processes' sums, so its memory is that of the merged
histograms, whatever the number of datasets (:func:`merge_run`).

A chunk left out of a run (an unreadable file under ``--on-bad-file skip``) is missing from
both the histograms and the sum of generator weights: the dataset is normalised to the
events processed, its prediction keeps its expected yield with fewer simulated events. The
merge says so in its notes.

Examples
--------
>>> mc_scale({"xsec": 98.04, "isMC": True}, 66735.3, 7.9804)
11.7239...
"""

from __future__ import annotations

import copy
import hashlib
import json
import pickle
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hist
import numpy as np

from pipeline.analysis.histogram_fill import CUTFLOW
from pipeline.config.models import AnalysisConfig, ProcessSpec, PseudoDataSpec
from pipeline.config.parameters import section
from pipeline.errors import ConfigError, InputFileError, OutputError
from pipeline.outputs.atomic import atomic_path
from pipeline.outputs.histograms import write_pickle
from pipeline.outputs.merged import (
    MERGED_HISTOGRAMS,
    MERGED_INFO,
    MERGED_ROOT,
    MergedResult,
    ProcessInfo,
)
from pipeline.outputs.root_names import root_name, write_hist
from pipeline.variations import NOMINAL

PB_PER_FB = 1000.0
DATASET_HISTOGRAMS = "histograms.pkl"
DATASET_SUMMARY = "summary.json"
PSEUDO_DATA = "pseudo_data"


def mc_scale(metadata: Mapping[str, Any], sum_genweights: float, luminosity_fb: float) -> float:
    """The factor normalising a simulated dataset: ``xsec [pb] x 1000 x luminosity [fb^-1]
    / sum of generator weights``; 1 for collision data."""
    if not metadata.get("isMC"):
        return 1.0
    return float(metadata["xsec"]) * PB_PER_FB * luminosity_fb / sum_genweights


@dataclass(frozen=True)
class Period:
    """A data-taking period's integrated luminosity (fb^-1) and centre-of-mass energy."""

    luminosity_fb: float
    energy_tev: float | None


def periods(params: Any) -> dict[str, Period]:
    """The ``luminosity`` parameters by period.

    Examples
    --------
    >>> from pipeline.config.parameters import defaults
    >>> periods(defaults())["2022_preEE"]
    Period(luminosity_fb=7.9804, energy_tev=13.6)
    """
    out = {}
    for period, entry in (section(params, "luminosity") or {}).items():
        entry = entry or {}
        if not isinstance(entry.get("fb"), (int, float)):
            raise ConfigError("parameters", [(f"luminosity.{period}.fb", "the integrated "
                                              "luminosity in fb^-1 (a number) is missing")])
        energy = entry.get("energy_tev")
        out[str(period)] = Period(float(entry["fb"]),
                                  float(energy) if energy is not None else None)
    return out


@dataclass
class _Sums:
    """One histogram's sums: by process, by variation, the values and variances (flow
    bins included) of every category."""

    axes: tuple[Any, ...]  # the first dataset's axes (copies: not its contents)
    values: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    variances: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    variations: list[str] = field(default_factory=list)

    def add(self, process: str, h: hist.Hist, scale: float, where: str) -> None:
        if [ax.name for ax in h.axes] != [ax.name for ax in self.axes] or list(
                h.axes["category"]) != list(self._axis("category")):
            raise InputFileError(f"{where}: its axes or categories differ from the other "
                                 "datasets' (written by another configuration?)")
        view: Any = h.view(flow=True)
        names = list(h.axes["variation"])
        values = self.values.setdefault(process, {})
        variances = self.variances.setdefault(process, {})
        # a dataset without a variation counts with its nominal in it, and so do the
        # datasets added before one that brings a new variation
        earlier = (values.get(NOMINAL, 0.0), variances.get(NOMINAL, 0.0))
        earlier = (np.copy(earlier[0]), np.copy(earlier[1]))
        for variation in [*values, *[n for n in names if n not in values]]:
            index = names.index(variation if variation in names else NOMINAL)
            value = view["value"][:, index] * scale
            variance = view["variance"][:, index] * scale**2
            if variation in values:
                values[variation] += value
                variances[variation] += variance
            else:
                values[variation] = value + earlier[0]
                variances[variation] = variance + earlier[1]
            if variation not in self.variations:
                self.variations.append(variation)

    @classmethod
    def like(cls, h: hist.Hist) -> _Sums:
        """Empty sums for histograms of ``h``'s axes."""
        return cls(tuple(copy.deepcopy(ax) for ax in h.axes))

    def _axis(self, name: str) -> Any:
        return next(ax for ax in self.axes if ax.name == name)

    def add_pseudo_data(self, name: str, simulated: list[str], spec: PseudoDataSpec,
                        histogram: str) -> None:
        """Add process ``name``: the nominal total of the ``simulated`` processes, Poisson
        fluctuated (seeded by ``spec.seed`` and the histogram's name) unless not asked."""
        total = sum((self.values[p][NOMINAL] for p in simulated if p in self.values),
                    np.zeros_like(self.values[simulated[0]][NOMINAL]))
        if spec.fluctuate:
            digest = hashlib.sha256(f"{spec.seed}/{histogram}".encode()).digest()
            rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
            total = rng.poisson(np.clip(total, 0, None)).astype(np.float64)
        self.values[name] = {NOMINAL: total}
        self.variances[name] = {NOMINAL: np.abs(total)}

    def merged(self, processes: list[str]) -> hist.Hist:
        """The merged histogram; a process' missing variations hold its nominal."""
        order = [NOMINAL, *[v for v in self.variations if v != NOMINAL]]
        observables = [ax for ax in self.axes if ax.name not in ("category", "variation")]
        out = hist.Hist(
            hist.axis.StrCategory(processes, name="process", label="Process", overflow=False),
            self._axis("category"),
            hist.axis.StrCategory(order, name="variation", label="Variation", overflow=False),
            *observables, storage=hist.storage.Weight())
        view: Any = out.view(flow=True)
        for p, process in enumerate(processes):
            values, variances = self.values.get(process, {}), self.variances.get(process, {})
            for v, variation in enumerate(order):
                source = variation if variation in values else NOMINAL
                if source in values:
                    view["value"][p, :, v] = values[source]
                    view["variance"][p, :, v] = variances[source]
        return out


def _cutflow(h: Any, scale: float) -> tuple[list[str], np.ndarray, np.ndarray]:
    steps = list(h.axes["step"])
    return steps, h[:, "weighted"].values() * scale, h[:, "events"].values()


def _read_dataset(output: Path, dataset: str) -> tuple[dict[str, Any], dict[str, Any]]:
    folder = output / dataset
    try:
        summary = json.loads((folder / DATASET_SUMMARY).read_text())
        histograms = pickle.loads((folder / DATASET_HISTOGRAMS).read_bytes())
    except FileNotFoundError as err:
        raise InputFileError(f"dataset {dataset!r}: {err.filename} not found; run the job "
                             "(its datasets) before merging") from err
    except (OSError, ValueError, pickle.UnpicklingError, EOFError) as err:
        raise InputFileError(f"dataset {dataset!r}: its outputs in {folder} cannot be read "
                             f"({type(err).__name__}: {err}); rerun its job") from err
    return summary, histograms


def merge_run(output: str | Path, cfg: AnalysisConfig, params: Any,
              datasets: Iterable[str] | None = None) -> MergedResult:
    """Merge the per-dataset outputs under ``output`` into the processes of ``cfg``
    (:meth:`~pipeline.config.models.AnalysisConfig.process_specs`), normalised, and write
    ``histograms.pkl`` and ``merged.json`` there (atomically).

    ``datasets``: those the run wrote (default: every dataset of the config); a process
    none of whose datasets ran is left out, and a dataset of the run in no process is
    named in the notes.
    """
    output = Path(output)
    ran = list(cfg.datasets) if datasets is None else list(datasets)
    problems = normalisation_problems(cfg, params, ran)
    if problems:
        raise ConfigError("analysis config and parameters", problems)
    known = periods(params)
    sums: dict[str, _Sums] = {}
    cutflow: dict[str, tuple[list[str], np.ndarray, np.ndarray]] = {}
    infos: dict[str, ProcessInfo] = {}
    notes: list[str] = []
    used_periods: dict[str, Period] = {}
    placed = set()
    for name, spec in cfg.process_specs().items():
        members = [d for d in spec.datasets if d in ran]
        placed.update(spec.datasets)
        if not members:
            continue
        process_periods: list[str] = []
        for dataset in members:
            summary, histograms = _read_dataset(output, dataset)
            meta = cfg.datasets[dataset].metadata
            period = meta.year
            if period not in process_periods:
                process_periods.append(period)
            scale = _scale(dataset, meta.model_dump(), summary, known, used_periods)
            left_out = summary.get("chunks_left_out") or []
            if left_out:
                notes.append(f"dataset {dataset!r}: {len(left_out)} chunk(s) left out "
                             "(unreadable input); normalised to the events processed")
            for hname, h in histograms.items():
                if hname == CUTFLOW:
                    steps, weighted, events = _cutflow(h, scale)
                    if name in cutflow:
                        cutflow[name][1][:] += weighted
                        cutflow[name][2][:] += events
                    else:
                        cutflow[name] = (steps, weighted, events)
                    continue
                if hname not in sums:
                    sums[hname] = _Sums.like(h)
                sums[hname].add(name, h, scale, f"dataset {dataset!r}, histogram {hname!r}")
            del histograms
        variations = [v for one in sums.values() for v in one.values.get(name, {})]
        infos[name] = _process_info(name, spec, members, process_periods, variations)
    unplaced = [d for d in ran if d not in placed]
    if unplaced:
        notes.append(f"dataset(s) in no process, not merged: {', '.join(unplaced)}")
    if not infos:
        raise OutputError(f"nothing to merge in {output}: none of the datasets run "
                          f"({', '.join(ran)}) is in a process (config key 'processes')")
    if cfg.pseudo_data is not None:
        name = PSEUDO_DATA
        infos[name] = ProcessInfo(name, "data", cfg.pseudo_data.label, None, (),
                                  tuple(sorted(used_periods)), (NOMINAL,))
        for hname, one in sums.items():
            one.add_pseudo_data(name, [p for p in infos if not infos[p].is_data],
                                cfg.pseudo_data, hname)
        notes.append(f"the data are pseudo-data: {cfg.pseudo_data.label}")
    order = list(infos)
    histograms_out: dict[str, hist.Hist] = {h: s.merged(order) for h, s in sums.items()}
    if cutflow:
        histograms_out[CUTFLOW] = _merged_cutflow(cutflow, order)
    energies = {p.energy_tev for p in used_periods.values()}
    data_periods = {p for i in infos.values() if i.is_data for p in i.periods}
    luminosity = {p: used_periods[p].luminosity_fb for p in sorted(used_periods)}
    if data_periods and set(luminosity) - data_periods:
        notes.append(f"simulation of period(s) {', '.join(sorted(set(luminosity)))} is "
                     f"compared with data of period(s) {', '.join(sorted(data_periods))}")
    result = MergedResult(histograms_out, infos, luminosity,
                          energies.pop() if len(energies) == 1 else None, notes)
    write_merged(result, output)
    return result


def normalisation_problems(cfg: AnalysisConfig, params: Any,
                           datasets: Iterable[str] | None = None) -> list[tuple[str, str]]:
    """What stops the simulated ``datasets`` (default: all) of the config's processes from
    being normalised, as ``(key, problem)``: a missing cross-section or luminosity.

    Examples
    --------
    >>> from pipeline.config.parameters import defaults
    >>> cfg = AnalysisConfig.model_validate({"datasets": {"tt": {"files": ["a.root"],
    ...     "metadata": {"sample": "TTbar", "year": "2021", "isMC": True}}}})
    >>> [key for key, _ in normalisation_problems(cfg, defaults())]
    ['datasets.tt.metadata.xsec', 'luminosity.2021']
    """
    known = periods(params)
    wanted = set(cfg.datasets if datasets is None else datasets)
    problems = []
    for spec in cfg.process_specs().values():
        for dataset in spec.datasets:
            meta = cfg.datasets[dataset].metadata
            if dataset not in wanted or not meta.isMC:
                continue
            if meta.xsec is None:
                problems.append((f"datasets.{dataset}.metadata.xsec", "simulation needs its "
                                 "cross-section (pb) to be normalised"))
            if meta.year not in known:
                problems.append((f"luminosity.{meta.year}", f"no integrated luminosity (fb^-1) "
                                 f"for the period of dataset {dataset!r} in the parameters; "
                                 f"known: {', '.join(sorted(known)) or 'none'}"))
    return problems


def _scale(dataset: str, metadata: dict[str, Any], summary: Mapping[str, Any],
           known: Mapping[str, Period], used: dict[str, Period]) -> float:
    """The dataset's scale (its cross-section and period checked by
    :func:`normalisation_problems`); its period is recorded in ``used``."""
    if not metadata.get("isMC"):
        return 1.0
    period = str(metadata["year"])
    sum_genweights = float(summary["sum_genweights"])
    if sum_genweights == 0:
        raise OutputError(f"dataset {dataset!r}: its generator weights sum to zero; it "
                          "cannot be normalised")
    used[period] = known[period]
    return mc_scale(metadata, sum_genweights, known[period].luminosity_fb)


def _process_info(name: str, spec: ProcessSpec, members: list[str], process_periods: list[str],
                  variations: list[str]) -> ProcessInfo:
    ordered = [NOMINAL, *[v for v in dict.fromkeys(variations) if v != NOMINAL]]
    return ProcessInfo(name, spec.kind, spec.label or name, spec.color, tuple(members),
                       tuple(process_periods), tuple(ordered))


def _merged_cutflow(cutflow: Mapping[str, tuple[list[str], np.ndarray, np.ndarray]],
                    order: list[str]) -> hist.Hist:
    steps = next(iter(cutflow.values()))[0]
    out = hist.Hist(hist.axis.StrCategory(order, name="process", label="Process",
                                          overflow=False),
                    hist.axis.StrCategory(steps, name="step", label="Selection step"),
                    hist.axis.StrCategory(["weighted", "events"], name="kind"),
                    storage=hist.storage.Double())
    for p, process in enumerate(order):
        if process in cutflow:
            _, weighted, events = cutflow[process]
            out.view()[p, :, 0] = weighted
            out.view()[p, :, 1] = events
    return out


def write_merged(result: MergedResult, output: Path) -> list[Path]:
    """Write ``histograms.pkl``, ``histograms.root`` and ``merged.json`` into ``output``
    (each atomically)."""
    paths = [write_pickle(result.histograms, output / MERGED_HISTOGRAMS),
             write_merged_root(result, output / MERGED_ROOT)]
    with atomic_path(output / MERGED_INFO) as tmp:
        tmp.write_text(json.dumps(result.info(), indent=2))
    return [*paths, output / MERGED_INFO]


def write_merged_root(result: MergedResult, path: Path) -> Path:
    """Write the merged histograms to ROOT, as combine names templates:
    ``<histogram>/<category>/<process>`` (nominal) and
    ``<histogram>/<category>/<process>_<variation>`` for each variation the process computed
    (the others are its nominal); names made valid (:func:`root_name`), titles in TLatex;
    the cutflow as ``cutflow/<process>`` (weighted) and ``cutflow_events/<process>``.
    """
    import uproot

    with atomic_path(path) as tmp, uproot.recreate(tmp) as out:
        for name, h in result.histograms.items():
            for process in result.processes.values():
                title = process.label
                if name == CUTFLOW:
                    for kind, folder in (("weighted", "cutflow"), ("events", "cutflow_events")):
                        write_hist(out, f"{folder}/{root_name(process.name)}",
                                   h[{"process": process.name, "kind": kind}], title)
                    continue
                variations = [v for v in process.variations if v in h.axes["variation"]]
                for category in h.axes["category"]:
                    where = f"{root_name(name)}/{root_name(category)}/{root_name(process.name)}"
                    for variation in variations:
                        key = where if variation == NOMINAL else f"{where}_{root_name(variation)}"
                        write_hist(out, key, h[{"process": process.name, "category": category,
                                                "variation": variation}], title)
    return path
