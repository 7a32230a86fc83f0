"""Zarr v3 feature tables: the partitioned, all-or-nothing writer.

The layout is :mod:`pipeline.table_layout`'s; the reader is
:mod:`pipeline.outputs.table_reader`. Each part is written into a temporary directory and
renamed into place when complete, so a part is either absent or whole; the root's
``complete`` attribute, with the list of parts and their row counts, is written last. A
reader refuses a table that is not complete. A rerun after a failure keeps the parts already
written (same schema and configuration) and writes the missing ones only. Each part owns its
arrays entirely: parallel writers never share a chunk.

Chunks hold at least :data:`MIN_CHUNK_BYTES` uncompressed (chosen by measurement, see the
constant); each part array is one shard.
"""

from __future__ import annotations

import math
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from pipeline.table_layout import (
    LAYOUT,
    MASK,
    OFFSETS,
    PADDED,
    PART_ROWS,
    PARTS,
    RAGGED,
    ROOT_COMPLETE,
    ROOT_IDENTITY,
    ROOT_N_PARTS,
    ROOT_PART_INDICES,
    ROOT_PART_ROWS,
    ROOT_ROWS,
    ROOT_SCHEMA_VERSION,
    ROOT_SKIPPED_PARTS,
    SCHEMA_VERSION,
    Column,
    PaddedColumn,
    RaggedColumn,
    TableError,
    group_attrs,
    part_name,
    rows_of,
)

#: 4 MiB, by measurement (tests/benchmarks/bench_tables.py, 2M rows in 10 parts): against
#: 1 MiB, reads into numpy and into padded tensors are 1.1x faster, writes the same; 16 MiB
#: reads tensors 1.2x faster but numpy columns 0.9x, and makes a shuffled stream's blocks
#: (one chunk of the event column) coarse: 2M rows instead of 0.5M.
MIN_CHUNK_BYTES = 4 << 20


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
    >>> from pipeline.outputs.table_reader import open_table
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
        attrs = group_attrs(self.path)
        version = attrs.get(ROOT_SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise TableError(
                f"{self.path}: a table of schema version {version} is there; this calibrew "
                f"writes version {SCHEMA_VERSION}. Remove it or choose another output "
                "directory (it is left untouched)."
            )
        there = attrs.get(ROOT_IDENTITY) or {}
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
            group.attrs.update({ROOT_SCHEMA_VERSION: SCHEMA_VERSION, ROOT_COMPLETE: False,
                                ROOT_IDENTITY: self.identity, ROOT_N_PARTS: self.n_parts})
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
                _write_array(sub, OFFSETS, column.offsets.astype(np.int64))
                for field, values in column.fields.items():
                    _write_array(sub, field, values)
                sub.attrs[LAYOUT] = RAGGED
            elif isinstance(column, PaddedColumn):
                sub = group.create_group(name)
                _write_array(sub, MASK, column.mask.astype(bool))
                for field, values in column.fields.items():
                    _write_array(sub, field, values)
                sub.attrs[LAYOUT] = PADDED
            else:
                _write_array(group, name, np.asarray(column))
        root.attrs.update({**dict(attrs or {}), PART_ROWS: rows})
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
        rows = [int(group_attrs(self.path / PARTS / part_name(i))[PART_ROWS]) for i in present]
        for stale in (self.path / PARTS).glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        group = zarr.open_group(str(self.path), mode="r+")
        group.attrs.update({**dict(attrs), ROOT_PART_ROWS: rows, ROOT_PART_INDICES: present,
                            ROOT_SKIPPED_PARTS: sorted(left_out),
                            ROOT_ROWS: sum(rows), ROOT_COMPLETE: True})

    def part_attrs(self, skipped: Sequence[int] = ()) -> list[dict[str, Any]]:
        """The attributes each written part carries (row count and what its writer added),
        but for the ``skipped`` ones."""
        return [group_attrs(self.path / PARTS / part_name(i)) for i in range(self.n_parts)
                if self.part_done(i) and i not in set(skipped)]


def _rows(columns: Mapping[str, Column]) -> int:
    counts = set()
    for name, column in columns.items():
        counts.add(rows_of(column))
        if len(counts) > 1:
            raise TableError(f"column {name!r} has a different number of rows than the others")
    return counts.pop() if counts else 0


__all__ = ["MIN_CHUNK_BYTES", "TableWriter", "chunk_rows"]
