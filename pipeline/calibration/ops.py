"""The array adapter of the calibrators: the one module of calibration/ that knows dask-awkward.

Every function here takes eager awkward arrays, the typetracers dask-awkward plans with, and
dask-awkward collections, and calls awkward's or dask-awkward's function of the same name
according to its arguments. Calibrators written with these and numpy ufuncs (which both
array kinds implement) run unchanged in the three modes: no calibrator asks which one it
is in. The column plumbing (:mod:`pipeline.calibration.columns`) asks :func:`is_lazy`
where a lazy collection has no length to check.

A calibrator may also take a faster path on eager chunks: :func:`flat_numpy` gives the
counts and flat numpy columns of an eager CPU chunk and ``None`` for a typetracer or a
dask-awkward collection (then the generic path runs, which reads the same columns). This is
the one place that tells the modes apart; :func:`object_normal` uses it.

Examples
--------
>>> import awkward as ak
>>> import dask_awkward as dak
>>> pt = ak.Array([[30.0, 10.0], [], [5.0]])
>>> where(pt > 20, pt, 0.0).tolist()
[[30.0, 0.0], [], [0.0]]
>>> lazy = dak.from_awkward(pt, npartitions=2)
>>> is_lazy(where(lazy > 20, lazy, 0.0)), where(lazy > 20, lazy, 0.0).compute().tolist()
(True, [[30.0, 0.0], [], [0.0]])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import awkward as ak
import dask_awkward as dak
import numpy as np

from pipeline import rng


def is_lazy(array: Any) -> bool:
    """True for a dask-awkward collection; False for an eager or typetracer awkward array."""
    return isinstance(array, dak.Array)


def is_array(value: Any) -> bool:
    """Whether ``value`` is an awkward array (eager or typetracer) or a dask-awkward one."""
    return isinstance(value, (ak.Array, dak.Array))


def _lib(*arrays: Any) -> Any:
    """``dask_awkward`` if any argument is lazy, else ``awkward``."""
    return dak if any(isinstance(a, dak.Array) for a in arrays) else ak


def where(condition: Any, x: Any, y: Any) -> Any:
    """Elementwise ``x if condition else y`` (``ak.where`` / ``dak.where``; ``np.where`` when
    no argument is an awkward array, as on the flat columns of :func:`flat_numpy`)."""
    if not any(is_array(a) for a in (condition, x, y)):
        return np.where(condition, x, y)
    return _lib(condition, x, y).where(condition, x, y)


def fill_none(array: Any, value: Any) -> Any:
    """Replace missing values (``ak.fill_none`` / ``dak.fill_none``)."""
    return _lib(array).fill_none(array, value)


def values_astype(array: Any, dtype: Any) -> Any:
    """Cast numbers (``ak.values_astype`` / ``dak.values_astype``)."""
    return _lib(array).values_astype(array, dtype)


def local_index(array: Any, axis: int = 1) -> Any:
    """Index of each object in its list (``ak.local_index`` / ``dak.local_index``)."""
    return _lib(array).local_index(array, axis=axis)


def argsort(array: Any, axis: int = -1, ascending: bool = True) -> Any:
    """Sorting permutation (``ak.argsort`` / ``dak.argsort``)."""
    return _lib(array).argsort(array, axis=axis, ascending=ascending)


def mask(array: Any, condition: Any) -> Any:
    """Missing where ``condition`` is False (``ak.mask`` / ``dak.mask``)."""
    return _lib(array, condition).mask(array, condition)


def num(array: Any, axis: int = 1) -> Any:
    """Length of each list (``ak.num`` / ``dak.num``)."""
    return _lib(array).num(array, axis=axis)


def delta_r(eta1: Any, phi1: Any, eta2: Any, phi2: Any) -> Any:
    """Distance in (eta, phi), with phi differences folded into [-pi, pi)."""
    dphi = np.mod(phi1 - phi2 + np.pi, 2 * np.pi) - np.pi
    return np.hypot(eta1 - eta2, dphi)


def sum(array: Any, axis: int | None = None) -> Any:
    """Sum (``ak.sum`` / ``dak.sum``)."""
    return _lib(array).sum(array, axis=axis)


def prod(array: Any, axis: int | None = None) -> Any:
    """Product (``ak.prod`` / ``dak.prod``)."""
    return _lib(array).prod(array, axis=axis)


def with_field(array: Any, value: Any, where: str | tuple[str, ...]) -> Any:
    """A new record array with field ``where`` set (``ak.with_field`` / ``dak.with_field``)."""
    return _lib(array, value).with_field(array, value, where=where)


def zip(arrays: dict[str, Any]) -> Any:
    """Records from arrays of the same structure (``ak.zip`` / ``dak.zip``)."""
    return _lib(*arrays.values()).zip(arrays)


def cartesian(arrays: Sequence[Any] | Mapping[str, Any], axis: int = 1,
              nested: bool = False) -> Any:
    """Every pair of objects per event, as tuples (a list of arrays) or records (a dict)
    (``ak.cartesian`` / ``dak.cartesian``)."""
    values = arrays.values() if isinstance(arrays, Mapping) else arrays
    return _lib(*values).cartesian(arrays, axis=axis, nested=nested)


def unzip(array: Any) -> tuple[Any, ...]:
    """The fields of a record or tuple array (``ak.unzip`` / ``dak.unzip``)."""
    return tuple(_lib(array).unzip(array))


def argmin(array: Any, axis: int = -1, keepdims: bool = False) -> Any:
    """Position of the smallest value (``ak.argmin`` / ``dak.argmin``)."""
    return _lib(array).argmin(array, axis=axis, keepdims=keepdims)


def argmax(array: Any, axis: int = -1, keepdims: bool = False) -> Any:
    """Position of the largest value (``ak.argmax`` / ``dak.argmax``)."""
    return _lib(array).argmax(array, axis=axis, keepdims=keepdims)


def is_none(array: Any, axis: int = 0) -> Any:
    """Whether each value is missing (``ak.is_none`` / ``dak.is_none``)."""
    return _lib(array).is_none(array, axis=axis)


def firsts(array: Any, axis: int = 1) -> Any:
    """The first object of each list, or None (``ak.firsts`` / ``dak.firsts``)."""
    return _lib(array).firsts(array, axis=axis)


def flat_numpy(
    columns: Mapping[str, Any],
) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
    """The counts and the flat numpy values of jagged ``columns`` of one collection (lists of
    the same lengths), or ``None`` unless they are eager awkward arrays on the CPU without
    missing values.

    Examples
    --------
    >>> import awkward as ak
    >>> import dask_awkward as dak
    >>> pt = ak.Array([[30.0, 10.0], [], [5.0]])
    >>> counts, flat = flat_numpy({"pt": pt})
    >>> counts.tolist(), flat["pt"].tolist()
    ([2, 0, 1], [30.0, 10.0, 5.0])
    >>> flat_numpy({"pt": dak.from_awkward(pt, npartitions=1)}) is None
    True
    >>> flat_numpy({"pt": ak.mask(pt, pt > 6)}) is None
    True
    """
    if not all(_eager(a) for a in columns.values()):
        return None
    counts = eager_counts(next(iter(columns.values())))
    flat = {name: ak.to_numpy(ak.flatten(a, axis=1)) for name, a in columns.items()}
    if counts is None or any(isinstance(a, np.ma.MaskedArray) for a in flat.values()):
        return None  # missing values: left to the generic path
    return counts, flat


def _eager(array: Any) -> bool:
    return isinstance(array, ak.Array) and ak.backend(array) == "cpu"


def eager_counts(collection: Any) -> np.ndarray | None:
    """The list lengths of an eager CPU awkward ``collection``, or ``None`` for a typetracer
    or a dask-awkward collection.

    Examples
    --------
    >>> import awkward as ak
    >>> eager_counts(ak.Array([[1, 2], [], [3]])).tolist()
    [2, 0, 1]
    >>> eager_counts(ak.Array(ak.Array([[1, 2], []]).layout.to_typetracer())) is None
    True
    """
    if not _eager(collection):
        return None
    return np.asarray(ak.num(collection, axis=1), dtype=np.int64)


def flat_take(index: np.ndarray, counts: np.ndarray,
              target_counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where the flat objects (``counts`` per event) point into flat targets
    (``target_counts`` per event) through their per-event ``index``: the positions (0 where
    invalid) and whether the index is valid (``0 <= index < target_counts``).

    Examples
    --------
    >>> import numpy as np
    >>> at, valid = flat_take(np.array([1, -1, 0]), np.array([2, 1]), np.array([2, 0]))
    >>> at.tolist(), valid.tolist()
    ([1, 0, 0], [True, False, False])
    """
    event_of = np.repeat(np.arange(len(counts)), counts)
    valid = (index >= 0) & (index < target_counts[event_of])
    starts = np.cumsum(target_counts) - target_counts
    return np.where(valid, starts[event_of] + index, 0), valid


