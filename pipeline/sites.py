"""Compute sites: turn a ``cluster/<name>.yaml`` profile into a Dask cluster and client."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.errors import ConfigError, UnknownNameError
from pipeline.parameters import format_validation_error
from pipeline.samples import PROJECT_ROOT


class LocalSite(BaseModel):
    """A Dask ``LocalCluster`` profile."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["local"] = "local"
    n_workers: int | None = None
    threads_per_worker: int = 1
    memory_limit: str | int | None = "auto"
    dashboard_address: str = ":8787"


def sites_dir() -> Path:
    """The folder of site profiles (``$CALIBREW_SITES`` or ``cluster/`` of the project)."""
    return Path(os.environ.get("CALIBREW_SITES", PROJECT_ROOT / "cluster"))


def available_sites() -> list[str]:
    return sorted(p.stem for p in sites_dir().glob("*.yaml"))


def load_site(name: str, overrides: dict[str, Any] | None = None) -> LocalSite:
    """Load the profile ``name`` (or a path to a YAML file) and apply ``overrides``."""
    from pipeline.config import read_yaml

    path = Path(name) if name.endswith((".yaml", ".yml")) else sites_dir() / f"{name}.yaml"
    if not path.exists():
        raise UnknownNameError("site", name, available_sites(), where="site")
    data = read_yaml(path) or {}
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return LocalSite.model_validate(data)
    except ValidationError as err:
        raise ConfigError(str(path), format_validation_error(err)) from None


def start_site(site: LocalSite) -> tuple[Any, Any]:
    """Start the cluster of ``site``; return ``(client, cluster)``."""
    from distributed import Client, LocalCluster

    n_workers = site.n_workers or max(1, os.cpu_count() or 1)
    cluster = LocalCluster(
        n_workers=n_workers,
        threads_per_worker=site.threads_per_worker,
        processes=True,
        memory_limit=site.memory_limit,
        dashboard_address=site.dashboard_address,
        silence_logs=40,
    )
    return Client(cluster), cluster
