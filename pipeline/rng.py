"""Counter-based random numbers keyed by event identity, independent of chunking.

A random number is a pure function of ``(run, luminosityBlock, event, object index,
purpose)``: the same event gets the same numbers whatever the chunk it falls in, the
number of workers, or the order of processing. The hash is SplitMix64's finaliser;
Gaussians come from the Box-Muller transform of two such uniforms.

Every function here uses only numpy ufuncs and awkward functions, so it runs unchanged on
eager arrays, on typetracers (while dask-awkward plans a graph) and on dask-awkward
collections: awkward hands a dask-awkward collection to dask-awkward's function of the same
name (its ``__awkward_function__`` protocol), and both array kinds implement the ufuncs.
"""

from __future__ import annotations

import hashlib
from typing import Any

import awkward as ak
import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def purpose_key(purpose: str) -> np.uint64:
    """A stable 64-bit key for a purpose string (e.g. ``"jer:AK4PFPuppi"``).

    Examples
    --------
    >>> int(purpose_key("jer")) == int(purpose_key("jer"))
    True
    """
    return np.uint64(int.from_bytes(hashlib.sha256(purpose.encode()).digest()[:8], "little"))


def _mix(x: Any) -> Any:
    x = np.bitwise_xor(x, np.right_shift(x, np.uint64(30))) * _M1
    x = np.bitwise_xor(x, np.right_shift(x, np.uint64(27))) * _M2
    return np.bitwise_xor(x, np.right_shift(x, np.uint64(31)))


def _astype(array: Any, dtype: Any) -> Any:
    """Cast numbers of a numpy, eager, typetracer or lazy array (or a scalar) to ``dtype``."""
    if isinstance(array, np.ndarray):
        return array.astype(dtype)
    if isinstance(array, (int, float, np.generic)):
        return dtype(array)
    return ak.values_astype(array, dtype)  # awkward forwards a dask-awkward collection


def _event_hash(run: Any, lumi: Any, event: Any, purpose: str) -> Any:
    """The hash of ``(purpose, run, lumi, event)``, before the object index is mixed in."""
    with np.errstate(over="ignore"):
        h = _mix(purpose_key(purpose) + _GOLDEN)
        for part in (run, lumi, event):
            h = _mix(np.bitwise_xor(h, _astype(part, np.uint64)) + _GOLDEN)
        return h


def _with_index(h: Any, index: Any) -> Any:
    with np.errstate(over="ignore"):
        return _mix(np.bitwise_xor(h, _astype(index, np.uint64)) + _GOLDEN)


def _to_unit(h: Any) -> Any:
    """Uniform numbers in (0, 1) from the 53 high bits of 64-bit hashes."""
    return (_astype(np.right_shift(h, np.uint64(11)), np.float64) + 0.5) * 2.0**-53


def _box_muller(u1: Any, u2: Any) -> Any:
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def hash_identity(run: Any, lumi: Any, event: Any, index: Any, purpose: str) -> Any:
    """64-bit hash of the identity; ``index`` may be jagged (one entry per object)."""
    return _with_index(_event_hash(run, lumi, event, purpose), index)


def uniform(run: Any, lumi: Any, event: Any, index: Any, purpose: str) -> Any:
    """Uniform numbers in (0, 1), one per ``index`` entry.

    Examples
    --------
    >>> import numpy as np
    >>> u = uniform(np.array([1]), np.array([2]), np.array([3]), np.array([0]), "doc")
    >>> bool(0 < u[0] < 1)
    True
    """
    return _to_unit(hash_identity(run, lumi, event, index, purpose))


def normal(run: Any, lumi: Any, event: Any, index: Any, purpose: str) -> Any:
    """Standard normal numbers, one per ``index`` entry (Box-Muller on two uniforms).

    Examples
    --------
    >>> import numpy as np
    >>> z = normal(np.arange(10000), np.ones(10000), np.ones(10000), np.zeros(10000), "doc")
    >>> abs(float(z.mean())) < 0.05 and abs(float(z.std()) - 1) < 0.05
    True
    """
    u1 = uniform(run, lumi, event, index, purpose + "#1")
    u2 = uniform(run, lumi, event, index, purpose + "#2")
    return _box_muller(u1, u2)


def object_normal(events: Any, collection: Any, purpose: str) -> Any:
    """Standard normals for every object of a jagged ``collection`` of ``events``."""
    index = ak.local_index(collection, axis=1)
    run, lumi, event, _ = ak.broadcast_arrays(events.run, events.luminosityBlock, events.event,
                                              index)
    return normal(run, lumi, event, index, purpose)


def flat_object_normal(run: np.ndarray, lumi: np.ndarray, event: np.ndarray,
                       counts: np.ndarray, purpose: str) -> np.ndarray:
    """:func:`object_normal` on numpy: the normals of ``counts[i]`` objects of event ``i``,
    flat (event after event), the same numbers bit for bit.

    The event part of the hash is computed once per event, not once per object.

    Examples
    --------
    >>> import awkward as ak
    >>> import numpy as np
    >>> ids = [np.array([1, 1]), np.array([1, 1]), np.array([7, 8])]
    >>> flat = flat_object_normal(*ids, np.array([2, 0]), "doc")
    >>> events = ak.zip({"run": ids[0], "luminosityBlock": ids[1], "event": ids[2]})
    >>> jagged = object_normal(events, ak.Array([[1.0, 2.0], []]), "doc")
    >>> bool(np.array_equal(flat, ak.flatten(jagged).to_numpy()))
    True
    """
    counts = np.asarray(counts, dtype=np.int64)
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    index = np.arange(len(starts), dtype=np.int64) - starts
    u1, u2 = (
        _to_unit(_with_index(np.repeat(_event_hash(run, lumi, event, purpose + suffix), counts),
                             index))
        for suffix in ("#1", "#2")
    )
    return np.asarray(_box_muller(u1, u2))
