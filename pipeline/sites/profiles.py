"""Site profiles: where they are found by name, how one is read and validated into its
site class, and the functions the runner and the command line call."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import (
    ValidationError,
)

from pipeline.config.models import read_yaml
from pipeline.config.parameters import format_validation_error
from pipeline.config.plugins import ImportPathError
from pipeline.errors import ConfigError, UnknownNameError
from pipeline.sites.base import SITE_TYPES, Site, builtin_sites_dir

# --- where profiles are found ---------------------------------------------------------------

#: origin of a profile folder, as ``calibrew sites`` shows it
BUILT_IN = "built-in"


@dataclass(frozen=True)
class ProfileFolder:
    """A folder searched for site profiles, and where it comes from (``origin``)."""

    path: Path
    origin: str


@dataclass(frozen=True)
class ProfileFile:
    """A site profile found by name: its file, the origin of its folder, and the files of
    the same name it hides (in folders searched after its own)."""

    name: str
    path: Path
    origin: str
    hides: tuple[ProfileFile, ...] = ()


def _checkout_cluster_dir() -> Path | None:
    """``cluster/`` of the checkout the package runs from (an editable install): the
    package's parent folder when it holds a ``pyproject.toml`` and a ``cluster/``."""
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / "cluster").is_dir():
        return root / "cluster"
    return None


def site_folders() -> list[ProfileFolder]:
    """The folders searched for profiles, first found first: the folders of
    ``$CALIBREW_SITES`` (``os.pathsep``-separated) in their order, ``cluster/`` of the
    working directory, ``cluster/`` of the checkout (an editable install), the built-in
    profiles. A folder is listed once (at its first place), whether it exists or not.

    Examples
    --------
    >>> site_folders()[-1].origin
    'built-in'
    """
    folders = [ProfileFolder(Path(p), "$CALIBREW_SITES")
               for p in os.environ.get("CALIBREW_SITES", "").split(os.pathsep) if p]
    try:
        folders.append(ProfileFolder(Path.cwd() / "cluster",
                                     "cluster/ of the working directory"))
    except FileNotFoundError:  # a working directory removed under this process
        pass
    checkout = _checkout_cluster_dir()
    if checkout is not None:
        folders.append(ProfileFolder(checkout, "cluster/ of the checkout"))
    folders.append(ProfileFolder(builtin_sites_dir(), BUILT_IN))
    unique: dict[Path, ProfileFolder] = {}
    for folder in folders:
        unique.setdefault(folder.path.resolve(), folder)
    return list(unique.values())


def find_profiles() -> dict[str, ProfileFile]:
    """Every profile (``NAME.yaml``) of :func:`site_folders`, by name, in name order; of
    two profiles of the same name the one in the folder searched first wins (a user's
    profile replaces a built-in one).

    Examples
    --------
    >>> found = find_profiles()["slurm"]
    >>> found.path.name, found.origin
    ('slurm.yaml', 'built-in')
    """
    found: dict[str, ProfileFile] = {}
    for folder in site_folders():
        if not folder.path.is_dir():
            continue
        for path in sorted(folder.path.glob("*.yaml")):
            profile = ProfileFile(path.stem, path, folder.origin)
            first = found.get(path.stem)
            found[path.stem] = profile if first is None else dataclasses.replace(
                first, hides=(*first.hides, profile))
    return dict(sorted(found.items()))


def available_sites() -> list[str]:
    """The names of every profile found (:func:`find_profiles`).

    Examples
    --------
    >>> {"local", "slurm", "scheduler"} <= set(available_sites())
    True
    """
    return list(find_profiles())


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    node = data
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[last] = value


def load_site(name: str, overrides: dict[str, Any] | None = None) -> Site:
    """Load the profile ``name`` (or a path to a YAML file) and apply ``overrides``.

    ``overrides`` maps keys (dotted for nested ones, ``adapt.maximum_jobs``) to values
    (``None`` sets a key to null: ``adapt=None`` turns adaptive scaling off). Raises
    :class:`UnknownNameError` for a name no folder holds, with the names found, and
    :class:`ConfigError` naming the profile file and the key at fault.

    Examples
    --------
    >>> load_site("slurm-hpc", {"adapt": None, "jobs": 5}).describe()
    '5 job(s) of 1 core(s), 4GiB, partition standard, walltime 04:00:00, lifetime 220m'
    """
    path, data = _read_profile(name)
    for key, value in (overrides or {}).items():
        _set_dotted(data, key, value)
    kind = str(data.get("type", "local"))
    try:
        model = SITE_TYPES.resolve(kind)
    except (UnknownNameError, ImportPathError) as err:
        problem = err.problem if isinstance(err, ImportPathError) else (
            f"unknown site type {kind!r}; valid types are: {', '.join(SITE_TYPES)} (a site "
            "type of your own is named by import path, 'module:Class')")
        raise ConfigError(str(path), [("type", problem)]) from None
    if ":" in kind:  # named by import path: the profile holds its registered type
        data["type"] = model.model_fields["type"].default
    try:
        site = model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(str(path), format_validation_error(err)) from None
    site._name, site._path = name, str(path)
    return site


def _profile_path(name: str) -> Path:
    if name.endswith((".yaml", ".yml")):
        path = Path(name)
        if path.exists():
            return path
    else:
        found = find_profiles().get(name)
        if found is not None:
            return found.path
    raise UnknownNameError("site", name, available_sites(), where="site")


def _read_profile(name: str) -> tuple[Path, dict[str, Any]]:
    path = _profile_path(name)
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), [("", "expected a mapping at the top level")])
    return path, data


def workers_override(site_name: str, workers: int | None) -> dict[str, Any]:
    """``--workers N`` as a profile override (:meth:`Site.workers_override` of the
    profile's type): worker processes locally, the workers to wait for on a scheduler, a
    fixed number of jobs on batch (adaptive scaling off).

    Examples
    --------
    >>> workers_override("local", 3), workers_override("slurm", None)
    ({'n_workers': 3}, {})
    """
    if workers is None:
        return {}
    kind = str(_read_profile(site_name)[1].get("type", "local"))
    try:
        model = SITE_TYPES.resolve(kind)
    except (UnknownNameError, ImportPathError):
        return {}  # load_site says why
    return model.workers_override(workers)


def describe(site: Site) -> str:
    """What ``site`` starts, in one line (its type and description are apart).

    Examples
    --------
    >>> describe(load_site("slurm", {"jobs": 3}))
    '3 job(s) of 1 core(s), 3GiB, partition local, walltime 00:30:00'
    """
    return site.describe()
