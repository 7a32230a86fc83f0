"""Provenance of an output: what produced it, from which inputs and payloads."""

from __future__ import annotations

import hashlib
import inspect
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.corrections import file_checksum
from pipeline.errors import CalibrewError

#: how every random number of a run is drawn (see :mod:`pipeline.rng`)
RANDOM_NUMBERS = {
    "generator": "counter-based: SplitMix64 finaliser of (run, luminosityBlock, event, "
                 "object index, purpose key); Gaussians by Box-Muller",
    "seed": "none: numbers are a function of the event identity only",
}
PAYLOAD_SUFFIXES = (".json", ".json.gz")


def payload_paths(params: Any, period: str) -> list[str]:
    """The correction payloads (``...json`` / ``...json.gz``) the parameters name for
    ``period``: under a mapping keyed by periods, only the ``period`` entry is followed.

    Examples
    --------
    >>> params = {"jets": {"2022": {"json_path": "a.json.gz"}, "2023": {"json_path": "c.json"}},
    ...           "x": ["b.json"]}
    >>> payload_paths(params, "2022")
    ['a.json.gz', 'b.json']
    """
    from omegaconf import OmegaConf

    if OmegaConf.is_config(params):
        params = OmegaConf.to_container(params, resolve=True)
    return sorted(set(_strings(params, period)))


def _strings(node: Any, period: str) -> Iterator[str]:
    if isinstance(node, str):
        if node.endswith(PAYLOAD_SUFFIXES):
            yield node
    elif isinstance(node, Mapping):
        values = [node[period]] if period in node else list(node.values())
        for value in values:
            yield from _strings(value, period)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _strings(value, period)


def payload_checksums(params: Any, period: str) -> dict[str, str]:
    """SHA-256 of each payload the parameters name for ``period`` (``"missing"`` if absent)."""
    out = {}
    for path in payload_paths(params, period):
        try:
            out[path] = file_checksum(path)
        except (CalibrewError, OSError):
            out[path] = "missing"
    return out


def provenance(config_digest: str, params: Any, period: str, files: list[str],
               entries: int) -> dict[str, Any]:
    """The provenance attributes of an output of a dataset."""
    return {
        "calibrew_version": __version__,
        "config_digest": config_digest,
        "input_files": [{"path": f, "bytes": os.path.getsize(f) if os.path.exists(f) else None}
                        for f in files],
        "input_entries": entries,
        "payload_checksums": payload_checksums(params, period),
        "random_numbers": RANDOM_NUMBERS,
    }


def code_digest(classes: Iterable[type] = ()) -> str:
    """A short hash of the code that computes the outputs: every source file of calibrew and
    the files defining ``classes`` (a user's calibrators). A rerun resumes a table or
    checkpoints only with the same code, so an edit between an interrupted run and its
    rerun cannot mix two versions of the results.

    Examples
    --------
    >>> len(code_digest()) == 16 and code_digest() == code_digest()
    True
    """
    files = set(Path(__file__).resolve().parents[1].rglob("*.py"))
    for cls in classes:
        source = inspect.getsourcefile(cls)
        if source:
            files.add(Path(source).resolve())
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(str(path.name).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
