"""Calibrator parameters: YAML per data-taking period, merged over calibrew's defaults.

Parameters are an OmegaConf ``DictConfig`` (attribute and item access, merging). The
sections of the built-in calibrators are validated on load against their pydantic models;
other sections (a user calibrator's own) are free-form.

Examples
--------
>>> params = defaults()
>>> params.jets_calibration.collection["2022_preEE"].AK4PFPuppi
'Jet'
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
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


def section_schemas() -> dict[str, type[BaseModel]]:
    """Parameter sections validated on load, by name."""
    from pydantic import RootModel

    from pipeline.calibration.egamma import EgammaSettings
    from pipeline.calibration.jets import JetsCalibrationParams
    from pipeline.calibration.met import METSettings

    class Egamma(RootModel[dict[str, EgammaSettings]]):
        pass

    class Met(RootModel[dict[str, METSettings]]):
        pass

    return {
        "jets_calibration": JetsCalibrationParams,
        "electron_scale_and_smearing": Egamma,
        "photon_scale_and_smearing": Egamma,
        "met_rescaling": Met,
        "calibrators_enabled": _enabled_model(),
    }


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


def format_validation_error(err: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    """Turn a pydantic error into ``(key path, message)`` pairs."""
    out = []
    for item in err.errors():
        path = ".".join(str(p) for p in (prefix, *item["loc"]) if p != "")
        msg = item["msg"]
        if item["type"] == "extra_forbidden":
            msg = "unknown key"
        out.append((path, msg))
    return out


def validate_parameters(params: DictConfig | dict[str, Any], source: str = "parameters") -> None:
    """Check the known sections of ``params``; raise :class:`ConfigError` naming the key."""
    container = params if isinstance(params, dict) else OmegaConf.to_container(params)
    assert isinstance(container, dict)
    problems: list[tuple[str, str]] = []
    for name, model in section_schemas().items():
        if name in container and container[name] is not None:
            try:
                model.model_validate(container[name])
            except ValidationError as err:
                problems += format_validation_error(err, name)
    enabled = container.get("calibrators_enabled") or {}
    if enabled:
        from pipeline.calibration.calibrator import CALIBRATORS, _load_builtins

        _load_builtins()
        for name in enabled:
            if name not in CALIBRATORS:
                problems.append((
                    f"calibrators_enabled.{name}",
                    f"unknown calibrator; valid calibrators are: {', '.join(sorted(CALIBRATORS))}",
                ))
    if problems:
        raise ConfigError(source, problems)


def load_parameters(
    files: Iterable[str | os.PathLike[str]] = (), base: DictConfig | None = None
) -> DictConfig:
    """Merge YAML parameter files, in order, over ``base`` (the defaults) and validate.

    Examples
    --------
    >>> load_parameters([]).jets_calibration.jet_types.AK4PFPuppi["2022_preEE"].level
    'L1L2L3Res'
    """
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
        merged = OmegaConf.merge(params, OmegaConf.create(loaded))
        assert isinstance(merged, DictConfig)
        validate_parameters(merged, source=str(path))
        params = merged
    validate_parameters(params)
    return params
