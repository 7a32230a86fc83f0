"""Datasets and their preprocessing into entry-range chunks (cached on disk)."""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uproot

from pipeline.config.models import RemoteSpec
from pipeline.errors import InputFileError
from pipeline.inputs.datafiles import cache_dir, find_data_file
from pipeline.inputs.parquet import is_parquet, parquet_rows
from pipeline.inputs.remote import (
    has_glob,
    is_remote,
    list_remote,
    remote_identity,
    storage_options,
    with_retries,
)


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
    """A named list of NanoAOD files with their metadata (sample, year, era, isMC, xsec);
    ``remote`` sets the timeouts and retries of its remote files."""

    name: str
    files: list[str]
    metadata: dict[str, Any]
    tree: str = "Events"
    chunks: list[Chunk] = field(default_factory=list)
    remote: RemoteSpec = field(default_factory=RemoteSpec)
    #: the :func:`scan_file` digest of the first file's branches (set by :func:`preprocess`;
    #: ``None`` before, and for Parquet)
    form_digest: str | None = None

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

    def uproot_options(self) -> dict[str, Any]:
        """The options uproot (and coffea's ``uproot_options``) read the files with: the
        remote timeout when the dataset has remote files, else none.

        Examples
        --------
        >>> Dataset("tt", ["root://host//tt.root"], {}).uproot_options()
        {'timeout': 30}
        >>> Dataset("tt", ["/data/tt.root"], {}).uproot_options()
        {}
        """
        for file in self.files:
            options = storage_options(file, self.remote)
            if options:
                return options
        return {}


def resolve_files(files: list[str], base: Path | None = None,
                  dataset: str | None = None, remote: RemoteSpec | None = None) -> list[str]:
    """Resolve file names into files, in order, each once.

    Remote URLs stay as they are; local paths are relative to ``base`` (the config's
    folder), else data-file names found by :func:`pipeline.inputs.datafiles.find_data_file`,
    whose error lists ``base`` among the places looked (and names ``dataset``'s key). A name
    with glob characters (``*``, ``?``, ``[``) or ending in ``/`` (a folder: its ``.root``
    files), local or remote, expands to its sorted matches; none is an error.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> for name in ("b.root", "a.root", "notes.txt"):
    ...     _ = (folder / name).write_text("")
    >>> [Path(f).name for f in resolve_files([f"{folder}/"])]
    ['a.root', 'b.root']
    >>> [Path(f).name for f in resolve_files(["*.txt", "b.root"], base=folder)]
    ['notes.txt', 'b.root']
    """
    out: list[str] = []
    for i, name in enumerate(files):
        try:
            found = _expand(name, base, remote or RemoteSpec())
        except InputFileError as err:
            if dataset is None:
                raise
            raise InputFileError(f"dataset {dataset!r} (datasets.{dataset}.files[{i}]): "
                                 f"{err}") from None
        out += [f for f in found if f not in out]
    return out


def _expand(name: str, base: Path | None, remote: RemoteSpec) -> list[str]:
    """The files one entry of a dataset's ``files`` names."""
    pattern = name.endswith("/") or has_glob(name)
    if is_remote(name):
        found = list_remote(name, remote) if pattern else [name]
    elif pattern:
        path = Path(name).expanduser()
        if not path.is_absolute():
            path = (base or Path.cwd()) / path
        found = sorted(glob.glob(str(path / "*.root") if name.endswith("/") else str(path)))
        found = [str(Path(f).resolve()) for f in found if Path(f).is_file()]
    else:
        return [str(find_data_file(name, config_dir=base).resolve())]
    if not found:
        raise InputFileError(f"{name!r} matches no file" + (
            " (a folder gives its .root files)" if name.endswith("/") else ""))
    return found


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


@dataclass(frozen=True)
class FileScan:
    """What preprocessing learns of one input file: its entries and, for ROOT, a digest of
    its tree's branches (names, types and titles: equal digests, equal events forms)."""

    entries: int
    form_digest: str | None = None


