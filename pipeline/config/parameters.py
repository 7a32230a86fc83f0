"""Calibrator parameters: YAML per data-taking period, merged over calibrew's defaults.

Parameters are an OmegaConf ``DictConfig`` (attribute and item access, merging). The
sections of the built-in calibrators are validated on load against their pydantic models.
A parameter file may hold only the defaults' sections and those a calibrator declares it
reads (``Calibrator.params_section``): a section of the calibrators of the config's
sequence, or of any registered calibrator when no sequence is given; the content of a user
calibrator's own section is free-form.

Examples
--------
>>> params = defaults()
>>> params.jets_calibration.collection["2022_preEE"].AK4PFPuppi
'Jet'
"""

from __future__ import annotations

import difflib
import functools
import os
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from pydantic import BaseModel, ValidationError

from pipeline.errors import ConfigError


def _enabled_model() -> type[BaseModel]:
    from pydantic import RootModel

    class CalibratorsEnabled(RootModel[dict[str, dict[str, bool] | bool]]):
        pass

    return CalibratorsEnabled


def section_schemas(calibrators: Iterable[type[Any]]) -> dict[str, type[BaseModel]]:
    """Parameter sections validated on load, by name: those ``calibrators`` give a schema
    for (``params_schema`` of their ``params_section``), and ``calibrators_enabled``."""
    out = {c.params_section: c.params_schema for c in calibrators
           if c.params_section and getattr(c, "params_schema", None) is not None}
    out["calibrators_enabled"] = _enabled_model()
    return out


@functools.lru_cache(maxsize=1)
def _defaults_yaml() -> str:
    parts = []
    folder = resources.files("pipeline") / "defaults"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            parts.append(OmegaConf.create(yaml.safe_load(entry.read_text())))
    return OmegaConf.to_yaml(OmegaConf.merge(*parts))


def defaults() -> DictConfig:
    """A fresh copy of the default parameters (all periods) the built-in calibrators read."""
    cfg = OmegaConf.create(_defaults_yaml())
    assert isinstance(cfg, DictConfig)
    return cfg


def section(params: Any, *path: str) -> dict[str, Any] | None:
    """The mapping at ``params[path[0]][path[1]]...`` as a plain dict, or None if absent.

    Examples
    --------
    >>> section(defaults(), "jets_calibration", "collection", "2022_preEE")
    {'AK4PFPuppi': 'Jet', 'AK8PFPuppi': 'FatJet'}
    >>> section(defaults(), "no_such_section") is None
    True
    """
    node = params
    for key in path:
        try:
            if node is None or key not in node:
                return None
        except TypeError:
            return None
        node = node[key]
    if node is None:
        return None
    if isinstance(node, DictConfig):
        out: dict[str, Any] = OmegaConf.to_container(node, resolve=True)  # type: ignore[assignment]
        return out
    if isinstance(node, dict):
        return node
    raise TypeError(f"parameters {'.'.join(path)}: expected a mapping, got {node!r}")


class KeyPathErrors(ValueError):
    """Problems a model validator found, each at a key path below the validated model.

    Raised inside a pydantic validator, :func:`format_validation_error` reports each
    problem at its own key path (pydantic alone would report them at the model's).

    Examples
    --------
    >>> str(KeyPathErrors([("a.b", "unknown jet type")]))
    'a.b: unknown jet type'
    """

    def __init__(self, problems: Iterable[tuple[str, str]]):
        self.problems = list(problems)
        super().__init__("; ".join(f"{path}: {msg}" for path, msg in self.problems))


def format_validation_error(err: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    """Turn a pydantic error into ``(key path, message)`` pairs."""
    out = []
    for item in err.errors():
        path = ".".join(str(p) for p in (prefix, *item["loc"]) if p != "")
        cause = (item.get("ctx") or {}).get("error")
        if isinstance(cause, KeyPathErrors):
            out += [(".".join(p for p in (path, sub) if p), msg) for sub, msg in cause.problems]
            continue
        msg = item["msg"]
        if item["type"] == "extra_forbidden":
            msg = "unknown key"
        out.append((path, msg))
    return out


@functools.lru_cache(maxsize=1)
def default_sections() -> tuple[str, ...]:
    """The top-level sections of the default parameters.

    Examples
    --------
    >>> "jets_calibration" in default_sections()
    True
    """
    return tuple(sorted(str(key) for key in defaults()))


def declared_sections(calibrators: Iterable[type[Any]]) -> dict[str, list[str]]:
    """``{section: [calibrator names]}`` for the sections ``calibrators`` declare they read
    (``params_section``, ``params_sections``)."""
    out: dict[str, list[str]] = {}
    for cls in calibrators:
        for name in cls.parameter_sections():
            out.setdefault(name, []).append(cls.name)
    return out


def valid_sections(calibrators: Iterable[type[Any]]) -> list[str]:
    """The top-level sections a parameter file may hold: the defaults' and those declared
    by ``calibrators`` (the config's sequence).

    Examples
    --------
    >>> valid_sections([])
    ['calibrators_enabled', 'electron_scale_and_smearing', 'event_weights', \
'jets_calibration', 'luminosity', 'met_rescaling', 'photon_scale_and_smearing', \
'selections']
    """
    return sorted({*default_sections(), *declared_sections(calibrators)})


def check_sections(data: Mapping[str, Any], valid: Iterable[str],
                   declared: Mapping[str, list[str]]) -> list[tuple[str, str]]:
    """Problems for the top-level keys of ``data`` that are not ``valid`` sections;
    ``declared`` (:func:`declared_sections` of every known calibrator) names the calibrators
    that declare a section not valid here."""
    valid = sorted(set(valid))
    problems = []
    for key in data:
        if key in valid:
            continue
        msg = (f"unknown parameter section; valid sections are: {', '.join(valid)} (the "
               "defaults' and those the calibrators of the sequence declare with "
               "params_section)")
        if str(key) in declared:
            names = ", ".join(repr(n) for n in declared[str(key)])
            msg += (f"; it is declared by calibrator {names}, which is not in the sequence "
                    "of calibrators")
        close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.75)
        if close:
            msg += f"; did you mean {close[0]!r}?"
        problems.append((str(key), msg))
    return problems


