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
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import ConfigError, UnknownNameError
from pipeline.table_layout import RESERVED_COLUMNS

if TYPE_CHECKING:
    from pipeline.calibration.calibrator import Calibrator
from pipeline.parameters import format_validation_error


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
        default="genWeight", description="the per-event generator weight column (MC)"
    )

    @model_validator(mode="after")
    def _era_for_data(self) -> DatasetMetadata:
        if not self.isMC and not self.era:
            raise ValueError("collision data (isMC: false) needs its run 'era'")
        return self


class DatasetSpec(Strict):
    """A list of NanoAOD files and their metadata."""

    files: list[str] = Field(min_length=1)
    metadata: DatasetMetadata
    tree: str = "Events"


class NameList(Strict):
    inclusive: list[str] = Field(default_factory=list)


class NamesBySample(Strict):
    common: NameList = Field(default_factory=NameList)
    bysample: dict[str, NameList] = Field(default_factory=dict)


class VariationsSpec(Strict):
    """``shape``: calibrators whose variations run; ``weights``: weights whose variations run.

    Both as ``{common,bysample.<sample>}.inclusive`` lists of names.
    """

    shape: NamesBySample = Field(default_factory=NamesBySample)
    weights: NamesBySample = Field(default_factory=NamesBySample)


def _unknown_names(prefix: str, spec: NamesBySample, valid: list[str], kind: str,
                   valid_label: str) -> list[tuple[str, str]]:
    """Problems for the names of ``spec`` (common and by sample) that are not ``valid``."""
    lists = [(f"{prefix}.common.inclusive", spec.common.inclusive)]
    lists += [(f"{prefix}.bysample.{s}.inclusive", v.inclusive) for s, v in spec.bysample.items()]
    return [(f"{path}[{i}]", f"unknown {kind} {name!r}; {valid_label}: {', '.join(valid)}")
            for path, listed in lists for i, name in enumerate(listed) if name not in valid]


