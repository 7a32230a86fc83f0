"""Nested tables of a compiled correction walked per element by one numba loop.

A correction's compiled tree (:mod:`pipeline.corrections.compiled`) of nested
:class:`~pipeline.corrections.nodes.Table` nodes whose sub-tables differ (the b-tag
shape payload: flavour, then |eta| bins whose pt bins differ, then discriminant bins whose
edges differ again) would take one numpy pass per sub-table. :class:`WalkedTable` encodes the
tree into flat arrays and finds every element's leaf in one compiled loop, with
correctionlib's bin search (``std::upper_bound``) and flow rules; the leaves (constants,
formula families) are then evaluated on whole arrays as before.

Examples
--------
>>> import numpy as np
>>> from pipeline.corrections.loader import get_correction
>>> btag = get_correction("pog/2022_Summer22/BTV_btagging.json.gz", "deepJet_shape")
>>> args = ("central", np.array([0, 4, 5]), np.array([0.3, 1.2, 2.0]),
...         np.array([30.0, 80.0, 300.0]), np.array([0.1, 0.5, 0.95]))
>>> bool(np.allclose(btag.evaluate(*args), btag.reference.evaluate(*args), rtol=1e-12, atol=0))
True
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np

from pipeline.corrections.nodes import (
    Axis,
    Children,
    Constant,
    FormulaNode,
    Node,
    RefusedValue,
    Table,
    Values,
)

_KIND_EDGES, _KIND_UNIFORM, _KIND_KEYS = 0, 1, 2
_FLOW = {"clamp": 0, "error": 1, "value": 2}


@numba.njit(cache=True, nogil=True)
def _walk(values: np.ndarray, table_axes: np.ndarray, table_children: np.ndarray,
          table_any_default: np.ndarray, axis_spec: np.ndarray, numbers: np.ndarray,
          children: np.ndarray, leaf: np.ndarray) -> int:  # pragma: no cover (compiled)
    """Each element's leaf into ``leaf``; returns 1 if correctionlib would refuse a value."""
    n = values.shape[1]
    for j in range(n):
        node = 0
        while True:
            flat = 0
            outside = False
            for k in range(table_axes[node, 0], table_axes[node, 1]):
                row, kind, flow, start, count, size = (
                    axis_spec[k, 0], axis_spec[k, 1], axis_spec[k, 2], axis_spec[k, 3],
                    axis_spec[k, 4], axis_spec[k, 5])
                x = values[row, j]
                if kind == 2:  # category keys, then the default slot
                    local = count
                    for i in range(count):
                        if numbers[start + i] == x:
                            local = i
                            break
                    if local == count and axis_spec[k, 6] == 0:
                        return 1
                else:
                    if kind == 1:  # uniform: n, low, high
                        nb = int(numbers[start])
                        low, high = numbers[start + 1], numbers[start + 2]
                        below = x < low
                        above = not below and not (x < high)  # x >= high, or NaN
                        if not below and not above:
                            local = int(nb * ((x - low) / (high - low)))
                    else:
                        nb = count - 1
                        edges = numbers[start:start + count]  # a slice: the loop vectorizes
                        lo = 0
                        for i in range(count):  # std::upper_bound, without branches
                            lo += not (x < edges[i])
                        below = lo == 0
                        above = lo == count
                        local = lo - 1
                    if below or above:
                        if flow == 0:
                            local = 0 if below else nb - 1
                        elif flow == 1:
                            return 1
                        else:
                            local = nb
                            outside = True
                flat = flat * size + local
            if table_any_default[node] and outside:
                flat = table_axes[node, 2]
            child = children[table_children[node] + flat]
            if child >= 0:
                node = child
            else:
                leaf[j] = -child - 1
                break
    return 0


@dataclass(frozen=True, eq=False)
class WalkedTable(Node):
    """A tree of tables evaluated by :func:`_walk`, then its leaves on whole arrays."""

    rows: tuple[int, ...]  # correction inputs read by the axes, one row each
    table_axes: np.ndarray
    table_children: np.ndarray
    table_any_default: np.ndarray
    axis_spec: np.ndarray
    numbers: np.ndarray
    children: np.ndarray
    leaves: Children
    digest: bytes = field(init=False)

    def __post_init__(self) -> None:
        structure = hashlib.sha1(repr(self.rows).encode())
        for array in (self.table_axes, self.table_children, self.table_any_default,
                      self.axis_spec, self.numbers, self.children):
            structure.update(array.tobytes())
        object.__setattr__(self, "digest", structure.digest())

    def __call__(self, values: Values, n: int) -> np.ndarray:
        if n == 0:  # nothing to walk (planning evaluates on empty arrays): numba stays idle
            return self.leaves(np.empty(0, dtype=np.int64), values, n)
        inputs = [values[i] for i in self.rows]
        key = (self.digest, n, *(array_identity(a) for a in inputs))
        recent = _recent_walks()
        owners, leaf = recent.get(key, ((), None))
        if leaf is not None and not all(o() is not None for o in owners):
            leaf = None  # an input's memory was freed: its address may hold other values
        if leaf is None:
            matrix = np.empty((len(self.rows), n))
            for r, value in enumerate(inputs):
                matrix[r] = value
            leaf = np.empty(n, dtype=np.int64)
            if _walk(matrix, self.table_axes, self.table_children, self.table_any_default,
                     self.axis_spec, self.numbers, self.children, leaf):
                raise RefusedValue("value out of bounds or unknown category key")
            owners = tuple(weakref.ref(array_owner(a)) for a in inputs
                           if isinstance(a, np.ndarray))
            recent[key] = (owners, leaf)
            while len(recent) > 2:
                recent.popitem(last=False)
        return self.leaves(leaf, values, n)

    def binned_by(self, input: int) -> frozenset[float] | None:
        edges: set[float] = set()
        if input in self.rows:
            for row, kind, _, start, count, *_ in self.axis_spec.tolist():
                if self.rows[row] == input:
                    if kind != _KIND_EDGES:
                        return None
                    edges.update(self.numbers[start:start + count].tolist())
        inner = self.leaves.binned_by(input)
        return None if inner is None else inner | edges


