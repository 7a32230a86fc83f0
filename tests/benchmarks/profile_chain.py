"""Where the demo chain's time goes: one chunk of the demo job, eagerly, under cProfile.

Not a test. Runs ``configs/demo.yaml`` (every calibrator, 57 variations, the histograms and
the feature table) on one chunk of a ``make-sample`` file in this process and splits the
time into the stages of the per-chunk function. ``--root`` profiles another checkout of
calibrew (an older commit, to compare before and after); ``CALIBREW_COMPILED_CORRECTIONS=0``
evaluates the corrections with correctionlib. Each run saves its stages as JSON; ``--table``
makes the comparison table from several such files (``--write`` puts it in
docs/benchmarks.md).

    python tests/benchmarks/profile_chain.py --events 100000 --label before \\
        --root /tmp/calibrew-before --out /tmp/before.json
    python tests/benchmarks/profile_chain.py --events 100000 --label after --out /tmp/after.json
    python tests/benchmarks/profile_chain.py --table /tmp/before.json /tmp/after.json --write
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
METADATA = {"sample": "TTbar", "year": "2022_preEE", "isMC": True, "dataset": "bench"}

# (stage, file suffix, function); each is called from the chunk function directly, so they
# do not overlap; "corrections" overlaps the calibrators and weights that call them
STAGES = [
    ("calibrators: chunk setup (nominal JEC, JER, JES sources)", "calibration/manager.py",
     "__init__"),
    ("calibrators: every variation (JES/JER shifts, e/gamma, MET)", "calibration/manager.py",
     "calibration_loop"),
    ("event weights (pileup, b-tag shape, lepton SFs)", "pipeline/weights.py",
     "compute_weights"),
    ("preselection and categories", "pipeline/analysis/evaluate.py", "_selection"),
    ("feature-table values", "pipeline/analysis/table_values.py", "evaluate"),
    ("awkward to numpy", "pipeline/analysis/to_numpy.py", "variation_arrays"),
    ("histogram fills (and cutflow)", "pipeline/analysis/histogram_fill.py", "fill"),
    ("feature-table rows", "pipeline/analysis/table_rows.py", "add"),
]


def _cumulative(stats: pstats.Stats, suffix: str, name: str,
                caller: tuple[str, str] | None = None) -> float:
    total = 0.0
    for (filename, _, function), (_, _, _, cumtime, callers) in stats.stats.items():  # type: ignore[attr-defined]
        if not (filename.endswith(suffix) and function == name):
            continue
        if caller is None:
            total += cumtime
        else:
            total += sum(ct for (f, _, fn), (_, _, _, ct) in callers.items()
                         if f.endswith(caller[0]) and fn == caller[1])
    return total


def profile(root: Path, events: int, label: str) -> dict:
    sys.path.insert(0, str(root))
    import numpy as np

    np.seterr(all="ignore")
    from pipeline.analysis.loading import load_config, load_parameters
    from pipeline.analysis.plan import make_plan
    from pipeline.analysis.processor import ChunkProcessor
    from pipeline.graph import plan_variations
    from pipeline.inputs.nanoevents import read_eager

    sys.path.insert(0, str(HERE))
    from bench import sample_file

    path = str(sample_file(max(events, 200_000)))
    cfg = load_config(root / "configs" / "demo.yaml")
    params = load_parameters(cfg.parameters)
    sample = read_eager(path, start=0, stop=1000)
    shape, weights = plan_variations(cfg, params, METADATA, sample)
    processor = ChunkProcessor(make_plan(cfg, params, METADATA, shape + weights,
                                         shape_variations=shape))
    tables = [t.name for t in processor.plan.tables]
    processor._accumulate(sample, tables)  # payloads loaded, kernels compiled
    chunk = read_eager(path, start=0, stop=events)
    start = time.perf_counter()
    processor._accumulate(chunk, tables)
    wall = time.perf_counter() - start
    profiler = cProfile.Profile()
    profiler.enable()
    processor._accumulate(chunk, tables)
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = _cumulative(stats, "pipeline/analysis/processor.py", "_accumulate")
    stages = {name: _cumulative(stats, suffix, fn) for name, suffix, fn in STAGES}
    stages["histogram fills (and cutflow)"] += _cumulative(
        stats, "pipeline/analysis/histogram_fill.py", "fill_cutflow")
    stages["histogram observables and the rest"] = total - sum(stages.values())
    corrections = (_cumulative(stats, "corrections/loader.py", "evaluate")
                   or _cumulative(stats, "correctionlib/highlevel.py", "evaluate"))
    return {"label": label, "events": events, "wall_s": wall, "events_per_s": events / wall,
            "profiled_s": total, "stages": stages, "corrections_s": corrections}


def table(runs: list[dict]) -> list[str]:
    head = "| stage | " + " | ".join(f"{r['label']} (s) | {r['label']} (%)" for r in runs) + " |"
    lines = [head, "|" + " --- |" * (1 + 2 * len(runs))]
    for stage in runs[0]["stages"]:
        seconds = [r["stages"].get(stage, 0.0) for r in runs]
        cells = [f"{t:.2f} | {100 * t / r['profiled_s']:.0f}" for t, r in zip(seconds, runs)]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    cells = [f"{r['corrections_s']:.2f} | {100 * r['corrections_s'] / r['profiled_s']:.0f}"
             for r in runs]
    lines.append("| of which correction evaluation (in calibrators and weights) | "
                 + " | ".join(cells) + " |")
    lines.append("| total under the profiler | " + " | ".join(
        f"{r['profiled_s']:.2f} | 100" for r in runs) + " |")
    lines.append("| events/s without the profiler | " + " | ".join(
        f"{r['events_per_s']:,.0f} | " for r in runs) + " |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--root", type=Path, default=HERE.parents[1],
                        help="the calibrew checkout to profile")
    parser.add_argument("--label", default="this checkout")
    parser.add_argument("--out", type=Path, help="save the stages as JSON")
    parser.add_argument("--table", type=Path, nargs="+", help="JSON files to tabulate")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    if args.table:
        runs = [json.loads(p.read_text()) for p in args.table]
        lines = [f"One chunk of {runs[0]['events']:,} events of the demo job, eager, one "
                 "process, under cProfile (its overhead included; the last row is measured "
                 "without it): " + "; ".join(f"{r['label']}" for r in runs) + ".", "",
                 *table(runs)]
        from results_doc import publish

        publish(lines, "bench-profile", "Where the time goes", args.write)
        return 0
    result = profile(args.root.resolve(), args.events, args.label)
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
