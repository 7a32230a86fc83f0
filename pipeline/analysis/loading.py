"""Loading an analysis: its config and job files checked against the registries.

The config models (:mod:`pipeline.config.models`) know no calibrator, weight, cut or
function; here the names they hold are resolved through the registries
(:mod:`pipeline.config.plugins`), by name or by import path (``my_module:MyThing``), and
the parameter files are validated with the schemas of the calibrators of the sequence.
Every problem raises a :class:`~pipeline.errors.ConfigError` naming the file and the key
path, before any computation; a user's module that cannot be imported is named there with
its error.

Examples
--------
>>> from pipeline.inputs.datafiles import PROJECT_ROOT
>>> job, cfg = load_job(PROJECT_ROOT / "jobs" / "demo.yaml")
>>> [c.name for c in calibrator_classes(cfg)][:2]
['jet_calibration', 'electron_scale_and_smearing']
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from pipeline.calibration.builtin import default_calibrators_sequence
from pipeline.calibration.calibrator import CALIBRATORS, Calibrator, get_calibrator
from pipeline.config import parameters
from pipeline.config.models import AnalysisConfig, JobSpec, read_yaml, validate
from pipeline.config.plugins import ImportPathError, Registry, definition
from pipeline.cuts import CUTS
from pipeline.errors import ConfigError, UnknownNameError
from pipeline.selection import FUNCTIONS, Vocabulary, reserved_name
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


def analysis_functions(cfg: AnalysisConfig,
                       source: str = "analysis config") -> dict[str, Callable[..., Any]]:
    """The analysis' own expression functions (``functions:``) by name.

    Each is callable by its name in every expression of this analysis only (the registry
    :data:`~pipeline.selection.FUNCTIONS` is not changed). A name of the language or of
    another function is a :class:`ConfigError` naming both definitions.
    """
    out: dict[str, Callable[..., Any]] = {}
    problems: list[tuple[str, str]] = []
    for i, path in enumerate(cfg.functions):
        where = f"functions[{i}]"
        if ":" not in path:
            problems.append((where, f"{path!r}: an analysis' function is named by import "
                             "path, 'module:function'"))
            continue
        function = _resolve(FUNCTIONS, path, where, problems)
        if function is None:
            continue
        name = path.partition(":")[2]
        other = out.get(name) or (FUNCTIONS[name] if name in FUNCTIONS else None)
        if reserved_name(name):
            problems.append((where, f"{name!r} is a name of the expression language"))
        elif other is not None and other is not function:
            problems.append((where, f"expression function {name!r} is already "
                             f"{definition(other)}; {path!r} needs another name"))
        else:
            out[name] = function
    if problems:
        raise ConfigError(source, problems)
    return out


def analysis_vocabulary(cfg: AnalysisConfig, source: str = "analysis config") -> Vocabulary:
    """The analysis' own functions and definitions, which every expression may use by name.

    A definition named like a table's alias is a :class:`ConfigError` (the alias would
    never be seen).

    Examples
    --------
    >>> cfg = AnalysisConfig.model_validate({
    ...     "datasets": {"d": {"files": ["a.root"], "metadata": {
    ...         "sample": "s", "year": "2022_preEE", "isMC": True}}},
    ...     "definitions": {"jets": "Jet[Jet.pt > 30]", "ht": "ak.sum(jets.pt, axis=1)"}})
    >>> list(analysis_vocabulary(cfg).definitions)
    ['jets', 'ht']
    """
    vocabulary = Vocabulary(analysis_functions(cfg, source), cfg.definitions, source)
    clashes = [(f"tables.{t}.aliases.{alias}", f"{alias!r} is already a definition "
                f"(definitions.{alias}); give the alias another name or use the definition")
               for t, table in cfg.tables.items() for alias in table.aliases
               if alias in vocabulary.definitions]
    if clashes:
        raise ConfigError(source, clashes)
    return vocabulary


def _resolve(registry: Registry[Any], name: str, where: str,
             problems: list[tuple[str, str]]) -> Any:
    """``registry.resolve(name)``; ``None`` after adding why it failed to ``problems``."""
    try:
        return registry.resolve(name, where)
    except (UnknownNameError, ImportPathError) as err:
        problems.append(_problem(err))
        return None


def _problem(err: UnknownNameError | ImportPathError) -> tuple[str, str]:
    """The ``(key path, message)`` of a name that cannot be resolved."""
    if isinstance(err, ImportPathError):
        return (err.where, f"cannot load {err.kind} {err.name!r}: {err.problem}")
    hint = (f" (a {err.kind} of your own is named by import path, 'module:Name')"
            if "." in err.name else "")
    return (err.where, f"unknown {err.kind} {err.name!r}; valid {err.kind}s are: "
            f"{', '.join(err.valid)}{hint}")


def check_names(cfg: AnalysisConfig, source: str) -> None:
    """Check the names of calibrators, weights, cuts, functions, definitions, samples and
    categories; raise naming the key path."""
    try:
        classes = calibrator_classes(cfg)
    except (UnknownNameError, ImportPathError) as err:
        raise ConfigError(source, [_problem(err)]) from None
    analysis_vocabulary(cfg, source)
    problems: list[tuple[str, str]] = []
    names = [c.name for c in classes]
    shape = cfg.variations.shape
    problems += [(path, f"unknown calibrator {name!r}; calibrators in the sequence are: "
                  f"{', '.join(names)}") for path, name in shape.entries("variations.shape")
                 if name not in names]
    samples = sorted({d.metadata.sample for d in cfg.datasets.values()})
    lists = [("variations.shape", shape), ("weights", cfg.weights),
             ("variations.weights", cfg.variations.weights)]
    for prefix, spec in lists:
        for sample in spec.bysample:
            if sample not in samples:
                problems.append((f"{prefix}.bysample.{sample}",
                                 f"unknown sample; samples are: {', '.join(samples)}"))
    weights = {name: _resolve(WEIGHTS, name, path, problems)
               for prefix, spec in lists[1:] for path, name in spec.entries(prefix)}
    for sample in samples:
        applied = {weights[n] for n in cfg.weights_for_sample(sample)}
        for name in cfg.weight_variations_for_sample(sample):
            if weights[name] is not None and weights[name] not in applied:
                problems.append(("variations.weights", f"variations of weight {name!r} "
                                 f"asked for sample {sample!r}, which does not apply it"))
    selections = [("preselection", cfg.preselection)]
    selections += [(f"tables.{t}.preselection", table.preselection or {})
                   for t, table in cfg.tables.items()]
    for prefix, cuts in selections:
        for cut, text in cuts.items():
            if text.startswith("@"):
                _resolve(CUTS, text[1:], f"{prefix}.{cut}", problems)
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
    sections = None if calibrators is None else parameters.valid_sections(calibrators)
    return parameters.load_parameters(files, dict(CALIBRATORS), base=base, sections=sections)