# Tables of the same binning (the systematics of one scale factor) evaluated on the same
# arrays find the same leaves: the last walks are kept, keyed by the tables' structure and
# the inputs' memory (address, shape, strides, type), valid while the arrays owning that
# memory live (weak references: the cache keeps no input alive); one cache per thread.
_THREAD = threading.local()


def _recent_walks() -> OrderedDict[tuple[Any, ...], tuple[tuple[Any, ...], np.ndarray]]:
    if not hasattr(_THREAD, "walks"):
        _THREAD.walks = OrderedDict()
    walks: OrderedDict[tuple[Any, ...], tuple[tuple[Any, ...], np.ndarray]] = _THREAD.walks
    return walks


def array_owner(array: np.ndarray) -> np.ndarray:
    """The array that owns ``array``'s memory (the end of its chain of views)."""
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


def array_identity(value: Any) -> Any:
    """An array's memory (address, shape, strides, type), or a scalar's value: equal for two
    arrays over the very same memory (valid while its :func:`array_owner` lives)."""
    if isinstance(value, np.ndarray):
        return (value.__array_interface__["data"][0], value.shape, value.strides,
                value.dtype.str)
    return ("scalar", value)


def walked(root: Node) -> Node:
    """``root`` as a :class:`WalkedTable` if it is a tree of tables over plain leaves."""
    if not isinstance(root, Table) or not _plain(root):
        return root
    tables: list[Table] = []
    leaves: list[Node] = []

    def visit(table: Table) -> None:
        tables.append(table)
        for child in table.children.nodes:
            if isinstance(child, Table):
                visit(child)
            else:
                leaves.append(child)

    visit(root)
    table_index = {id(t): i for i, t in enumerate(tables)}
    leaf_index = {id(leaf): i for i, leaf in enumerate(leaves)}
    rows = sorted({a.input for t in tables for a in t.axes})
    row_of = {i: r for r, i in enumerate(rows)}
    table_axes, table_children, any_default = [], [], []
    axis_spec: list[list[int]] = []
    numbers: list[float] = []
    children: list[int] = []
    for table in tables:
        start = len(axis_spec)
        for axis in table.axes:
            axis_spec.append(_encode(axis, row_of[axis.input], table.any_default, numbers))
        total = int(np.prod([a.size - (table.any_default and a.flow == "value")
                             for a in table.axes]))
        table_axes.append([start, len(axis_spec), total])
        table_children.append(len(children))
        any_default.append(table.any_default)
        children += [table_index[id(c)] if isinstance(c, Table) else -leaf_index[id(c)] - 1
                     for c in table.children.nodes]
    return WalkedTable(
        tuple(rows), np.array(table_axes, dtype=np.int64),
        np.array(table_children, dtype=np.int64), np.array(any_default, dtype=np.bool_),
        np.array(axis_spec, dtype=np.int64).reshape(-1, 7), np.array(numbers, dtype=np.float64),
        np.array(children, dtype=np.int64), Children.build(leaves))


def _plain(table: Table) -> bool:
    return all(_plain(c) if isinstance(c, Table) else isinstance(c, (Constant, FormulaNode))
               for c in table.children.nodes)


def _encode(axis: Axis, row: int, any_default: bool, numbers: list[float]) -> list[int]:
    """(row, kind, flow, start, count, slots, has_default) of one axis; numbers appended."""
    start = len(numbers)
    size: Any = axis.size - (any_default and axis.flow == "value")
    if axis.keys is not None:
        numbers += [float(k) for k in axis.keys]
        return [row, _KIND_KEYS, 0, start, len(axis.keys), size, int(axis.has_default)]
    if axis.edges and axis.edges[0] == "uniform":
        numbers += [float(axis.edges[1]), float(axis.edges[2]), float(axis.edges[3])]
        return [row, _KIND_UNIFORM, _FLOW[axis.flow], start, 3, size, 0]
    numbers += list(axis.edges)
    return [row, _KIND_EDGES, _FLOW[axis.flow], start, len(axis.edges), size, 0]


def load_kernel() -> None:
    """Load the compiled walk (:func:`_walk`) from numba's cache, compiling it on its first
    use on this machine: numba's compiler context starts here (about 0.5 s once per process:
    its registries and extensions) rather than inside the first chunk that walks a table.

    Examples
    --------
    >>> load_kernel()
    >>> len(_walk.signatures)
    1
    """
    _walk(np.empty((1, 0)), np.zeros((1, 3), dtype=np.int64), np.zeros(1, dtype=np.int64),
          np.zeros(1, dtype=np.bool_), np.zeros((1, 7), dtype=np.int64), np.zeros(1),
          np.zeros(1, dtype=np.int64), np.empty(0, dtype=np.int64))
