"""An xgboost data iterator over a feature table, for ``QuantileDMatrix`` (xgboost optional)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.errors import CalibrewError
from pipeline.outputs.tables import NOMINAL, Table, open_table


def xgboost_iterator(table: Table | str, features: Sequence[str], label: str = "label",
                     weight: str | None = "weight", variation: str | None = NOMINAL,
                     folds: Sequence[int] | None = None) -> Any:
    """An ``xgboost.DataIter`` giving the table block by block (bounded memory).

    Examples
    --------
    .. code-block:: python

        import xgboost
        it = xgboost_iterator("out/tt/features.zarr", ["met", "ht"], folds=range(8))
        train = xgboost.QuantileDMatrix(it)
        booster = xgboost.train({"tree_method": "hist"}, train)
    """
    try:
        import xgboost
    except ImportError:
        raise CalibrewError("xgboost_iterator needs xgboost: pip install xgboost") from None
    opened = table if isinstance(table, Table) else open_table(table)
    columns = [*features, label] + ([weight] if weight else [])

    class TableIterator(xgboost.DataIter):
        def __init__(self) -> None:
            self.blocks = opened.blocks()
            self.position = 0
            super().__init__()

        def next(self, input_data: Any) -> bool:
            while self.position < len(self.blocks):
                data = opened.read_block(self.blocks[self.position], columns, variation, folds)
                self.position += 1
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
