"""Zarr v3 feature tables: the reader of complete tables.

Reads what :mod:`pipeline.outputs.table_writer` wrote, in the layout of
:mod:`pipeline.table_layout`, into numpy arrays (pandas and awkward on request, imported
only then). It imports zarr and numpy only, for the ML readers (:mod:`pipeline.ml`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from pipeline.table_layout import (
    EVENT,
    FOLD,
    LAYOUT,
    MASK,
    NOMINAL,
    OFFSETS,
    PADDED,
    PARTS,
    PASS,
    RAGGED,
    ROOT_COMPLETE,
    ROOT_PART_INDICES,
    ROOT_PART_ROWS,
    ROOT_ROWS,
    ROOT_SCHEMA_VERSION,
    SCHEMA_VERSION,
    VARIATIONS,
    WEIGHT_VARIATIONS,
    TableError,
    group_attrs,
    part_name,
)


class Table:
    """A complete feature table, read as numpy arrays, a pandas DataFrame or awkward arrays.

    Rows are those that pass in any variation; a read selects the rows that pass in the
    ``variation`` asked (``"nominal"`` by default; ``None`` keeps every row) and the
    ``folds`` asked, and takes a column's values of that variation where it has its own.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from pipeline.outputs.table_writer import TableWriter
    >>> path = tempfile.mkdtemp() + "/features.zarr"
    >>> writer = TableWriter(path, n_parts=1, identity={})
    >>> writer.prepare()
    >>> writer.write_part(0, {"event": np.arange(4, dtype=np.uint64),
    ...                       "fold": np.array([0, 1, 2, 3], dtype=np.uint8),
    ...                       "pass": np.array([True, True, False, True]),
    ...                       "x": np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32),
    ...                       "variations/up/pass": np.array([True, True, True, False]),
    ...                       "variations/up/x": np.array([1.5, 2.5, 3.5, 4.5], np.float32)})
    4
    >>> writer.finalize({})
    >>> table = open_table(path)
    >>> table.to_numpy(["x"])["x"].tolist()
    [1.0, 2.0, 4.0]
    >>> table.to_numpy(["x"], variation="up", folds=[1, 2])["x"].tolist()
    [2.5, 3.5]
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not (self.path / "zarr.json").exists():
            raise TableError(f"{self.path}: no feature table here")
        self.attrs = group_attrs(self.path)
        if self.attrs.get(ROOT_SCHEMA_VERSION) != SCHEMA_VERSION:
            raise TableError(f"{self.path}: schema version {self.attrs.get(ROOT_SCHEMA_VERSION)}, "
                             f"this calibrew reads version {SCHEMA_VERSION}")
        if not self.attrs.get(ROOT_COMPLETE):
            raise TableError(f"{self.path}: the table is not complete (its run did not finish)")
        # zarr's node types are a union of arrays and groups: typed loosely here
        indices = self.attrs.get(ROOT_PART_INDICES, range(len(self.attrs[ROOT_PART_ROWS])))
        self.parts: list[Any] = [zarr.open_group(str(self.path / PARTS / part_name(i)),
                                                 mode="r") for i in indices]
        first = self.parts[0] if self.parts else None
        self._arrays = sorted(first.array_keys()) if first is not None else []
        self._groups = ({name: str(g.attrs.get(LAYOUT)) for name, g in first.groups()
                         if name != VARIATIONS} if first is not None else {})
        self._variations: dict[str, list[str]] = {}
        if first is not None and VARIATIONS in first:
            for name, group in sorted(first[VARIATIONS].groups()):
                self._variations[name] = sorted([*group.array_keys(), *group.group_keys()])

    @property
    def rows(self) -> int:
        """Rows stored (passing in any variation)."""
        return int(self.attrs[ROOT_ROWS])

    @property
    def part_rows(self) -> list[int]:
        return [int(r) for r in self.attrs[ROOT_PART_ROWS]]

    def event_columns(self) -> list[str]:
        """Names of the one-value-per-row columns (incl. run, event, fold, weight...)."""
        return list(self._arrays)

    def collections(self) -> dict[str, str]:
        """Object collections and their layout (``ragged`` or ``padded``)."""
        return dict(self._groups)

    def variations(self) -> dict[str, list[str]]:
        """Shape variations and the columns (and collections) each stores again, its
        ``pass`` mask included; the others take their nominal values."""
        return {k: list(v) for k, v in self._variations.items()}

    def weight_variations(self) -> list[str]:
        """Names of the columns of ``weight_variations``."""
        return list(self.attrs.get(WEIGHT_VARIATIONS, []))

    def columns(self) -> list[str]:
        """Every column: one-value-per-row ones, then collections as ``Collection.field``."""
        names = list(self._arrays)
        for name in self._groups:
            names += [f"{name}.{f}" for f in self.fields(name)]
        return names

    def fields(self, collection: str) -> list[str]:
        """The fields of a collection, in the configured order."""
        self._check_collection(collection)
        configured = self.attrs.get("collections", {}).get(collection, {}).get("fields")
        if configured:
            return list(configured)
        group = self.parts[0][collection]
        return [f for f in sorted(group.array_keys()) if f not in (OFFSETS, MASK)]

    # -- row selection ------------------------------------------------------------------
    def _check_variation(self, variation: str | None) -> None:
        if variation not in (None, NOMINAL) and variation not in self._variations:
            raise TableError(f"{self.path}: no variation {variation!r}; variations are: "
                             f"{', '.join(self._variations) or 'none'}")

    def _row_mask(self, part: Any, start: int, stop: int, variation: str | None,
                  folds: Sequence[int] | None) -> np.ndarray | None:
        mask = None
        if variation is not None and PASS in self._arrays:
            node = part if variation == NOMINAL else part[VARIATIONS][variation]
            mask = np.asarray(node[PASS][start:stop], dtype=bool)
        if folds is not None:
            in_folds = np.isin(part[FOLD][start:stop], np.asarray(list(folds)))
            mask = in_folds if mask is None else mask & in_folds
        return mask

    def _event_values(self, part: Any, name: str, start: int, stop: int,
                      variation: str | None) -> np.ndarray:
        if variation not in (None, NOMINAL) and name in self._variations.get(variation, ()):
            return np.asarray(part[VARIATIONS][variation][name][start:stop])
        if name not in part:
            raise TableError(f"{self.path}: no column {name!r}; columns are: "
                             f"{', '.join(self.columns())}")
        return np.asarray(part[name][start:stop])

    def blocks(self, block_rows: int | None = None) -> list[tuple[int, int, int]]:
        """``(part, start, stop)`` row ranges of about ``block_rows`` (default: one chunk)."""
        out = []
        for index, rows in enumerate(self.part_rows):
            step = block_rows or (self.parts[index][EVENT].chunks[0] if rows else 1)
            out += [(index, a, min(a + step, rows)) for a in range(0, rows, step)]
        return out

    def read_block(self, block: tuple[int, int, int], columns: Sequence[str],
                   variation: str | None = NOMINAL,
                   folds: Sequence[int] | None = None) -> dict[str, np.ndarray]:
        """Event-level ``columns`` of one block (see :meth:`blocks`), rows selected."""
        self._check_variation(variation)
        index, start, stop = block
        part = self.parts[index]
        mask = self._row_mask(part, start, stop, variation, folds)
        out = {}
        for name in columns:
            values = self._event_values(part, name, start, stop, variation)
            out[name] = values if mask is None else values[mask]
        return out

    def to_numpy(self, columns: Sequence[str] | None = None, variation: str | None = NOMINAL,
                 folds: Sequence[int] | None = None) -> dict[str, np.ndarray]:
        """Event-level columns as numpy arrays (all parts, in order), rows selected.

        ``variation``: whose pass mask selects rows and whose values a column takes
        (``None``: all rows, nominal values); ``folds``: keep these folds only.
        """
        names = list(columns or self.event_columns())
        for name in names:
            if "." in name:
                raise TableError(f"{name!r} is a collection field: read it with "
                                 "to_awkward() or padded()")
        blocks = [self.read_block((i, 0, rows), names, variation, folds)
                  for i, rows in enumerate(self.part_rows)]
        return {n: np.concatenate([b[n] for b in blocks]) if blocks else np.zeros(0)
                for n in names}

    def to_pandas(self, columns: Sequence[str] | None = None, variation: str | None = NOMINAL,
                  folds: Sequence[int] | None = None) -> Any:
        """Event-level columns as a DataFrame; ``weight_variations`` as ``weight_<name>``."""
        import pandas as pd

        names = list(columns or self.event_columns())
        data = self.to_numpy(names, variation, folds)
        frame: dict[str, np.ndarray] = {}
        for name, values in data.items():
            if name == WEIGHT_VARIATIONS:
                for i, wname in enumerate(self.weight_variations()):
                    frame[f"weight_{wname}"] = values[:, i]
            else:
                frame[name] = values
        return pd.DataFrame(frame)

    def _check_collection(self, collection: str) -> None:
        """Raise unless the table has ``collection``."""
        if collection not in self._groups:
            raise TableError(f"{self.path}: no collection {collection!r}; collections are: "
                             f"{', '.join(self._groups) or 'none'}")

    def padded(self, collection: str, fields: Sequence[str] | None = None,
               variation: str | None = NOMINAL, folds: Sequence[int] | None = None,
               length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """A collection as a dense ``(rows, length, fields)`` array and its ``(rows, length)``
        mask: training tensors. A ragged collection is padded here (``length`` needed)."""
        pieces = [self.padded_block(collection, (i, 0, rows), variation, folds, length, fields)
                  for i, rows in enumerate(self.part_rows)]
        if not pieces:
            return np.zeros((0, length or 0, 0), np.float32), np.zeros((0, length or 0), bool)
        return (np.concatenate([p[0] for p in pieces]),
                np.concatenate([p[1] for p in pieces]))

    def padded_block(self, collection: str, block: tuple[int, int, int],
                     variation: str | None = NOMINAL, folds: Sequence[int] | None = None,
                     length: int | None = None,
                     fields: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`padded` for one block (see :meth:`blocks`)."""
        self._check_variation(variation)
        self._check_collection(collection)
        index, start, stop = block
        part = self.parts[index]
        group = self._collection_node(part, collection, variation)
        names = list(fields or self.fields(collection))
        if self._groups[collection] == PADDED:
            mask = np.asarray(group[MASK][start:stop])
            dense = np.stack([np.asarray(group[f][start:stop]) for f in names], axis=-1)
            if length is not None and length != mask.shape[1]:
                raise TableError(f"{collection!r} is stored padded to {mask.shape[1]}, "
                                 f"not {length}")
        else:
            if length is None:
                raise TableError(f"{collection!r} is ragged: give the padded length")
            offsets = np.asarray(group[OFFSETS][start : stop + 1])
            lo, hi = int(offsets[0]), int(offsets[-1])
            dense, mask = _pad(offsets - lo, [np.asarray(group[f][lo:hi]) for f in names],
                               length)
        rows = self._row_mask(part, start, stop, variation, folds)
        return (dense, mask) if rows is None else (dense[rows], mask[rows])

    def _collection_node(self, part: Any, collection: str, variation: str | None) -> Any:
        """The collection's group in ``part``: the variation's own, if it stores one."""
        if variation not in (None, NOMINAL) and collection in self._variations.get(
                str(variation), ()):
            return part[VARIATIONS][variation][collection]
        return part[collection]

    def to_awkward(self, collection: str, variation: str | None = NOMINAL,
                   folds: Sequence[int] | None = None) -> Any:
        """A collection as an awkward array of records, one list per selected row."""
        import awkward as ak

        self._check_variation(variation)
        self._check_collection(collection)
        names = self.fields(collection)
        pieces = []
        for part in self.parts:
            group = self._collection_node(part, collection, variation)
            rows = part[EVENT].shape[0]
            if self._groups[collection] == RAGGED:
                counts = np.diff(np.asarray(group[OFFSETS][...]))
                array = ak.zip({f: ak.unflatten(np.asarray(group[f][...]), counts)
                                for f in names})
            else:
                records = ak.zip({f: ak.from_regular(ak.Array(np.asarray(group[f][...])))
                                  for f in names})
                array = records[ak.from_regular(ak.Array(np.asarray(group[MASK][...])))]
            mask_rows = self._row_mask(part, 0, rows, variation, folds)
            pieces.append(array if mask_rows is None else array[mask_rows])
        return ak.concatenate(pieces) if pieces else ak.Array([])


def _pad(offsets: np.ndarray, contents: list[np.ndarray],
         length: int) -> tuple[np.ndarray, np.ndarray]:
    counts = np.diff(offsets)
    rows = len(counts)
    position = np.arange(offsets[-1]) - np.repeat(offsets[:-1], counts)
    keep = position < length
    row = np.repeat(np.arange(rows), counts)[keep]
    dense = np.zeros((rows, length, len(contents)),
                     dtype=np.result_type(*contents) if contents else np.float32)
    for i, content in enumerate(contents):
        dense[row, position[keep], i] = content[keep]
    mask = np.zeros((rows, length), dtype=bool)
    mask[row, position[keep]] = True
    return dense, mask


def open_table(path: str | os.PathLike[str]) -> Table:
    """Open a complete feature table; an incomplete or foreign one raises :class:`TableError`."""
    return Table(path)


__all__ = ["Table", "TableError", "open_table"]
