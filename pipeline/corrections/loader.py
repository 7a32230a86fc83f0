"""Load correctionlib payloads once per process and look corrections up by name.

:func:`get_correction` and :func:`get_compound` return an :class:`Evaluator`: the
correction compiled into numpy kernels (:mod:`pipeline.corrections.compiled`), with
correctionlib's own object as ``reference`` for what the kernels do not compile (said once
per correction in the log) and for the errors correctionlib raises on refused values. The
reference is loaded only when it is used. ``CALIBREW_COMPILED_CORRECTIONS=0`` in the
environment evaluates everything with correctionlib.

Compiled trees are cached on disk, under ``cache_dir() / "corrections"``: one pickle per
payload (its SHA-256), correction and scalar arguments, and one index of the payload's
corrections, all keyed also by this package's source, numpy's version and the pickle
protocol. A worker whose corrections are all cached neither parses the payload's JSON nor
compiles. Files are written to a temporary name, then renamed (workers write at once); a
cache that cannot be read or written means compiling, never an error.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import gzip
import hashlib
import json
import logging
import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import awkward as ak
import correctionlib
import dask_awkward as dak
import numpy as np

from pipeline.corrections.compiled import (
    CompiledCompound,
    CompiledCorrection,
    Fixed,
    compile_compound,
    compile_root,
    signature,
)
from pipeline.corrections.nodes import Node, NotCompiled, RefusedValue
from pipeline.errors import InputFileError, UnknownNameError
from pipeline.inputs.datafiles import cache_dir, find_data_file


@functools.lru_cache(maxsize=64)
def _load(path: str, mtime_ns: int, size: int) -> correctionlib.highlevel.CorrectionSet:
    try:
        return correctionlib.CorrectionSet.from_file(path)
    except Exception as err:
        raise InputFileError(f"cannot read correction payload {path}: {err}") from err


def load_correction_set(path: str | os.PathLike[str]) -> correctionlib.highlevel.CorrectionSet:
    """Return the :class:`correctionlib.CorrectionSet` in ``path``, cached per process.

    ``path`` may be a data-file name (resolved by :func:`pipeline.inputs.datafiles.find_data_file`).
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


LOG = logging.getLogger(__name__)
COMPILED_ENV = "CALIBREW_COMPILED_CORRECTIONS"


def compiled_enabled() -> bool:
    """Whether corrections are evaluated by the compiled kernels (the default)."""
    return os.environ.get(COMPILED_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


class Evaluator:
    """A correction evaluated by compiled kernels, by correctionlib where they cannot.

    ``evaluate`` takes what correctionlib's ``evaluate`` takes (scalars, numpy arrays,
    awkward arrays, typetracers, dask-awkward arrays: those partition by partition). Other
    attributes (``name``, ``inputs``, ...) are the correctionlib object's, ``reference``,
    loaded on first use.

    Examples
    --------
    >>> jec = get_compound("jet_jerc_Summer22_V3.json.gz",
    ...                    "Summer22_22Sep2023_V3_MC_L1L2L3Res_AK4PFPuppi")
    >>> jec.compiled is not None
    True
    >>> args = (0.5, 0.1, 40.0, 20.0)  # area, eta, raw pt, rho
    >>> abs(jec.evaluate(*args) / jec.reference.evaluate(*args) - 1) < 1e-12
    True
    """

    def __init__(self, compiled: CompiledCorrection | CompiledCompound | None,
                 source: tuple[str, str, bool], reference: Any = None) -> None:
        self.compiled = compiled
        self.source = source  # (payload, name, compound): how a worker finds it again
        self._reference = reference

    @property
    def reference(self) -> Any:
        """correctionlib's object for this correction (its payload loaded on first use)."""
        if self._reference is None:
            self._reference = _reference(*self.source)
        return self._reference

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in ("compiled", "source"):  # not yet set (unpickling)
            raise AttributeError(name)
        return getattr(self.reference, name)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_evaluator, self.source)

    def evaluate(self, *args: Any) -> Any:
        compiled = self.compiled
        if compiled is not None and any(isinstance(a, dak.Array) for a in args):
            # The one dask-awkward branch of corrections/ (below calibration/ and its array
            # adapter): not an array operation but how a lazy collection is evaluated, each
            # partition through the kernels as an eager chunk would be (correctionlib's own
            # dask-awkward path would bypass them).
            return dak.map_partitions(_evaluate_partition, self, *args,
                                      label=f"correction-{self.source[1]}")
        if compiled is None:
            return self.reference.evaluate(*args)
        try:
            if any(isinstance(a, ak.Array) for a in args):
                return _evaluate_awkward(compiled.evaluate, args)
            return compiled.evaluate(*args)
        except (RefusedValue, NotCompiled):
            return self.reference.evaluate(*args)  # correctionlib's result or its error

    def kernels(self, *args: Any) -> np.ndarray:
        """Evaluate numpy arguments by the compiled kernels alone: :meth:`evaluate`'s result
        where it comes from them; :class:`~pipeline.corrections.nodes.RefusedValue` or
        :class:`~pipeline.corrections.nodes.NotCompiled` where :meth:`evaluate` turns to
        correctionlib (a value the kernels refuse, a correction they do not compile)."""
        if self.compiled is None:
            raise NotCompiled(f"{self.source[1]} is evaluated by correctionlib")
        return np.asarray(self.compiled.evaluate(*args), dtype=np.float64)

    def binned_by(self, position: int, *args: Any) -> np.ndarray | None:
        """The sorted edges through which alone the result depends on argument ``position``
        (:meth:`~pipeline.corrections.compiled.CompiledCorrection.binned_by`);
        ``None`` where it depends on it otherwise, or is not known (a correction evaluated by
        correctionlib, a compound correction).
        """
        compiled = self.compiled
        if not isinstance(compiled, CompiledCorrection):
            return None
        try:
            return compiled.binned_by(position, *args)
        except (RefusedValue, NotCompiled):
            return None


