"""correctionlib corrections compiled into vectorized numpy kernels.

correctionlib evaluates a correction element by element, walking its tree of nodes for each
value. :func:`compile_correction` turns the tree (schema v2: binning, multibinning,
category, formula, formularef, transform, constants) into numpy operations on whole arrays:
a binning finds every value's bin with one ``searchsorted``; bins holding constants become
one gather; bins holding the same formula with different parameters (the JEC and
resolution payloads) become one evaluation of the formula with per-element parameters;
other children are evaluated on the subset of elements that reach them. The arithmetic is
correctionlib's, in the same order (see :mod:`pipeline.corrections.formula`).

A node it does not compile (``hashprng``, ``wrap`` flow) raises :class:`NotCompiled`; the
loader then keeps correctionlib for that correction. A value correctionlib refuses (out of
bounds with ``flow: error``, a category key it does not have) is evaluated again by
correctionlib, which raises its own error.

Examples
--------
>>> import numpy as np
>>> from pipeline.corrections.loader import get_correction
>>> sf = get_correction("jet_jerc_Summer22_V3.json.gz",
...                     "Summer22_22Sep2023_JRV1_MC_ScaleFactor_AK4PFPuppi")
>>> eta, pt = np.array([0.3, -2.7]), np.array([40.0, 120.0])
>>> bool(np.all(sf.evaluate(eta, pt, "nom") == sf.reference.evaluate(eta, pt, "nom")))
True
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.corrections.formula import UnsupportedFormula, compile_formula
from pipeline.corrections.nodes import (
    Axis,
    Children,
    Constant,
    FormulaNode,
    Node,
    NotCompiled,
    Refused,
    Table,
    Transform,
    Values,
    binned_by,
)
from pipeline.corrections.walker import walked


def _edges(spec: Any) -> tuple[Any, ...]:
    if isinstance(spec, Mapping):
        return ("uniform", int(spec["n"]), float(spec["low"]), float(spec["high"]))
    return tuple(float(e) for e in spec)


def _flow(flow: Any) -> str:
    if isinstance(flow, str):
        if flow == "wrap":
            raise NotCompiled("flow 'wrap'")
        return flow
    return "value"


class _Compiler:
    """Compiles a correction's tree with some inputs fixed to scalars (``fixed``)."""

    def __init__(self, correction: Mapping[str, Any], fixed: Mapping[int, Any]) -> None:
        self.inputs = [i["name"] for i in correction["inputs"]]
        self.types = [i["type"] for i in correction["inputs"]]
        self.fixed = fixed
        self.generic = [self._formula_function(f) for f in
                        correction.get("generic_formulas") or []]

    def _index(self, name: str) -> int:
        return self.inputs.index(name)

    def _formula_function(self, node: Mapping[str, Any]) -> tuple[Any, ...]:
        if node.get("parser", "TFormula") != "TFormula":
            raise NotCompiled(f"formula parser {node.get('parser')!r}")
        variables = tuple(self._index(v) for v in node["variables"])
        try:
            function = compile_formula(node["expression"], len(variables))
        except UnsupportedFormula as err:
            raise NotCompiled(str(err)) from err
        return function, variables, (node["expression"], variables)

    def node(self, node: Any) -> Node:
        if isinstance(node, (int, float)):
            return Constant(float(node))
        kind = node.get("nodetype")
        if kind == "formula":
            function, variables, signature = self._formula_function(node)
            return FormulaNode(function, variables, tuple(node.get("parameters") or ()),
                               signature)
        if kind == "formularef":
            function, variables, signature = self.generic[node["index"]]
            return FormulaNode(function, variables, tuple(node["parameters"]), signature)
        if kind == "binning":
            flow = _flow(node["flow"])
            children = [self.node(c) for c in node["content"]]
            if flow == "value":
                children.append(self.node(node["flow"]))
            axis = Axis(self._index(node["input"]), _edges(node["edges"]), flow)
            return Table.of((axis,), children)
        if kind == "multibinning":
            flow = _flow(node["flow"])
            axes = tuple(Axis(self._index(i), _edges(e), "clamp" if flow == "clamp" else
                              "error" if flow == "error" else "value")
                         for i, e in zip(node["inputs"], node["edges"]))
            children = [self.node(c) for c in node["content"]]
            if flow == "value":
                return Table(axes, Children.build([*children, self.node(node["flow"])]),
                             any_default=True)
            return Table.of(axes, children)
        if kind == "category":
            return self._category(node)
        if kind == "transform":
            index = self._index(node["input"])
            if index in self.fixed:
                raise NotCompiled("transform of a scalar input")
            return Transform(index, self.types[index] == "int", self.node(node["rule"]),
                             self.node(node["content"]))
        raise NotCompiled(f"node type {kind!r}")

    def _category(self, node: Mapping[str, Any]) -> Node:
        index = self._index(node["input"])
        default = node.get("default")
        if index in self.fixed:  # resolved once for the given key
            for item in node["content"]:
                if item["key"] == self.fixed[index]:
                    return self.node(item["value"])
            return Refused() if default is None else self.node(default)
        if self.types[index] == "string":  # compiled when the string is given
            for item in node["content"]:
                self.node(item["value"])
            return Refused()
        keys = tuple(int(item["key"]) for item in node["content"])
        children = [self.node(item["value"]) for item in node["content"]]
        if default is not None:
            children.append(self.node(default))
        return Table.of((Axis(index, keys=keys, has_default=default is not None),), children)


