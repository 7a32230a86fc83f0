"""Analysis configuration and job specs: pydantic models, loaded from YAML and validated.

A wrong key, a wrong type or an unknown name fails on load, before any computation, with
a :class:`~pipeline.errors.ConfigError` naming the file and the key path.

Examples
--------
>>> cfg = AnalysisConfig.model_validate({
...     "datasets": {"tt": {"files": ["nano_tt_v12.root"],
...                         "metadata": {"sample": "TTbar", "year": "2022_preEE", "isMC": True}}},
...     "histograms": {"jet_pt": {"axes": [{"expr": "Jet.pt", "bins": 10, "start": 0,
...                                         "stop": 200}]}}})
>>> cfg.calibrators
['default']
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.config.parameters import format_validation_error
from pipeline.errors import ConfigError
from pipeline.table_layout import RESERVED_COLUMNS


class Strict(BaseModel):
    """Base of every config model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class DatasetMetadata(Strict):
    """What the calibrators and outputs know of a dataset."""

    sample: str
    year: str = Field(description="data-taking period label, e.g. 2022_preEE")
    isMC: bool
    era: str | None = Field(default=None, description="run era of collision data, e.g. C")
    xsec: float | None = Field(default=None, description="cross-section in pb (MC)")
    generator_weight: str = Field(
        default="genWeight", description="the per-event generator weight column (MC); "
        "'none' switches it off (events count 1, normalised by cross-section only)"
    )

    @model_validator(mode="after")
    def _era_for_data(self) -> DatasetMetadata:
        if not self.isMC and not self.era:
            raise ValueError("collision data (isMC: false) needs its run 'era'")
        return self


class DatasetSpec(Strict):
    """A dataset's files and their metadata.

    ``files`` lists paths or URLs (``root://``, ``https://``), globs (``/data/*.root``) and
    folders (a name ending in ``/``: every ``.root`` file in it, sorted), local or XRootD.
    ``fileset`` instead names a coffea ``dataset_tools`` fileset JSON, ``"f.json"`` (its
    entry named like this dataset) or ``"f.json#entry"``; the files and tree come from it.
    """

    files: list[str] = Field(default_factory=list)
    fileset: str | None = Field(
        default=None, exclude_if=lambda value: value is None,
        description="a coffea fileset JSON, 'file.json' or 'file.json#entry', instead of files",
    )
    metadata: DatasetMetadata
    tree: str = "Events"

    @model_validator(mode="after")
    def _files_or_fileset(self) -> DatasetSpec:
        if bool(self.files) == bool(self.fileset):
            raise ValueError("give either 'files' (a non-empty list) or 'fileset'")
        return self


class RemoteSpec(Strict):
    """How remote files (``root://``, ``https://``) are read."""

    timeout_s: float = Field(default=30, gt=0, description="timeout of one remote request (s)")
    retries: int = Field(default=3, ge=0, description="times a failed remote open or "
                         "listing is tried again before the file is reported")


class ResampleSpec(Strict):
    """A job's inputs resampled into larger files (``calibrew make-sample``), made once into
    the cache: to measure rates on more events than the sample files hold. The results are
    not physics (events repeat)."""

    events: int = Field(gt=0, description="events of each dataset, split over its files")
    seed: int = Field(default=1, description="resampling seed")
    keep: list[str] | None = Field(default=None, description="fnmatch patterns of the "
                                   "branches kept (default: all)")


class NameList(Strict):
    inclusive: list[str] = Field(default_factory=list)