def count_entries(file: str, tree: str = "Events", remote: RemoteSpec | None = None) -> int:
    """Number of entries of ``tree`` in ``file`` (:func:`scan_file`)."""
    return scan_file(file, tree, remote).entries


def scan_file(file: str, tree: str = "Events", remote: RemoteSpec | None = None) -> FileScan:
    """Entries and branch digest of ``tree`` in ``file``; cached by path, size and mtime (a
    remote file: URL, size and the server's mtime or ETag).

    Raises :class:`InputFileError` naming the file when it is missing, unreadable or has
    no such tree; a remote file is tried again ``remote.retries`` times first.
    """
    remote = remote or RemoteSpec()
    key_parts: list[Any] = [file, tree]
    if is_remote(file):
        key_parts += remote_identity(file, remote)
    else:
        try:
            stat = os.stat(file)
        except FileNotFoundError:
            raise InputFileError(f"input file not found: {file}") from None
        key_parts += [stat.st_size, stat.st_mtime_ns]
    key = hashlib.sha256(json.dumps(key_parts).encode()).hexdigest()[:32]
    cached = _preprocess_cache() / f"{key}.json"
    if cached.exists():
        try:
            entry = json.loads(cached.read_text())
            return FileScan(int(entry["entries"]), str(entry["form_digest"]))
        except (ValueError, KeyError):
            pass  # a damaged (or older, digest-less) cache entry is simply recomputed
    if is_parquet(file):
        return FileScan(parquet_rows(file))
    scan = with_retries(lambda: _scan_tree(file, tree, remote), file, remote)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"file": file, "tree": tree, "entries": scan.entries,
                               "form_digest": scan.form_digest}))
    tmp.replace(cached)
    return scan


def _scan_tree(file: str, tree: str, remote: RemoteSpec) -> FileScan:
    """Entries and branch digest of ``tree`` in the ROOT file ``file``; an ``OSError`` of a
    remote file passes through (to be retried), every other failure is an
    :class:`InputFileError` naming it."""
    try:
        with uproot.open(file, **storage_options(file, remote)) as handle:
            if tree not in handle:
                raise InputFileError(f"{file}: no tree {tree!r} in the file")
            ttree = handle[tree]
            branches = sorted((name, branch.typename, branch.title) for name, branch
                              in ttree.items(recursive=True, full_paths=True))
            digest = hashlib.sha256(json.dumps(branches).encode()).hexdigest()[:32]
            return FileScan(int(ttree.num_entries), digest)
    except InputFileError:
        raise
    except Exception as err:
        if is_remote(file) and isinstance(err, (OSError, TimeoutError)):
            raise
        raise InputFileError(f"cannot read input file {file}: {type(err).__name__}: "
                             f"{err}") from err


def preprocess(dataset: Dataset, chunksize: int,
               on_error: Callable[[str, InputFileError], None] | None = None) -> Dataset:
    """Fill ``dataset.chunks`` with entry ranges of at most ``chunksize`` entries per file.

    A file that cannot be opened raises :class:`InputFileError`, or, with ``on_error``, is
    passed to it and removed from ``dataset.files``. ``dataset.form_digest`` is set to the
    first readable file's branch digest (the files of a dataset normally share it).
    """
    chunks, readable, digests = [], [], []
    for file in dataset.files:
        try:
            scan = scan_file(file, dataset.tree, dataset.remote)
        except InputFileError as err:
            if on_error is None:
                raise
            on_error(file, err)
            continue
        readable.append(file)
        digests.append(scan.form_digest)
        chunks += [Chunk(file, start, stop)
                   for start, stop in split_entries(scan.entries, chunksize)]
    dataset.files, dataset.chunks = readable, chunks
    dataset.form_digest = digests[0] if digests else None
    return dataset
