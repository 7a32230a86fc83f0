"""The array adapter of the calibrators: the one module of calibration/ that knows dask-awkward.

Every function here takes eager awkward arrays, the typetracers dask-awkward plans with, and
dask-awkward collections, and calls awkward's or dask-awkward's function of the same name
according to its arguments. Calibrators written with these and numpy ufuncs (which both
array kinds implement) run unchanged in the three modes: no calibrator asks which one it
is in. The column plumbing (:mod:`pipeline.calibration.columns`) asks :func:`is_lazy`
where a lazy collection has no length to check.

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
    """Elementwise ``x if condition else y`` (``ak.where`` / ``dak.where``)."""
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