def per_object(array: Any, counts: np.ndarray) -> np.ndarray:
    """The per-event values of an eager ``array`` repeated for each of ``counts`` objects.

    Examples
    --------
    >>> import awkward as ak
    >>> per_object(ak.Array([1.5, 2.5, 3.5]), np.array([2, 0, 1])).tolist()
    [1.5, 1.5, 3.5]
    """
    return np.repeat(ak.to_numpy(array), counts)


def unflatten(values: np.ndarray, counts: np.ndarray) -> ak.Array:
    """Flat per-object ``values`` as a jagged array with ``counts`` objects per event.

    Examples
    --------
    >>> unflatten(np.array([1.0, 2.0, 3.0]), np.array([2, 0, 1])).tolist()
    [[1.0, 2.0], [], [3.0]]
    """
    return ak.unflatten(values, counts)


def object_normal(events: Any, collection: Any, purpose: str) -> Any:
    """:func:`pipeline.rng.object_normal`, computed on flat numpy for an eager chunk (the
    same numbers bit for bit, several times faster).

    Examples
    --------
    >>> import awkward as ak
    >>> events = ak.zip({"run": [1, 1], "luminosityBlock": [2, 2], "event": [7, 8]})
    >>> jets = ak.Array([[30.0, 10.0], []])
    >>> object_normal(events, jets, "doc").tolist() == rng.object_normal(
    ...     events, jets, "doc").tolist()
    True
    """
    counts = eager_counts(collection)
    if counts is None:
        return rng.object_normal(events, collection, purpose)
    run, lumi, event = (ak.to_numpy(events[name]) for name in
                        ("run", "luminosityBlock", "event"))
    return unflatten(rng.flat_object_normal(run, lumi, event, counts, purpose), counts)
