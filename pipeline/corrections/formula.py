"""correctionlib's TFormula expressions translated into numpy code.

correctionlib parses a formula with a PEG grammar (``src/formula_ast.cc``) and evaluates
it one value at a time. :func:`compile_formula` reads the same grammar (operators and
precedence, unary minus binding tightest, ``^`` right-associative, the function names,
``[i]`` parameters and the variables ``x y z t`` / ``x[i]``) and returns a function of
whole arrays that performs the same IEEE operations in the same order: results equal
correctionlib's to the last bit for ``+ - * /`` and comparisons, and to a few ulp for the
transcendental functions (numpy's implementations).

Examples
--------
>>> import numpy as np
>>> f = compile_formula("[0]*max(min(x,[3]),[2])+[1]", 1)
>>> f([np.array([5.0, 50.0])], [2.0, 1.0, 10.0, 20.0])
array([21., 41.])
>>> compile_formula("-x^2", 1)([np.array([3.0])], [])  # unary minus first, as in TFormula
array([9.])
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

FormulaFunction = Callable[[Sequence[Any], Sequence[Any]], Any]


class UnsupportedFormula(ValueError):
    """A formula uses something this translation does not handle."""


_UNARY = {
    "log": "np.log", "log10": "np.log10", "exp": "np.exp", "erf": "_erf", "sqrt": "np.sqrt",
    "abs": "np.abs", "cos": "np.cos", "sin": "np.sin", "tan": "np.tan", "acos": "np.arccos",
    "asin": "np.arcsin", "atan": "np.arctan", "cosh": "np.cosh", "sinh": "np.sinh",
    "tanh": "np.tanh", "acosh": "np.arccosh", "asinh": "np.arcsinh", "atanh": "np.arctanh",
}
_BINARY = {"atan2": "np.arctan2", "pow": "np.power", "max": "_max", "min": "_min"}
# (precedence, right-associative) as in correctionlib's grammar
_OPERATORS = {
    "||": (1, False), "&&": (2, False), "==": (3, False), "!=": (3, False),
    ">": (4, False), "<": (4, False), ">=": (4, False), "<=": (4, False),
    "-": (5, False), "+": (5, False), "/": (6, False), "*": (6, False), "^": (7, True),
}
_TOKEN = re.compile(
    r"\s*(?:(?P<num>[0-9]+(?:\.[0-9]*)?(?:e-?[0-9]+)?)|(?P<par>\[[0-9]+\])"
    r"|(?P<xvar>x\[[0-9]+\])|(?P<name>[a-z][a-z0-9]*)"
    r"|(?P<op>\|\||&&|==|!=|>=|<=|[-+*/^<>(),]))"
)
_VARIABLES = {"x": 0, "y": 1, "z": 2, "t": 3}


def _number(x: Any) -> bool:
    return isinstance(x, float) and x == x


def _max(a: Any, b: Any) -> Any:
    """``std::max(a, b)``: ``b`` if ``a < b`` else ``a`` (NaN handled as C++ does).

    With either argument a number, numpy's ``maximum`` (NaN in ``a`` kept) or ``fmax``
    (NaN in ``b`` ignored) gives the same and is faster.
    """
    if _number(b):
        return np.maximum(a, b)
    if _number(a):
        return np.fmax(a, b)
    return np.where(a < b, b, a)


def _min(a: Any, b: Any) -> Any:
    """``std::min(a, b)``: ``b`` if ``b < a`` else ``a``."""
    if _number(b):
        return np.minimum(a, b)
    if _number(a):
        return np.fmin(a, b)
    return np.where(b < a, b, a)


def _erf(a: Any) -> Any:
    from scipy.special import erf

    return erf(a)


def _truth(mask: Any) -> Any:
    return np.where(mask, 1.0, 0.0)


def _tokens(expression: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    expression = expression.rstrip()
    while pos < len(expression):
        match = _TOKEN.match(expression, pos)
        if match is None or match.end() == pos:
            raise UnsupportedFormula(f"cannot read {expression!r} at position {pos}")
        kind = match.lastgroup
        assert kind is not None
        out.append((kind, match.group(kind)))
        pos = match.end()
    return out


class _Parser:
    def __init__(self, expression: str, n_variables: int) -> None:
        self.expression = expression
        self.tokens = _tokens(expression)
        self.pos = 0
        self.n_variables = n_variables

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        token = self.peek()
        if token is None or (value is not None and token[1] != value):
            raise UnsupportedFormula(f"cannot parse {self.expression!r}: expected {value!r}")
        self.pos += 1
        return token

    def expression_code(self, min_precedence: int = 1) -> str:
        left = self.atom()
        while True:
            token = self.peek()
            if token is None or token[0] != "op" or token[1] not in _OPERATORS:
                return left
            precedence, right_assoc = _OPERATORS[token[1]]
            if precedence < min_precedence:
                return left
            self.take()
            right = self.expression_code(precedence if right_assoc else precedence + 1)
            left = self.binary(token[1], left, right)

    @staticmethod
    def binary(op: str, left: str, right: str) -> str:
        if op == "^":
            return f"np.power({left}, {right})"
        if op in ("+", "-", "*", "/"):
            return f"({left} {op} {right})"
        if op == "&&":
            return f"_truth((({left}) != 0) & (({right}) != 0))"
        if op == "||":
            return f"_truth((({left}) != 0) | (({right}) != 0))"
        return f"_truth(({left}) {op} ({right}))"

    def atom(self) -> str:
        kind, value = self.take()
        if kind == "op" and value == "-":
            return f"(-{self.atom()})"
        if kind == "num":
            return repr(float(value))
        if kind == "par":
            return f"p[{int(value[1:-1])}]"
        if kind == "xvar":
            return self.variable(int(value[2:-1]))
        if kind == "op" and value == "(":
            inner = self.expression_code()
            self.take(")")
            return f"({inner})"
        if kind == "name" and value in _VARIABLES and (self.peek() or ("", ""))[1] != "(":
            return self.variable(_VARIABLES[value])
        if kind == "name" and value in _UNARY:
            self.take("(")
            arg = self.expression_code()
            self.take(")")
            return f"{_UNARY[value]}({arg})"
        if kind == "name" and value in _BINARY:
            self.take("(")
            a = self.expression_code()
            self.take(",")
            b = self.expression_code()
            self.take(")")
            return f"{_BINARY[value]}({a}, {b})"
        raise UnsupportedFormula(f"cannot parse {self.expression!r}: unexpected {value!r}")

    def variable(self, index: int) -> str:
        if index >= self.n_variables:
            raise UnsupportedFormula(f"{self.expression!r} uses variable {index} of "
                                     f"{self.n_variables}")
        return f"v[{index}]"


_NAMESPACE = {"np": np, "_max": _max, "_min": _min, "_erf": _erf, "_truth": _truth}


class Formula:
    """A compiled formula: ``f(variables, parameters)``; pickled as its expression.

    Unpickling compiles the expression again (through :func:`compile_formula`'s cache), so
    the compiled corrections holding formulas pickle with plain :mod:`pickle`.

    Examples
    --------
    >>> import pickle
    >>> f = compile_formula("[0]*x", 1)
    >>> pickle.loads(pickle.dumps(f)) is f
    True
    """

    __slots__ = ("expression", "function", "n_variables")

    def __init__(self, expression: str, n_variables: int, function: FormulaFunction) -> None:
        self.expression = expression
        self.n_variables = n_variables
        self.function = function

    def __call__(self, variables: Sequence[Any], parameters: Sequence[Any]) -> Any:
        return self.function(variables, parameters)

    def __reduce__(self) -> tuple[Any, ...]:
        return (compile_formula, (self.expression, self.n_variables))


@functools.cache
def compile_formula(expression: str, n_variables: int) -> Formula:
    """A function ``f(variables, parameters)`` evaluating ``expression`` on arrays.

    ``variables`` are the formula's inputs in order (``x``, ``y``, ...), ``parameters`` the
    values of ``[0]``, ``[1]``, ...: scalars, or arrays with one value per element. The same
    expression gives the same :class:`Formula` (cached per process).
    """
    parser = _Parser(expression, n_variables)
    code = parser.expression_code()
    if parser.peek() is not None:
        raise UnsupportedFormula(f"cannot parse {expression!r}: trailing {parser.peek()!r}")
    function: FormulaFunction = eval(f"lambda v, p: {code}", dict(_NAMESPACE))
    return Formula(expression, n_variables, function)
