"""The nodes of a compiled correction: numpy kernels over whole arrays of elements.

:mod:`pipeline.corrections.compiled` builds a tree of these from a correction's JSON
(schema v2); :mod:`pipeline.corrections.walker` turns nested tables of it into one numba
walk. A node is called as ``node(values, n)``: ``values`` holds, per correction input, a
1-D array of the ``n`` elements or a scalar; it returns the ``n`` outputs as float64.

Examples
--------
>>> import numpy as np
>>> table = Table.of((Axis(0, edges=(0.0, 1.0, 2.0), flow="clamp"),),
...                  [Constant(10.0), Constant(20.0)])
>>> table([np.array([0.5, 1.5, 7.0])], 3).tolist()
[10.0, 20.0, 20.0]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.corrections.formula import FormulaFunction

Values = list[Any]  # per correction input: a 1-D array of the elements, or a scalar


class NotCompiled(ValueError):
    """The correction uses a node type or option the kernels do not handle."""


class RefusedValue(ValueError):
    """An input value correctionlib refuses (out of bounds, unknown category key)."""


class Node:
    """A compiled node: ``node(values, n)`` gives the ``n`` outputs as float64."""

    def __call__(self, values: Values, n: int) -> np.ndarray:
        raise NotImplementedError

    def binned_by(self, input: int) -> frozenset[float] | None:
        """The edges through which alone the outputs depend on input ``input``: two values of
        it between the same two consecutive edges (or both below the first, or both at or
        above the last, or NaN) give the same outputs. ``None`` where they depend on it
        otherwise (a formula of it, a uniform binning, a transform). See
        :func:`binned_by`."""
        return None


@dataclass(frozen=True)
class Constant(Node):
    value: float

    def __call__(self, values: Values, n: int) -> np.ndarray:
        return np.full(n, self.value)

    def binned_by(self, input: int) -> frozenset[float] | None:
        return frozenset()


@dataclass(frozen=True)
class FormulaNode(Node):
    """A formula with fixed parameters; ``signature`` groups siblings sharing its code."""

    function: FormulaFunction
    variables: tuple[int, ...]
    parameters: tuple[float, ...]
    signature: tuple[Any, ...]

    def __call__(self, values: Values, n: int) -> np.ndarray:
        return _as_output(self.function(_real(values, self.variables), self.parameters), n)

    def binned_by(self, input: int) -> frozenset[float] | None:
        return None if input in self.variables else frozenset()


@dataclass(frozen=True, eq=False)
class FormulaFamily(Node):
    """Bins holding one formula with different parameters: one evaluation, gathered rows.

    ``columns`` holds each parameter's values by row, or one number where every row has
    the same value.
    """

    function: FormulaFunction
    variables: tuple[int, ...]
    columns: tuple[Any, ...]

    @classmethod
    def of(cls, function: FormulaFunction, variables: tuple[int, ...],
           table: np.ndarray) -> FormulaFamily:
        columns = tuple(float(col[0]) if bool((col == col[0]).all()) else
                        np.ascontiguousarray(col) for col in table.T)
        return cls(function, variables, columns)

    def rows(self, values: Values, rows: np.ndarray) -> np.ndarray:
        params = [c if isinstance(c, float) else np.take(c, rows) for c in self.columns]
        return _as_output(self.function(_real(values, self.variables), params), len(rows))


@dataclass(frozen=True, eq=False)
class Children:
    """The leaves or children of a table, grouped so that each group is one pass.

    ``group[i]`` is child ``i``'s group: 0 holds every constant child (one gather), then one
    group per formula family, then one group per other child.
    """

    nodes: tuple[Node, ...]
    group: np.ndarray
    row: np.ndarray  # child i's row in its group's table
    constants: np.ndarray
    families: tuple[FormulaFamily, ...]
    others: tuple[Node, ...]

    @classmethod
    def build(cls, children: Sequence[Node]) -> Children:
        group = np.zeros(len(children), dtype=np.int64)
        row = np.zeros(len(children), dtype=np.int64)
        constants = np.full(len(children), np.nan)
        families: dict[tuple[Any, ...], list[int]] = {}
        others: list[Node] = []
        for i, child in enumerate(children):
            if isinstance(child, Constant):
                constants[i] = child.value
                row[i] = i
            elif isinstance(child, FormulaNode):
                families.setdefault(child.signature, []).append(i)
            else:
                others.append(child)
                group[i] = -len(others)
        family_nodes = []
        for g, members in enumerate(families.values(), start=1):
            first = children[members[0]]
            assert isinstance(first, FormulaNode)
            table = np.array([children[i].parameters for i in members],  # type: ignore[attr-defined]
                             dtype=np.float64).reshape(len(members), -1)
            family_nodes.append(FormulaFamily.of(first.function, first.variables, table))
            group[members] = g
            row[members] = np.arange(len(members))
        n_families = len(family_nodes)
        group = np.where(group < 0, n_families - group, group)  # others after the families
        return cls(tuple(children), group, row, constants, tuple(family_nodes), tuple(others))

    @property
    def leaves_only(self) -> bool:
        return not self.others

    def binned_by(self, input: int) -> frozenset[float] | None:
        """The union of the children's :meth:`Node.binned_by` (``None`` if one is)."""
        return _union(child.binned_by(input) for child in self.nodes)

    def __call__(self, index: np.ndarray, values: Values, n: int) -> np.ndarray:
        """Evaluate child ``index[j]`` for element ``j``."""
        if n == 0:
            return np.empty(0)
        groups = self.group[index]
        n_groups = 1 + len(self.families) + len(self.others)
        if n_groups == 1 or bool((groups == groups[0]).all()):
            return self._group(int(groups[0]), index, values, n)
        if n_groups <= 8:  # a few groups: each found by a mask, constants gathered for all
            out = self.constants[index]
            for g in range(1, n_groups):
                where = np.flatnonzero(groups == g)
                if where.size:
                    sub = [v[where] if isinstance(v, np.ndarray) else v for v in values]
                    out[where] = self._group(g, index[where], sub, where.size)
            return out
        out = np.empty(n)
        order = np.argsort(groups.astype(np.int16 if n_groups < 2**15 else np.int64),
                           kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(groups, minlength=n_groups))])
        for g in range(n_groups):
            begin, end = bounds[g], bounds[g + 1]
            if begin == end:
                continue
            where = order[begin:end]
            sub = [v[where] if isinstance(v, np.ndarray) else v for v in values]
            out[where] = self._group(g, index[where], sub, end - begin)
        return out

    def _group(self, g: int, index: np.ndarray, values: Values, n: int) -> np.ndarray:
        if g == 0:
            return self.constants[index]
        if g <= len(self.families):
            return self.families[g - 1].rows(values, self.row[index])
        return self.others[g - 1 - len(self.families)](values, n)


