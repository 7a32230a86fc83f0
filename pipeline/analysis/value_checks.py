"""What an expression's value holds where numbers are needed: a histogram axis, a table's
column or collection field. Records, tuples (``ak.combinations`` without ``fields``),
strings and lists of lists are refused with a message naming the config key, the type and a
way to pick numbers out. The checks run on typetracers too, so such a mistake fails at
planning, before any chunk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import awkward as ak
import numpy as np

from pipeline.errors import ExpressionError
from pipeline.selection import Expression

#: the ``__array__`` parameters of awkward's strings: a string is a value, not a list
_STRINGS = ("string", "bytestring")


def value_kind(value: Any) -> tuple[int, ak.types.Type]:
    """The list levels of the awkward array ``value`` and the type of what they hold
    (missing values looked through; a string is a value, not a list of characters).

    Examples
    --------
    >>> lists, kind = value_kind(ak.Array([[1.5, None], None]))
    >>> lists, str(kind)
    (1, 'float64')
    >>> lists, kind = value_kind(ak.Array([["a", "bc"], []]))
    >>> lists, str(kind)
    (1, 'string')
    """
    return _lists_of(value.type.content)


def _lists_of(kind: ak.types.Type) -> tuple[int, ak.types.Type]:
    lists = 0
    while True:
        if isinstance(kind, ak.types.OptionType):
            kind = kind.content
        elif (isinstance(kind, (ak.types.ListType, ak.types.RegularType))
              and kind.parameter("__array__") not in _STRINGS):
            lists, kind = lists + 1, kind.content
        else:
            return lists, kind


def type_text(value: Any) -> str:
    """The type of the awkward array ``value``, per event, without the parameters of its
    columns (NanoAOD's docstrings), for messages.

    Examples
    --------
    >>> type_text(ak.with_parameter(ak.Array([[1.5], []]), "__doc__", "a pt"))
    'var * float64'
    """
    return str(ak.without_parameters(value).type.content)


@dataclass(frozen=True)
class NotNumbers:
    """What the expression ``text`` gives (``what``: records, strings...) where numbers are
    needed, and how to pick numbers out of it (``hint``)."""

    text: str
    what: str
    value: Any
    hint: str = ""

    def describe(self, need: str) -> str:
        """The message: what ``text`` gives, what is needed (``need``), the hint.

        Examples
        --------
        >>> print(not_numbers(ak.Array([{"pt": 1.0}]), "lead").describe("numbers needed"))
        'lead' gives records ({pt: float64}): numbers needed; pick one number of each, e.g. lead.pt
        """
        value = self.value
        text = type_text(value) if isinstance(value, ak.Array) else repr(value)
        shown = text if len(text) <= 80 else text[:77] + "..."
        hint = f"; {self.hint}" if self.hint else ""
        return f"{self.text!r} gives {self.what} ({shown}): {need}{hint}"


def not_numbers(value: Any, text: str) -> NotNumbers | None:
    """What is wrong with ``value``, the value of the expression ``text``, where numbers (or
    lists of numbers) are needed: records, tuples, strings; None when it holds numbers.

    Examples
    --------
    >>> not_numbers(ak.Array([[1.0], []]), "Jet.pt") is None, not_numbers(1.5, "x") is None
    (True, True)
    >>> pairs = not_numbers(ak.combinations(ak.Array([[1.0, 2.0]]), 2), "ak.combinations(x, 2)")
    >>> pairs.what, pairs.hint.rsplit(" (ak.", 1)[0]
    ('tuples', "pick one number of each, e.g. (ak.combinations(x, 2))['0']")
    """
    if isinstance(value, (bool, int, float, np.bool_, np.number)):
        return None
    if not isinstance(value, ak.Array):
        return NotNumbers(text, f"a {type(value).__name__}", value)
    kind = value_kind(value)[1]
    if isinstance(kind, ak.types.RecordType):
        hint = f"pick one number of each, e.g. {_pick_example(text, kind)}"
        if kind.is_tuple:
            hint += " (ak.combinations and ak.cartesian name the parts with fields=[...])"
        return NotNumbers(text, "tuples" if kind.is_tuple else "records", value, hint)
    if kind.parameter("__array__") in _STRINGS:
        return NotNumbers(text, "strings", value)
    return None


def _pick_example(text: str, kind: ak.types.RecordType) -> str:
    """``text`` with one field picked, record after record, down to a number (``pt`` if
    there is one)."""
    example = text if re.fullmatch(r"[\w.]+", text) else f"({text})"
    while isinstance(kind, ak.types.RecordType):
        names = ([str(i) for i in range(len(kind.contents))] if kind.is_tuple
                 else list(kind.fields))
        name = "pt" if "pt" in names else names[0]
        example += f".{name}" if name.isidentifier() else f"[{name!r}]"
        kind = _lists_of(kind.contents[names.index(name)])[1]
    return example


def observable(value: Any, expression: Expression) -> Any:
    """Check that ``value``, the value of a histogram axis' ``expression``, is numbers: one
    per event, or a list per event (not records, tuples, strings or lists of lists), and
    return it. It runs on typetracers too, so that such an axis fails at planning.

    Examples
    --------
    >>> import awkward as ak
    >>> axis = Expression("ak.combinations(Jet.pt, 2)", "histograms.h.axes[0].expr")
    >>> observable(ak.Array([[1.0, 2.0]]), axis).tolist()
    [[1.0, 2.0]]
    >>> observable(ak.Array([[[1.0], [2.0]]]), axis)
    Traceback (most recent call last):
    ...
    pipeline.errors.ExpressionError: histograms.h.axes[0].expr: 'ak.combinations(Jet.pt, 2)' \
gives lists of lists (var * var * float64): a histogram axis needs one number per event or \
per object; flatten the inner lists (ak.flatten(..., axis=2)) or reduce them (e.g. \
ak.max(..., axis=2))
    """
    problem = not_numbers(value, expression.text)
    if problem is None and isinstance(value, ak.Array) and value_kind(value)[0] > 1:
        problem = NotNumbers(expression.text, "lists of lists", value,
                             "flatten the inner lists (ak.flatten(..., axis=2)) or reduce "
                             "them (e.g. ak.max(..., axis=2))")
    if problem is not None:
        raise ExpressionError(f"{expression.where}: " + problem.describe(
            "a histogram axis needs one number per event or per object"))
    return value


__all__ = ["NotNumbers", "not_numbers", "observable", "type_text", "value_kind"]
