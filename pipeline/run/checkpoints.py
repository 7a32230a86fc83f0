"""Finished chunks of a run, kept on disk so that an interrupted run resumes.

Each finished chunk's histogram vector is saved (atomically) under
``<output>/<dataset>/.chunks/`` beside the identity of the run (configuration, parameters,
calibrew version, chunks: the same as the feature tables'). A rerun with the same identity
does not compute those chunks again; checkpoints of another identity are discarded. Once
the dataset's outputs are written, its checkpoints are removed.

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
_CHUNK = re.compile(r"chunk-(\d{5,})\.npy")


class ChunkCheckpoints:
    """The finished chunks' vectors of one dataset in ``folder``, for one run ``identity``."""

    def __init__(self, folder: Path, identity: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.identity = identity

    def _path(self, index: int) -> Path:
        return self.folder / f"chunk-{index:05d}.npy"

    def open(self) -> list[int]:
        """Indices of the chunks already finished by an earlier run of the same identity.

        Checkpoints of another identity are removed; the identity is written if new.
        """
        there = self.folder / IDENTITY
        if there.exists():
            try:
                same = json.loads(there.read_text()) == json.loads(json.dumps(self.identity))
            except ValueError:
                same = False
            if same:
                return sorted(int(m.group(1)) for p in self.folder.iterdir()
                              if (m := _CHUNK.fullmatch(p.name)))
            shutil.rmtree(self.folder)
        with atomic_path(there) as tmp:
            tmp.write_text(json.dumps(self.identity, sort_keys=True))
        return []

    def save(self, index: int, vector: np.ndarray) -> None:
        """Keep chunk ``index``'s vector (whole or not at all)."""
        with atomic_path(self._path(index)) as tmp, open(tmp, "wb") as fh:
            np.save(fh, np.asarray(vector, dtype=np.float64))

    def load(self, index: int) -> np.ndarray:
        return np.load(self._path(index))

    def clear(self) -> None:
        """Remove the checkpoints (the dataset's outputs are written)."""
        shutil.rmtree(self.folder, ignore_errors=True)


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