Fixed = tuple[tuple[int, Any], ...]  # (position, value) of the scalar string and int inputs


def compile_root(correction: Mapping[str, Any], fixed: Fixed) -> Node:
    """The tree of ``correction`` (its JSON object) compiled with the inputs ``fixed`` given."""
    return walked(_Compiler(correction, dict(fixed)).node(correction["data"]))


class CompiledCorrection:
    """One correction as numpy kernels; :meth:`evaluate` takes correctionlib's arguments.

    The tree is compiled once per combination of the scalar string and integer arguments
    (a systematic's name, a working point), their categories resolved at compile time, by
    ``compile_root(fixed)`` (:func:`compile_root` of the correction's JSON object, or the
    loader's disk cache of compiled trees).
    """

    def __init__(self, name: str, inputs: tuple[str, ...], types: tuple[str, ...],
                 compile_root: Callable[[Fixed], Node]) -> None:
        self.name = name
        self.inputs = inputs
        self.types = types
        self._compile_root = compile_root
        self._roots: dict[Fixed, Node] = {}
        self.root(())  # fails now if the tree cannot be compiled

    def root(self, fixed: Fixed) -> Node:
        """The tree compiled with the inputs of ``fixed`` (position, value) given."""
        root = self._roots.get(fixed)
        if root is None:
            root = self._roots[fixed] = self._compile_root(fixed)
        return root

    def evaluate(self, *args: Any) -> Any:
        """Evaluate on numpy arrays and scalars (broadcast together); a scalar for scalars.

        Raises :class:`RefusedValue` where correctionlib would raise, :class:`NotCompiled`
        for arguments of a type the kernels do not take (e.g. an array of strings).
        """
        if len(args) != len(self.types):
            raise NotCompiled("wrong number of arguments")  # correctionlib says how
        arrays = [i for i, a in enumerate(args) if not isinstance(a, (str, int, float))]
        values: Values = list(args)
        shape: tuple[int, ...] = ()
        if arrays:
            broadcast = np.broadcast_arrays(*(np.asarray(args[i]) for i in arrays))
            shape = broadcast[0].shape
            for i, array in zip(arrays, broadcast):
                values[i] = self._typed(i, array.reshape(-1))
        n = int(np.prod(shape)) if arrays else 1
        out = self.root(self._fixed(args))(values, n)
        return out.reshape(shape) if arrays else float(out[0])

    def binned_by(self, position: int, *args: Any) -> np.ndarray | None:
        """The sorted edges through which alone the result depends on argument ``position``
        (:func:`~pipeline.corrections.nodes.binned_by`), for the scalar arguments of
        ``args`` (those of :meth:`evaluate`; arrays stand for any values); ``None`` where it
        depends on that argument otherwise.

        Examples
        --------
        >>> from pipeline.corrections.loader import get_correction
        >>> btag = get_correction("pog/2022_Summer22/BTV_btagging.json.gz", "deepJet_shape")
        >>> jets = np.zeros(1)
        >>> btag.compiled.binned_by(3, "central", jets, jets, jets, jets).tolist()
        [20.0, 30.0, 40.0, 50.0, 60.0, 80.0, 120.0, 200.0, 10000.0]
        >>> btag.compiled.binned_by(4, "central", jets, jets, jets, jets) is None  # formulas
        True
        """
        return binned_by(self.root(self._fixed(args)), position)

    def _fixed(self, args: tuple[Any, ...]) -> Fixed:
        """(position, value) of the scalar string and integer arguments, the scalars checked."""
        fixed = []
        for i, value in enumerate(args):
            if isinstance(value, (str, int, float)):
                self._check_scalar(i, value)
                if self.types[i] != "real":
                    fixed.append((i, value))
        return tuple(fixed)

    def _typed(self, i: int, array: np.ndarray) -> np.ndarray:
        kind = self.types[i]
        if kind == "real" and array.dtype.kind in "fiub":
            return array.astype(np.float64, copy=False)
        if kind == "int" and array.dtype.kind in "iub":
            return array.astype(np.int64, copy=False)
        raise NotCompiled(f"argument {i} of dtype {array.dtype} for a {kind} input")

    def _check_scalar(self, i: int, value: Any) -> None:
        expected = {"real": (int, float), "int": (int,), "string": (str,)}[self.types[i]]
        if not isinstance(value, expected) or isinstance(value, bool):
            raise NotCompiled(f"argument {i} {value!r} for a {self.types[i]} input")


