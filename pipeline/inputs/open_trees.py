"""Input trees opened once per process, not once per chunk.

uproot's lazy reader (``uproot.dask(open_files=False)``, which coffea's NanoEvents use)
opens the file and reads its TTree's metadata for every chunk: tens of milliseconds for a
pruned NanoAOD, 0.1-0.4 s for one of 650-1,300 branches, and a connection and some round
trips for a remote file. :class:`CachedTreeRead` wraps that read function and reads the
chunk's entries from a tree opened earlier in the process, with the function's own
``read_tree``. (Passing the open tree in place of the file's path does not work: uproot
wraps it in a ``_NoClose`` proxy, on which coffea's ``key in tree`` is always false.)

The cache holds at most :data:`MAX_OPEN` trees (the least recently used is dropped) behind a
lock held only while looking up. A tree is kept under its file's path and identity (size and
modification time, as the filesystem or the remote server reports them: a file replaced is
opened again), the tree's path and the reader's options. A read that fails drops its tree,
so that the chunk's retry opens the file again; the errors of opening and of reading are
uproot's own, so a file that cannot be read is still recognised as such
(:func:`pipeline.errors.raised_by_reader`). A file whose identity cannot be found is read
as before, opened for the chunk.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

import uproot

from pipeline.config.models import RemoteSpec
from pipeline.inputs.remote import is_remote, remote_identity

#: Trees kept open per process; 0 opens the file for every chunk (as uproot does).
MAX_OPEN = 4

_LOCK = threading.Lock()
_TREES: OrderedDict[Hashable, tuple[tuple[Any, ...], Any]] = OrderedDict()  # (identity, tree)
_OPENING: dict[Hashable, threading.Lock] = {}  # a lock per tree being opened


def file_identity(path: str, options: dict[str, Any]) -> tuple[Any, ...] | None:
    """The size, modification time and inode of the local file ``path``, or the size and
    modification time (or ETag) a remote file's server reports (asked with ``options``'
    timeout, once); ``None`` when they cannot be found.

    Examples
    --------
    >>> from pipeline.inputs.datafiles import find_data_file
    >>> size, mtime, inode = file_identity(str(find_data_file("nano_tt_v12.root")), {})
    >>> size > 0, file_identity("/no/such/file.root", {})
    (True, None)
    """
    if is_remote(path):
        remote = RemoteSpec(timeout_s=options.get("timeout", RemoteSpec().timeout_s), retries=0)
        try:
            return tuple(remote_identity(path, remote))
        except Exception:  # read uncached: opening the file gives uproot's own error
            return None
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns, stat.st_ino


def forget_all() -> None:
    """Drop every kept tree (their files close once no read holds them)."""
    with _LOCK:
        _TREES.clear()


def kept() -> int:
    """The number of trees kept open in this process."""
    return len(_TREES)


def _key(read: Any, path: str, object_path: str) -> Hashable | None:
    """The tree's key in the cache (its file's identity apart): ``None`` when it is not to
    be kept."""
    if MAX_OPEN <= 0 or read.allow_missing or object_path is None:
        return None
    key = (path, object_path, read.custom_classes, tuple(sorted(read.real_options.items())))
    try:
        hash(key)
    except TypeError:  # an option that cannot be a key: read uncached
        return None
    return key


def _open(read: Any, path: str, object_path: str) -> Any:
    """The tree as uproot's reader opens it for a chunk (no object or array cache)."""
    file = uproot.ReadOnlyFile(path, object_cache=None, array_cache=None,
                               custom_classes=read.custom_classes, **read.real_options)
    return file.root_directory[object_path]


def _kept(key: Hashable, identity: tuple[Any, ...]) -> Any:
    """The tree kept under ``key`` when its file is still ``identity``; a tree of a file
    since replaced is dropped."""
    with _LOCK:
        kept = _TREES.get(key)
        if kept is None:
            return None
        if kept[0] != identity:
            del _TREES[key]
            return None
        _TREES.move_to_end(key)
        return kept[1]


