"""calibrew benchmark: an expensive observable computed on every event or on the selected ones.

Not a test: run it by hand on a quiet machine; ``--write`` puts its table into
``docs/benchmarks.md``. Every figure is measured in the same run, side by side.

    python tests/benchmarks/bench_observables.py --events 50000 --write

The analysis is issue 16's: one lepton, four jets, b-tag categories, HT and the mass of the
three-jet combination of highest pt (``ak.combinations``), all through definitions, with the
jet-energy variations of ``jet_calibration`` (AK4 only). Each histogram of the three-jet
mass is filled in one category; its observables are computed on every event
(``evaluate_on: all``) or on the events of that category (``selected``). The chunk is
processed in this process (``ChunkProcessor``) after a warm-up, the best of ``--repeat``;
the histograms of both are checked to be the same bits.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

from bench import METADATA, sample_file  # noqa: E402

from pipeline.analysis.loading import load_parameters  # noqa: E402
from pipeline.analysis.plan import make_plan  # noqa: E402
from pipeline.analysis.processor import ChunkProcessor  # noqa: E402
from pipeline.config.models import AnalysisConfig  # noqa: E402
from pipeline.graph import plan_variations  # noqa: E402
from pipeline.inputs.nanoevents import read_eager  # noqa: E402

DEFINITIONS = {
    "good_jet": "(Jet.pt > 30) & (abs(Jet.eta) < 2.4)",
    "jets": "Jet[good_jet]",
    "good_mu": "Muon[(Muon.pt > 30) & (abs(Muon.eta) < 2.4) & Muon.tightId]",
    "good_el": "Electron[(Electron.pt > 30) & (abs(Electron.eta) < 2.4) "
               "& (Electron.cutBased >= 4)]",
    "n_lep": "ak.num(good_mu) + ak.num(good_el)",
    "nb": "ak.sum(jets.btagDeepFlavB > 0.3, axis=1)",
    "trijet": "ak.combinations(jets, 3, fields=['j1', 'j2', 'j3'])",
    "p4": "trijet.j1 + trijet.j2 + trijet.j3",
    "m3": "ak.firsts(p4[ak.argmax(p4.pt, axis=1, keepdims=True)].mass)",
}
CATEGORIES = {"1b": "nb == 1", "2b": "nb >= 2", "3b": "nb >= 3"}


def analysis(evaluate_on: str, category: str) -> AnalysisConfig:
    """The analysis with the three-jet mass filled in ``category``."""
    return AnalysisConfig.model_validate({
        "datasets": {"bench": {"files": ["bench.root"], "metadata": {
            k: v for k, v in METADATA.items() if k != "dataset"}}},
        "calibrators": ["jet_calibration"],
        "variations": {"shape": ["jet_calibration"]},
        "definitions": DEFINITIONS,
        "preselection": {"one_lepton": "n_lep == 1", "four_jets": "ak.num(jets) >= 4"},
        "categories": CATEGORIES,
        "histograms": {
            "ht": {"axes": [{"expr": "ak.sum(jets.pt, axis=1)", "bins": 25, "start": 0,
                             "stop": 1000}]},
            "m3": {"axes": [{"expr": "m3", "bins": 25, "start": 0, "stop": 500}],
                   "categories": [category], "evaluate_on": evaluate_on},
        },
    })


def measure(events, params, evaluate_on: str, category: str, repeat: int) -> tuple[
        float, list[np.ndarray], float]:
    """Best seconds per chunk, the histograms' views, and the share of events in the
    category."""
    cfg = analysis(evaluate_on, category)
    meta = {**METADATA}
    shape, weights = plan_variations(cfg, params, meta, events)
    plan = make_plan(cfg, params, meta, shape + weights, shape)
    processor = ChunkProcessor(plan)
    hists = processor.histograms(events)  # warm-up: payloads, kernels
    best = np.inf
    for _ in range(repeat):
        start = time.perf_counter()
        hists = processor.histograms(events)
        best = min(best, time.perf_counter() - start)
    steps = hists["cutflow"]
    share = (steps[f"category: {category}", "events"].value
             / steps["all events", "events"].value)
    return best, [h.view(flow=True) for h in hists.values()], float(share)


def _buffers(layout) -> list[np.ndarray]:
    """Every buffer of an awkward layout (its nodes' indexes, offsets, masks and data)."""
    out, todo = [], [layout]
    while todo:
        node = todo.pop()
        for name in ("index", "offsets", "starts", "stops", "mask"):
            part = getattr(node, name, None)
            if part is not None and hasattr(part, "data"):
                out.append(np.asarray(part.data))
        if node.is_numpy:
            out.append(np.asarray(node.data))
        if node.is_record:
            todo.extend(node.contents)
        elif hasattr(node, "content"):
            todo.append(node.content)
    return out


def _bounds(buffer: np.ndarray) -> tuple[int, int]:
    """The memory a (contiguous) buffer spans."""
    start = buffer.__array_interface__["data"][0]
    return start, start + buffer.nbytes


def held_by_definitions(events) -> tuple[int, float]:
    """The demo chain's definitions (configs/demo.yaml): how many nominal values a chunk
    holds, so that variations reuse them, and the MiB of their buffers that the nominal's
    calibrated events do not hold anyway (a selection shares the collection's buffers)."""
    import awkward as ak

    from pipeline.analysis.evaluate import evaluate
    from pipeline.analysis.loading import load_config
    from pipeline.selection import _SUBEXPRESSIONS  # the values held: private, on purpose

    cfg = load_config(HERE.parents[1] / "configs" / "demo.yaml")
    params = load_parameters(cfg.parameters)
    meta = {**METADATA}
    shape, weights = plan_variations(cfg, params, meta, events)
    variations = evaluate(make_plan(cfg, params, meta, shape + weights, shape), events)
    next(variations.variations)  # the nominal: its definitions' values are now held
    calibrated = _SUBEXPRESSIONS.variation_events
    owned = [_bounds(b) for field in calibrated.fields
             for b in _buffers(ak.to_layout(calibrated[field]))]
    held = [value for value, _ in _SUBEXPRESSIONS.nominal.values()]
    extra = 0
    for value in held:
        for buffer in _buffers(ak.to_layout(value)):
            low, high = _bounds(buffer)
            if not any(a <= low and high <= b for a, b in owned):
                extra += buffer.nbytes
    return len(held), extra / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--demo-events", type=int, default=200_000,
                        help="the chunk of the demo chain whose held definitions are sized")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    path = sample_file(args.events)
    events = read_eager(str(path))
    params = load_parameters()
    rows = []
    for category in ("2b", "3b", "1b"):
        times = {}
        for on in ("all", "selected"):
            times[on], vector, share = measure(events, params, on, category, args.repeat)
            if on == "all":
                reference = vector
            elif not all(np.array_equal(a, b) for a, b in zip(vector, reference, strict=True)):
                raise SystemExit(f"evaluate_on: selected changed the histograms ({category})")
        rows.append((category, share, times["all"], times["selected"]))
        print(f"{category}: {share:.1%} of events; all {args.events / times['all']:,.0f} Hz, "
              f"selected {args.events / times['selected']:,.0f} Hz "
              f"({times['all'] / times['selected']:.2f}x)", flush=True)
    demo_events = read_eager(str(sample_file(args.demo_events)))
    n_held, held_mib = held_by_definitions(demo_events)
    print(f"demo chain, {args.demo_events:,} events: {n_held} definition values held, "
          f"{held_mib:,.1f} MiB of their own", flush=True)
    table = [
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d} on {platform.machine()} "
        f"({os.cpu_count()} cores, shared): `python tests/benchmarks/bench_observables.py "
        f"--events {args.events} --write`. "
        f"Observables on the selected events (`bench_observables.py`, {args.events:,} events "
        "resampled from nano_tt_v12.root, one chunk in one process, jet-energy variations, "
        f"best of {args.repeat} after a warm-up; histograms the same bits):",
        "",
        "| three-jet mass filled in | events in it | all events: rate | selected: rate "
        "| speed-up |",
        "| --- | --- | --- | --- | --- |",
        *(f"| {c} | {s:.1%} | {args.events / a:,.0f} Hz | {args.events / b:,.0f} Hz "
          f"| {a / b:.2f}x |" for c, s, a, b in rows),
        "",
        f"The definitions' nominal values a chunk holds (so that variations reuse them), for "
        f"the demo chain (configs/demo.yaml) on one chunk of {args.demo_events:,} events: "
        f"{n_held} values, {held_mib:,.1f} MiB of buffers beyond those of the nominal's "
        "calibrated events (which the chunk holds anyway).",
    ]
    print("\n".join(table))
    if args.write:
        write(table)


def write(table: list[str]) -> None:
    """Replace the section of this benchmark in docs/benchmarks.md (or append it)."""
    doc = HERE.parents[1] / "docs" / "benchmarks.md"
    text = doc.read_text()
    begin, end = "<!-- bench_observables -->", "<!-- /bench_observables -->"
    block = "\n".join([begin, *table, end])
    if begin in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## Observables on the selected events\n\n" + block + "\n"
    doc.write_text(text)


if __name__ == "__main__":
    main()