def validate_parameters(params: DictConfig | dict[str, Any], known: Mapping[str, type[Any]],
                        source: str = "parameters") -> None:
    """Check the sections of ``params`` that ``known`` (every calibrator, by name) give a
    schema for, and the names of ``calibrators_enabled``; raise :class:`ConfigError`
    naming the key."""
    container = params if isinstance(params, dict) else OmegaConf.to_container(params)
    assert isinstance(container, dict)
    problems: list[tuple[str, str]] = []
    for name, model in section_schemas(known.values()).items():
        if name in container and container[name] is not None:
            try:
                model.model_validate(container[name])
            except ValidationError as err:
                problems += format_validation_error(err, name)
    enabled = container.get("calibrators_enabled") or {}
    problems += _met_jet_types(container)
    for name in enabled:
        if name not in known:
            problems.append((
                f"calibrators_enabled.{name}",
                f"unknown calibrator; valid calibrators are: {', '.join(sorted(known))}",
            ))
    if problems:
        raise ConfigError(source, problems)


def _met_jet_types(container: Mapping[Any, Any]) -> list[tuple[str, str]]:
    """Problems for ``met_rescaling.<period>.jet_type`` values that are no jet type."""
    met = container.get("met_rescaling")
    jets = container.get("jets_calibration")
    if not isinstance(met, Mapping) or not isinstance(jets, Mapping):
        return []
    jet_types = jets.get("jet_types")
    if not isinstance(jet_types, Mapping):
        return []
    problems = []
    for period, settings in met.items():
        jet_type = settings.get("jet_type") if isinstance(settings, Mapping) else None
        if jet_type is not None and jet_type not in jet_types:
            problems.append((f"met_rescaling.{period}.jet_type", f"unknown jet type "
                             f"{jet_type!r}; jet types are: {', '.join(map(str, jet_types))} "
                             "(the keys of jets_calibration.jet_types)"))
    return problems


def load_parameters(
    files: Iterable[str | os.PathLike[str]], known: Mapping[str, type[Any]],
    base: DictConfig | None = None, sections: Iterable[str] | None = None,
) -> DictConfig:
    """Merge YAML parameter files, in order, over ``base`` (the defaults) and validate.

    Parameters
    ----------
    files
        Parameter YAML files, merged in order.
    known
        Every calibrator class by name (the registry): their schemas validate their
        sections, and their names are those ``calibrators_enabled`` may use.
    base
        The parameters merged over (default: :func:`defaults`).
    sections
        The sections, besides the defaults', the files may hold: those the calibrators of
        the config's sequence declare (:func:`valid_sections`). ``None``: the sections of
        every calibrator of ``known``.

    Raises
    ------
    ConfigError
        Naming the file and key path: an unknown section (with the valid ones), an unknown
        key, a wrong value, an unknown jet type.

    Examples
    --------
    >>> load_parameters([], {}).jets_calibration.jet_types.AK4PFPuppi["2022_preEE"].level
    'L1L2L3Res'
    """
    declared = declared_sections(known.values())
    valid = {*default_sections(), *(declared if sections is None else sections)}
    params = base if base is not None else defaults()
    for file in files:
        path = Path(file)
        try:
            loaded = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ConfigError(str(path), [("", "parameter file not found")]) from None
        except yaml.YAMLError as err:
            raise ConfigError(str(path), [("", f"not valid YAML: {err}")]) from None
        if loaded is None:
            continue
        if not isinstance(loaded, dict):
            raise ConfigError(str(path), [("", "a parameter file must be a mapping")])
        unknown = check_sections(loaded, valid, declared)
        if unknown:
            raise ConfigError(str(path), unknown)
        merged = OmegaConf.merge(params, OmegaConf.create(loaded))
        assert isinstance(merged, DictConfig)
        validate_parameters(merged, known, source=str(path))
        params = merged
    validate_parameters(params, known)
    return params
