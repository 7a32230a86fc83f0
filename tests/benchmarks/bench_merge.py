"""calibrew benchmark: the merge's memory and time against the number of datasets.

Not a test: run it by hand, on a quiet machine, and paste the table it prints into
``docs/benchmarks.md`` (``--write`` does that).

    python tests/benchmarks/bench_merge.py --datasets 1,5,20 --write

Each dataset's outputs are written as a run writes them (``histograms.pkl``,
``summary.json``): the demo's seven histograms, two categories, 57 variations, and a large
2-D histogram (``--bins`` x ``--bins``) so that one dataset's histograms weigh tens of MB.
The datasets are split over four processes. Each merge runs in a fresh process; its peak
memory (RSS) should not grow with the number of datasets, only with the processes.
"""

from __future__ import annotations

import argparse
import json
import pickle
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import hist
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench_scale import machine  # noqa: E402
from results_doc import publish  # noqa: E402

PROCESSES = 4
VARIATIONS = ["nominal", *[f"s{i}{d}" for i in range(28) for d in ("Up", "Down")]]
CATEGORIES = ["inclusive", "four_jets"]


def dataset_histograms(rng: np.random.Generator, bins: int) -> dict[str, hist.Hist]:
    from pipeline.analysis.histogram_fill import CUTFLOW

    out = {}
    for i, nbins in enumerate((30, 30, 25, 10, 25, 20)):
        out[f"h{i}"] = hist.Hist(hist.axis.StrCategory(CATEGORIES, name="category"),
                                 hist.axis.StrCategory(VARIATIONS, name="variation"),
                                 hist.axis.Regular(nbins, 0, 1, name="x"),
                                 storage=hist.storage.Weight())
    out["big"] = hist.Hist(hist.axis.StrCategory(CATEGORIES, name="category"),
                           hist.axis.StrCategory(["nominal"], name="variation"),
                           hist.axis.Regular(bins, 0, 1, name="x"),
                           hist.axis.Regular(bins, 0, 1, name="y"),
                           storage=hist.storage.Weight())
    for h in out.values():
        view = h.view(flow=True)
        view["value"] = rng.uniform(0, 10, view.shape)
        view["variance"] = view["value"]
    cutflow = hist.Hist(hist.axis.StrCategory(["all events"], name="step"),
                        hist.axis.StrCategory(["weighted", "events"], name="kind"),
                        storage=hist.storage.Weight())
    cutflow[:, :] = np.ones((1, 2, 2))
    out[CUTFLOW] = cutflow
    return out


def write_outputs(folder: Path, datasets: int, bins: int) -> Path:
    """The per-dataset outputs and the analysis config of ``datasets`` datasets."""
    import yaml

    rng = np.random.default_rng(1)
    one = pickle.dumps(dataset_histograms(rng, bins), protocol=pickle.HIGHEST_PROTOCOL)
    meta = {"sample": "S", "year": "2022_preEE", "isMC": True, "xsec": 1.0}
    config = {"datasets": {}, "processes": {f"p{i}": {"datasets": []}
                                            for i in range(PROCESSES)},
              "categories": dict.fromkeys(CATEGORIES, "True"),
              "histograms": {"h0": {"axes": [{"expr": "x", "bins": 30, "start": 0,
                                              "stop": 1}]}}}
    for d in range(datasets):
        name = f"d{d:03d}"
        (folder / name).mkdir(parents=True)
        (folder / name / "histograms.pkl").write_bytes(one)
        (folder / name / "summary.json").write_text(json.dumps({"sum_genweights": 1.0}))
        config["datasets"][name] = {"files": ["x.root"], "metadata": meta}
        config["processes"][f"p{d % PROCESSES}"]["datasets"].append(name)
    config["processes"] = {k: v for k, v in config["processes"].items() if v["datasets"]}
    (folder / "analysis.yaml").write_text(yaml.safe_dump(config))
    return folder / "analysis.yaml"


def child(config: str, output: str) -> None:
    from pipeline.analysis.loading import load_config, load_parameters
    from pipeline.outputs.merge import merge_run

    cfg, params = load_config(config), load_parameters()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    merge_run(Path(output), cfg, params)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"merge_s": seconds, "peak_mib": peak / 1024,
                      "before_mib": before / 1024}))


def measure(datasets: int, bins: int) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="calibrew-bench-merge-"))
    try:
        config = write_outputs(folder, datasets, bins)
        size = (folder / "d000" / "histograms.pkl").stat().st_size / 2**20
        out = subprocess.run([sys.executable, __file__, "--child", str(config), str(folder)],
                             capture_output=True, text=True, check=False)
        if out.returncode != 0:
            sys.exit(f"merge of {datasets} datasets failed:\n{out.stderr[-3000:]}")
        merged = (folder / "histograms.pkl").stat().st_size / 2**20
        return {"datasets": datasets, "dataset_mib": size, "merged_mib": merged,
                **json.loads(out.stdout.strip().splitlines()[-1])}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="1,5,20")
    parser.add_argument("--bins", type=int, default=600)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    rows = [measure(int(n), args.bins) for n in args.datasets.split(",")]
    first = rows[0]
    lines = [
        f"{machine()}, one run: `python tests/benchmarks/bench_merge.py --datasets "
        f"{args.datasets} --bins {args.bins}`. Each dataset's outputs are "
        f"{first['dataset_mib']:.0f} MiB of histograms (7 histograms, 2 categories, 57 "
        f"variations, one {args.bins}x{args.bins} 2-D histogram); the datasets are split "
        f"over {PROCESSES} processes. Each merge in a fresh process: its peak RSS (Python, "
        "imports and calibrew included: 'before' is the RSS before the merge) and its time.",
        "",
        "| datasets | one dataset (MiB) | merged file (MiB) | RSS before (MiB) | "
        "peak RSS (MiB) | x | merge (s) | s per dataset |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(f"| {row['datasets']} | {row['dataset_mib']:.0f} | "
                     f"{row['merged_mib']:.0f} | {row['before_mib']:.0f} | "
                     f"{row['peak_mib']:.0f} | {row['peak_mib'] / first['peak_mib']:.2f} | "
                     f"{row['merge_s']:.2f} | {row['merge_s'] / row['datasets']:.2f} |")
    publish(lines, "merge", "Merging results: memory against datasets", args.write)


if __name__ == "__main__":
    main()