class NamesBySample(Strict):
    """Names common to every sample and by sample; a plain list is the common names.

    Examples
    --------
    >>> NamesBySample.model_validate(["pileup", "my_module:MyWeight"]).common.inclusive
    ['pileup', 'my_module:MyWeight']
    """

    common: NameList = Field(default_factory=NameList)
    bysample: dict[str, NameList] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _plain_list(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return {"common": {"inclusive": list(value)}}
        return value

    def entries(self, prefix: str) -> list[tuple[str, str]]:
        """Every name with its key path, common ones first.

        Examples
        --------
        >>> NamesBySample.model_validate({"common": {"inclusive": ["pileup"]}}).entries("weights")
        [('weights.common.inclusive[0]', 'pileup')]
        """
        lists = [(f"{prefix}.common.inclusive", self.common.inclusive)]
        lists += [(f"{prefix}.bysample.{s}.inclusive", v.inclusive)
                  for s, v in self.bysample.items()]
        return [(f"{path}[{i}]", name) for path, names in lists for i, name in enumerate(names)]


class VariationsSpec(Strict):
    """``shape``: calibrators whose variations run; ``weights``: weights whose variations run.

    Both as ``{common,bysample.<sample>}.inclusive`` lists of names, or a plain list (the
    common names).
    """

    shape: NamesBySample = Field(default_factory=NamesBySample)
    weights: NamesBySample = Field(default_factory=NamesBySample)


def by_sample(spec: NamesBySample, sample: str) -> list[str]:
    out = list(spec.common.inclusive)
    extra = spec.bysample.get(sample)
    if extra is not None:
        out += [c for c in extra.inclusive if c not in out]
    return out


class AxisSpec(Strict):
    """One histogram axis: an expression over the calibrated events and its binning."""

    expr: str
    name: str | None = None
    label: str | None = None
    bins: int | None = Field(default=None, gt=0)
    start: float | None = None
    stop: float | None = None
    edges: list[float] | None = None

    @model_validator(mode="after")
    def _binning(self) -> AxisSpec:
        regular = (self.bins, self.start, self.stop)
        if self.edges is not None:
            if any(v is not None for v in regular):
                raise ValueError("give either 'edges' or 'bins', 'start', 'stop', not both")
            if len(self.edges) < 2 or any(b <= a for a, b in zip(self.edges, self.edges[1:])):
                raise ValueError("'edges' must hold at least two increasing numbers")
        elif any(v is None for v in regular):
            raise ValueError("give 'bins', 'start' and 'stop' (or 'edges')")
        elif self.stop <= self.start:  # type: ignore[operator]
            raise ValueError("'stop' must be larger than 'start'")
        return self


class HistogramSpec(Strict):
    """A histogram: up to three observable axes, filled per category and variation."""

    axes: list[AxisSpec] = Field(min_length=1, max_length=3)
    categories: list[str] | None = Field(
        default=None, description="categories to fill (default: all)"
    )
    variations: bool = Field(default=True, description="fill the shape variations too")
    evaluate_on: Literal["auto", "all", "selected"] = Field(
        default="auto", description="the events the observables are computed on: 'all', or "
        "'selected' (only those of the histogram's categories: cheaper for an expensive "
        "observable); 'auto' is 'selected' for combinatorics (ak.combinations, ak.cartesian "
        "and their arg- forms). The histograms are the same bits either way")


FEATURE_DTYPES = ("float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16",
                  "uint32", "uint64", "bool")


class ColumnSpec(Strict):
    """A table column: an expression and how it is stored."""

    expr: str
    dtype: Literal[FEATURE_DTYPES] | None = Field(  # type: ignore[valid-type]
        default=None, description="storage type (default: float32 for floats, else as computed)"
    )
    unit: str | None = None
    sentinel: float | None = Field(
        default=None, description="value stored where the expression gives none (default: "
        "the table's sentinel)"
    )
    description: str | None = None


class CollectionSpec(Strict):
    """An object collection kept in a table: per row, a list of objects with some fields."""

    expr: str = Field(description="expression giving one list of records per row")
    fields: list[str] = Field(min_length=1)
    layout: Literal["ragged", "padded"] = "ragged"
    length: int | None = Field(default=None, gt=0, description="padded length (layout padded)")
    sort_by: str | None = Field(default=None, description="field to sort by, decreasing")
    dtype: Literal[FEATURE_DTYPES] = "float32"  # type: ignore[valid-type]
    units: dict[str, str] = Field(default_factory=dict)
    variations: bool = Field(
        default=True, description="store the collection again for each variation that "
        "changes it (false: nominal values only, read for every variation)"
    )

    @model_validator(mode="after")
    def _padded_length(self) -> CollectionSpec:
        if self.layout == "padded" and self.length is None:
            raise ValueError("a padded collection needs its 'length' (a positive integer)")
        if self.layout == "ragged" and self.length is not None:
            raise ValueError("'length' is for layout: padded")
        return self


class TableSpec(Strict):
    """A feature table written per dataset (``<output>/<dataset>/<name>.zarr``).

    ``level`` ``event`` gives a row per selected event; ``object`` a row per object of the
    ``objects`` expression (a list per event); ``constituent`` a row per constituent (a list
    per object). ``aliases`` name intermediate expressions, evaluated in order after
    ``objects`` (available as ``obj``), that later expressions use.
    """

    level: Literal["event", "object", "constituent"] = "event"
    objects: str | None = Field(default=None, description="the row objects (object levels)")
    select: str | None = Field(default=None, description="row mask over the objects")
    aliases: dict[str, str] = Field(default_factory=dict)
    columns: dict[str, str | ColumnSpec] = Field(default_factory=dict)
    collections: dict[str, CollectionSpec] = Field(default_factory=dict)
    variations: list[str] | Literal["all", "none"] = Field(
        default="all", description="shape variations carried, by name"
    )
    weight_variations: bool = True
    classes: list[str] | None = Field(default=None, description="label names; index = label")
    labels: dict[str, str] = Field(default_factory=dict, description="sample -> class name")
    label: str | None = Field(
        default=None, description="an expression giving each row's integer label (instead "
        "of 'labels' by sample), e.g. a truth flag or a label column of the input"
    )
    preselection: dict[str, str] | None = Field(
        default=None, description="event selection of the table (default: the analysis one)"
    )
    sentinel: float = Field(default=float("nan"), description="value of undefined entries")

    @model_validator(mode="after")
    def _consistent(self) -> TableSpec:
        if self.level != "event" and not self.objects:
            raise ValueError(f"level {self.level!r} needs 'objects' (the row objects)")
        if self.level == "event" and (self.objects or self.select):
            raise ValueError("'objects' and 'select' are for the object and constituent levels")
        if self.level == "constituent" and self.collections:
            raise ValueError("a constituent-level table has no collections (rows are the "
                             "constituents)")
        for name in [*self.columns, *self.collections, *self.aliases]:
            if name in RESERVED_COLUMNS or "/" in name or "." in name:
                raise ValueError(f"{name!r} is a reserved or invalid column name (reserved: "
                                 f"{', '.join(sorted(RESERVED_COLUMNS))})")
        for name in self.aliases:
            if name in ("obj", "events"):
                raise ValueError(f"alias {name!r}: 'obj' and 'events' are names of the "
                                 "expression language")
        both = sorted(set(self.columns) & set(self.collections))
        if both:
            raise ValueError(f"{', '.join(both)}: both a column and a collection")
        if not self.columns and not self.collections:
            raise ValueError("a table needs 'columns' or 'collections'")
        if self.label and self.labels:
            raise ValueError("give 'labels' (by sample) or 'label' (an expression), not both")
        if self.labels:
            classes = self.class_names()
            for sample, cls in self.labels.items():
                if cls not in classes:
                    raise ValueError(f"label {cls!r} of sample {sample!r} is not one of the "
                                     f"classes {classes}")
        return self

    def class_names(self) -> list[str]:
        """The label classes: ``classes`` if given, else the labels' names sorted."""
        return list(self.classes) if self.classes else sorted(set(self.labels.values()))

    def column_specs(self) -> dict[str, ColumnSpec]:
        return {name: spec if isinstance(spec, ColumnSpec) else ColumnSpec(expr=spec)
                for name, spec in self.columns.items()}


class ProcessSpec(Strict):
    """A process of the results: datasets merged, with a kind, a label and a colour.

    ``label`` is matplotlib text (``$t\\bar{t}$``); it is turned into ROOT's TLatex for
    ROOT files. Collision data and simulation never share a process.
    """

    datasets: list[str] = Field(min_length=1, description="the datasets merged into it")
    kind: Literal["data", "background", "signal"] = Field(
        default="background", description="data, background or signal (the fit's "
        "parameter of interest scales the signals)")
    label: str | None = Field(default=None, description="legend text (default: the name)")
    color: str | None = Field(default=None, description="a matplotlib colour")


class NormalisationSystematic(Strict):
    """A log-normal uncertainty on the yield of some processes (``lnN`` in combine)."""

    value: float = Field(gt=0, description="the factor for one standard deviation up, "
                         "e.g. 1.014 for 1.4 %")
    processes: list[str] | None = Field(
        default=None, description="the processes it applies to (default: all simulated)")


class PseudoDataSpec(Strict):
    """Pseudo-data made from the simulation when the analysis has no collision data: per
    histogram, category and bin, the simulated processes' nominal total, Poisson-fluctuated
    with a fixed seed (or not: an Asimov data set). Always labelled as what it is."""

    label: str = Field(default="Pseudo-data (simulation)", description="legend text")
    fluctuate: bool = Field(default=True, description="Poisson-fluctuate the total "
                            "(false: the expected counts, an Asimov data set)")
    seed: int = Field(default=0, ge=0, description="seed of the fluctuation")


class FitSpec(Strict):
    """What the statistical models (combine datacard, pyhf workspace) fit."""

    histogram: str = Field(description="the histogram fitted (one observable axis)")
    categories: list[str] | None = Field(
        default=None, description="the categories fitted, one channel each (default: all "
        "the histogram fills)")
    normalisation: dict[str, NormalisationSystematic] = Field(
        default_factory=dict, description="log-normal yield uncertainties by name, e.g. "
        "lumi: {value: 1.014}")


class AnalysisConfig(Strict):
    """The analysis: datasets, calibrators, variations, selection, categories, histograms."""

    parameters: list[str] = Field(
        default_factory=list, description="parameter YAML files merged over the defaults"
    )
    datasets: dict[str, DatasetSpec] = Field(min_length=1)
    calibrators: list[Any] = Field(
        default_factory=lambda: ["default"],
        description="calibrator names, 'module:Class' paths or classes; 'default' expands "
        "to the default sequence",
    )
    variations: VariationsSpec = Field(default_factory=VariationsSpec)
    weights: NamesBySample = Field(
        default_factory=NamesBySample,
        description="weights applied on top of the generator weight (MC), common and by "
        "sample, or a plain list (common): names or 'module:Class' paths",
    )
    functions: list[str] = Field(
        default_factory=list, description="the analysis' own expression functions, "
        "'module:function' paths: every expression of the analysis may call them by name"
    )
    definitions: dict[str, str] = Field(
        default_factory=dict, description="named expressions, each able to use the others "
        "(not itself): every expression of the analysis (cuts, categories, histogram axes, "
        "tables, weights' selections) may use them by name"
    )
    preselection: dict[str, str] = Field(
        default_factory=dict, description="named cuts applied in order (the cutflow): "
        "expressions, or '@name' / '@module:Class' for a cut needing parameters"
    )
    categories: dict[str, str] = Field(
        default_factory=lambda: {"inclusive": "True"},
        description="named event masks, evaluated after the preselection",
    )
    histograms: dict[str, HistogramSpec] = Field(default_factory=dict)
    tables: dict[str, TableSpec] = Field(
        default_factory=dict, description="feature tables, written per dataset as <name>.zarr"
    )
    chunksize: int = Field(default=100_000, gt=0)
    processes: dict[str, ProcessSpec] = Field(
        default_factory=dict, description="datasets grouped into the processes of the "
        "merged results, in stacking order (default: one process per sample)")
    pseudo_data: PseudoDataSpec | None = Field(
        default=None, description="pseudo-data from the simulation, as the data of the "
        "merged results (only without collision data)")
    fit: FitSpec | None = Field(default=None, description="the statistical models' fit")

    @field_validator("categories")
    @classmethod
    def _some_category(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("at least one category is needed")
        return value

    @model_validator(mode="after")
    def _results_consistent(self) -> AnalysisConfig:
        problems = _process_problems(self.processes, self.datasets)
        if self.pseudo_data is not None and any(
                p.kind == "data" for p in self.process_specs().values()):
            problems.append("pseudo_data: the analysis has collision data (a process of kind "
                            "'data'); pseudo-data is only made without it")
        if self.fit is not None:
            problems += _fit_problems(self.fit, self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def process_specs(self) -> dict[str, ProcessSpec]:
        """The processes of the results: ``processes``, or by default one per sample (in the
        order of the datasets; data when the sample is collision data).

        Examples
        --------
        >>> meta = {"year": "2022_preEE", "isMC": True}
        >>> cfg = AnalysisConfig.model_validate({"datasets": {
        ...     "tt_a": {"files": ["a.root"], "metadata": {**meta, "sample": "TTbar"}},
        ...     "tt_b": {"files": ["b.root"], "metadata": {**meta, "sample": "TTbar"}}}})
        >>> {name: p.datasets for name, p in cfg.process_specs().items()}
        {'TTbar': ['tt_a', 'tt_b']}
        """
        if self.processes:
            return dict(self.processes)
        out: dict[str, ProcessSpec] = {}
        for name, spec in self.datasets.items():
            meta = spec.metadata
            if meta.sample in out:
                out[meta.sample].datasets.append(name)
            else:
                out[meta.sample] = ProcessSpec(datasets=[name],
                                               kind="background" if meta.isMC else "data")
        return out

    def variations_for_sample(self, sample: str) -> list[str]:
        """Calibrators whose variations run for ``sample``: common ones, then by sample."""
        return by_sample(self.variations.shape, sample)

    def weights_for_sample(self, sample: str) -> list[str]:
        """Weights applied to ``sample`` (besides the generator weight)."""
        return by_sample(self.weights, sample)

    def weight_variations_for_sample(self, sample: str) -> list[str]:
        """Weights whose variations run for ``sample``."""
        return by_sample(self.variations.weights, sample)

    def digest(self) -> str:
        """A short hash of the configuration (for provenance and caches)."""
        # without functions or definitions, the digest is the one from before the keys
        # existed; the results' keys are left out: they change no chunk (the merge is redone),
        # and so is where the observables are computed: it changes no bit
        left_out = {"calibrators", "processes", "pseudo_data", "fit",
                    *(() if self.functions else ("functions",)),
                    *(() if self.definitions else ("definitions",))}
        payload = self.model_dump(mode="json", exclude={
            **dict.fromkeys(left_out, True), "histograms": {"__all__": {"evaluate_on"}}})
        payload["calibrators"] = [
            c if isinstance(c, str) else f"{c.__module__}:{c.__qualname__}"
            for c in self.calibrators
        ]
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _process_problems(processes: dict[str, ProcessSpec],
                      datasets: dict[str, DatasetSpec]) -> list[str]:
    problems = []
    owner: dict[str, str] = {}
    for name, process in processes.items():
        for dataset in process.datasets:
            if dataset not in datasets:
                problems.append(f"processes.{name}: unknown dataset {dataset!r} (datasets: "
                                f"{', '.join(datasets)})")
                continue
            if dataset in owner:
                problems.append(f"processes.{name}: dataset {dataset!r} is already in "
                                f"process {owner[dataset]!r}")
            owner[dataset] = name
            simulated = datasets[dataset].metadata.isMC
            if simulated == (process.kind == "data"):
                what = "simulation (isMC: true)" if simulated else "collision data"
                problems.append(f"processes.{name}: dataset {dataset!r} is {what}, the "
                                f"process is kind {process.kind!r}")
    return problems


def _fit_problems(fit: FitSpec, cfg: AnalysisConfig) -> list[str]:
    spec = cfg.histograms.get(fit.histogram)
    if spec is None:
        return [f"fit.histogram: unknown histogram {fit.histogram!r} (histograms: "
                f"{', '.join(cfg.histograms) or 'none'})"]
    problems = []
    if len(spec.axes) != 1:
        problems.append(f"fit.histogram: {fit.histogram!r} has {len(spec.axes)} axes; a "
                        "fitted histogram has one")
    filled = spec.categories or list(cfg.categories)
    problems += [f"fit.categories: {c!r} is not a category histogram {fit.histogram!r} "
                 f"fills ({', '.join(filled)})" for c in fit.categories or () if c not in filled]
    processes = cfg.process_specs()
    for name, syst in fit.normalisation.items():
        problems += [f"fit.normalisation.{name}.processes: unknown process {p!r} (processes: "
                     f"{', '.join(processes)})" for p in syst.processes or ()
                     if p not in processes]
    return problems


class JobSpec(Strict):
    """A runnable job: which datasets of which config, on which site, written where."""

    config: str = Field(description="analysis config file, relative to the job file")
    datasets: list[str] | Literal["all"] = "all"
    site: str = "local"
    output: str = Field(description="output directory, relative to the working directory")
    chunksize: int | None = Field(default=None, gt=0)
    workers: int | None = Field(default=None, gt=0, description="local workers (default: cores)")
    parameters: list[str] = Field(
        default_factory=list, description="parameter files merged over the config's ones "
        "(relative to the job file)"
    )
    retries: int = Field(default=2, ge=0, description="times a failed chunk is tried again")
    on_bad_file: Literal["fail", "skip"] = Field(
        default="fail", description="an input file that cannot be opened or read stops the "
        "run (fail) or is left out and reported (skip)"
    )
    remote: RemoteSpec = Field(
        default_factory=RemoteSpec, description="timeouts and retries of remote file reads"
    )
    resample: ResampleSpec | None = Field(
        default=None, description="run on resampled copies of the datasets' files (rates)"
    )


def read_yaml(path: str | Path) -> Any:
    """Read a YAML file; a missing or malformed file raises a ConfigError naming it."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(str(path), [("", "file not found")]) from None
    except yaml.YAMLError as err:
        raise ConfigError(str(path), [("", f"not valid YAML: {err}")]) from None


def validate(model: type[Strict], data: Any, source: str) -> Any:
    """``data`` as a ``model``; a wrong key or value raises a ConfigError naming it."""
    if not isinstance(data, dict):
        raise ConfigError(source, [("", "expected a mapping at the top level")])
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(source, format_validation_error(err)) from None
