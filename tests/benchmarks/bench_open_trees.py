"""Per-chunk time with each chunk opening its file (as uproot's lazy reader does) against the
file opened once per process (pipeline.inputs.open_trees), side by side in one run.

Not a test: run it by hand and paste the table it prints into ``docs/benchmarks.md``
(``--write`` does that). Each chain's graph is built once; its chunks are computed one after
another in this process (dask's sync scheduler), first with the cache off, then on, then off
and on again, and the faster of each pair of passes is kept. The first chunk of a pass (the
warm-up, and the open of the cached pass) is not timed. The histogram vectors of the two
ways must be identical.

    python tests/benchmarks/bench_open_trees.py [--write]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402

from pipeline.inputs import open_trees  # noqa: E402

KEPT = open_trees.MAX_OPEN  # the default


def chunk_passes(graph, passes: int = 2) -> tuple[dict[str, float], bool]:
    """The best seconds per chunk (after the first) with each chunk opening its file and
    with the file kept open, and whether both give the same histogram vectors."""
    import dask

    tasks = graph.chunk_tasks()
    best = {"reopen": float("inf"), "kept": float("inf")}
    results = {}
    for _ in range(passes):
        for mode, max_open in (("reopen", 0), ("kept", KEPT)):
            saved, open_trees.MAX_OPEN = open_trees.MAX_OPEN, max_open
            open_trees.forget_all()
            try:
                first = dask.compute(tasks[0], scheduler="sync")
                start = time.perf_counter()
                rest = dask.compute(*tasks[1:], scheduler="sync")
                best[mode] = min(best[mode], (time.perf_counter() - start) / (len(tasks) - 1))
            finally:
                open_trees.MAX_OPEN = saved
            results[mode] = [*first, *rest]
    same = all(np.array_equal(a, b) for a, b in zip(results["reopen"], results["kept"]))
    return best, same


def chain_graph(chain: str, path: Path, chunksize: int, chunks: int):
    from pipeline.analysis.loading import load_config, load_parameters
    from pipeline.graph import build_dataset_graph
    from pipeline.inputs.datasets import Chunk, Dataset

    dataset = Dataset("bench", [str(path)], bench.METADATA)
    dataset.chunks = [Chunk(str(path), b * chunksize, (b + 1) * chunksize)
                      for b in range(chunks)]
    if chain == "jet":
        return build_dataset_graph(dataset, bench.jet_chain_config(path),
                                   bench.jet_params(["Total"]))
    cfg = load_config(ROOT / "configs" / "demo.yaml")
    return build_dataset_graph(dataset, cfg, load_parameters(cfg.parameters))


def main() -> int:
    import uproot

    from pipeline.inputs.datafiles import cache_dir, find_data_file

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    sample = cache_dir() / "bench" / "tt_scale_100000_1of4_bd2153c9.root"
    if not sample.exists():
        sample = bench.sample_file(50_000)
    nano = find_data_file("nano_tt_v12.root")
    rows = [("jet chain (JES Total, JER)", "jet", nano, 20, 8),
            ("jet chain (JES Total, JER)", "jet", sample, 2000, 5),
            ("demo chain (57 variations)", "demo", nano, 40, 5),
            ("demo chain (57 variations)", "demo", sample, 1000, 4)]
    lines = ["| chain | file (branches) | chunk | per chunk, reopened | per chunk, kept open "
             "| saved | same results |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for what, chain, path, chunksize, chunks in rows:
        with uproot.open(path) as handle:
            branches = len(handle["Events"].keys())
        best, same = chunk_passes(chain_graph(chain, path, chunksize, chunks))
        lines.append(f"| {what} | {path.name} ({branches}) | {chunksize:,} | "
                     f"{best['reopen'] * 1e3:.0f} ms | {best['kept'] * 1e3:.0f} ms | "
                     f"{(best['reopen'] - best['kept']) * 1e3:.0f} ms | {same} |")
        print(lines[-1], flush=True)
    from results_doc import publish

    publish(lines, "open-trees", "Input files opened once per process", args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
