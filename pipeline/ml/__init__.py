"""Readers of calibrew feature tables for the ML stages.

- :func:`open_table`: numpy arrays, a pandas DataFrame, awkward arrays or padded tensors of
  selected columns, for a variation and a set of folds;
- :class:`TableStream`: shuffled mini-batches (chunk order shuffled, then rows within a
  buffer), independent of any framework;
- :func:`torch_dataset`: the same as a PyTorch ``IterableDataset`` (PyTorch optional);
- :func:`xgboost_iterator`: an ``xgboost.DataIter`` for ``QuantileDMatrix`` (xgboost optional).

Negative event weights (NLO samples): every reader that passes weights takes
``negative_weights="keep" | "abs" | "drop"`` (:mod:`pipeline.ml.weights`); the default is
``"keep"`` for :class:`TableStream` and :func:`torch_dataset`, ``"abs"`` for
:func:`xgboost_iterator` (xgboost refuses negative weights).
"""

from pipeline.ml.stream import TableStream
from pipeline.ml.torch import torch_dataset
from pipeline.ml.xgboost import xgboost_iterator
from pipeline.outputs.table_reader import Table, open_table
from pipeline.table_layout import TableError

__all__ = ["Table", "TableError", "TableStream", "open_table", "torch_dataset",
           "xgboost_iterator"]