def _bin_index(x: np.ndarray, edges: Any, flow: str) -> np.ndarray:
    """correctionlib's ``find_bin_idx`` on arrays; ``flow`` "value" sends overflow to ``n``."""
    x = np.asarray(x, dtype=np.float64)
    if isinstance(edges, tuple) and edges and edges[0] == "uniform":
        _, n, low, high = edges
        outside = (x < low) | (x >= high) | np.isnan(x)
        with np.errstate(invalid="ignore"):
            index = np.where(outside, 0, n * ((x - low) / (high - low))).astype(np.int64)
        if flow == "clamp":
            return np.where(outside, np.where(x < low, 0, n - 1), index)
    else:
        n = len(edges) - 1
        index = np.searchsorted(np.asarray(edges), x, side="right") - 1  # upper_bound - 1
        outside = (index < 0) | (index >= n)
        if flow == "clamp":
            return np.clip(index, 0, n - 1)
    if flow == "error":
        if outside.any():
            raise RefusedValue("value out of bounds")
        return index
    return np.where(outside, n, index)  # the default content, after the last bin


def _n_bins(edges: tuple[Any, ...]) -> int:
    return int(edges[1]) if edges and edges[0] == "uniform" else len(edges) - 1


@dataclass(frozen=True)
class Axis:
    """One dimension of a table: the bins of a real input or the keys of an integer one.

    ``size`` counts the slots, the default one included (overflow with a ``flow`` value,
    a category's default).
    """

    input: int
    edges: tuple[Any, ...] = ()
    flow: str = "error"
    keys: tuple[int, ...] | None = None
    has_default: bool = False

    @property
    def refuses(self) -> bool:
        """Whether some value has no slot (out of the edges with ``flow: error``, a key
        without a default)."""
        return not self.has_default if self.keys is not None else self.flow == "error"

    @property
    def size(self) -> int:
        if self.keys is not None:
            return len(self.keys) + self.has_default
        return _n_bins(self.edges) + (self.flow == "value")

    def index(self, values: Values, n: int) -> np.ndarray:
        value = _broadcast(values[self.input], n)
        if self.keys is None:
            return _bin_index(value, self.edges, self.flow)
        keys = np.asarray(self.keys, dtype=np.int64)
        order = np.argsort(keys)
        pos = np.clip(np.searchsorted(keys[order], value), 0, max(len(keys) - 1, 0))
        found = keys[order][pos] == value if len(keys) else np.zeros(n, dtype=bool)
        if not self.has_default and not found.all():
            raise RefusedValue("unknown category key")
        return np.where(found, order[pos], len(keys))


MAX_TABLE = 1 << 20  # leaves of a flattened table


