"""A correction evaluated again on the same objects, where one real input changed.

The jet variations of a chunk change every jet's pt and leave its flavour, |eta| and
b-tag discriminant alone: the b-tag shape factor of a jet whose pt stays in the same pt bin
of the payload is the one already computed. :func:`evaluate_by_bin` keeps, per object, the
result of the first call on the objects and the bin of the varying input it was computed
in (the payload's :func:`~pipeline.corrections.nodes.binned_by` edges), and evaluates again
only the objects whose bin changed: the same numbers, bit for bit, as evaluating them all.

Examples
--------
>>> from pipeline.corrections.loader import get_correction
>>> btag = get_correction("pog/2022_Summer22/BTV_btagging.json.gz", "deepJet_shape")
>>> flavour, abseta, disc = np.array([5, 0, 4]), np.array([0.3, 1.2, 2.0]), np.array([
...     0.9, 0.1, 0.5])
>>> jets = np.arange(3)
>>> def sf(pt):
...     def arguments(which):
...         return "central", flavour[which], abseta[which], pt[which], disc[which]
...     return evaluate_by_bin(btag, arguments, 3, pt, (flavour, abseta, disc), jets)
>>> nominal = sf(np.array([30.0, 45.0, 250.0]))
>>> varied = sf(np.array([31.0, 55.0, 260.0]))  # the second jet's pt bin changes
>>> bool((varied == btag.evaluate("central", flavour, abseta,
...                               np.array([31.0, 55.0, 260.0]), disc)).all())
True
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np

from pipeline.corrections.loader import Evaluator
from pipeline.corrections.nodes import NotCompiled, RefusedValue
from pipeline.corrections.walker import array_identity, array_owner


@numba.njit(cache=True, nogil=True)
def _bin(x: float, edges: np.ndarray) -> int:  # pragma: no cover (compiled)
    """A value's bin: how many edges are not above it (``std::upper_bound``; NaN: all)."""
    b = 0
    for e in edges:
        b += not (x < e)
    return b


@numba.njit(cache=True, nogil=True)
def _bins(x: np.ndarray, edges: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover
    """Each value's :func:`_bin`."""
    for j in range(len(x)):
        out[j] = _bin(x[j], edges)


@numba.njit(cache=True, nogil=True)
def _reuse(x: np.ndarray, edges: np.ndarray, positions: np.ndarray, bins: np.ndarray,
           known: np.ndarray, out: np.ndarray, again: np.ndarray) -> int:  # pragma: no cover
    """``out[j]``: the known result of element ``j``'s object where its bin is the known
    one; the other elements into ``again``, their number returned."""
    n_again = 0
    for j in range(len(x)):
        p = positions[j]
        if bins[p] == _bin(x[j], edges):
            out[j] = known[p]
        else:
            again[n_again] = j
            n_again += 1
    return n_again


@dataclass(frozen=True)
class _Known:
    """Per object: the bin of the varying input of its known result (-1: none), the result."""

    owners: tuple[weakref.ref[np.ndarray], ...]
    edges: np.ndarray
    bins: np.ndarray
    values: np.ndarray

    @property
    def valid(self) -> bool:
        """Whether the objects' arrays still live (their memory cannot hold other values)."""
        return all(owner() is not None for owner in self.owners)


def evaluate_by_bin(evaluator: Evaluator, arguments: Callable[[Any], Sequence[Any]],
                    varying: int, values: np.ndarray, objects: Sequence[np.ndarray],
                    positions: np.ndarray) -> np.ndarray:
    """``evaluator.evaluate(*arguments(slice(None)))`` on arrays of one element per object
    (``arguments(which)`` gives the arguments of the elements ``which``, an index array or a
    slice), where an element whose argument ``varying`` (``values``) lies in the same bin
    as at the first call on the same objects keeps that call's result.

    Only results of the compiled kernels are kept: where they refuse a value (then
    :meth:`Evaluator.evaluate` takes correctionlib's results for all the elements, which
    may differ from theirs in the last bit), every element is evaluated by correctionlib.
    The kernels' result of an element depends on that element alone, and whether they
    refuse it on its bins alone: an element whose bins did not change is not refused.

    ``objects`` are the arrays, one value per object, that the arguments other than
    ``varying`` are taken from, and ``positions`` each element's object in them: the caller
    guarantees that, as long as these arrays live, those arguments of an element depend on
    its object alone. Evaluated in full where the result depends on ``varying`` otherwise
    than through bins (:meth:`Evaluator.binned_by`). One record per thread for the last
    two sets of objects (dropped when their arrays are freed).
    """
    none = arguments(np.empty(0, dtype=np.intp))  # the scalar arguments, with empty arrays
    edges = evaluator.binned_by(varying, *none)
    if edges is None or len(positions) == 0:
        return np.asarray(evaluator.evaluate(*arguments(slice(None))), dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    key = (evaluator.source, varying, *(a for a in none if isinstance(a, (str, int, float))),
           *(array_identity(a) for a in objects))
    recent = _recent()
    known = recent.get(key)
    if known is None or not known.valid or not np.array_equal(known.edges, edges):
        everything = arguments(slice(None))
        try:
            out = evaluator.kernels(*everything)
        except (RefusedValue, NotCompiled):  # correctionlib's results, for all: none kept
            return np.asarray(evaluator.reference.evaluate(*everything), dtype=np.float64)
        recent[key] = _record(key, objects, edges, positions, values, out)
        while len(recent) > 2:
            recent.popitem(last=False)
        return out
    recent.move_to_end(key)
    out = np.empty(len(values))
    again = np.empty(len(values), dtype=np.intp)
    again = again[:_reuse(values, edges, positions, known.bins, known.values, out, again)]
    if again.size:
        try:
            out[again] = evaluator.kernels(*arguments(again))
        except (RefusedValue, NotCompiled):  # then evaluate() takes correctionlib's, for all
            return np.asarray(evaluator.reference.evaluate(*arguments(slice(None))),
                              dtype=np.float64)
    return out


def _record(key: tuple[Any, ...], objects: Sequence[np.ndarray], edges: np.ndarray,
            positions: np.ndarray, values: np.ndarray, out: np.ndarray) -> _Known:
    recent = _recent()

    def forget(_: Any) -> None:  # an object array was freed: its record goes with it
        recent.pop(key, None)

    size = len(objects[0])
    bins = np.empty(len(values), dtype=np.int64)
    _bins(values, edges, bins)
    known = _Known(tuple(weakref.ref(array_owner(a), forget) for a in objects), edges,
                   np.full(size, -1, dtype=np.int8 if len(edges) < 127 else np.int64),
                   np.zeros(size))
    known.bins[positions] = bins
    known.values[positions] = out
    return known


_THREAD = threading.local()


def _recent() -> OrderedDict[tuple[Any, ...], _Known]:
    if not hasattr(_THREAD, "known"):
        _THREAD.known = OrderedDict()
    known: OrderedDict[tuple[Any, ...], _Known] = _THREAD.known
    return known


__all__ = ["evaluate_by_bin"]