def _tree(read: Any, key: Hashable, identity: tuple[Any, ...], path: str,
          object_path: str) -> Any:
    """The kept tree of ``key``, else opened and kept: one thread opens it while the
    others that want it wait, and those that read other trees go on."""
    tree = _kept(key, identity)
    if tree is not None:
        return tree
    with _LOCK:
        opening = _OPENING.setdefault(key, threading.Lock())
    with opening:
        tree = _kept(key, identity)
        if tree is not None:
            return tree
        try:
            tree = _open(read, path, object_path)
        finally:
            with _LOCK:
                _OPENING.pop(key, None)
        with _LOCK:
            _TREES[key] = (identity, tree)
            while len(_TREES) > MAX_OPEN:
                _TREES.popitem(last=False)
    return tree


def _forget(key: Hashable, tree: Any) -> None:
    with _LOCK:
        kept = _TREES.get(key)
        if kept is not None and kept[1] is tree:
            del _TREES[key]


class CachedTreeRead:
    """uproot's per-chunk read function (``_UprootOpenAndRead``: called with ``(file,
    tree path, start, stop, is_chunk)``), reading a chunk's entries from the tree kept in
    this process (with the function's own ``read_tree``).

    Its other calls (entries out of the tree's range, read reports, steps rather than
    chunks) go to the wrapped function, as do projection, mocking and the base form; a
    projected copy is wrapped again.

    Examples
    --------
    >>> import dask
    >>> from pipeline.inputs.datafiles import find_data_file
    >>> from pipeline.inputs.nanoevents import read_lazy
    >>> path = str(find_data_file("nano_tt_v12.root"))
    >>> events = read_lazy({path: {"object_path": "Events", "steps": [[0, 100], [100, 200]]}})
    >>> forget_all()
    >>> first, second = dask.compute(*events.Jet.pt.to_delayed(), scheduler="sync")
    >>> len(first) + len(second), kept()  # two chunks, one file opened
    (200, 1)
    """

    def __init__(self, read: Any) -> None:
        self.read = read

    @classmethod
    def wrap(cls, read: Any) -> Any:
        """``read`` wrapped, unless it is not uproot's per-chunk opening read function (or
        is wrapped already)."""
        opening = getattr(uproot._dask, "_UprootOpenAndRead", ())
        return cls(read) if isinstance(read, opening) else read

    def __call__(self, part: tuple[Any, ...]) -> Any:
        path, object_path, start, stop, is_chunk = part
        key = _key(self.read, path, object_path) if is_chunk else None
        identity = None if key is None else file_identity(path, self.read.real_options)
        if identity is None or self.read.return_report:
            return self.read(part)
        tree = _tree(self.read, key, identity, path, object_path)
        if not 0 <= start <= stop <= tree.num_entries:
            return self.read(part)  # uproot's own error
        try:
            result, _ = self.read.read_tree(tree, start, stop)
        except Exception:
            _forget(key, tree)  # the retry opens the file again
            raise
        return result

    @property
    def base_form(self) -> Any:
        return self.read.base_form

    @property
    def return_report(self) -> bool:
        return bool(self.read.return_report)

    def mock(self) -> Any:
        return self.read.mock()

    def mock_empty(self, backend: Any = "cpu") -> Any:
        return self.read.mock_empty(backend)

    def prepare_for_projection(self) -> Any:
        return self.read.prepare_for_projection()

    def necessary_columns(self, *, report: Any, state: Any) -> frozenset[str]:
        return self.read.necessary_columns(report=report, state=state)

    def project(self, *, report: Any, state: Any) -> CachedTreeRead:
        return CachedTreeRead(self.read.project(report=report, state=state))

    def project_manually(self, columns: frozenset[str]) -> CachedTreeRead:
        return CachedTreeRead(self.read.project_manually(columns))
