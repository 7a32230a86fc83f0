"""Finished chunks of a run, kept on disk so that an interrupted run resumes.

Each finished chunk's histogram vector is saved (atomically, by the worker that computed
it) under ``<output>/<dataset>/.chunks/`` beside the identity of the run (configuration,
parameters, calibrew version, chunks: the same as the feature tables'). Once a group of
chunks (the first level of the reduction tree) is summed, its sum replaces their files
(``group-FIRST-STOP.npz``: chunks ``[FIRST, STOP)``). A vector mostly of zeros (histograms
of small chunks) is saved sparse: its non-zero entries, found bit by bit, so that it is read
back with the same bits. A rerun with the same identity does not
compute those chunks again; checkpoints of another identity are discarded. Once the
dataset's outputs are written, its checkpoints are removed.

Examples
--------
>>> import tempfile, numpy as np
>>> folder = Path(tempfile.mkdtemp()) / ".chunks"
>>> store = ChunkCheckpoints(folder, {"config": "abc"})
>>> store.open()
[]
>>> store.save(3, np.arange(4.0))
>>> ChunkCheckpoints(folder, {"config": "abc"}).open()
[3]
>>> ChunkCheckpoints(folder, {"config": "xyz"}).open()  # another configuration
[]
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.outputs.atomic import atomic_path

IDENTITY = "identity.json"
#: the identity of the configuration whose outputs an output directory holds
OUTPUT_IDENTITY = ".calibrew-outputs.json"
_CHUNK = re.compile(r"chunk-(\d{5,})\.npz")
_GROUP = re.compile(r"group-(\d{5,})-(\d{5,})\.npz")


class ChunkCheckpoints:
    """The finished chunks' vectors of one dataset in ``folder``, for one run ``identity``."""

    def __init__(self, folder: Path, identity: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.identity = identity

    def _path(self, index: int) -> Path:
        return self.folder / f"chunk-{index:05d}.npz"

    def _group_path(self, first: int, stop: int) -> Path:
        return self.folder / f"group-{first:05d}-{stop:05d}.npz"

    def open(self) -> list[int]:
        """Indices of the chunks already finished by an earlier run of the same identity
        (saved alone, or summed in a group).

        Checkpoints of another identity are removed; the identity is written if new.
        """
        there = self.folder / IDENTITY
        if there.exists():
            try:
                same = json.loads(there.read_text()) == json.loads(json.dumps(self.identity))
            except ValueError:
                same = False
            if same:
                return saved_chunks(self.folder)
            shutil.rmtree(self.folder)
        with atomic_path(there) as tmp:
            tmp.write_text(json.dumps(self.identity, sort_keys=True))
        return []

    def save(self, index: int, vector: np.ndarray) -> None:
        """Keep chunk ``index``'s vector (whole or not at all)."""
        write_vector(self._path(index), vector)

    def load(self, index: int) -> np.ndarray:
        return read_vector(self._path(index))

    def remove(self, index: int) -> None:
        """Remove chunk ``index``'s file (its group's sum is saved)."""
        self._path(index).unlink(missing_ok=True)

    def save_group(self, first: int, stop: int, vector: np.ndarray) -> None:
        """Keep the sum of chunks ``[first, stop)`` (whole or not at all)."""
        write_vector(self._group_path(first, stop), vector)

    def load_group(self, first: int, stop: int) -> np.ndarray | None:
        """The saved sum of chunks ``[first, stop)``; ``None`` if there is none."""
        path = self._group_path(first, stop)
        return read_vector(path) if path.exists() else None

    def clear(self) -> None:
        """Remove the checkpoints (the dataset's outputs are written)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def write_vector(path: Path, vector: np.ndarray) -> None:
    """Save the float64 ``vector`` at ``path`` (whole or not at all): sparse (its size, the
    indices and values of the entries whose bits are not all zero) when fewer than half
    are, else whole.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "v.npz"
    >>> vector = np.zeros(1000); vector[[3, 700]] = [1.5, -0.0]
    >>> write_vector(path, vector)
    >>> back = read_vector(path)
    >>> np.array_equal(back.view(np.uint64), vector.view(np.uint64))  # -0.0 kept
    True
    """
    vector = np.ascontiguousarray(vector, dtype=np.float64).reshape(-1)
    nonzero = np.flatnonzero(vector.view(np.uint64))
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        if 2 * nonzero.size < vector.size:
            np.savez(fh, size=np.int64(vector.size), index=nonzero, values=vector[nonzero])
        else:
            np.savez(fh, vector=vector)


def read_vector(path: Path) -> np.ndarray:
    """The vector :func:`write_vector` saved at ``path``."""
    with np.load(path) as saved:
        if "vector" in saved:
            vector: np.ndarray = saved["vector"]
            return vector
        vector = np.zeros(int(saved["size"]), dtype=np.float64)
        vector[saved["index"]] = saved["values"]
        return vector


def saved_chunks(folder: Path) -> list[int]:
    """The indices of the chunks whose vectors ``folder`` holds, saved alone or summed in a
    group (whatever their identity).

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> for name in ("chunk-00009.npz", "group-00000-00008.npz", "identity.json"):
    ...     _ = (folder / name).write_text("")
    >>> saved_chunks(folder)
    [0, 1, 2, 3, 4, 5, 6, 7, 9]
    """
    done: set[int] = set()
    for path in Path(folder).glob("*.npz"):
        if m := _CHUNK.fullmatch(path.name):
            done.add(int(m.group(1)))
        elif m := _GROUP.fullmatch(path.name):
            done.update(range(int(m.group(1)), int(m.group(2))))
    return sorted(done)


def outputs_identity(folder: Path) -> dict[str, Any] | None:
    """The identity (``config``, ``parameters`` digests, ``job``) of the configuration whose
    outputs ``folder`` holds; ``None`` if it holds none. A directory written before this
    record existed is known by its ``report.json`` (its configuration digest only), when that
    lists outputs that are still there."""
    record = folder / OUTPUT_IDENTITY
    if record.is_file():
        try:
            there = json.loads(record.read_text())
        except ValueError:
            return None
        return there if isinstance(there, dict) else None
    try:
        report = json.loads((folder / "report.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict) or not any(
            Path(p).exists() for p in report.get("outputs") or []):
        return None
    digest = report.get("config_digest")
    spec = report.get("job")
    config = spec.get("config") if isinstance(spec, dict) else None
    return ({"config": digest, "job": f"a job of configuration {config}" if config else None}
            if digest else None)


def different_outputs(folder: Path, identity: dict[str, Any]) -> list[str]:
    """The keys (``config``, ``parameters``) in which the outputs already in ``folder``
    differ from ``identity``'s; empty when it holds none or the same.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> different_outputs(folder, {"config": "a", "parameters": "p"})
    []
    >>> record_outputs_identity(folder, {"config": "a", "parameters": "p"}, "job.yaml")
    >>> different_outputs(folder, {"config": "b", "parameters": "p"})
    ['config']
    """
    there = outputs_identity(folder)
    if there is None:
        return []
    return [key for key in ("config", "parameters")
            if key in there and there[key] != identity.get(key)]


def record_outputs_identity(folder: Path, identity: dict[str, Any], job: str) -> None:
    """Record that ``folder`` holds the outputs of ``identity`` (before any is written)."""
    with atomic_path(folder / OUTPUT_IDENTITY) as tmp:
        tmp.write_text(json.dumps({**identity, "job": job}, sort_keys=True))
