"""The array adapter of the calibrators: the one module of calibration/ that knows dask-awkward.

Every function here takes eager awkward arrays, the typetracers dask-awkward plans with, and
dask-awkward collections, and calls awkward's or dask-awkward's function of the same name
according to its arguments. Calibrators written with these and numpy ufuncs (which both
array kinds implement) run unchanged in the three modes: no calibrator asks which one it
is in. The column plumbing (:mod:`pipeline.calibration.columns`) asks :func:`is_lazy`
where a lazy collection has no length to check.

A calibrator (or a cut, or a weight) may also take a faster path on eager chunks:
:func:`flat_numpy` gives the counts and flat numpy columns of an eager CPU chunk,
:func:`flat_positions` the flat values of a list array as positions in the buffer under it
(shared by the variations that leave the field alone), :func:`eager_values` the numpy values
of one number per event; each gives ``None`` (or the array as it is) for a typetracer or a
dask-awkward collection, and the generic path then runs, reading the same columns. The flat
results go back through :func:`list_sums`, :func:`list_products` (awkward's order of
addition and multiplication: the same bits) and :func:`as_array`. This is
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


def list_sums(values: Any, counts: np.ndarray | None = None) -> Any:
    """Per-list sums: of jagged ``values`` (``ak.sum`` / ``dak.sum`` on axis 1), or of flat
    numpy ``values`` with ``counts`` entries per list. Flat float64 values are summed with
    ``np.bincount``, which adds the entries of a list one after the other from 0.0 as
    awkward's sum does: the same bits; other flat dtypes go through ``ak.sum``.

    Examples
    --------
    >>> import awkward as ak
    >>> list_sums(ak.Array([[1.0, 2.0], [], [3.0]])).tolist()
    [3.0, 0.0, 3.0]
    >>> list_sums(np.array([1.0, 2.0, 3.0]), np.array([2, 0, 1])).tolist()
    [3.0, 0.0, 3.0]
    """
    if counts is None:
        return sum(values, axis=1)
    if values.dtype != np.float64:
        return ak.sum(unflatten(values, counts), axis=1)
    return as_array(np.bincount(list_index(counts), weights=values, minlength=len(counts)))


def list_counts(mask: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """How many of the flat objects of each list pass ``mask``, of lists of ``counts``
    objects (as ``np.bincount(list_index(counts)[mask])``).

    Examples
    --------
    >>> list_counts(np.array([True, False, True]), np.array([2, 0, 1])).tolist()
    [1, 0, 1]
    """
    passed = np.concatenate([[0], np.cumsum(mask, dtype=np.int64)])
    ends = np.cumsum(counts, dtype=np.int64)
    return passed[ends] - passed[ends - counts]


def list_index(counts: np.ndarray) -> np.ndarray:
    """The list of each flat object, of lists of ``counts`` objects.

    Examples
    --------
    >>> list_index(np.array([2, 0, 1])).tolist()
    [0, 0, 2]
    """
    return np.repeat(np.arange(len(counts)), counts)


def list_products(values: np.ndarray, counts: np.ndarray) -> ak.Array:
    """Per-list products of flat numpy ``values`` with ``counts`` entries per list. Float64
    values are multiplied one after the other from 1.0, as awkward's product does: the same
    bits; other dtypes go through ``ak.prod``.

    Examples
    --------
    >>> list_products(np.array([2.0, 3.0, 5.0]), np.array([2, 0, 1])).tolist()
    [6.0, 1.0, 5.0]
    """
    if values.dtype != np.float64:
        return ak.prod(unflatten(values, counts), axis=1)
    out = np.ones(len(counts), dtype=np.float64)
    starts = np.cumsum(counts) - counts
    for position in range(int(counts.max(initial=0))):
        lists = np.flatnonzero(counts > position)
        out[lists] *= values[starts[lists] + position]
    return as_array(out)


def eager_values(array: Any) -> Any:
    """The numpy values of an eager CPU awkward array of one number per event (no missing
    values), so that arithmetic on it runs in numpy; any other array is returned as it is.
    :func:`as_array` makes an awkward array of the result again.

    Examples
    --------
    >>> import awkward as ak
    >>> import dask_awkward as dak
    >>> type(eager_values(ak.Array([1.0, 2.0]))).__name__
    'ndarray'
    >>> lazy = dak.from_awkward(ak.Array([1.0, 2.0]), npartitions=1)
    >>> eager_values(lazy) is lazy
    True
    """
    layout = array.layout if isinstance(array, ak.Array) else None
    if isinstance(layout, ak.contents.NumpyArray) and isinstance(layout.data, np.ndarray) \
            and layout.data.ndim == 1:
        return layout.data  # no missing values (an option type is another layout)
    return array


def as_array(values: Any) -> Any:
    """An awkward array of numpy ``values`` (see :func:`eager_values`); awkward and
    dask-awkward arrays are returned as they are.

    Examples
    --------
    >>> as_array(np.array([1.0, 2.0])).tolist()
    [1.0, 2.0]
    """
    if isinstance(values, np.ndarray):  # wrapped directly: ak.Array(values) takes far longer
        return ak.Array(ak.contents.NumpyArray(values))
    return values


def flat_positions(array: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(counts, values, at)`` of an eager CPU list array of numbers: ``counts`` objects per
    list and the flat values in list order ``values[at]``, where ``values`` is the numpy
    buffer under the lists (and under the index of a collection re-sorted by pt). The
    variations of a collection that leave a field alone share its buffer: a result computed
    on the buffer once serves them all. ``None`` for anything else (typetracers,
    dask-awkward collections, missing values, other layouts): the generic path then runs.

    Examples
    --------
    >>> import awkward as ak
    >>> jets = ak.Array([[{"eta": 0.5}, {"eta": -1.0}], [], [{"eta": 2.0}]])
    >>> counts, values, at = flat_positions(jets[ak.argsort(jets.eta, axis=1)].eta)
    >>> counts.tolist(), values[at].tolist(), at.tolist()
    ([2, 0, 1], [-1.0, 0.5, 2.0], [1, 0, 2])
    >>> values is flat_positions(jets.eta)[1]  # the buffer of the unsorted jets
    True
    """
    if not _eager(array):
        return None
    layout = array.layout
    if not isinstance(layout, ak.contents.ListOffsetArray):
        return None
    offsets, content = layout.offsets.data, layout.content
    start, stop = int(offsets[0]), int(offsets[-1])
    if isinstance(content, ak.contents.IndexedArray):  # objects taken in another order
        at = np.asarray(content.index.data)[start:stop]
        content = content.content
    else:
        at = np.arange(start, stop)
    if not isinstance(content, ak.contents.NumpyArray) or content.data.ndim != 1:
        return None
    return np.diff(offsets), content.data, at


def flat_positions_of(
    arrays: Sequence[Any],
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None:
    """The :func:`flat_positions` of several list arrays with the same list lengths (the
    fields of one collection), or ``None`` unless each has them.

    Examples
    --------
    >>> import awkward as ak
    >>> jets = ak.Array([[{"pt": 30.0, "eta": 0.5}], []])
    >>> [values[at].tolist() for _, values, at in flat_positions_of([jets.pt, jets.eta])]
    [[30.0], [0.5]]
    """
    out: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for array in arrays:
        flat = flat_positions(array)
        if flat is None or (out and not np.array_equal(flat[0], out[0][0])):
            return None
        out.append(flat)
    return out


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
    event_of = list_index(counts)
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