def compile_correction(correction: Mapping[str, Any]) -> CompiledCorrection:
    """Compile one correction (its schema-v2 JSON object); :class:`NotCompiled` if it cannot."""
    return CompiledCorrection(correction["name"], *signature(correction),
                              functools.partial(compile_root, correction))


def signature(correction: Mapping[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The names and the types of a correction's inputs (its JSON object)."""
    return (tuple(i["name"] for i in correction["inputs"]),
            tuple(i["type"] for i in correction["inputs"]))


_OPS = {"+": np.add, "*": np.multiply, "/": np.divide}


@dataclass(frozen=True)
class CompiledCompound:
    """A compound correction over compiled corrections, in correctionlib's order."""

    name: str
    inputs: tuple[str, ...]
    stack: tuple[tuple[CompiledCorrection, tuple[int, ...]], ...]
    updates: tuple[int, ...]
    input_op: str
    output_op: str

    def evaluate(self, *args: Any) -> Any:
        values = list(args)
        out: Any = None
        for correction, inputs in self.stack:
            sf = correction.evaluate(*(values[i] for i in inputs))
            for i in self.updates:
                values[i] = _OPS[self.input_op](values[i], sf)
            if out is None:
                out = sf
            elif self.output_op == "last":
                out = sf
            else:
                out = _OPS[self.output_op](out, sf)
        return float(out) if np.ndim(out) == 0 else out


def compile_compound(compound: Mapping[str, Any],
                     corrections: Mapping[str, CompiledCorrection]) -> CompiledCompound:
    """Compile a compound correction from its JSON object and its compiled constituents."""
    names = [i["name"] for i in compound["inputs"]]
    stack = []
    for member in compound["stack"]:
        correction = corrections[member]
        stack.append((correction, tuple(names.index(n) for n in correction.inputs)))
    return CompiledCompound(compound["name"], tuple(names), tuple(stack),
                            tuple(names.index(n) for n in compound["inputs_update"]),
                            compound["input_op"], compound["output_op"])

