"""Load correctionlib payloads once per process and look corrections up by name."""

from __future__ import annotations

import difflib
import functools
import hashlib
import os
from pathlib import Path
from typing import Any

import correctionlib

from pipeline.errors import InputFileError, UnknownNameError
from pipeline.samples import find_data_file


@functools.lru_cache(maxsize=64)
def _load(path: str, mtime_ns: int, size: int) -> correctionlib.highlevel.CorrectionSet:
    try:
        return correctionlib.CorrectionSet.from_file(path)
    except Exception as err:
        raise InputFileError(f"cannot read correction payload {path}: {err}") from err


def load_correction_set(path: str | os.PathLike[str]) -> correctionlib.highlevel.CorrectionSet:
    """Return the :class:`correctionlib.CorrectionSet` in ``path``, cached per process.

    ``path`` may be a data-file name (resolved by :func:`pipeline.samples.find_data_file`).
    The cache key includes the file's size and modification time, so a payload replaced on
    disk is read again; an unchanged payload is parsed once per worker process.

    Examples
    --------
    >>> cset = load_correction_set("jet_jerc_Summer22_V3.json.gz")
    >>> cset is load_correction_set("jet_jerc_Summer22_V3.json.gz")
    True
    """
    resolved = find_data_file(path)
    stat = resolved.stat()
    return _load(str(resolved.resolve()), stat.st_mtime_ns, stat.st_size)


def _lookup(table: Any, name: str, path: str | os.PathLike[str], kind: str) -> Any:
    try:
        return table[name]
    except (KeyError, IndexError):
        names = list(table.keys())
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
        raise UnknownNameError(
            kind, name, close or names, where=f"correction payload {path}"
        ) from None


def get_correction(path: str | os.PathLike[str], name: str) -> Any:
    """The correction ``name`` of the payload at ``path``; an error names both if absent."""
    return _lookup(load_correction_set(path), name, path, "correction")


def get_compound(path: str | os.PathLike[str], name: str) -> Any:
    """The compound correction ``name`` of the payload at ``path``."""
    return _lookup(load_correction_set(path).compound, name, path, "compound correction")


@functools.lru_cache(maxsize=256)
def _checksum(path: str, mtime_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_checksum(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file (for provenance), cached by path, size and modification time."""
    resolved = Path(find_data_file(path))
    stat = resolved.stat()
    return _checksum(str(resolved.resolve()), stat.st_mtime_ns, stat.st_size)
