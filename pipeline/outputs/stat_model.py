"""The statistical model of a fit, from the merged result: what the combine datacard
(:mod:`pipeline.outputs.datacard`) and the pyhf workspace (:mod:`pipeline.outputs.workspace`)
both write.

One channel per fitted category (``fit.categories``, default: every category of the
histogram ``fit.histogram``); in each, one sample per simulated process with its nominal
yields and variances (MC statistics) and, for each shape systematic the process computed
(:attr:`ProcessInfo.variations`), its up and down yields (a one-sided systematic's down is
its up mirrored, ``2 nominal - up``); the observation is the sum of the data processes, or,
without data, the total simulation (an Asimov observation). Normalisation systematics
(``fit.normalisation``) apply to their processes, by default every simulated one; the
parameter of interest scales the signal processes.

Negative yields (negative generator weights) in any template (nominal, up, down) are set
to :data:`NEGATIVE_FLOOR`, a tiny positive number: combine and pyhf need a non-negative
expected yield in every bin, and a bin at exactly zero leaves a shape systematic there
undefined. The variances are kept (the MC statistical uncertainty still covers the bin);
each change is listed in :attr:`StatModel.notes` and logged as a warning.

Names are :func:`~pipeline.outputs.root_names.root_name`'d: the same channel, sample and
systematic names in the datacard, ``shapes.root`` and the workspace.

Examples
--------
>>> import hist
>>> h = (hist.Hist.new.StrCat(["sig", "bkg", "data"], name="process")
...      .StrCat(["sr"], name="category").StrCat(["nominal", "JESUp"], name="variation")
...      .Reg(2, 0, 10, name="x").Weight())
>>> _ = h.fill(process="sig", category="sr", variation=["nominal", "JESUp"], x=[1, 1])
>>> _ = h.fill(process="bkg", category="sr", variation=["nominal", "JESUp"], x=[6, 1])
>>> _ = h.fill(process="data", category="sr", variation="nominal", x=[1, 6, 6])
>>> def info(name, kind, variations):
...     return ProcessInfo(name, kind, name, None, (name,), ("2022",), variations)
>>> result = MergedResult({"x": h}, {"sig": info("sig", "signal", ("nominal",)),
...     "bkg": info("bkg", "background", ("nominal", "JESUp")),
...     "data": info("data", "data", ("nominal",))}, {"2022": 1.0}, 13.6)
>>> model = stat_model(result, FitSpec(histogram="x"))
>>> [(s.name, s.values.tolist(), sorted(s.shapes)) for s in model.channels[0].samples]
[('sig', [1.0, 0.0], []), ('bkg', [0.0, 1.0], ['JES'])]
>>> bkg = model.channels[0].samples[1]
>>> bkg.shapes["JES"].up.tolist(), bkg.shapes["JES"].down.tolist()  # mirrored
([1.0, 0.0], [1e-06, 2.0])
>>> model.channels[0].observed.tolist(), model.asimov
([1.0, 2.0], False)
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.config.models import FitSpec
from pipeline.errors import OutputError
from pipeline.outputs.merged import MERGED_AXES, MergedResult, ProcessInfo
from pipeline.outputs.root_names import root_name
from pipeline.outputs.systematics import shape_systematics, up_down
from pipeline.variations import NOMINAL

LOG = logging.getLogger(__name__)

#: what a negative template bin is set to (combine and pyhf need non-negative yields)
NEGATIVE_FLOOR = 1e-6
#: the parameter of interest: it scales every signal process
POI = "mu"
#: combine's name of the observation
DATA_OBS = "data_obs"


@dataclass(frozen=True)
class ShapeVariation:
    """A shape systematic of one sample in one channel: its up and down yields (and
    variances); ``mirrored``: the down is the up mirrored around the nominal."""

    up: np.ndarray
    down: np.ndarray
    up_variances: np.ndarray
    down_variances: np.ndarray
    mirrored: bool


@dataclass
class Sample:
    """A simulated process in one channel: ``name`` its ROOT name, ``shapes`` by
    systematic name (only the systematics the process computed)."""

    process: ProcessInfo
    name: str
    values: np.ndarray
    variances: np.ndarray
    shapes: dict[str, ShapeVariation]

    @property
    def is_signal(self) -> bool:
        return self.process.kind == "signal"


@dataclass
class Channel:
    """A fitted category: ``name`` its ROOT name, its samples in process order and its
    observation (the data's sum, or the Asimov total simulation)."""

    category: str
    name: str
    samples: list[Sample]
    observed: np.ndarray
    observed_variances: np.ndarray


@dataclass(frozen=True)
class Normalisation:
    """A log-normal yield uncertainty: ``value`` the factor at +1 sigma, ``samples`` the
    ROOT names of the samples it applies to."""

    name: str
    value: float
    samples: frozenset[str]


@dataclass
class StatModel:
    """The statistical model of a fit: channels, systematics and what was assumed.

    ``shape_systematics``: the ROOT names of the shape systematics some sample computed, in
    the variation axis' order; ``asimov``: the observation is the total simulation (no data
    process); ``notes``: what was changed or assumed, for people.
    """

    histogram: str
    axis: Any
    channels: list[Channel]
    shape_systematics: list[str]
    normalisation: list[Normalisation]
    asimov: bool
    notes: list[str] = field(default_factory=list)

    def sample_names(self) -> list[str]:
        """The samples' ROOT names, in process order (the same in every channel)."""
        return [s.name for s in self.channels[0].samples] if self.channels else []


def stat_model(result: MergedResult, fit: FitSpec) -> StatModel:
    """The statistical model of ``fit`` on the merged ``result``.

    Raises :class:`~pipeline.errors.OutputError` naming the config key when the fit cannot
    be made: an unknown histogram or category, a histogram with more than one observable,
    no signal process (the parameter of interest scales the signals), names that coincide
    once made valid ROOT names.
    """
    h = _fitted_histogram(result, fit)
    categories = list(h.axes["category"])
    fitted = list(fit.categories) if fit.categories else categories
    unknown = [c for c in fitted if c not in categories]
    if unknown:
        raise OutputError(f"fit.categories: {', '.join(map(repr, unknown))} not in histogram "
                          f"{fit.histogram!r} (categories: {', '.join(categories)})")
    mc = result.mc()
    if not any(p.kind == "signal" for p in mc):
        raise OutputError(
            f"fit: no signal process; the fit's parameter of interest {POI!r} scales the "
            "signals: set `processes.<name>.kind: signal` in the config for the signal "
            f"process(es) (simulated processes: {', '.join(p.name for p in mc) or 'none'})")
    variations = list(h.axes["variation"])
    systematics = shape_systematics(variations)
    names = _unique_names([(p.name, "processes") for p in mc]
                          + [(c, "fit.categories") for c in fitted]
                          + [(s.name, f"the variations of {fit.histogram!r}")
                             for s in systematics])
    notes: list[str] = []
    data = result.data_processes()
    channels = []
    for category in fitted:
        samples = [_sample(h, p, category, systematics, notes) for p in mc]
        observed = ([_yields(h, p.name, category, NOMINAL) for p in data] if data
                    else [(s.values, s.variances) for s in samples])
        obs_values = np.sum([v for v, _ in observed], axis=0)
        obs_variances = np.sum([v for _, v in observed], axis=0)
        channels.append(Channel(category, names[category], samples, obs_values, obs_variances))
    shape_names = [root_name(s.name) for s in systematics
                   if any(root_name(s.name) in smp.shapes for c in channels
                          for smp in c.samples)]
    normalisation = _normalisation(fit, result)
    _check_nuisance_names(shape_names, normalisation, [c.name for c in channels])
    if not data:
        notes.append(f"no data process: the observation is the total simulation of "
                     f"{fit.histogram!r} (an Asimov data set, mu = 1)")
    for note in notes:
        LOG.warning("%s", note)
    return StatModel(fit.histogram, copy.deepcopy(h.axes[3]), channels, shape_names,
                     normalisation, not data, notes)


def _fitted_histogram(result: MergedResult, fit: FitSpec) -> Any:
    h = result.histograms.get(fit.histogram)
    if h is None:
        raise OutputError(f"fit.histogram: {fit.histogram!r} is not in the merged result "
                          f"(histograms: {', '.join(result.histograms) or 'none'})")
    problem = result.layout_problem(fit.histogram)
    if problem is not None:
        raise OutputError(f"histogram {fit.histogram!r}: {problem}; rerun `calibrew merge`")
    if len(h.axes) != len(MERGED_AXES) + 1:
        raise OutputError(f"fit.histogram: {fit.histogram!r} has the axes "
                          f"{[a.name for a in h.axes]}; a fitted histogram has process, "
                          "category, variation and one observable")
    if "variance" not in (h.view(flow=False).dtype.names or ()):
        storage = type(h.storage_type()).__name__
        raise OutputError(f"fit.histogram: {fit.histogram!r} has no variances ({storage} "
                          "storage); the fit's MC statistical uncertainties need Weight "
                          "storage (rerun `calibrew merge`)")
    return h


def _unique_names(names: list[tuple[str, str]]) -> dict[str, str]:
    """``{name: root_name(name)}``; two names of one kind with one ROOT name, or a process
    named like combine's observation, are an error naming the config key."""
    out: dict[str, str] = {}
    seen: dict[tuple[str, str], str] = {}
    for name, key in names:
        valid = root_name(name)
        other = seen.setdefault((key, valid), name)
        if other != name:
            raise OutputError(f"{key}: {other!r} and {name!r} have the same ROOT name "
                              f"{valid!r}; rename one")
        if key == "processes" and valid == DATA_OBS:
            raise OutputError(f"processes.{name}: {DATA_OBS!r} is combine's name of the "
                              "observation; rename the process")
        out[name] = valid
    return out


def _yields(h: Any, process: str, category: str,
            variation: str) -> tuple[np.ndarray, np.ndarray]:
    """The values and variances of one slot of the fitted histogram (no flow bins)."""
    view = h.view(flow=False)[h.axes["process"].index(process),
                              h.axes["category"].index(category),
                              h.axes["variation"].index(variation)]
    return np.asarray(view["value"], dtype=float), np.asarray(view["variance"], dtype=float)


def _floor(values: np.ndarray, what: str, notes: list[str]) -> np.ndarray:
    negative = values < 0
    if negative.any():
        notes.append(f"{what}: {int(negative.sum())} negative bin(s) (smallest "
                     f"{values.min():.4g}) set to {NEGATIVE_FLOOR:g}")
        return np.where(negative, NEGATIVE_FLOOR, values)
    return values


def _sample(h: Any, process: ProcessInfo, category: str, systematics: list[Any],
            notes: list[str]) -> Sample:
    where = f"{category}/{process.name}"
    raw, variances = _yields(h, process.name, category, NOMINAL)
    shapes = {}
    for syst in systematics:
        if syst.up not in process.variations:
            continue
        up, up_var = _yields(h, process.name, category, syst.up)
        computed_down = syst.down is not None and syst.down in process.variations
        down_raw, down_var = (_yields(h, process.name, category, syst.down)
                              if computed_down else (None, up_var))
        up, down = up_down(raw, up, down_raw)
        shapes[root_name(syst.name)] = ShapeVariation(
            _floor(up, f"{where} {syst.up}", notes),
            _floor(down, f"{where} {syst.name}Down" + ("" if computed_down else " (mirrored)"),
                   notes),
            up_var, down_var, not computed_down)
    values = _floor(raw, f"{where} nominal", notes)
    return Sample(process, root_name(process.name), values, variances, shapes)


def _normalisation(fit: FitSpec, result: MergedResult) -> list[Normalisation]:
    mc = [p.name for p in result.mc()]
    out = []
    for name, syst in fit.normalisation.items():
        listed = syst.processes if syst.processes is not None else mc
        wrong = [p for p in listed if p not in mc]
        if wrong:
            raise OutputError(f"fit.normalisation.{name}.processes: {', '.join(wrong)} not "
                              f"simulated processes of the result ({', '.join(mc)})")
        out.append(Normalisation(root_name(name), syst.value,
                                 frozenset(root_name(p) for p in listed)))
    return out


def _check_nuisance_names(shapes: list[str], normalisation: list[Normalisation],
                          channels: list[str]) -> None:
    """One name, one nuisance parameter: a systematic named like another one, the
    parameter of interest or a statistical uncertainty is an error."""
    taken = {staterror_name(c): "a statistical uncertainty" for c in channels}
    taken[POI] = "the parameter of interest"
    for shape in shapes:
        if shape in taken:
            raise OutputError(f"shape systematic {shape!r}: the name of {taken[shape]}; "
                              "rename its variations")
        taken[shape] = "a shape systematic"
    for norm in normalisation:
        if norm.name in taken:
            raise OutputError(f"fit.normalisation.{norm.name}: the name of {taken[norm.name]}; "
                              "rename it")
        taken[norm.name] = "a normalisation systematic"


def staterror_name(channel: str) -> str:
    """The name of a channel's MC statistical uncertainty (pyhf ``staterror``)."""
    return f"staterror_{channel}"
