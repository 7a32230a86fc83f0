"""Feature-table write and read throughput: calibrew's Zarr store against Parquet (pyarrow).

The table is the demo job's feature table (real rows: the calibrated nano_tt_v12 events of
a demo run), tiled to ``--rows`` rows and split into ``--parts`` parts as a run's chunks
would write it. Measured side by side in one run, same rows, same columns, same parts:

- write: calibrew's TableWriter (one Zarr group per part, atomic) against pyarrow writing
  one Parquet file per part (zstd, as pyarrow's default compression is snappy; both given);
- read into numpy: every event-level column;
- read into padded tensors: the jet collection as a dense (rows, 8, fields) array plus its
  mask (Zarr stores it padded; Parquet as fixed-size lists, reshaped);
- read of the ragged layout: the same jets stored ragged (offsets + content), padded on read.

Usage: ``python tests/benchmarks/bench_tables.py --rows 2000000 --parts 10 --write``
(``--write`` puts the results into docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def demo_table(workdir: Path) -> Path:
    """Run the demo job once and return its feature table."""
    out = workdir / "demo"
    subprocess.run([sys.executable, "-m", "pipeline", "run", str(ROOT / "jobs" / "demo.yaml"),
                    "--output", str(out), "--no-progress"], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    return next(out.glob("*/features.zarr"))


def tiled_columns(table_path: Path, rows: int) -> tuple[dict, dict]:
    """Event-level columns and the padded jets of the demo table, tiled to ``rows``."""
    from pipeline.outputs.table_reader import open_table

    table = open_table(table_path)
    events = table.to_numpy(variation=None)
    jets, mask = table.padded("jets", variation=None)
    reps = int(np.ceil(rows / len(mask)))

    def tile(a: np.ndarray) -> np.ndarray:
        return np.concatenate([a] * reps)[:rows]

    columns = {k: tile(v) for k, v in events.items()}
    columns["event"] = np.arange(rows, dtype=np.uint64)  # distinct rows
    padded = {"fields": table.fields("jets"), "values": tile(jets), "mask": tile(mask)}
    return columns, padded


def split(n: int, parts: int) -> list[tuple[int, int]]:
    bounds = np.linspace(0, n, parts + 1).astype(int)
    return list(zip(bounds[:-1], bounds[1:]))


def write_zarr(path: Path, columns: dict, padded: dict, parts: int, layout: str,
               chunk_mib: float | None = None) -> float:
    import pipeline.outputs.table_writer as tables

    default = tables.MIN_CHUNK_BYTES
    tables.MIN_CHUNK_BYTES = int(chunk_mib * 2**20) if chunk_mib else default
    try:
        return _write_zarr(path, columns, padded, parts, layout)
    finally:
        tables.MIN_CHUNK_BYTES = default


def _write_zarr(path: Path, columns: dict, padded: dict, parts: int, layout: str) -> float:
    from pipeline.outputs.table_writer import TableWriter
    from pipeline.table_layout import PaddedColumn, RaggedColumn

    rows = len(padded["mask"])
    writer = TableWriter(path, parts, {"bench": layout})
    start = time.perf_counter()
    writer.prepare()
    for index, (a, b) in enumerate(split(rows, parts)):
        part = {k: v[a:b] for k, v in columns.items()}
        values, mask = padded["values"][a:b], padded["mask"][a:b]
        fields = {f: values[..., i] for i, f in enumerate(padded["fields"])}
        if layout == "padded":
            part["jets"] = PaddedColumn(fields, mask)
        else:
            counts = mask.sum(axis=1)
            offsets = np.concatenate([[0], np.cumsum(counts)])
            part["jets"] = RaggedColumn(offsets, {f: v[mask] for f, v in fields.items()})
        writer.write_part(index, part)
    writer.finalize({})
    return time.perf_counter() - start


def arrow_table(columns: dict, padded: dict, a: int, b: int):  # type: ignore[no-untyped-def]
    import pyarrow as pa

    arrays, names = [], []
    for name, values in columns.items():
        values = values[a:b]
        if values.ndim == 2:
            flat = pa.array(values.reshape(-1))
            arrays.append(pa.FixedSizeListArray.from_arrays(flat, values.shape[1]))
        else:
            arrays.append(pa.array(values))
        names.append(name)
    values, mask = padded["values"][a:b], padded["mask"][a:b]
    for i, f in enumerate(padded["fields"]):
        flat = pa.array(values[..., i].reshape(-1))
        arrays.append(pa.FixedSizeListArray.from_arrays(flat, values.shape[1]))
        names.append(f"jets.{f}")
    arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(mask.reshape(-1)), mask.shape[1]))
    names.append("jets.mask")
    return pa.Table.from_arrays(arrays, names=names)


def write_parquet(path: Path, columns: dict, padded: dict, parts: int,
                  compression: str) -> float:
    import pyarrow.parquet as pq

    path.mkdir(parents=True)
    rows = len(padded["mask"])
    start = time.perf_counter()
    for index, (a, b) in enumerate(split(rows, parts)):
        pq.write_table(arrow_table(columns, padded, a, b), path / f"part-{index:05d}.parquet",
                       compression=compression)
    return time.perf_counter() - start


def read_zarr_numpy(path: Path) -> float:
    from pipeline.outputs.table_reader import open_table

    start = time.perf_counter()
    open_table(path).to_numpy(variation=None)
    return time.perf_counter() - start


def read_zarr_padded(path: Path, length: int) -> float:
    from pipeline.outputs.table_reader import open_table

    start = time.perf_counter()
    table = open_table(path)
    table.padded("jets", variation=None, length=None if table.collections()["jets"] ==
                 "padded" else length)
    return time.perf_counter() - start


def read_parquet_numpy(path: Path, names: list[str]) -> float:
    import pyarrow.parquet as pq

    start = time.perf_counter()
    for file in sorted(path.glob("*.parquet")):
        table = pq.read_table(file, columns=names)
        for name in names:
            column = table.column(name).combine_chunks()
            if hasattr(column, "flatten") and column.type.num_fields == 0 and hasattr(
                    column.type, "list_size"):
                column.flatten().to_numpy(zero_copy_only=False).reshape(
                    len(column), column.type.list_size)
            else:
                column.to_numpy(zero_copy_only=False)
    return time.perf_counter() - start


def read_parquet_padded(path: Path, fields: list[str]) -> float:
    import pyarrow.parquet as pq

    start = time.perf_counter()
    names = [f"jets.{f}" for f in fields] + ["jets.mask"]
    for file in sorted(path.glob("*.parquet")):
        table = pq.read_table(file, columns=names)
        dense = []
        for name in names[:-1]:
            column = table.column(name).combine_chunks()
            dense.append(column.flatten().to_numpy().reshape(len(column), column.type.list_size))
        np.stack(dense, axis=-1)
        mask = table.column("jets.mask").combine_chunks()
        mask.flatten().to_numpy(zero_copy_only=False).reshape(len(mask), mask.type.list_size)
    return time.perf_counter() - start


def best_of(reads: dict, repeat: int) -> dict[str, float]:
    """The shortest of ``repeat`` back-to-back reads of each store.

    Back to back, because the first read after another library's (pyarrow's memory pool,
    then numpy's) pays for page-faulting fresh memory: measured, taking turns made the same
    Zarr store read 2x slower when it came right after a Parquet read.
    """
    return {name: min(read() for _ in range(repeat)) for name, read in reads.items()}


def size_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--parts", type=int, default=10)
    parser.add_argument("--chunk-mib", type=float, nargs="*", default=[1.0, 16.0],
                        help="other minimum chunk sizes to try for the padded Zarr table")
    parser.add_argument("--repeat", type=int, default=3, help="read rounds (best is kept)")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="calibrew-bench-tables-"))
    try:
        columns, padded = tiled_columns(demo_table(work), args.rows)
        rows, length = args.rows, padded["mask"].shape[1]
        results = []
        # warm up (imports, codec and thread-pool start-up) so that no store pays for them
        small = {k: v[:1000] for k, v in columns.items()}
        small_pad = {**padded, "values": padded["values"][:1000], "mask": padded["mask"][:1000]}
        write_zarr(work / "warm.zarr", small, small_pad, 1, "padded")
        write_parquet(work / "warm", small, small_pad, 1, "zstd")
        read_zarr_numpy(work / "warm.zarr")
        read_parquet_numpy(work / "warm", list(small))
        z_pad, z_rag = work / "padded.zarr", work / "ragged.zarr"
        p_zstd, p_snappy = work / "zstd", work / "snappy"
        w = {"zarr padded": write_zarr(z_pad, columns, padded, args.parts, "padded"),
             "zarr ragged": write_zarr(z_rag, columns, padded, args.parts, "ragged"),
             "parquet zstd": write_parquet(p_zstd, columns, padded, args.parts, "zstd"),
             "parquet snappy": write_parquet(p_snappy, columns, padded, args.parts, "snappy")}
        for mib in args.chunk_mib:
            key = f"zarr padded, chunks >= {mib:g} MiB"
            w[key] = write_zarr(work / f"padded-{mib}.zarr", columns, padded, args.parts,
                                "padded", mib)
        names = list(columns)
        numpy_reads = {"zarr padded": lambda: read_zarr_numpy(z_pad),
                       **{f"zarr padded, chunks >= {mib:g} MiB":
                          (lambda p=work / f"padded-{mib}.zarr": read_zarr_numpy(p))
                          for mib in args.chunk_mib},
                       "parquet zstd": lambda: read_parquet_numpy(p_zstd, names),
                       "parquet snappy": lambda: read_parquet_numpy(p_snappy, names)}
        tensor_reads = {"zarr padded": lambda: read_zarr_padded(z_pad, length),
                        **{f"zarr padded, chunks >= {mib:g} MiB":
                           (lambda p=work / f"padded-{mib}.zarr": read_zarr_padded(p, length))
                           for mib in args.chunk_mib},
                        "zarr ragged": lambda: read_zarr_padded(z_rag, length),
                        "parquet zstd": lambda: read_parquet_padded(p_zstd, padded["fields"]),
                        "parquet snappy": lambda: read_parquet_padded(p_snappy,
                                                                      padded["fields"])}
        r_np = best_of(numpy_reads, args.repeat)
        r_pad = best_of(tensor_reads, args.repeat)
        sizes = {"zarr padded": size_mib(z_pad), "zarr ragged": size_mib(z_rag),
                 **{f"zarr padded, chunks >= {mib:g} MiB": size_mib(work / f"padded-{mib}.zarr")
                    for mib in args.chunk_mib},
                 "parquet zstd": size_mib(p_zstd), "parquet snappy": size_mib(p_snappy)}
        for store in w:
            results.append((store, rows / w[store], rows / r_np[store] if store in r_np else None,
                            rows / r_pad[store], sizes[store]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = next(r for r in results if r[0] == "parquet zstd")
    lines = [
        f"Measured {datetime.date.today()} on {platform.machine()}, "
        f"{platform.python_version()}, one run: `python tests/benchmarks/bench_tables.py "
        f"--rows {rows} --parts {args.parts} --chunk-mib "
        f"{' '.join(f'{m:g}' for m in args.chunk_mib)} --repeat {args.repeat}`; "
        f"reads: best of {args.repeat} back to back, after a warm-up; the demo feature "
        f"table ({len(columns)} event-level columns incl. 22 weight variations, jets "
        f"padded to {length} x {len(padded['fields'])} fields) tiled to {rows:,} rows "
        f"in {args.parts} parts. "
        "Ratios are against Parquet (zstd) in the same run. Tiled rows repeat, so both "
        "formats compress them far better than real data: the sizes on disk are not "
        "representative.",
        "",
        "| store | write rows/s | read to numpy rows/s | read to padded tensors rows/s "
        "| on disk MiB | write / parquet | numpy read / parquet | tensor read / parquet |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for store, write, read_np, read_pad, size in results:
        lines.append(
            f"| {store} | {write:,.0f} | {'-' if read_np is None else f'{read_np:,.0f}'} | "
            f"{read_pad:,.0f} | {size:,.1f} | {write / base[1]:.2f} | "
            f"{'-' if read_np is None else f'{read_np / base[2]:.2f}'} | "
            f"{read_pad / base[3]:.2f} |")
    from results_doc import publish

    publish(lines, "bench-tables", "Feature tables: write and read", args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