def _evaluate_partition(evaluator: Evaluator, *args: Any) -> Any:
    return evaluator.evaluate(*args)


def _evaluate_awkward(function: Any, args: tuple[Any, ...]) -> ak.Array:
    """Evaluate ``function`` on the numpy leaves of broadcast awkward arguments."""
    positions = [i for i, a in enumerate(args) if not isinstance(a, (str, int, float))]
    arrays = ak.broadcast_arrays(*(args[i] for i in positions))

    def action(layouts: Any, **kwargs: Any) -> Any:
        if not isinstance(layouts, (list, tuple)):  # one array: one layout
            layouts = (layouts,)
        if not all(isinstance(x, ak.contents.NumpyArray) for x in layouts):
            return None
        call = list(args)
        for i, layout in zip(positions, layouts):
            call[i] = ak.to_numpy(ak.typetracer.length_zero_if_typetracer(layout))
        out = ak.contents.NumpyArray(np.asarray(function(*call), dtype=np.float64))
        if ak.backend(*layouts) == "typetracer":
            return out.to_typetracer(forget_length=True)
        return out

    return ak.transform(action, *arrays)


@functools.lru_cache(maxsize=2)  # parsed JSON is large (80 MB for the JERC payload)
def _payload(path: str, mtime_ns: int, size: int) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
        data: dict[str, Any] = json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b"
                                          else raw)
    except (OSError, ValueError) as err:
        raise InputFileError(f"cannot read correction payload {path}: {err}") from err
    return data


# The disk cache of compiled trees ---------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _source_digest() -> str:
    """SHA-256 of this package's source (the compiled trees' classes and compiler)."""
    digest = hashlib.sha256()
    for module in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(module.name.encode() + b"\0" + module.read_bytes())
    return digest.hexdigest()


@functools.lru_cache(maxsize=256)
def _cache_key(path: str, mtime_ns: int, size: int) -> str:
    """The cache key of a payload: its SHA-256, the package's source, numpy, pickle."""
    parts = (_checksum(path, mtime_ns, size), _source_digest(), np.__version__,
             str(pickle.HIGHEST_PROTOCOL))
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _cache_file(key: str, *entry: Any) -> Path:
    name = hashlib.sha256(repr((key, *entry)).encode()).hexdigest()
    return cache_dir() / "corrections" / f"{name}.pickle"


def _read_cache(path: Path, expected: type) -> Any:
    """The object pickled in ``path``, or None if absent, unreadable or not ``expected``."""
    try:
        value = pickle.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except Exception as err:  # a corrupt entry: any error unpickling it
        LOG.debug("ignoring the corrupt correction cache entry %s: %s", path, err)
        return None
    return value if isinstance(value, expected) else None


