"""Loading an analysis: its config and job files checked against the registries.

The config models (:mod:`pipeline.config.models`) know no calibrator, weight or cut; here
the names they hold are resolved through the registries (calibrators by name or import
path, weights), and the parameter files are validated with the schemas of the calibrators
of the sequence. Every problem raises a :class:`~pipeline.errors.ConfigError` naming the
file and the key path, before any computation.

Examples
--------
>>> from pipeline.inputs.datafiles import PROJECT_ROOT
>>> job, cfg = load_job(PROJECT_ROOT / "jobs" / "demo.yaml")
>>> [c.name for c in calibrator_classes(cfg)][:2]
['jet_calibration', 'electron_scale_and_smearing']
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from omegaconf import DictConfig

from pipeline.calibration.builtin import default_calibrators_sequence
from pipeline.calibration.calibrator import (
    CALIBRATORS,
    Calibrator,
    CalibratorImportError,
    get_calibrator,
    load_builtin_calibrators,
)
from pipeline.config import parameters
from pipeline.config.models import (
    AnalysisConfig,
    JobSpec,
    read_yaml,
    unknown_names,
    validate,
)
from pipeline.errors import ConfigError, UnknownNameError
from pipeline.weights import WEIGHTS


def calibrator_classes(cfg: AnalysisConfig) -> list[type[Calibrator]]:
    """The calibrator sequence as classes (names resolved through the registry)."""
    out: list[type[Calibrator]] = []
    for i, entry in enumerate(cfg.calibrators):
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


def check_names(cfg: AnalysisConfig, source: str) -> None:
    """Check calibrator, sample and category names; raise naming the key path."""
    problems: list[tuple[str, str]] = []
    try:
        classes = calibrator_classes(cfg)
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
    shape = cfg.variations.shape
    problems += unknown_names("variations.shape", shape, names, "calibrator",
                               "calibrators in the sequence are")
    samples = sorted({d.metadata.sample for d in cfg.datasets.values()})
    lists = [("variations.shape", shape), ("weights", cfg.weights),
                 ("variations.weights", cfg.variations.weights)]
    for prefix, spec in lists:
        for sample in spec.bysample:
            if sample not in samples:
                problems.append((f"{prefix}.bysample.{sample}",
                                 f"unknown sample; samples are: {', '.join(samples)}"))
    for prefix, spec in lists[1:]:
        problems += unknown_names(prefix, spec, sorted(WEIGHTS), "weight",
                                   "valid weights are")
    for sample in samples:
        applied = cfg.weights_for_sample(sample)
        for name in cfg.weight_variations_for_sample(sample):
            if name in WEIGHTS and name not in applied:
                problems.append(("variations.weights", f"variations of weight {name!r} "
                                 f"asked for sample {sample!r}, which does not apply it"))
    for hname, hist in cfg.histograms.items():
        for i, cat in enumerate(hist.categories or []):
            if cat not in cfg.categories:
                problems.append((f"histograms.{hname}.categories[{i}]",
                                 f"unknown category {cat!r}; categories are: "
                                 f"{', '.join(cfg.categories)}"))
    for tname, table in cfg.tables.items():
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


def load_config(path: str | Path) -> AnalysisConfig:
    """Load and validate an analysis config; parameter paths become absolute."""
    path = Path(path)
    cfg = validate(AnalysisConfig, read_yaml(path), str(path))
    cfg.parameters = [str((path.parent / p).resolve()) for p in cfg.parameters]
    check_names(cfg, str(path))
    if cfg.parameters:
        check_parameters(cfg, cfg.parameters)
    return cfg


def check_parameters(cfg: AnalysisConfig, files: list[str]) -> None:
    """Load ``files`` over the defaults as a run does; sections must be the defaults' or
    those the calibrators of ``cfg``'s sequence declare. Raises :class:`ConfigError`
    naming the parameter file and the key path."""
    load_parameters(files, calibrators=calibrator_classes(cfg))


def load_job(path: str | Path) -> tuple[JobSpec, AnalysisConfig]:
    """Load a job spec and the analysis config it names; check its dataset names."""
    path = Path(path)
    job = validate(JobSpec, read_yaml(path), str(path))
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


def load_parameters(files: Iterable[str | os.PathLike[str]] = (),
                    calibrators: Iterable[type[Calibrator]] | None = None,
                    base: DictConfig | None = None) -> DictConfig:
    """Merge parameter YAML files, in order, over the defaults and validate them.

    Each section a calibrator gives a schema for is validated against it; a file may hold
    the defaults' sections and those ``calibrators`` (the config's sequence; ``None``:
    every registered calibrator) declare. Raises :class:`ConfigError` naming the file and
    the key path.

    Examples
    --------
    >>> load_parameters().jets_calibration.jet_types.AK4PFPuppi["2022_preEE"].level
    'L1L2L3Res'
    """
    load_builtin_calibrators()
    sections = None if calibrators is None else parameters.valid_sections(calibrators)
    return parameters.load_parameters(files, dict(CALIBRATORS), base=base, sections=sections)
