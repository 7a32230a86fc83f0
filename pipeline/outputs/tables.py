"""Zarr v3 feature tables: a partitioned, all-or-nothing store, and its reader.

Layout of one table (``<output>/<dataset>/features.zarr``)::

    features.zarr/            root group; attrs: schema_version, complete, parts, columns, ...
      parts/
        00000/                one group per graph partition, written by that partition only
          run, event, ...     1-D arrays (rows of the part)
          Jet/offsets         ragged collection: offsets + one content array per field
          Jet/pt
          FatJet/pt           padded collection: 2-D (rows, length) per field, plus ``mask``
          FatJet/mask

Each part is written into a temporary directory and renamed into place when complete, so a
part is either absent or whole; the root's ``complete`` attribute, with the list of parts and
their row counts, is written last. A reader refuses a table that is not complete. A rerun after
a failure keeps the parts already written (same schema and configuration) and writes the
missing ones only. Each part owns its arrays entirely: parallel writers never share a chunk.

Chunks hold at least :data:`MIN_CHUNK_BYTES` uncompressed (the size ML readers stream well);
each part array is one shard.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from pipeline.errors import CalibrewError

SCHEMA_VERSION = 1
MIN_CHUNK_BYTES = 1 << 20
PARTS = "parts"


class TableError(CalibrewError):
    """A feature table is incomplete, of another schema, or written with another config."""


def part_name(index: int) -> str:
    """Directory name of part ``index`` (zero-padded so that parts sort in order)."""
    return f"{index:05d}"


def chunk_rows(row_bytes: int, rows: int) -> int:
    """Rows per chunk: at least :data:`MIN_CHUNK_BYTES` uncompressed, at most all rows.

    Examples
    --------
    >>> chunk_rows(4, 10_000_000)
    262144
    >>> chunk_rows(4, 100)
    100
    """
    return max(1, min(max(rows, 1), math.ceil(MIN_CHUNK_BYTES / max(row_bytes, 1))))


def _write_array(group: Any, name: str, values: np.ndarray) -> None:
    values = np.ascontiguousarray(values)
    rows = values.shape[0]
    row_bytes = int(values.dtype.itemsize * (np.prod(values.shape[1:]) if values.ndim > 1 else 1))
    chunks = (chunk_rows(row_bytes, rows), *values.shape[1:])
    # one shard holds the whole part array (a whole number of chunks)
    shard_rows = math.ceil(rows / chunks[0]) * chunks[0]
    shards = (shard_rows, *values.shape[1:]) if shard_rows > chunks[0] else None
    group.create_array(name, shape=values.shape, dtype=values.dtype, chunks=chunks,
                       shards=shards)
    if rows:
        group[name][...] = values


@dataclass(frozen=True)
class RaggedColumn:
    """An object collection stored ragged: ``offsets`` (rows + 1) and per-field contents."""

    offsets: np.ndarray
    fields: Mapping[str, np.ndarray]


@dataclass(frozen=True)
class PaddedColumn:
    """An object collection padded to a fixed length: 2-D fields and a boolean ``mask``."""

    fields: Mapping[str, np.ndarray]
    mask: np.ndarray


Column = np.ndarray | RaggedColumn | PaddedColumn


class TableWriter:
    """Write a feature table part by part; finalize it when every part is there.

    Parameters
    ----------
    path
        The table directory (``.../features.zarr``).
    n_parts
        How many parts (graph partitions) make the table.
    identity
        What makes two runs write the same table: the configuration hash and anything else
        (stored in the root attributes). Parts of an earlier, interrupted run are kept only
        when the identity is the same.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> path = tempfile.mkdtemp() + "/features.zarr"
    >>> writer = TableWriter(path, n_parts=1, identity={"config": "abc"})
    >>> writer.write_part(0, {"event": np.arange(3, dtype=np.uint64)})
    3
    >>> writer.finalize({"dataset": "doc"})
    >>> open_table(path).to_numpy(["event"])["event"].tolist()
    [0, 1, 2]
    """

    def __init__(self, path: str | os.PathLike[str], n_parts: int,
                 identity: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.n_parts = n_parts
        self.identity = dict(identity)
        self._prepare()

    def _prepare(self) -> None:
        root_meta = self.path / "zarr.json"
        if root_meta.exists():
            attrs = _root_attrs(self.path)
            version = attrs.get("schema_version")
            if version != SCHEMA_VERSION:
                raise TableError(
                    f"{self.path}: a table of schema version {version} is there; this "
                    f"calibrew writes version {SCHEMA_VERSION}. Remove it or choose another "
                    "output directory (it is left untouched)."
                )
            if attrs.get("identity") != self.identity:
                raise TableError(
                    f"{self.path}: a table written with another configuration is there "
                    f"({attrs.get('identity')} != {self.identity}). Remove it or choose "
                    "another output directory (it is left untouched)."
                )
            if attrs.get("complete"):
                # a complete table is rewritten only as a whole: start again from scratch
                shutil.rmtree(self.path)
        if not root_meta.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            group = zarr.open_group(str(self.path), mode="w")
            group.attrs.update({"schema_version": SCHEMA_VERSION, "complete": False,
                                "identity": self.identity, "n_parts": self.n_parts})
            zarr.open_group(str(self.path / PARTS), mode="w")

    def part_done(self, index: int) -> bool:
        """Whether part ``index`` is already written (whole)."""
        return (self.path / PARTS / part_name(index) / "zarr.json").exists()

    def missing_parts(self) -> list[int]:
        return [i for i in range(self.n_parts) if not self.part_done(i)]

    def write_part(self, index: int, columns: Mapping[str, Column]) -> int:
        """Write part ``index`` atomically; return its number of rows."""
        if not 0 <= index < self.n_parts:
            raise TableError(f"{self.path}: part {index} outside 0..{self.n_parts - 1}")
        rows = _rows(columns)
        final = self.path / PARTS / part_name(index)
        tmp = self.path / PARTS / f".tmp-{part_name(index)}-{uuid.uuid4().hex[:8]}"
        group = zarr.open_group(str(tmp), mode="w")
        for name, column in columns.items():
            if isinstance(column, RaggedColumn):
                sub = group.create_group(name)
                _write_array(sub, "offsets", column.offsets.astype(np.int64))
                for field, values in column.fields.items():
                    _write_array(sub, field, values)
                sub.attrs["layout"] = "ragged"
            elif isinstance(column, PaddedColumn):
                sub = group.create_group(name)
                _write_array(sub, "mask", column.mask.astype(bool))
                for field, values in column.fields.items():
                    _write_array(sub, field, values)
                sub.attrs["layout"] = "padded"
            else:
                _write_array(group, name, np.asarray(column))
        group.attrs["rows"] = rows
        if final.exists():  # an earlier attempt of the same part: replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
        return rows

    def finalize(self, attrs: Mapping[str, Any]) -> None:
        """Write the root metadata last: the table becomes visible to readers."""
        missing = self.missing_parts()
        if missing:
            raise TableError(f"{self.path}: cannot finalize, parts {missing} are missing")
        rows = [int(_group_attrs(self.path / PARTS / part_name(i))["rows"])
                for i in range(self.n_parts)]
        for stale in (self.path / PARTS).glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        group = zarr.open_group(str(self.path), mode="r+")
        group.attrs.update({**dict(attrs), "parts": rows, "rows": sum(rows),
                            "complete": True})


def _rows(columns: Mapping[str, Column]) -> int:
    counts = set()
    for name, column in columns.items():
        if isinstance(column, RaggedColumn):
            counts.add(len(column.offsets) - 1)
        elif isinstance(column, PaddedColumn):
            counts.add(len(column.mask))
        else:
            counts.add(len(column))
        if len(counts) > 1:
            raise TableError(f"column {name!r} has a different number of rows than the others")
    return counts.pop() if counts else 0


def _group_attrs(path: Path) -> dict[str, Any]:
    with open(path / "zarr.json") as fh:
        return dict(json.load(fh).get("attributes", {}))


def _root_attrs(path: Path) -> dict[str, Any]:
    return _group_attrs(path)


class Table:
    """A complete feature table, read as numpy arrays or a pandas DataFrame."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not (self.path / "zarr.json").exists():
            raise TableError(f"{self.path}: no feature table here")
        self.attrs = _root_attrs(self.path)
        if self.attrs.get("schema_version") != SCHEMA_VERSION:
            raise TableError(f"{self.path}: schema version {self.attrs.get('schema_version')}, "
                             f"this calibrew reads version {SCHEMA_VERSION}")
        if not self.attrs.get("complete"):
            raise TableError(f"{self.path}: the table is not complete (its run did not finish)")
        self.parts = [zarr.open_group(str(self.path / PARTS / part_name(i)), mode="r")
                      for i in range(len(self.attrs["parts"]))]

    @property
    def rows(self) -> int:
        return int(self.attrs["rows"])

    def columns(self) -> list[str]:
        """All column names: event-level ones, then collections as ``Collection.field``."""
        if not self.parts:
            return []
        part = self.parts[0]
        names = sorted(part.array_keys())
        for name, group in sorted(part.groups()):
            names += [f"{name}.{f}" for f in sorted(group.array_keys())]
        return names

    def _read(self, name: str, parts: Iterable[Any]) -> np.ndarray:
        collection, _, field = name.partition(".")
        arrays: list[np.ndarray] = []
        base = 0
        for part in parts:
            if collection not in part:
                raise TableError(f"{self.path}: no column {name!r}; columns are: "
                                 f"{', '.join(self.columns())}")
            node = part[collection]
            values = node[field][...] if field else node[...]
            if field == "offsets":  # ragged offsets restart at 0 in every part: rebase them
                shifted = values + base
                base = int(shifted[-1])
                values = shifted if not arrays else shifted[1:]
            arrays.append(values)
        return np.concatenate(arrays) if arrays else np.zeros(0)

    def to_numpy(self, columns: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Columns as numpy arrays (all parts concatenated, in order).

        A ragged collection's ``Collection.field`` is its flat content and
        ``Collection.offsets`` its offsets (rows + 1); see :meth:`to_awkward`.
        """
        return {name: self._read(name, self.parts) for name in (columns or self.columns())}

    def to_awkward(self, collection: str) -> Any:
        """A ragged or padded collection as an awkward array of records, one list per row."""
        import awkward as ak

        layout = self.parts[0][collection].attrs.get("layout") if self.parts else None
        fields = [f for f in self.columns() if f.startswith(collection + ".")]
        names = [f.split(".", 1)[1] for f in fields if not f.endswith((".offsets", ".mask"))]
        data = self.to_numpy([f"{collection}.{n}" for n in names])
        if layout == "ragged":
            counts = np.diff(self._read(f"{collection}.offsets", self.parts))
            return ak.zip({n: ak.unflatten(data[f"{collection}.{n}"], counts) for n in names})
        mask = self._read(f"{collection}.mask", self.parts)
        records = ak.zip({n: ak.from_regular(ak.Array(data[f"{collection}.{n}"]))
                          for n in names})
        return records[ak.from_regular(ak.Array(mask))]

    def event_columns(self) -> list[str]:
        """The event-level (one value per row) column names."""
        return sorted(self.parts[0].array_keys()) if self.parts else []

    def to_pandas(self, columns: Sequence[str] | None = None) -> Any:
        """Event-level columns as a pandas DataFrame (default: all of them)."""
        import pandas as pd

        return pd.DataFrame(self.to_numpy(columns or self.event_columns()))


def open_table(path: str | os.PathLike[str]) -> Table:
    """Open a complete feature table; an incomplete or foreign one raises :class:`TableError`."""
    return Table(path)