def _write_cache(path: Path, value: Any) -> None:
    """Pickle ``value`` into ``path`` through a temporary file; failures are only logged."""
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.stem}.",
                                         suffix=".tmp", delete=False) as fh:
            temporary = Path(fh.name)
            pickle.dump(value, fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(temporary, path)
    except Exception as err:  # read-only or full disk, an unpicklable tree
        LOG.debug("cannot write the correction cache entry %s: %s", path, err)
        if temporary is not None:
            with contextlib.suppress(OSError):
                temporary.unlink()


@dataclass(frozen=True)
class _Index:
    """A payload's corrections (name: input names and types) and compounds (name: JSON)."""

    corrections: dict[str, tuple[tuple[str, ...], tuple[str, ...]]]
    compounds: dict[str, dict[str, Any]]


@functools.lru_cache(maxsize=64)
def _index(path: str, mtime_ns: int, size: int) -> _Index:
    """The index of a payload, from the disk cache or from its JSON (then cached)."""
    cached = _cache_file(_cache_key(path, mtime_ns, size), "index")
    index = _read_cache(cached, _Index)
    if index is None:
        payload = _payload(path, mtime_ns, size)
        index = _Index({c["name"]: signature(c) for c in payload.get("corrections") or []},
                       {c["name"]: c for c in payload.get("compound_corrections") or []})
        _write_cache(cached, index)
    return index


@dataclass(frozen=True)
class _CachedRoots:
    """``compile_root`` of a correction: from the disk cache, else compiled and cached."""

    path: str
    mtime_ns: int
    size: int
    name: str

    def __call__(self, fixed: Fixed) -> Node:
        cached = _cache_file(_cache_key(self.path, self.mtime_ns, self.size), "root",
                             self.name, fixed)
        root = _read_cache(cached, Node)
        if root is None:
            payload = _payload(self.path, self.mtime_ns, self.size)
            spec = next(c for c in payload["corrections"] if c["name"] == self.name)
            root = compile_root(spec, fixed)
            _write_cache(cached, root)
        return root


@functools.lru_cache(maxsize=1024)
def _compiled(path: str, mtime_ns: int, size: int, name: str,
              compound: bool) -> CompiledCorrection | CompiledCompound | None:
    index = _index(path, mtime_ns, size)
    try:
        if compound:
            spec = index.compounds[name]
            members = {}
            for member in spec["stack"]:
                compiled = _compiled(path, mtime_ns, size, member, False)
                if compiled is None:
                    raise NotCompiled(f"its constituent {member!r} is not compiled")
                assert isinstance(compiled, CompiledCorrection)
                members[member] = compiled
            return compile_compound(spec, members)
        return CompiledCorrection(name, *index.corrections[name],
                                  _CachedRoots(path, mtime_ns, size, name))
    except NotCompiled as err:
        LOG.warning("correction %r of %s is evaluated by correctionlib, not by calibrew's "
                    "compiled kernels: %s", name, path, err)
        return None


def _kind(compound: bool) -> str:
    return "compound correction" if compound else "correction"


def _reference(path: str | os.PathLike[str], name: str, compound: bool) -> Any:
    """correctionlib's object for the correction ``name`` of ``path``."""
    cset = load_correction_set(path)
    return _lookup(cset.compound if compound else cset, name, path, _kind(compound))


def _evaluator(path: str | os.PathLike[str], name: str, compound: bool) -> Evaluator:
    source = (str(path), name, compound)
    if not compiled_enabled():
        return Evaluator(None, source, _reference(path, name, compound))
    resolved = find_data_file(path)
    stat = resolved.stat()
    key = (str(resolved.resolve()), stat.st_mtime_ns, stat.st_size)
    index = _index(*key)
    _lookup(index.compounds if compound else index.corrections, name, path, _kind(compound))
    return Evaluator(_compiled(*key, name, compound), source)


def get_correction(path: str | os.PathLike[str], name: str) -> Evaluator:
    """The correction ``name`` of the payload at ``path``; an error names both if absent."""
    return _evaluator(path, name, compound=False)


def get_compound(path: str | os.PathLike[str], name: str) -> Evaluator:
    """The compound correction ``name`` of the payload at ``path``."""
    return _evaluator(path, name, compound=True)


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
