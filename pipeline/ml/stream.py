"""Shuffled mini-batches from a feature table, without any ML framework."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from pipeline.errors import CalibrewError
from pipeline.ml.weights import NegativeWeights, apply_choice, check_choice
from pipeline.outputs.table_reader import Table, open_table
from pipeline.table_layout import NOMINAL, WEIGHT


class TableStream:
    """Mini-batches of a table's columns: blocks in shuffled order, rows shuffled in a buffer.

    The table is read block by block (a block is about one stored chunk, see
    :meth:`Table.blocks`); blocks come in a random order, their rows go into a buffer of
    ``buffer_rows`` rows, and batches are drawn at random from the buffer, so memory stays
    bounded whatever the table size. The order is a function of ``seed`` and ``epoch``
    (call :meth:`set_epoch` between epochs). With several loader workers, ``shard(i, n)``
    gives worker ``i`` every ``n``-th block.

    Parameters
    ----------
    table
        A :class:`~pipeline.outputs.table_reader.Table` or its path.
    columns
        Event-level columns to read (``weight_variations`` gives a 2-D array).
    padded
        Collections to return as dense ``(rows, length, fields)`` arrays plus a
        ``<name>.mask``: ``{name: length}`` (the length is needed for ragged ones only,
        padded ones keep their stored length when it is None).
    variation, folds
        Rows passing in this variation, in these folds (see :meth:`Table.to_numpy`).
    batch_size, buffer_rows, shuffle, seed, drop_last
        Batching; ``shuffle=False`` keeps the stored order.
    negative_weights
        What to do with negative event weights (NLO samples): ``"keep"`` (the default:
        as stored, signs included; weighted losses then estimate the physical expectation
        without bias), ``"abs"`` (absolute values of ``weight`` and of
        ``weight_variations``, where read) or ``"drop"`` (events whose ``weight`` is
        negative left out of every column, also when ``weight`` is not among
        ``columns``). See :mod:`pipeline.ml.weights`.
    weight
        The nominal weight column that ``negative_weights`` looks at.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from pipeline.outputs.table_writer import TableWriter
    >>> path = tempfile.mkdtemp() + "/t.zarr"
    >>> w = TableWriter(path, 1, {}); w.prepare()
    >>> w.write_part(0, {"event": np.arange(10, dtype=np.uint64),
    ...                  "x": np.arange(10, dtype=np.float32)})
    10
    >>> w.finalize({})
    >>> batches = list(TableStream(path, ["x"], batch_size=4, shuffle=False))
    >>> [b["x"].tolist() for b in batches]
    [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0], [8.0, 9.0]]
    """

    def __init__(self, table: Table | str | os.PathLike[str], columns: Sequence[str],
                 padded: dict[str, int | None] | None = None,
                 variation: str | None = NOMINAL, folds: Sequence[int] | None = None,
                 batch_size: int = 1024, buffer_rows: int = 65536, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False,
                 block_rows: int | None = None, negative_weights: NegativeWeights = "keep",
                 weight: str = WEIGHT) -> None:
        self.negative_weights = check_choice(negative_weights, "TableStream")
        self.weight = weight
        self.table = table if isinstance(table, Table) else open_table(table)
        if negative_weights == "drop" and weight not in self.table.event_columns():
            raise CalibrewError(
                f"TableStream: negative_weights='drop' needs the weight column {weight!r}, "
                f"which table {self.table.path} does not have (its event columns: "
                f"{', '.join(self.table.event_columns())})"
            )
        self.columns = list(columns)
        self.padded = dict(padded or {})
        self.variation, self.folds = variation, None if folds is None else list(folds)
        self.batch_size, self.buffer_rows = batch_size, max(buffer_rows, batch_size)
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.epoch = 0
        self.all_blocks = self.table.blocks(block_rows)
        self.worker, self.n_workers = 0, 1

    def set_epoch(self, epoch: int) -> None:
        """Use the shuffling order of ``epoch`` in the next iteration."""
        self.epoch = epoch

    def shard(self, worker: int, n_workers: int) -> TableStream:
        """Restrict this stream to every ``n_workers``-th block, from ``worker``."""
        self.worker, self.n_workers = worker, n_workers
        return self

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch])

    def blocks(self) -> list[tuple[int, int, int]]:
        """This worker's blocks, in the order they are read."""
        order = list(range(len(self.all_blocks)))
        if self.shuffle:
            order = list(self._rng().permutation(len(order)))
        return [self.all_blocks[i] for i in order[self.worker :: self.n_workers]]

    def _read(self, block: tuple[int, int, int]) -> dict[str, np.ndarray]:
        data = self.table.read_block(block, self.columns, self.variation, self.folds)
        for name, length in self.padded.items():
            values, mask = self.table.padded_block(name, block, self.variation, self.folds,
                                                   length)
            data[name], data[f"{name}.mask"] = values, mask
        if self.negative_weights == "drop":
            weights = (data[self.weight] if self.weight in data else
                       self.table.read_block(block, [self.weight], self.variation,
                                             self.folds)[self.weight])
            data = apply_choice(data, weights, "drop", self.weight)
        elif self.negative_weights == "abs":
            data = apply_choice(data, np.zeros(0), "abs", self.weight)
        return data

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        rng = np.random.default_rng([self.seed, self.epoch, 1 + self.worker])
        buffer: dict[str, np.ndarray] | None = None
        for block in self.blocks():
            data = self._read(block)
            buffer = data if buffer is None else {k: np.concatenate([buffer[k], data[k]])
                                                  for k in buffer}
            while _rows(buffer) >= self.buffer_rows:
                batch, buffer = self._take(buffer, rng)
                yield batch
        while buffer is not None and _rows(buffer) > 0:
            if self.drop_last and _rows(buffer) < self.batch_size:
                return
            batch, buffer = self._take(buffer, rng)
            yield batch

    def _take(self, buffer: dict[str, np.ndarray],
              rng: np.random.Generator) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        n = _rows(buffer)
        size = min(self.batch_size, n)
        if self.shuffle:
            chosen = rng.choice(n, size=size, replace=False)
            rest = np.ones(n, dtype=bool)
            rest[chosen] = False
            return ({k: v[chosen] for k, v in buffer.items()},
                    {k: v[rest] for k, v in buffer.items()})
        return ({k: v[:size] for k, v in buffer.items()},
                {k: v[size:] for k, v in buffer.items()})


def _rows(data: dict[str, Any]) -> int:
    return len(next(iter(data.values()))) if data else 0
