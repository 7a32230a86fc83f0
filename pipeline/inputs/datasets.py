"""Datasets and their preprocessing into entry-range chunks (files scanned in parallel,
cached on disk: :mod:`pipeline.inputs.scanning`)."""

from __future__ import annotations

import glob
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config.models import RemoteSpec
from pipeline.errors import InputFileError
from pipeline.inputs.datafiles import find_data_file
from pipeline.inputs.parquet import is_parquet
from pipeline.inputs.remote import has_glob, is_remote, list_remote, storage_options
from pipeline.inputs.scanning import ScanMap, ScanResult, ScanTask, scan_file, scan_files


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
    #: the digest of the first file's branches (:class:`~pipeline.inputs.scanning.FileScan`,
    #: set by :func:`preprocess_datasets`; ``None`` before, and for Parquet)
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


#: ``on_error(dataset, file, error)``: told of a file of ``dataset`` that cannot be opened
OnError = Callable[[Dataset, str, InputFileError], None]


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


def count_entries(file: str, tree: str = "Events", remote: RemoteSpec | None = None) -> int:
    """Number of entries of ``tree`` in ``file`` (:func:`~pipeline.inputs.scanning.scan_file`)."""
    return scan_file(file, tree, remote).entries


def preprocess(dataset: Dataset, chunksize: int,
               on_error: Callable[[str, InputFileError], None] | None = None,
               scan_map: ScanMap | None = None) -> Dataset:
    """Fill ``dataset.chunks`` with entry ranges of at most ``chunksize`` entries per file:
    :func:`preprocess_datasets` of this one dataset, ``on_error`` given the file and error.
    """
    report = None if on_error is None else _without_dataset(on_error)
    (done,) = preprocess_datasets([dataset], chunksize, report, scan_map)
    return done


def _without_dataset(on_error: Callable[[str, InputFileError], None]) -> OnError:
    return lambda _, file, err: on_error(file, err)


def preprocess_datasets(datasets: list[Dataset], chunksize: int,
                        on_error: OnError | None = None,
                        scan_map: ScanMap | None = None) -> list[Dataset]:
    """Fill each dataset's ``chunks`` with entry ranges of at most ``chunksize`` entries per
    file, its files scanned together (:func:`~pipeline.inputs.scanning.scan_files`): the
    cached ones looked up here, the others opened through ``scan_map`` (default: here,
    remote files on threads; the run passes one that maps over its cluster's workers), each
    file once.

    A file that cannot be opened raises its :class:`InputFileError` (the first in the
    datasets' order), or, with ``on_error``, is passed to it with its dataset and removed
    from ``dataset.files``. ``dataset.form_digest`` is set to the first readable file's
    branch digest (the files of a dataset normally share it).

    Examples
    --------
    >>> from pipeline.inputs.datafiles import find_data_file
    >>> tt = str(find_data_file("nano_tt_v12.root"))
    >>> a, b = preprocess_datasets([Dataset("a", [tt], {}), Dataset("b", [tt], {})], 120)
    >>> [(c.start, c.stop) for c in b.chunks]
    [(0, 100), (100, 200)]
    """
    tasks: dict[tuple[str, str], ScanTask] = {}
    for dataset in datasets:
        for file in dataset.files:
            tasks.setdefault((file, dataset.tree), ScanTask(file, dataset.tree, dataset.remote))
    scans = dict(zip(tasks, scan_files(list(tasks.values()), scan_map)))
    for dataset in datasets:
        _fill_chunks(dataset, [scans[file, dataset.tree] for file in dataset.files],
                     chunksize, on_error)
    return datasets


def _fill_chunks(dataset: Dataset, scans: list[ScanResult], chunksize: int,
                 on_error: OnError | None) -> None:
    """Set ``dataset``'s chunks, readable files and form digest from its files' scans."""
    chunks, readable, digests = [], [], []
    for file, scan in zip(dataset.files, scans):
        if isinstance(scan, InputFileError):
            if on_error is None:
                raise scan
            on_error(dataset, file, scan)
            continue
        readable.append(file)
        digests.append(scan.form_digest)
        chunks += [Chunk(file, start, stop)
                   for start, stop in split_entries(scan.entries, chunksize)]
    dataset.files, dataset.chunks = readable, chunks
    dataset.form_digest = digests[0] if digests else None
