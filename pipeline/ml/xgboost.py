"""An xgboost data iterator over a feature table, for ``QuantileDMatrix`` (xgboost optional).

Negative weights (NLO samples) are taken as absolute values by default: xgboost refuses
them (see :mod:`pipeline.ml.weights` for the choices).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.errors import CalibrewError
from pipeline.ml.weights import NegativeWeights, apply_choice, check_choice
from pipeline.outputs.table_reader import Table, open_table
from pipeline.table_layout import LABEL, NOMINAL, WEIGHT


def xgboost_iterator(table: Table | str | os.PathLike[str], features: Sequence[str],
                     label: str = LABEL, weight: str | None = WEIGHT,
                     variation: str | None = NOMINAL, folds: Sequence[int] | None = None,
                     negative_weights: NegativeWeights = "abs") -> Any:
    """An ``xgboost.DataIter`` giving the table block by block (bounded memory).

    Parameters
    ----------
    table
        A :class:`~pipeline.outputs.table_reader.Table` or its path.
    features
        Event-level columns, in this order, as the feature matrix (float32).
    label
        The label column.
    weight
        The weight column passed to xgboost, or None for no weights.
    variation, folds
        Rows passing in this variation, in these folds (see
        :meth:`~pipeline.outputs.table_reader.Table.to_numpy`).
    negative_weights
        What to do with negative weights (NLO samples): ``"abs"`` (the default: their
        absolute value, every event kept), ``"drop"`` (those events left out) or
        ``"keep"`` (as stored, which xgboost refuses: if a row read has a negative
        weight, this function raises an error naming this option). See
        :mod:`pipeline.ml.weights`.

    Returns
    -------
    xgboost.DataIter
        For ``xgboost.QuantileDMatrix(it)`` or ``xgboost.DMatrix(it)``.

    Raises
    ------
    CalibrewError
        If xgboost is not installed, ``negative_weights`` is not a valid choice, or it is
        ``"keep"`` and a row read has a negative weight.

    Notes
    -----
    xgboost (3.x) checks every weight it is given and raises ``XGBoostError: Check
    failed: valid: Weights must be positive values`` for any negative one, in ``DMatrix``
    and ``QuantileDMatrix`` alike (zero is accepted). Hence "abs" by default, the usual
    choice for boosted decision trees in HEP.

    Examples
    --------
    .. code-block:: python

        import xgboost
        it = xgboost_iterator("out/tt/features.zarr", ["met", "ht"], folds=range(8))
        train = xgboost.QuantileDMatrix(it)
        booster = xgboost.train({"tree_method": "hist"}, train)
    """
    where = "xgboost_iterator"
    check_choice(negative_weights, where)
    try:
        import xgboost
    except ImportError:
        raise CalibrewError("xgboost_iterator needs xgboost: pip install xgboost") from None
    opened = table if isinstance(table, Table) else open_table(table)
    columns = [*features, label] + ([weight] if weight else [])

    if weight and negative_weights == "keep":
        weights = opened.to_numpy([weight], variation, folds)[weight]
        negative = int((weights < 0).sum())
        if negative:
            raise CalibrewError(
                f"{where}: table {opened.path} has {negative} row(s) of {len(weights)} with "
                f"a negative {weight!r} (variation {variation!r}, folds {folds}); xgboost "
                "refuses negative weights ('Weights must be positive values'), so "
                "negative_weights='keep' cannot work with it: pass negative_weights='abs' "
                "(absolute values, every event kept; the default) or "
                "negative_weights='drop' (those events left out)"
            )

    class TableIterator(xgboost.DataIter):
        def __init__(self) -> None:
            self.blocks = opened.blocks()
            self.position = 0
            super().__init__()

        def next(self, input_data: Any) -> bool:
            while self.position < len(self.blocks):
                data = opened.read_block(self.blocks[self.position], columns, variation, folds)
                self.position += 1
                if weight:
                    data = apply_choice(data, data[weight], negative_weights, weight)
                if len(data[label]) == 0:
                    continue
                x = np.column_stack([data[f].astype(np.float32) for f in features])
                input_data(data=x, label=data[label],
                           weight=data[weight] if weight else None, feature_names=list(features))
                return True
            return False

        def reset(self) -> None:
            self.position = 0

    return TableIterator()
