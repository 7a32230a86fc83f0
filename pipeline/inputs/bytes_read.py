"""Bytes a run reads: the compressed sizes of the input it fetches for each chunk.

For NanoAOD (ROOT) this is the sum, over the branches the graph reads, of the compressed
size of every basket overlapping the chunk's entries (what uproot requests); for Parquet,
of the column chunks of the row groups overlapping the chunk. Computed on the client from
the files' metadata, without reading any data.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pipeline.inputs.datasets import Chunk


def _root_bytes(file: str, tree: str, columns: set[str], chunks: list[Chunk]) -> list[int]:
    import uproot

    out = [0] * len(chunks)
    with uproot.open(file) as handle:
        events = handle[tree]
        for name in sorted(columns):
            if name not in events:
                continue
            branch = events[name]
            baskets = [(*branch.basket_entry_start_stop(i), branch.basket_compressed_bytes(i))
                       for i in range(branch.num_baskets)]
            for k, chunk in enumerate(chunks):
                out[k] += sum(int(size) for start, stop, size in baskets
                              if start < chunk.stop and stop > chunk.start)
    return out


def _parquet_bytes(file: str, columns: set[str], chunks: list[Chunk]) -> list[int]:
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(file).metadata
    groups = []
    first = 0
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        size = sum(group.column(c).total_compressed_size for c in range(group.num_columns)
                   if group.column(c).path_in_schema.split(".")[0] in columns)
        groups.append((first, first + group.num_rows, size))
        first += group.num_rows
    return [sum(size for start, stop, size in groups if start < c.stop and stop > c.start)
            for c in chunks]


def chunk_bytes(dataset: Any, columns: Iterable[str], skip: Iterable[int] = ()) -> list[int]:
    """Compressed bytes read by each chunk of ``dataset`` for the input ``columns``; the
    ``skip`` chunks (left out of the run) count 0 and their files are not opened for them.

    Examples
    --------
    >>> from pipeline.inputs.datasets import Dataset, preprocess
    >>> from pipeline.inputs.datafiles import find_data_file
    >>> ds = preprocess(Dataset("tt", [str(find_data_file("nano_tt_v12.root"))], {}), 100)
    >>> sizes = chunk_bytes(ds, ["Jet_pt", "nJet"])
    >>> len(sizes), all(s > 0 for s in sizes)
    (2, True)
    """
    wanted, skipped = set(columns), set(skip)
    by_file: dict[str, list[int]] = {}
    for index, chunk in enumerate(dataset.chunks):
        if index not in skipped:
            by_file.setdefault(chunk.file, []).append(index)
    out = [0] * len(dataset.chunks)
    for file, indices in by_file.items():
        chunks = [dataset.chunks[i] for i in indices]
        sizes = (_parquet_bytes(file, wanted, chunks) if dataset.format == "parquet"
                 else _root_bytes(file, dataset.tree, wanted, chunks))
        for i, size in zip(indices, sizes):
            out[i] = size
    return out