def _by_sample(spec: NamesBySample, sample: str) -> list[str]:
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
        description="weights applied on top of the generator weight (MC), common and by sample",
    )
    preselection: dict[str, str] = Field(
        default_factory=dict, description="named cuts applied in order (the cutflow)"
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

    @field_validator("categories")
    @classmethod
    def _some_category(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("at least one category is needed")
        return value

    # -- resolution helpers ------------------------------------------------------------
    def calibrator_classes(self) -> list[type[Calibrator]]:
        """The calibrator sequence as classes (names resolved through the registry)."""
        from pipeline.calibration.builtin import default_calibrators_sequence
        from pipeline.calibration.calibrator import Calibrator, get_calibrator

        out: list[type[Calibrator]] = []
        for i, entry in enumerate(self.calibrators):
            if entry == "default":
                out += default_calibrators_sequence
            elif isinstance(entry, type) and issubclass(entry, Calibrator):
                out.append(entry)
            elif isinstance(entry, str):
                out.append(get_calibrator(entry, where=f"calibrators[{i}]"))
            else:
                raise ConfigError("analysis config", [(f"calibrators[{i}]",
                                  f"{entry!r} is neither a calibrator name nor a class")])
        return out

    def variations_for_sample(self, sample: str) -> list[str]:
        """Calibrators whose variations run for ``sample``: common ones, then by sample."""
        return _by_sample(self.variations.shape, sample)

    def weights_for_sample(self, sample: str) -> list[str]:
        """Weights applied to ``sample`` (besides the generator weight)."""
        return _by_sample(self.weights, sample)

    def weight_variations_for_sample(self, sample: str) -> list[str]:
        """Weights whose variations run for ``sample``."""
        return _by_sample(self.variations.weights, sample)

    def check_names(self, source: str) -> None:
        """Check calibrator, sample and category names; raise naming the key path."""
        problems: list[tuple[str, str]] = []
        from pipeline.calibration.calibrator import CalibratorImportError

        try:
            classes = self.calibrator_classes()
        except UnknownNameError as err:
            hint = (" (a calibrator of your own is named by import path, 'module:Class')"
                    if "." in err.name else "")
            raise ConfigError(source, [(err.where, f"unknown calibrator {err.name!r}; valid "
                                        f"calibrators are: {', '.join(err.valid)}{hint}")]
                              ) from None
        except CalibratorImportError as err:
            raise ConfigError(source, [(err.where, f"cannot load calibrator {err.name!r}: "
                                        f"{err.problem}")]) from None
        names = [c.name for c in classes]
        shape = self.variations.shape
        problems += _unknown_names("variations.shape", shape, names, "calibrator",
                                   "calibrators in the sequence are")
        samples = sorted({d.metadata.sample for d in self.datasets.values()})
        by_sample = [("variations.shape", shape), ("weights", self.weights),
                     ("variations.weights", self.variations.weights)]
        for prefix, spec in by_sample:
            for sample in spec.bysample:
                if sample not in samples:
                    problems.append((f"{prefix}.bysample.{sample}",
                                     f"unknown sample; samples are: {', '.join(samples)}"))
        from pipeline.weights import WEIGHTS

        for prefix, spec in by_sample[1:]:
            problems += _unknown_names(prefix, spec, sorted(WEIGHTS), "weight",
                                       "valid weights are")
        for sample in samples:
            applied = self.weights_for_sample(sample)
            for name in self.weight_variations_for_sample(sample):
                if name in WEIGHTS and name not in applied:
                    problems.append(("variations.weights", f"variations of weight {name!r} "
                                     f"asked for sample {sample!r}, which does not apply it"))
        for hname, hist in self.histograms.items():
            for i, cat in enumerate(hist.categories or []):
                if cat not in self.categories:
                    problems.append((f"histograms.{hname}.categories[{i}]",
                                     f"unknown category {cat!r}; categories are: "
                                     f"{', '.join(self.categories)}"))
        for tname, table in self.tables.items():
            for sample in table.labels:
                if sample not in samples:
                    problems.append((f"tables.{tname}.labels.{sample}",
                                     f"unknown sample; samples are: {', '.join(samples)}"))
            unlabelled = [s for s in samples if s not in table.labels]
            if table.labels and unlabelled:
                problems.append((f"tables.{tname}.labels", "no label for sample(s) "
                                 f"{', '.join(unlabelled)}; give every sample a class"))
        if problems:
            raise ConfigError(source, problems)

    def digest(self) -> str:
        """A short hash of the configuration (for provenance and caches)."""
        payload = self.model_dump(mode="json", exclude={"calibrators"})
        payload["calibrators"] = [
            c if isinstance(c, str) else f"{c.__module__}:{c.__qualname__}"
            for c in self.calibrators
        ]
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


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


def read_yaml(path: str | Path) -> Any:
    """Read a YAML file; a missing or malformed file raises a ConfigError naming it."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(str(path), [("", "file not found")]) from None
    except yaml.YAMLError as err:
        raise ConfigError(str(path), [("", f"not valid YAML: {err}")]) from None


def _validate(model: type[Strict], data: Any, source: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(source, [("", "expected a mapping at the top level")])
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(source, format_validation_error(err)) from None


def load_config(path: str | Path) -> AnalysisConfig:
    """Load and validate an analysis config; parameter paths become absolute."""
    path = Path(path)
    cfg = _validate(AnalysisConfig, read_yaml(path), str(path))
    cfg.parameters = [str((path.parent / p).resolve()) for p in cfg.parameters]
    cfg.check_names(str(path))
    if cfg.parameters:
        check_parameters(cfg, cfg.parameters)
    return cfg


def check_parameters(cfg: AnalysisConfig, files: list[str]) -> None:
    """Load ``files`` over the defaults as a run does; sections must be the defaults' or
    those the calibrators of ``cfg``'s sequence declare. Raises :class:`ConfigError`
    naming the parameter file and the key path."""
    from pipeline.parameters import load_parameters, valid_sections

    load_parameters(files, sections=valid_sections(cfg.calibrator_classes()))


def load_job(path: str | Path) -> tuple[JobSpec, AnalysisConfig]:
    """Load a job spec and the analysis config it names; check its dataset names."""
    path = Path(path)
    job = _validate(JobSpec, read_yaml(path), str(path))
    config_path = (path.parent / job.config).resolve()
    if not config_path.exists():
        raise ConfigError(str(path), [("config", f"analysis config {config_path} not found")])
    cfg = load_config(config_path)
    job.parameters = [str((path.parent / p).resolve()) for p in job.parameters]
    if job.parameters:
        check_parameters(cfg, [*cfg.parameters, *job.parameters])
    if job.datasets != "all":
        for i, name in enumerate(job.datasets):
            if name not in cfg.datasets:
                raise ConfigError(str(path), [(f"datasets[{i}]", f"unknown dataset {name!r}; "
                                  f"datasets of {config_path.name}: {', '.join(cfg.datasets)}")])
    return job, cfg
