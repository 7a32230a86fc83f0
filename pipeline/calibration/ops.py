"""awkward functions that dispatch to dask-awkward for lazy arrays.

Calibrators written with these (and numpy ufuncs) run unchanged on eager arrays, on the
typetracers dask-awkward uses for planning, and on dask-awkward collections.
"""

from __future__ import annotations

from typing import Any

import awkward as ak
import dask_awkward as dak
import numpy as np


def _lib(*arrays: Any) -> Any:
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


def with_field(array: Any, value: Any, where: str) -> Any:
    """A new record array with field ``where`` set (``ak.with_field`` / ``dak.with_field``)."""
    return _lib(array, value).with_field(array, value, where=where)


def zip(arrays: dict[str, Any]) -> Any:
    """Records from arrays of the same structure (``ak.zip`` / ``dak.zip``)."""
    return _lib(*arrays.values()).zip(arrays)


def cartesian(arrays: list[Any], axis: int = 1, nested: bool = False) -> Any:
    """Every pair of objects per event (``ak.cartesian`` / ``dak.cartesian``)."""
    return _lib(*arrays).cartesian(arrays, axis=axis, nested=nested)


def unzip(array: Any) -> tuple[Any, ...]:
    """The fields of a record or tuple array (``ak.unzip`` / ``dak.unzip``)."""
    return tuple(_lib(array).unzip(array))


def argmin(array: Any, axis: int = -1, keepdims: bool = False) -> Any:
    """Position of the smallest value (``ak.argmin`` / ``dak.argmin``)."""
    return _lib(array).argmin(array, axis=axis, keepdims=keepdims)


def firsts(array: Any, axis: int = 1) -> Any:
    """The first object of each list, or None (``ak.firsts`` / ``dak.firsts``)."""
    return _lib(array).firsts(array, axis=axis)
