"""Datasets from their config entry: explicit files, globs and folders, or a coffea
``dataset_tools`` fileset JSON.

A fileset JSON (what ``coffea.dataset_tools`` and its queries write) maps dataset names to
``{"files": {path: tree | {"object_path": tree, "steps": ..., ...}}, "metadata": {...}}``.
calibrew takes each entry's files and tree from it; it chunks the files itself with the
job's chunksize (the entry's ``steps`` are not used) and takes the metadata from the config.
A relative local path in the JSON is relative to the JSON's folder.

Examples
--------
>>> import json, tempfile
>>> folder = Path(tempfile.mkdtemp())
>>> _ = (folder / "fs.json").write_text(json.dumps({"tt": {"files": {
...     "root://host//store/a.root": "Events",
...     "root://host//store/b.root": {"object_path": "Events", "steps": [[0, 10]]}}}}))
>>> fileset_files("fs.json", "tt", folder)
(['root://host//store/a.root', 'root://host//store/b.root'], 'Events')
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.config.models import DatasetSpec, RemoteSpec
from pipeline.errors import InputFileError
from pipeline.inputs.datasets import Dataset, resolve_files


def fileset_files(ref: str, dataset: str,
                  config_dir: Path | None = None) -> tuple[list[str], str]:
    """The file names and tree of one entry of a coffea fileset JSON.

    ``ref`` is ``"fileset.json"`` (the entry named ``dataset``) or ``"fileset.json#entry"``,
    relative to ``config_dir``. Local names are made relative to the JSON's folder.
    Raises :class:`InputFileError` naming the JSON and the entry at fault.
    """
    file, _, entry = ref.partition("#")
    entry = entry or dataset
    path = Path(file).expanduser()
    if not path.is_absolute():
        path = (config_dir or Path.cwd()) / path
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputFileError(f"dataset {dataset!r}: fileset {path} not found") from None
    except (OSError, ValueError) as err:
        raise InputFileError(f"dataset {dataset!r}: fileset {path} cannot be read: "
                             f"{err}") from None
    where = f"fileset {path}, entry {entry!r}"
    if not isinstance(content, dict) or entry not in content:
        known = sorted(content) if isinstance(content, dict) else []
        raise InputFileError(f"dataset {dataset!r}: {where} not found (entries: "
                             f"{', '.join(known) or 'none'})")
    files = content[entry].get("files") if isinstance(content[entry], dict) else None
    if not isinstance(files, dict) or not files:
        raise InputFileError(f"dataset {dataset!r}: {where} has no 'files' mapping "
                             "{path: tree or {object_path, steps}}")
    names, trees = [], set()
    for name, spec in files.items():
        tree = spec.get("object_path") if isinstance(spec, dict) else spec
        if not isinstance(tree, str):
            raise InputFileError(f"dataset {dataset!r}: {where}, file {name}: no tree "
                                 "(a string, or a mapping with 'object_path')")
        trees.add(tree)
        local = "://" not in name and not Path(name).expanduser().is_absolute()
        names.append(str(path.parent / name) if local else name)
    if len(trees) > 1:
        raise InputFileError(f"dataset {dataset!r}: {where} reads several trees "
                             f"({', '.join(sorted(trees))}); one dataset reads one tree")
    return names, trees.pop()


def dataset_from_spec(name: str, spec: DatasetSpec, config_dir: Path | None,
                      remote: RemoteSpec | None = None) -> Dataset:
    """The dataset of a config entry, its files resolved (globs and folders expanded).

    Examples
    --------
    >>> spec = DatasetSpec.model_validate({"files": ["nano_tt_v12.root"], "metadata": {
    ...     "sample": "TTbar", "year": "2022_preEE", "isMC": True}})
    >>> ds = dataset_from_spec("tt", spec, None)
    >>> Path(ds.files[0]).name, ds.tree, ds.metadata["dataset"]
    ('nano_tt_v12.root', 'Events', 'tt')
    """
    remote = remote or RemoteSpec()
    metadata: dict[str, Any] = {**spec.metadata.model_dump(), "dataset": name}
    if spec.fileset is not None:
        names, tree = fileset_files(spec.fileset, name, config_dir)
        files = resolve_files(names, config_dir, name, remote)
    else:
        files, tree = resolve_files(spec.files, config_dir, name, remote), spec.tree
    return Dataset(name, files, metadata, tree, remote=remote)