@dataclass(frozen=True, eq=False)
class Table(Node):
    """Nested binnings and categories flattened into one index over their leaves.

    A binning whose children are all tables with the same axes (or constants and formulas,
    repeated over those axes) becomes one table: every value's slot along every axis, one
    flat index, one gather of constants or formula parameters. ``any_default`` is a
    multibinning's ``flow`` value: any axis out of range selects the last child.
    """

    axes: tuple[Axis, ...]
    children: Children
    any_default: bool = False

    def __call__(self, values: Values, n: int) -> np.ndarray:
        index = np.zeros(n, dtype=np.int64)
        outside = np.zeros(n, dtype=bool) if self.any_default else None
        stride = 1
        for axis in reversed(self.axes):
            local = axis.index(values, n)
            if outside is not None:
                outside |= local == _n_bins(axis.edges)
            index += local * stride
            stride *= axis.size - (outside is not None and axis.flow == "value")
        if outside is not None:
            index = np.where(outside, stride, index)
        return self.children(index, values, n)

    def binned_by(self, input: int) -> frozenset[float] | None:
        on_input = [axis for axis in self.axes if axis.input == input]
        if any(axis.keys is not None or axis.edges[:1] == ("uniform",) for axis in on_input):
            return None
        return _union([frozenset(axis.edges) for axis in on_input]
                      + [self.children.binned_by(input)])

    @classmethod
    def of(cls, axes: tuple[Axis, ...], children: Sequence[Node]) -> Table:
        """The table of ``axes`` over ``children``, absorbing children that are tables.

        Absorbed, a child's axes are evaluated for every value, those of the siblings too:
        children that are not all tables are absorbed only when their axes refuse no value
        (a child binning with ``flow: error`` over a part of its parent's bin would refuse
        the values of the other bins, which never reach it).
        """
        subtables = [c for c in children if isinstance(c, Table) and not c.any_default]
        plain = all(isinstance(c, (Constant, FormulaNode, Table)) for c in children)
        plain = plain and not any(isinstance(c, Table) and c.any_default for c in children)
        if subtables and plain:
            inner = subtables[0].axes
            size = int(np.prod([a.size for a in inner]))
            if (all(t.axes == inner for t in subtables) and subtables[0].children.leaves_only
                    and all(t.children.leaves_only for t in subtables)
                    and (len(subtables) == len(children) or not any(a.refuses for a in inner))
                    and size * len(children) <= MAX_TABLE):
                leaves: list[Node] = []
                for child in children:
                    leaves += (list(child.children.nodes) if isinstance(child, Table)
                               else [child] * size)
                return cls(axes + inner, Children.build(leaves))
        return cls(axes, Children.build(children))


@dataclass(frozen=True)
class Refused(Node):
    """A category correctionlib refuses: the key given is not there and there is no default,
    or a string input is not given as one string (correctionlib's error is then raised)."""

    def __call__(self, values: Values, n: int) -> np.ndarray:
        raise RefusedValue("no such category")

    def binned_by(self, input: int) -> frozenset[float] | None:
        return frozenset()


@dataclass(frozen=True)
class Transform(Node):
    input: int
    integer: bool
    rule: Node
    content: Node

    def __call__(self, values: Values, n: int) -> np.ndarray:
        new = self.rule(values, n)
        updated = list(values)
        if self.integer:  # std::round: halves away from zero
            new = np.copysign(np.floor(np.abs(new) + 0.5), new).astype(np.int64)
        updated[self.input] = new
        return self.content(updated, n)

    def binned_by(self, input: int) -> frozenset[float] | None:
        """The rule's edges, where ``input`` is the one it replaces (the content sees only
        the rule's value); else those of the rule and of the content."""
        rule = self.rule.binned_by(input)
        if input == self.input or rule is None:
            return rule
        content = self.content.binned_by(input)
        return None if content is None else rule | content


def binned_by(node: Node, input: int) -> np.ndarray | None:
    """The sorted edges of :meth:`Node.binned_by`: two values ``x`` of input ``input`` with
    the same ``np.searchsorted(edges, x, side="right")`` give the same outputs (all else the
    same); ``None`` where the outputs depend on the value otherwise.

    Examples
    --------
    >>> inner = Table.of((Axis(1, edges=(0.0, 5.0, 9.0), flow="clamp"),),
    ...                  [Constant(1.0), Constant(2.0)])
    >>> root = Table.of((Axis(0, keys=(0, 5)),), [inner, Constant(3.0)])
    >>> binned_by(root, 1).tolist()
    [0.0, 5.0, 9.0]
    >>> binned_by(Table.of((Axis(1, edges=("uniform", 2, 0.0, 9.0)),), [inner, inner]), 1)
    """
    edges = node.binned_by(input)
    return None if edges is None else np.array(sorted(edges), dtype=np.float64)


def _union(sets: Iterable[frozenset[float] | None]) -> frozenset[float] | None:
    out: frozenset[float] = frozenset()
    for edges in sets:
        if edges is None:
            return None
        out |= edges
    return out


def _broadcast(value: Any, n: int) -> np.ndarray:
    return value if isinstance(value, np.ndarray) else np.full(n, value)


def _real(values: Values, indices: tuple[int, ...]) -> list[Any]:
    return [np.asarray(values[i], dtype=np.float64) if isinstance(values[i], np.ndarray)
            else float(values[i]) for i in indices]


def _as_output(result: Any, n: int) -> np.ndarray:
    result = np.asarray(result, dtype=np.float64)
    return np.full(n, float(result)) if result.ndim == 0 else result
