"""Datasets and their preprocessing into entry-range chunks (cached on disk)."""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uproot

from pipeline.errors import InputFileError
from pipeline.inputs.datafiles import cache_dir, find_data_file
from pipeline.inputs.parquet import is_parquet, parquet_rows


@dataclass(frozen=True)
class Chunk:
    """Entries ``[start, stop)`` of the tree in one file."""

    file: str
    start: int
    stop: int

    @property
    def entries(self) -> int:
        return self.stop - self.start


@dataclass
class Dataset:
    """A named list of NanoAOD files with their metadata (sample, year, era, isMC, xsec)."""

    name: str
    files: list[str]
    metadata: dict[str, Any]
    tree: str = "Events"
    chunks: list[Chunk] = field(default_factory=list)

    @property
    def entries(self) -> int:
        return sum(c.entries for c in self.chunks)

    @property
    def format(self) -> str:
        """``"parquet"`` for flat Parquet event tables, else ``"nanoaod"`` (ROOT)."""
        kinds = {is_parquet(f) for f in self.files}
        if len(kinds) > 1:
            raise InputFileError(f"dataset {self.name!r} mixes Parquet and ROOT files")
        return "parquet" if kinds == {True} else "nanoaod"

    def steps_by_file(self) -> dict[str, dict[str, Any]]:
        """The ``{file: {"object_path": tree, "steps": [[start, stop], ...]}}`` coffea reads."""
        out: dict[str, dict[str, Any]] = {}
        for chunk in self.chunks:
            entry = out.setdefault(chunk.file, {"object_path": self.tree, "steps": []})
            entry["steps"].append([chunk.start, chunk.stop])
        return out


def resolve_files(files: list[str], base: Path | None = None,
                  dataset: str | None = None) -> list[str]:
    """Resolve file names: remote URLs as they are, local paths relative to ``base`` (the
    config's folder), else data-file names through :func:`pipeline.inputs.datafiles.find_data_file`,
    whose error lists ``base`` among the places looked (and names ``dataset``'s key)."""
    out = []
    for i, name in enumerate(files):
        if "://" in name:
            out.append(name)
            continue
        try:
            out.append(str(find_data_file(name, config_dir=base).resolve()))
        except InputFileError as err:
            if dataset is None:
                raise
            raise InputFileError(f"dataset {dataset!r} (datasets.{dataset}.files[{i}]): "
                                 f"{err}") from None
    return out


def split_entries(num_entries: int, chunksize: int) -> list[tuple[int, int]]:
    """Split ``num_entries`` into near-equal ranges of at most ``chunksize`` entries.

    Examples
    --------
    >>> split_entries(10, 4)
    [(0, 3), (3, 7), (7, 10)]
    >>> split_entries(0, 4)
    []
    """
    if num_entries <= 0:
        return []
    n = math.ceil(num_entries / chunksize)
    bounds = [round(i * num_entries / n) for i in range(n + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def _preprocess_cache() -> Path:
    return cache_dir() / "preprocess"


def count_entries(file: str, tree: str = "Events") -> int:
    """Number of entries of ``tree`` in ``file``; cached by path, size and mtime.

    Raises :class:`InputFileError` naming the file when it is missing, unreadable or has
    no such tree.
    """
    key_parts: list[Any] = [file, tree]
    if "://" not in file:
        try:
            stat = os.stat(file)
        except FileNotFoundError:
            raise InputFileError(f"input file not found: {file}") from None
        key_parts += [stat.st_size, stat.st_mtime_ns]
    key = hashlib.sha256(json.dumps(key_parts).encode()).hexdigest()[:32]
    cached = _preprocess_cache() / f"{key}.json"
    if cached.exists():
        try:
            return int(json.loads(cached.read_text())["entries"])
        except (ValueError, KeyError):
            pass  # a damaged cache entry is simply recomputed
    if is_parquet(file):
        return parquet_rows(file)
    try:
        with uproot.open(file) as handle:
            if tree not in handle:
                raise InputFileError(f"{file}: no tree {tree!r} in the file")
            entries = int(handle[tree].num_entries)
    except InputFileError:
        raise
    except Exception as err:
        raise InputFileError(f"cannot read input file {file}: {type(err).__name__}: {err}") from err
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"file": file, "tree": tree, "entries": entries}))
    tmp.replace(cached)
    return entries


def preprocess(dataset: Dataset, chunksize: int,
               on_error: Callable[[str, InputFileError], None] | None = None) -> Dataset:
    """Fill ``dataset.chunks`` with entry ranges of at most ``chunksize`` entries per file.

    A file that cannot be opened raises :class:`InputFileError`, or, with ``on_error``, is
    passed to it and removed from ``dataset.files``.
    """
    chunks, readable = [], []
    for file in dataset.files:
        try:
            entries = count_entries(file, dataset.tree)
        except InputFileError as err:
            if on_error is None:
                raise
            on_error(file, err)
            continue
        readable.append(file)
        chunks += [Chunk(file, start, stop) for start, stop in split_entries(entries, chunksize)]
    dataset.files, dataset.chunks = readable, chunks
    return dataset
