"""Negative event weights in the ML readers: keep them, take their absolute value, or drop.

NLO generators (MadGraph5_aMC@NLO, POWHEG with some settings, Sherpa) give a fraction of
their events a negative generator weight; the weighted sum over all events is the physical
prediction. Trainings deal with them in one of three usual ways, offered by every reader
that passes weights (``negative_weights=``):

``"keep"``
    The weights as stored, signs included: the weighted loss is then the unbiased estimate
    of the physical expectation (and its evaluation counterpart). Weighted losses in
    PyTorch accept negative weights; xgboost refuses them.
``"abs"``
    ``|w|``: every event kept with a positive weight. The distribution trained on is
    ``p+ + p-`` instead of ``p+ - p-``: unbiased where negative-weight events have the
    shape of the positive ones, otherwise biased towards the regions where they sit. The
    usual choice for boosted decision trees.
``"drop"``
    Events with ``w < 0`` left out (their rows in every column, collections included):
    fewer events, and biased in the same regions (``p+`` instead of ``p+ - p-``).

A weight of zero (or ``-0.0``) is not negative: kept by all three.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np

from pipeline.errors import CalibrewError
from pipeline.table_layout import WEIGHT_VARIATIONS

NegativeWeights = Literal["keep", "abs", "drop"]
#: The choices for ``negative_weights``.
CHOICES: tuple[str, ...] = ("keep", "abs", "drop")


def check_choice(choice: str, reader: str) -> str:
    """``choice`` if it is one of :data:`CHOICES`, else a clear error naming ``reader``.

    Examples
    --------
    >>> check_choice("abs", "xgboost_iterator")
    'abs'
    >>> check_choice("absolute", "xgboost_iterator")
    Traceback (most recent call last):
    ...
    pipeline.errors.CalibrewError: xgboost_iterator: negative_weights='absolute' is not one of keep, abs, drop
    """  # noqa: E501
    if choice not in CHOICES:
        raise CalibrewError(f"{reader}: negative_weights={choice!r} is not one of "
                            f"{', '.join(CHOICES)}")
    return choice


def apply_choice(data: Mapping[str, np.ndarray], weights: np.ndarray, choice: str,
                 weight: str | None) -> dict[str, np.ndarray]:
    """The rows and weights of ``data`` under ``choice``, for the event weights ``weights``.

    Parameters
    ----------
    data
        Columns of one block, each with one row per event (first axis).
    weights
        The nominal event weights of these rows (read even if ``data`` lacks them).
    choice
        ``"keep"``, ``"abs"`` or ``"drop"`` (see the module's description).
    weight
        The name of the nominal weight column in ``data`` (if there): ``"abs"`` takes the
        absolute value of it and of :data:`WEIGHT_VARIATIONS`, if there.

    Returns
    -------
    dict
        New columns (``data`` itself is not changed).

    Examples
    --------
    >>> import numpy as np
    >>> data = {"x": np.array([1.0, 2.0, 3.0]), "weight": np.array([0.5, -0.5, 0.0])}
    >>> apply_choice(data, data["weight"], "abs", "weight")["weight"].tolist()
    [0.5, 0.5, 0.0]
    >>> apply_choice(data, data["weight"], "drop", "weight")["x"].tolist()
    [1.0, 3.0]
    """
    out = dict(data)
    if choice == "abs":
        for name in (weight, WEIGHT_VARIATIONS):
            if name is not None and name in out:
                out[name] = np.abs(out[name])
    elif choice == "drop":
        keep = ~(np.asarray(weights) < 0)
        if not keep.all():
            out = {name: values[keep] for name, values in out.items()}
    return out


__all__ = ["CHOICES", "NegativeWeights", "apply_choice", "check_choice"]
