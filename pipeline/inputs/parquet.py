"""Flat Parquet event tables as input (e.g. the FAIR Universe HiggsML challenge data).

A Parquet file with one row per event and one column per feature is read as an event
record with those fields, lazily (one dask-awkward partition per chunk of rows, only the
columns used) or eagerly. Files without the NanoAOD event identity get one, so that random
numbers and folds stay tied to the event: ``run`` = 0, ``luminosityBlock`` = the CRC-32 of
the file name, ``event`` = the row number in the file. These do not depend on chunking;
two files of one dataset with the same name in different directories would share them, so
such files need distinct names.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import awkward as ak
import dask_awkward as dak
import numpy as np
from dask_awkward.lib.io.columnar import ColumnProjectionMixin

from pipeline.errors import InputFileError, UnreadableInputError
from pipeline.table_layout import IDENTITY_TYPES

SUFFIXES = (".parquet", ".parq", ".pq")


def is_parquet(file: str) -> bool:
    """Whether ``file`` is a Parquet table (by its suffix).

    Examples
    --------
    >>> is_parquet("FAIR_Universe_HiggsML_data.parquet"), is_parquet("nano.root")
    (True, False)
    """
    return file.lower().endswith(SUFFIXES)


def parquet_rows(file: str) -> int:
    """Rows of a Parquet file (from its metadata); an unreadable file is named."""
    import pyarrow.parquet as pq

    try:
        return int(pq.ParquetFile(file).metadata.num_rows)
    except Exception as err:
        raise InputFileError(f"cannot read Parquet file {file}: {type(err).__name__}: "
                             f"{err}") from err


def file_key(file: str) -> int:
    """The ``luminosityBlock`` given to the events of a file without an event identity.

    Examples
    --------
    >>> file_key("/data/HiggsML.parquet") == file_key("HiggsML.parquet")
    True
    """
    return zlib.crc32(Path(file).name.encode())


def _file_form(file: str) -> tuple[ak.forms.RecordForm, list[str]]:
    """The event form of ``file`` (identity fields added) and the identity fields added."""
    import pyarrow.parquet as pq

    try:
        empty = pq.ParquetFile(file).schema_arrow.empty_table()
    except Exception as err:
        raise InputFileError(f"cannot read Parquet file {file}: {type(err).__name__}: "
                             f"{err}") from err
    form = ak.from_arrow(empty).layout.form
    added = [k for k in IDENTITY_TYPES if k not in form.fields]
    contents = [*form.contents, *(ak.forms.NumpyForm(IDENTITY_TYPES[k]) for k in added)]
    return ak.forms.RecordForm(contents, [*form.fields, *added]), added


def read_rows(file: str, start: int, stop: int, columns: Sequence[str] | None = None,
              synthesized: Sequence[str] = ()) -> ak.Array:
    """Rows ``[start, stop)`` of ``file`` as an event record (only the row groups needed)."""
    import pyarrow.parquet as pq

    try:
        handle = pq.ParquetFile(file)
        stored = [c for c in (columns if columns is not None else handle.schema_arrow.names)
                  if c not in synthesized]
        groups, first, offset = [], None, 0
        for i in range(handle.num_row_groups):
            rows = handle.metadata.row_group(i).num_rows
            if offset < stop and offset + rows > start:
                groups.append(i)
                first = offset if first is None else first
            offset += rows
        table = (handle.read_row_groups(groups, columns=stored) if groups
                 else handle.schema_arrow.empty_table().select(stored))
    except Exception as err:
        raise UnreadableInputError(f"cannot read rows [{start}, {stop}) of Parquet file {file}: "
                             f"{type(err).__name__}: {err}") from err
    if first is not None:
        table = table.slice(start - first, stop - start)
    fields = {name: ak.from_arrow(table.column(name), highlevel=False) for name in stored}
    wanted = columns if columns is not None else [*stored, *synthesized]
    n = stop - start if first is not None else 0
    identity = {"run": np.zeros(n, np.uint32),
                "luminosityBlock": np.full(n, file_key(file), np.uint32),
                "event": np.arange(start, start + n, dtype=np.uint64)}
    arrays = {name: ak.Array(fields[name]) if name in fields else identity[name]
              for name in wanted if name in fields or name in synthesized}
    if not arrays:  # nothing but the number of rows asked for
        return ak.Array(ak.contents.RecordArray([], [], length=n))
    return ak.zip(arrays, depth_limit=1)


class ParquetChunkReader(ColumnProjectionMixin):
    """The dask-awkward IO function of a Parquet dataset: one chunk of rows per call."""

    def __init__(self, form: ak.forms.RecordForm, synthesized: Sequence[str],
                 columns: Sequence[str] | None = None) -> None:
        self._form = form
        self.synthesized = tuple(synthesized)
        self.columns = None if columns is None else list(columns)

    @property
    def form(self) -> ak.forms.Form:
        return self._form

    @property
    def behavior(self) -> dict[str, Any] | None:
        return None

    @property
    def attrs(self) -> dict[str, Any] | None:
        return None

    @property
    def use_optimization(self) -> bool:
        return True

    def project_columns(self, columns: frozenset[str]) -> ParquetChunkReader:
        keep = [f for f in self._form.fields if f in columns]
        return ParquetChunkReader(self._form.select_columns(keep), self.synthesized, keep)

    def __call__(self, chunk: tuple[str, int, int]) -> ak.Array:
        file, start, stop = chunk
        return read_rows(file, start, stop, self.columns or self._form.fields, self.synthesized)


def read_parquet_lazy(chunks: Sequence[tuple[str, int, int]], name: str = "") -> dak.Array:
    """Lazy events of Parquet ``chunks`` ``(file, start, stop)``, one partition per chunk."""
    files = sorted({c[0] for c in chunks})
    form, synthesized = _file_form(files[0])
    for other in files[1:]:
        if _file_form(other)[0] != form:
            raise InputFileError(f"Parquet file {other} has other columns than {files[0]}; "
                                 "the files of a dataset need one schema")
    events = dak.from_map(ParquetChunkReader(form, synthesized), list(chunks),
                          label=f"from-parquet-{name}" if name else "from-parquet")
    assert isinstance(events, dak.Array)
    return events


def read_parquet_eager(file: str, start: int = 0, stop: int | None = None) -> ak.Array:
    """Eager events of a Parquet file (rows ``[start, stop)``), identity added if absent."""
    _, synthesized = _file_form(file)
    return read_rows(file, start, parquet_rows(file) if stop is None else stop, None,
                     synthesized)
