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
          variations/jesUp/   per shape variation: its pass mask and the columns it changes

Each part is written into a temporary directory and renamed into place when complete, so a
part is either absent or whole; the root's ``complete`` attribute, with the list of parts and
their row counts, is written last. A reader refuses a table that is not complete. A rerun after
a failure keeps the parts already written (same schema and configuration) and writes the
missing ones only. Each part owns its arrays entirely: parallel writers never share a chunk.

Chunks hold at least :data:`MIN_CHUNK_BYTES` uncompressed (chosen by measurement, see the
constant); each part array is one shard.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from pipeline.errors import CalibrewError

SCHEMA_VERSION = 1
#: 4 MiB, by measurement (tests/benchmarks/bench_tables.py, 2M rows in 10 parts): against
#: 1 MiB, reads into numpy and into padded tensors are 1.1x faster, writes the same; 16 MiB
#: reads tensors 1.2x faster but numpy columns 0.9x, and makes a shuffled stream's blocks
#: (one chunk of the event column) coarse: 2M rows instead of 0.5M.
MIN_CHUNK_BYTES = 4 << 20
PARTS = "parts"
VARIATIONS = "variations"
NOMINAL = "nominal"


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
    1048576
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
    >>> writer.prepare()
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

    def check(self) -> None:
        """Raise :class:`TableError` if a table that cannot be resumed is there; write nothing.

        A table of another schema version or identity (configuration, parameters, chunks,
        calibrew version) cannot; the runner checks every table before it prepares any.
        """
        if not (self.path / "zarr.json").exists():
            return
        attrs = _root_attrs(self.path)
        version = attrs.get("schema_version")
        if version != SCHEMA_VERSION:
            raise TableError(
                f"{self.path}: a table of schema version {version} is there; this calibrew "
                f"writes version {SCHEMA_VERSION}. Remove it or choose another output "
                "directory (it is left untouched)."
            )
        there = attrs.get("identity") or {}
        if there != self.identity:
            differ = sorted(k for k in {*there, *self.identity} if there.get(k) !=
                            self.identity.get(k))
            raise TableError(
                f"{self.path}: a table written with another {', '.join(differ)} is there. "
                "Remove it or choose another output directory (it is left untouched)."
            )

    def prepare(self) -> None:
        """Create the table, or keep the one there (same identity) to resume it.

        Called once by the client before any part is written (after :meth:`check`). A
        complete table of the same identity is kept as it is: its parts are not written
        again, and finalizing rewrites the same metadata.
        """
        self.check()
        if not (self.path / "zarr.json").exists():
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

    def write_part(self, index: int, columns: Mapping[str, Column],
                   attrs: Mapping[str, Any] | None = None) -> int:
        """Write part ``index`` atomically; return its number of rows.

        A name with ``/`` (``variations/jesUp/pt``) goes into nested groups; ``attrs`` are
        stored on the part (summed or checked by :meth:`finalize`).
        """
        if not 0 <= index < self.n_parts:
            raise TableError(f"{self.path}: part {index} outside 0..{self.n_parts - 1}")
        rows = _rows(columns)
        try:
            self._write_part(index, columns, attrs, rows)
        except OSError as err:  # the output's fault, never the input's: the run stops
            raise TableError(f"{self.path}: cannot write part {index}: "
                             f"{type(err).__name__}: {err}") from err
        return rows

    def _write_part(self, index: int, columns: Mapping[str, Column],
                    attrs: Mapping[str, Any] | None, rows: int) -> None:
        final = self.path / PARTS / part_name(index)
        tmp = self.path / PARTS / f".tmp-{part_name(index)}-{uuid.uuid4().hex[:8]}"
        root = zarr.open_group(str(tmp), mode="w")
        for path, column in columns.items():
            *parents, name = path.split("/")
            group = root
            for parent in parents:
                group = group.require_group(parent)
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
        root.attrs.update({**dict(attrs or {}), "rows": rows})
        if final.exists():  # an earlier attempt of the same part: move it away whole first
            stale = tmp.with_name(f".tmp-old-{part_name(index)}-{uuid.uuid4().hex[:8]}")
            os.replace(final, stale)
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(tmp, final)

    def finalize(self, attrs: Mapping[str, Any], skipped: Sequence[int] = ()) -> None:
        """Write the root metadata last: the table becomes visible to readers.

        ``skipped`` parts (chunks whose input could not be read, left out on request) are
        recorded as such and left out even if an earlier attempt wrote them, as they are
        from the histograms; any other missing part is an error. A table finalized with
        skipped parts stays readable while a later run writes them and finalizes it again.
        """
        left_out = set(skipped)
        missing = [i for i in self.missing_parts() if i not in left_out]
        if missing:
            raise TableError(f"{self.path}: cannot finalize, parts {missing} are missing")
        present = [i for i in range(self.n_parts) if self.part_done(i) and i not in left_out]
        rows = [int(_group_attrs(self.path / PARTS / part_name(i))["rows"]) for i in present]
        for stale in (self.path / PARTS).glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        group = zarr.open_group(str(self.path), mode="r+")
        group.attrs.update({**dict(attrs), "parts": rows, "part_indices": present,
                            "skipped_parts": sorted(left_out),
                            "rows": sum(rows), "complete": True})

    def part_attrs(self, skipped: Sequence[int] = ()) -> list[dict[str, Any]]:
        """The attributes each written part carries (row count and what its writer added),
        but for the ``skipped`` ones."""
        return [_group_attrs(self.path / PARTS / part_name(i)) for i in range(self.n_parts)
                if self.part_done(i) and i not in set(skipped)]


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
    """A complete feature table, read as numpy arrays, a pandas DataFrame or awkward arrays.

    Rows are those that pass in any variation; a read selects the rows that pass in the
    ``variation`` asked (``"nominal"`` by default; ``None`` keeps every row) and the
    ``folds`` asked, and takes a column's values of that variation where it has its own.

    Examples
    --------
    >>> import tempfile, numpy as np
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
        self.attrs = _root_attrs(self.path)
        if self.attrs.get("schema_version") != SCHEMA_VERSION:
            raise TableError(f"{self.path}: schema version {self.attrs.get('schema_version')}, "
                             f"this calibrew reads version {SCHEMA_VERSION}")
        if not self.attrs.get("complete"):
            raise TableError(f"{self.path}: the table is not complete (its run did not finish)")
        # zarr's node types are a union of arrays and groups: typed loosely here
        indices = self.attrs.get("part_indices", range(len(self.attrs["parts"])))
        self.parts: list[Any] = [zarr.open_group(str(self.path / PARTS / part_name(i)),
                                                 mode="r") for i in indices]
        first = self.parts[0] if self.parts else None
        self._arrays = sorted(first.array_keys()) if first is not None else []
        self._groups = ({name: str(g.attrs.get("layout")) for name, g in first.groups()
                         if name != VARIATIONS} if first is not None else {})
        self._variations: dict[str, list[str]] = {}
        if first is not None and VARIATIONS in first:
            for name, group in sorted(first[VARIATIONS].groups()):
                self._variations[name] = sorted([*group.array_keys(), *group.group_keys()])

    @property
    def rows(self) -> int:
        """Rows stored (passing in any variation)."""
        return int(self.attrs["rows"])

    @property
    def part_rows(self) -> list[int]:
        return [int(r) for r in self.attrs["parts"]]

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
        return list(self.attrs.get("weight_variations", []))

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
        return [f for f in sorted(group.array_keys()) if f not in ("offsets", "mask")]

    # -- row selection ------------------------------------------------------------------
    def _check_variation(self, variation: str | None) -> None:
        if variation not in (None, NOMINAL) and variation not in self._variations:
            raise TableError(f"{self.path}: no variation {variation!r}; variations are: "
                             f"{', '.join(self._variations) or 'none'}")

    def _row_mask(self, part: Any, start: int, stop: int, variation: str | None,
                  folds: Sequence[int] | None) -> np.ndarray | None:
        mask = None
        if variation is not None and "pass" in self._arrays:
            node = part if variation == NOMINAL else part[VARIATIONS][variation]
            mask = np.asarray(node["pass"][start:stop], dtype=bool)
        if folds is not None:
            in_folds = np.isin(part["fold"][start:stop], np.asarray(list(folds)))
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
            step = block_rows or (self.parts[index]["event"].chunks[0] if rows else 1)
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
            if name == "weight_variations":
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
        if self._groups[collection] == "padded":
            mask = np.asarray(group["mask"][start:stop])
            dense = np.stack([np.asarray(group[f][start:stop]) for f in names], axis=-1)
            if length is not None and length != mask.shape[1]:
                raise TableError(f"{collection!r} is stored padded to {mask.shape[1]}, "
                                 f"not {length}")
        else:
            if length is None:
                raise TableError(f"{collection!r} is ragged: give the padded length")
            offsets = np.asarray(group["offsets"][start : stop + 1])
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
            rows = part["event"].shape[0]
            if self._groups[collection] == "ragged":
                counts = np.diff(np.asarray(group["offsets"][...]))
                array = ak.zip({f: ak.unflatten(np.asarray(group[f][...]), counts)
                                for f in names})
            else:
                records = ak.zip({f: ak.from_regular(ak.Array(np.asarray(group[f][...])))
                                  for f in names})
                array = records[ak.from_regular(ak.Array(np.asarray(group["mask"][...])))]
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
