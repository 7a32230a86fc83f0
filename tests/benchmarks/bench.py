"""calibrew benchmark: demo-job throughput against the read floor, graph scaling, memory.

Not a test: run it by hand, on a quiet machine, and paste the table it prints into
``docs/benchmarks.md`` (``--write`` does that). Every figure of one table is measured in the
same run, side by side, so ratios are meaningful on a shared, noisy machine.

    python tests/benchmarks/bench.py --events 2000000 --write

Measures
--------
(a) events/s per core of the demo analysis (configs/demo.yaml: the default calibrators
    with 57 variations, 7 histograms x 2 categories and its feature table, written) on a
    ``make-sample`` file, on a LocalCluster of one single-threaded worker;
(b) events/s of plain uproot reading the same branches (the read floor), in this process;
(c) graph build + optimisation time and task count for 1, 10, 100 and 200 variations;
(d) peak memory (RSS) of the worker during (a);
(e), (f) the AK4 jet chain (1, 11 and all JES sources) against a plain uproot + correctionlib
    script, and each against the read floor of its own branches.

Each read floor reads into numpy arrays and into awkward arrays (as calibrew does), each in
a file opened for that pass alone, and keeps the faster. ``--whole-process`` instead runs the
jet chain (JES Total), PocketCoffea 0.9.13 (the peer tests/benchmarks/peers/
pocketcoffea_jets.py in PocketCoffea's own virtual environment, made once under the
benchmark cache), the plain script and the read floor each in a fresh process, timed from
before the spawn (imports, build, warm-up and teardown included), for the jet work and for
the jet work with type-1 MET (``--work``); calibrew and PocketCoffea are also run untimed on
the first chunk, and their JEC pt sums compared (the "peer agrees" line):

    python tests/benchmarks/bench.py --whole-process --events 500000 --chunksize 100000 \
        --jes-events 500000
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

START = time.perf_counter()  # a --child process times its imports from here

import numpy as np  # noqa: E402
import uproot  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

# calibrew's heavier modules are imported where they are used, so that the plain script and
# the read floor, run each in its own process (--whole-process), do not pay for them
from pipeline.inputs.datafiles import cache_dir  # noqa: E402

KEEP = ["Jet_*", "FatJet_*", "GenJet*", "Rho_*", "genWeight", "PuppiMET_*", "RawPuppiMET_*",
        "CorrT1METJet_*", "Electron_*", "Photon_*", "Muon_*", "Pileup_*"]
METADATA = {"sample": "TTbar", "year": "2022_preEE", "isMC": True, "dataset": "bench"}


@functools.cache
def bench_variations_calibrator() -> type:
    """The calibrator ``bench_variations`` (registered when first asked for)."""
    from pipeline.calibration import Calibrator

    class BenchVariations(Calibrator):
        """A jet-pt scale with a configurable number of variations (graph-scaling probe)."""

        name = "bench_variations"
        has_variations = True
        calibrated_collections = ["Jet.pt"]
        n_variations = 2

        def initialize(self, events):
            n = max(self.n_variations // 2, 1)
            self._variations = [f"b{i}{d}" for i in range(n) for d in ("Up", "Down")]

        def calibrate(self, events, orig_colls, variation, already_applied_calibrators=None):
            factor = (1.01 if variation.endswith("Up") else 0.99 if variation != "nominal"
                      else 1.0)
            return {"Jet.pt": orig_colls["Jet.pt"] * factor}

    return BenchVariations


def sample_file(events: int) -> Path:
    import hashlib

    from pipeline.inputs.make_sample import make_sample

    tag = hashlib.sha256(" ".join(KEEP).encode()).hexdigest()[:8]
    path = cache_dir() / "bench" / f"tt_resampled_{events}_{tag}.root"
    if not path.exists():
        print(f"making {path} ({events:,} events)...", flush=True)
        make_sample("nano_tt_v12.root", path, events, seed=7, keep=KEEP)
    return path


def bench_demo(path: Path, chunksize: int) -> dict:
    """(a) and (d): the demo analysis on one single-threaded worker, warmed up as calibrew's
    runner warms its workers (the warm-up timed with the chunks)."""
    from distributed import Client, LocalCluster

    from pipeline.analysis.loading import load_config, load_parameters
    from pipeline.graph import build_dataset_graph
    from pipeline.inputs.datasets import Dataset, preprocess
    from pipeline.run.runner import table_writers
    from pipeline.run.warm_up import warm_workers

    cfg = load_config(ROOT / "configs" / "demo.yaml")
    params = load_parameters(cfg.parameters)
    dataset = preprocess(Dataset("bench", [str(path)], METADATA), chunksize)
    tables = Path(tempfile.mkdtemp(prefix="calibrew-bench-"))
    writers = table_writers(dataset, cfg, params, tables)
    graph = build_dataset_graph(dataset, cfg, params, writers)  # the feature table is written
    for writer in writers.values():
        writer.prepare()
    total = graph.total()
    columns = sorted(graph.necessary_columns())
    import dask

    from pipeline.sites import MMAP_THRESHOLD, allocator_config

    with dask.config.set(allocator_config(MMAP_THRESHOLD)):  # as calibrew's local site
        cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                               dashboard_address=":0", silence_logs=40)
    with cluster, Client(cluster) as client:
        start = time.perf_counter()
        warm_workers(client)  # as calibrew's runner does before it submits chunks
        vector = client.compute(total).result()
        elapsed = time.perf_counter() - start
        peak_kib = max(client.run(
            lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss).values())
    shutil.rmtree(tables, ignore_errors=True)
    hists = graph.plan.unpack(vector)
    n_events = int(hists["cutflow"]["all events", "events"].value)
    return {"events": n_events, "seconds": elapsed, "rate": n_events / elapsed,
            "columns": columns, "peak_mib": peak_kib / 1024, "chunks": len(dataset.chunks),
            "variations": len(graph.plan.variations), "chunksize": chunksize}


def read_pass(path: Path, columns: list[str], chunksize: int, max_events: int | None,
              library: str) -> tuple[int, float, int]:
    """Read ``columns`` chunk by chunk into ``library`` arrays ("np" or "ak"), in a file
    opened for this pass alone with no array cache (a second pass would otherwise be served
    from memory): the events, the seconds and the compressed bytes of the columns."""
    start = time.perf_counter()
    n_events = 0
    with uproot.open(path, array_cache=None) as handle:
        tree = handle["Events"]
        stop = min(tree.num_entries, max_events or tree.num_entries)
        for begin in range(0, stop, chunksize):
            arrays = tree.arrays(columns, entry_start=begin,
                                 entry_stop=min(begin + chunksize, stop), library=library)
            n_events += len(arrays[columns[0]])
        compressed = sum(tree[c].compressed_bytes for c in columns)
    return n_events, time.perf_counter() - start, compressed


def bench_read_floor(path: Path, columns: list[str], chunksize: int,
                     max_events: int | None = None) -> dict:
    """(b): plain uproot reading of the same branches, chunk by chunk, in this process, into
    numpy arrays and into awkward arrays (as calibrew reads); the floor is the faster.

    ``libraries`` holds both rates (events/s), ``library`` the faster one's name."""
    rates = {}
    for library in ("np", "ak"):
        n_events, seconds, compressed = read_pass(path, columns, chunksize, max_events,
                                                  library)
        rates[library] = n_events / seconds
    fastest = max(rates, key=rates.__getitem__)
    return {"events": n_events, "seconds": n_events / rates[fastest], "rate": rates[fastest],
            "library": fastest, "libraries": rates, "bytes_per_event": compressed / n_events}


def bench_graph(path: Path, n_variations: int, chunksize: int) -> dict:
    """(c): graph build plus optimisation, and task count, for ``n_variations``."""
    from pipeline.analysis.loading import load_parameters
    from pipeline.config.models import AnalysisConfig
    from pipeline.graph import build_dataset_graph
    from pipeline.inputs.datasets import Dataset, preprocess

    bench_variations_calibrator().n_variations = n_variations
    cfg = AnalysisConfig.model_validate({
        "datasets": {"bench": {"files": [str(path)], "metadata": {
            k: v for k, v in METADATA.items() if k != "dataset"}}},
        "calibrators": ["bench_variations"],
        "variations": {"shape": {"common": {"inclusive": ["bench_variations"]}}},
        "preselection": {"two_jets": "ak.num(Jet[Jet.pt > 30]) >= 2"},
        "histograms": {"jet_pt": {"axes": [{"expr": "Jet.pt", "bins": 30, "start": 0,
                                            "stop": 300}]}},
    })
    dataset = preprocess(Dataset("bench", [str(path)], METADATA), chunksize)
    start = time.perf_counter()
    graph = build_dataset_graph(dataset, cfg, load_parameters())
    total = graph.total()
    elapsed = time.perf_counter() - start
    return {"variations": len(graph.plan.variations), "seconds": elapsed,
            "tasks": len(total.dask), "layers": len(graph.chunks.dask.layers),
            "chunks": len(dataset.chunks)}


# --- (e), (f): the jet chain with 1, 11 and all JES sources, against a plain eager script ----

JET_TAG = "Summer22_22Sep2023_V3_MC"
JET_PAYLOAD = "jet_jerc_Summer22_V3.json.gz"
CUT = "(Jet.pt > 30) & (abs(Jet.eta) < 2.4)"
PLAIN_SCRIPT_BRANCHES = ["Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass", "Jet_rawFactor", "Jet_area",
                      "Jet_genJetIdx", "GenJet_pt", "GenJet_eta", "GenJet_phi",
                      "Rho_fixedGridRhoFastjetAll", "genWeight"]


def jes_source_sets() -> dict[str, list[str]]:
    """1 source (Total), the 11 regrouped sources, and all the full sources of the payload."""
    from pipeline.corrections import load_correction_set

    names = [k[len(JET_TAG) + 1: -len("_AK4PFPuppi")] for k in load_correction_set(JET_PAYLOAD)
             if k.startswith(JET_TAG + "_") and k.endswith("_AK4PFPuppi")]
    levels = {"L1FastJet", "L2Relative", "L3Absolute", "L2L3Residual", "L1L2L3Res"}
    full = sorted(n for n in names if n not in levels and not n.startswith(
        ("Regrouped_", "SubTotal", "Total")))
    regrouped = sorted(n for n in names if n.startswith("Regrouped_") and n != "Regrouped_Total")
    return {"1": ["Total"], "11": regrouped, f"all ({len(full)})": full}


def jet_chain_config(path: Path, work: str = "jets"):
    """The jet chain's configuration: ``work`` "jets" calibrates the AK4 jets (preselection,
    2 histograms); "met" adds the type-1 MET (``met_rescaling`` and its unclustered-energy
    variations) and a histogram of its pt."""
    from pipeline.config.models import AnalysisConfig

    calibrators = ["jet_calibration"] + (["met_rescaling"] if work == "met" else [])
    histograms = {
        "jet_pt": {"axes": [{"expr": f"Jet.pt[{CUT}]", "bins": 30, "start": 0, "stop": 300}]},
        "ht": {"axes": [{"expr": f"ak.sum(Jet.pt[{CUT}], axis=1)", "bins": 25, "start": 0,
                         "stop": 1000}]},
    }
    if work == "met":
        histograms["met_pt"] = {"axes": [{"expr": "PuppiMET.pt", "bins": 30, "start": 0,
                                          "stop": 300}]}
    return AnalysisConfig.model_validate({
        "datasets": {"bench": {"files": [str(path)], "metadata": {
            k: v for k, v in METADATA.items() if k != "dataset"}}},
        "calibrators": calibrators,
        "variations": {"shape": {"common": {"inclusive": calibrators}}},
        "preselection": {"two_jets": f"ak.num(Jet[{CUT}]) >= 2"},
        "histograms": histograms,
    })


def jet_params(sources: list[str], work: str = "jets"):
    """The default parameters with AK4 jets alone (the AK8 jet type dropped with null, as a
    user's parameter file does), varied by the JES ``sources`` and JER. With
    ``work`` "met" the type-1 MET propagates the smeared jets (``jet_pt: smeared``), as
    PocketCoffea's does."""
    from omegaconf import OmegaConf

    from pipeline.analysis.loading import load_parameters

    params = OmegaConf.merge(load_parameters(), {"jets_calibration": {
        "collection": {"2022_preEE": {"AK8PFPuppi": None}},
        "variations": {"2022_preEE": {"AK4PFPuppi": [f"JES_{s}" for s in sources] + ["JER"]}},
    }})
    if work == "met":
        OmegaConf.update(params, "met_rescaling.2022_preEE.jet_pt", "smeared")
    return params


def bench_jet_chain(path: Path, sources: list[str], chunksize: int, max_events: int,
                    extra_warm_up: bool = True, work: str = "jets") -> dict:
    """calibrew's jet chain (AK4: JEC, the JES sources, JER): the dataset's graph (reading
    only the branches the chain uses), its chunks computed one after another in this
    process; the graph build and the first chunk (the warm-up) are timed apart.

    With ``extra_warm_up`` the warm-up is an extra chunk of the first 2,000 events and every
    chunk of ``max_events`` is timed; without, the first of those chunks is the warm-up.
    ``work`` is that of :func:`jet_chain_config` ("jets", or "met": with type-1 MET).
    Returns the steady rate (events/s of the chunks after the warm-up), the variations and
    the input columns of the graph's plan, and the seconds of the graph build (calibrators
    initialised: payloads parsed, kernels compiled), of the warm-up and of the steady chunks.
    """
    import dask
    from dask.local import get_sync

    from pipeline.graph import build_dataset_graph
    from pipeline.inputs.datasets import Chunk, Dataset
    from pipeline.run.warm_up import warm_process

    bounds = [(begin, min(begin + chunksize, max_events))
              for begin in range(0, max_events, chunksize)]
    if extra_warm_up:
        bounds.insert(0, (0, min(2000, max_events)))
    dataset = Dataset("bench", [str(path)], METADATA)
    dataset.chunks = [Chunk(str(path), begin, end) for begin, end in bounds]
    start = time.perf_counter()
    graph = build_dataset_graph(dataset, jet_chain_config(path, work), jet_params(sources, work))
    tasks = graph.chunk_tasks()
    built = time.perf_counter()
    warm_process()  # as calibrew's workers are before their first chunk
    # the synchronous scheduler as a function: by name, dask imports distributed (0.35 s)
    dask.compute(tasks[0], scheduler=get_sync)  # first chunk: payloads parsed, caches filled
    warm = time.perf_counter()
    dask.compute(*tasks[1:], scheduler=get_sync)
    elapsed = time.perf_counter() - warm
    steady_events = sum(end - begin for begin, end in bounds[1:])
    return {"events": max_events, "seconds": elapsed, "rate": steady_events / elapsed,
            "steady_events": steady_events, "variations": len(graph.plan.variations),
            "columns": sorted(graph.necessary_columns()),
            "build_s": built - start, "warmup_s": warm - built}


def plain_eager_script(path: Path, sources: list[str], chunksize: int, max_events: int) -> dict:
    """The straightforward way: uproot arrays, correctionlib, one variation after another."""
    import awkward as ak
    import correctionlib
    import hist

    from pipeline.inputs.datafiles import find_data_file

    cset = correctionlib.CorrectionSet.from_file(str(find_data_file(JET_PAYLOAD)))
    jec = cset.compound[f"{JET_TAG}_L1L2L3Res_AK4PFPuppi"]
    reso = cset["Summer22_22Sep2023_JRV1_MC_PtResolution_AK4PFPuppi"]
    sf = cset["Summer22_22Sep2023_JRV1_MC_ScaleFactor_AK4PFPuppi"]
    variations = ["nominal"] + [f"{s}{d}" for s in sources for d in ("Up", "Down")] + [
        "JERUp", "JERDown"]
    h_pt = hist.Hist(hist.axis.StrCategory(variations), hist.axis.Regular(30, 0, 300),
                     storage=hist.storage.Weight())
    h_ht = hist.Hist(hist.axis.StrCategory(variations), hist.axis.Regular(25, 0, 1000),
                     storage=hist.storage.Weight())
    branches = PLAIN_SCRIPT_BRANCHES
    rng = np.random.default_rng(1)
    start = time.perf_counter()
    n_events = 0
    with uproot.open(path) as handle:
        tree = handle["Events"]
        for begin in range(0, max_events, chunksize):
            a = tree.arrays(branches, entry_start=begin,
                            entry_stop=min(begin + chunksize, max_events))
            n_events += len(a)
            for variation in variations:
                raw = a.Jet_pt * (1 - a.Jet_rawFactor)
                pt = raw * jec.evaluate(a.Jet_area, a.Jet_eta, raw, a.Rho_fixedGridRhoFastjetAll)
                if variation[:-2] in sources or variation[:-4] in sources:
                    source = variation[:-2] if variation.endswith("Up") else variation[:-4]
                    unc = cset[f"{JET_TAG}_{source}_AK4PFPuppi"].evaluate(a.Jet_eta, pt)
                    pt = pt * (1 + unc if variation.endswith("Up") else 1 - unc)
                res = reso.evaluate(a.Jet_eta, pt, a.Rho_fixedGridRhoFastjetAll)
                syst = {"JERUp": "up", "JERDown": "down"}.get(variation, "nom")
                s = sf.evaluate(a.Jet_eta, pt, syst)
                idx = a.Jet_genJetIdx
                valid = (idx >= 0) & (idx < ak.num(a.GenJet_pt))
                gen_pt = ak.fill_none(a.GenJet_pt[ak.mask(idx, valid)], 0.0)
                gen_eta = ak.fill_none(a.GenJet_eta[ak.mask(idx, valid)], 0.0)
                gen_phi = ak.fill_none(a.GenJet_phi[ak.mask(idx, valid)], 0.0)
                dphi = np.mod(a.Jet_phi - gen_phi + np.pi, 2 * np.pi) - np.pi
                matched = valid & (np.hypot(a.Jet_eta - gen_eta, dphi) < 0.2) & (
                    np.abs(pt - gen_pt) < 3 * res * pt)
                counts = ak.num(pt)
                z = ak.unflatten(rng.standard_normal(int(ak.sum(counts))), counts)
                factor = ak.where(matched, 1 + (s - 1) * (pt - gen_pt) / pt,
                                  1 + res * z * np.sqrt(np.maximum(s * s - 1, 0)))
                pt = pt * np.maximum(factor, 0)
                good = pt[(pt > 30) & (np.abs(a.Jet_eta) < 2.4)]
                selected = ak.num(good) >= 2
                w = a.genWeight[selected]
                jets = good[selected]
                h_pt.fill(variation, ak.to_numpy(ak.flatten(jets)),
                          weight=ak.to_numpy(ak.flatten(ak.broadcast_arrays(w, jets)[0])))
                h_ht.fill(variation, ak.to_numpy(ak.sum(jets, axis=1)), weight=ak.to_numpy(w))
    elapsed = time.perf_counter() - start
    return {"events": n_events, "seconds": elapsed, "rate": n_events / elapsed}


# --- whole process: each contender in a process of its own ---------------------------------

# in this order: the floor reads calibrew's columns; the plain script does the jet work alone
WORK_CONTENDERS = {"jets": ("calibrew", "pocketcoffea", "plain", "floor"),
                   "met": ("calibrew", "pocketcoffea", "floor")}
WORK_TITLES = {"jets": "AK4 JEC + JES Total + JER", "met": "AK4 JEC + JES Total + JER + type-1 MET"}
WHOLE_SOURCES = ["Total"]  # the work: AK4 JEC + JES Total + JER, 5 variations
POCKETCOFFEA = "pocket-coffea==0.9.13"
PEER_SCRIPT = ROOT / "tests" / "benchmarks" / "peers" / "pocketcoffea_jets.py"
PEER_JEC_TOLERANCE = 1e-6  # relative: the same payload on the same jets, in float64


def pocketcoffea_python(given: str = "") -> Path:
    """The Python of PocketCoffea 0.9.13's own virtual environment (coffea 0.7, awkward 1):
    ``given``, else the one under the benchmark cache, made on first use with ``venv`` and
    ``pip install pocket-coffea==0.9.13`` and reused afterwards.

    >>> pocketcoffea_python("/opt/pc/bin/python")
    PosixPath('/opt/pc/bin/python')
    """
    if given:
        return Path(given)
    venv = cache_dir() / "bench" / "pocketcoffea-0.9.13"
    python, marker = venv / "bin" / "python", venv / "installed"
    if not marker.exists():
        print(f"making PocketCoffea 0.9.13's virtual environment in {venv} (once: about "
              "1.2 GB of packages, a few minutes)...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", POCKETCOFFEA],
                       check=True)
        marker.write_text(POCKETCOFFEA + "\n")
    return python


def run_child(name: str, path: Path, chunksize: int, max_events: int,
              columns: list[str], work: str = "jets") -> dict:
    """Contender ``name`` in this process (started by :func:`spawn`): the seconds of its
    imports (from the top of this module), build (payloads, graph), warm-up (first chunk,
    calibrew only) and steady chunks, and its events."""
    if name == "calibrew":
        import dask  # noqa: F401
        import omegaconf  # noqa: F401

        import pipeline.analysis.loading
        import pipeline.graph  # noqa: F401
        imported = time.perf_counter()
        ours = bench_jet_chain(path, WHOLE_SOURCES, chunksize, max_events, extra_warm_up=False,
                               work=work)
        stages = {"build_s": ours["build_s"], "warmup_s": ours["warmup_s"],
                  "steady_s": ours["seconds"], "steady_events": ours["steady_events"],
                  "columns": ours["columns"], "variations": ours["variations"]}
    elif name == "plain":
        import awkward
        import correctionlib  # noqa: F401
        import hist  # noqa: F401
        imported = time.perf_counter()
        plain = plain_eager_script(path, WHOLE_SOURCES, chunksize, max_events)
        stages = {"build_s": time.perf_counter() - imported - plain["seconds"],
                  "steady_s": plain["seconds"], "steady_events": plain["events"]}
    else:
        import awkward  # noqa: F401
        imported = time.perf_counter()
        n_events, seconds, _ = read_pass(path, columns, chunksize, max_events, "ak")
        stages = {"steady_s": seconds, "steady_events": n_events}
    return {"events": max_events, "imports_s": imported - START, **stages,
            "child_s": time.perf_counter() - START}


def peer_command(args: argparse.Namespace, work: str) -> list[str]:
    """The command line of the PocketCoffea peer (:data:`PEER_SCRIPT`) on ``work``."""
    from pipeline.inputs.datafiles import find_data_file

    return [str(args.pocketcoffea_python), "-W", "ignore", str(PEER_SCRIPT),
            "--file", str(sample_file(args.events)),
            "--payload", str(find_data_file(JET_PAYLOAD)), "--events", str(args.jes_events),
            "--chunksize", str(args.chunksize), "--work", work]


def last_json(command: list[str], env: dict[str, str], name: str) -> tuple[dict, float]:
    """Run ``command``; the JSON object of its last line of output and its wall seconds."""
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        tail = "\n".join(done.stderr.splitlines()[-20:])
        raise SystemExit(f"error: the {name} process failed with status {done.returncode}; "
                         f"the end of its stderr:\n{tail}")
    return json.loads(done.stdout.strip().splitlines()[-1]), wall


def spawn(name: str, args: argparse.Namespace, columns: list[str], work: str = "jets") -> dict:
    """:func:`run_child` for contender ``name`` (or the PocketCoffea peer) in a fresh Python
    process, timed from before the spawn to its end (interpreter start, imports and teardown
    included)."""
    if name == "pocketcoffea":
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        row, wall = last_json(peer_command(args, work), env, name)
    else:
        command = [sys.executable, __file__, "--child", name, "--work", work,
                   "--events", str(args.events), "--chunksize", str(args.chunksize),
                   "--jes-events", str(args.jes_events), "--columns", ",".join(columns)]
        row, wall = last_json(command, {**os.environ, "PYTHONPATH": str(ROOT)}, name)
    return {**row, "name": name, "wall_s": wall, "rate": row["events"] / wall}


def chunk_figures(events: Any, jec_pt: Any | None = None) -> dict[str, float]:
    """The figures of one calibrated chunk that the peer check compares: the selected jets
    (pt > 30, abs(eta) < 2.4, in events with two), their pt sum, the mean MET and, given
    ``jec_pt`` (the JEC pt of all jets), its sum."""
    import awkward as ak

    jets = events.Jet
    good = jets[(jets.pt > 30) & (abs(jets.eta) < 2.4)]
    good = good[ak.num(good) >= 2]
    figures = {"jets": int(ak.sum(ak.num(good))), "pt_sum": float(ak.sum(good.pt)),
               "met_mean": float(ak.mean(events.PuppiMET.pt))}
    if jec_pt is not None:
        figures["jec_pt_sum"] = float(ak.sum(jec_pt))
    return figures


def calibrew_check(path: Path, stop: int, work: str) -> dict[str, dict[str, float]]:
    """:func:`chunk_figures` of each variation of calibrew's calibrators on the first chunk
    (events ``[0, stop)``), eagerly, with the parameters of the jet chain."""
    from pipeline.calibration import CalibratorsManager, JetsCalibrator, METCalibrator
    from pipeline.inputs.nanoevents import read_eager

    events = read_eager(str(path), start=0, stop=stop)
    calibrators = [JetsCalibrator] + ([METCalibrator] if work == "met" else [])
    manager = CalibratorsManager(calibrators, events, jet_params(WHOLE_SOURCES, work), METADATA)
    return {variation: chunk_figures(calibrated, calibrated.Jet.pt_jec)
            for variation, calibrated in manager.calibration_loop(
                events, [c.name for c in calibrators])}


def peer_check(args: argparse.Namespace, work: str) -> list[str]:
    """The "peer agrees" lines: calibrew's jet chain and PocketCoffea's on the first chunk,
    each run untimed. JEC and JES (before JER) use the same payload on the same jets, so
    their pt sums must agree to float precision; JER draws different random numbers, so the
    selected jets and their mean pt after JER are compared, not required to agree."""
    stop = min(args.chunksize, args.jes_events)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    peer, _ = last_json([*peer_command(args, work), "--check"], env, "pocketcoffea --check")
    ours = calibrew_check(sample_file(args.events), stop, work)
    up = "AK4PFPuppi_JES_TotalUp"
    jec = {"nominal": (ours["nominal"]["jec_pt_sum"], peer["jec_pt_sum"]),
           "JES Total Up": (ours[up]["jec_pt_sum"], peer["jec_pt_sum_JES_TotalUp"])}
    worst = max(abs(a / b - 1) for a, b in jec.values())
    agrees = "agrees" if worst < PEER_JEC_TOLERANCE else "DISAGREES"
    lines = [f"Peer {agrees} ({work}, first chunk, {stop:,} events, untimed): the sum of the "
             "JEC pt of all jets before JER, calibrew / PocketCoffea, "
             + ", ".join(f"{k} {a:,.3f} / {b:,.3f}" for k, (a, b) in jec.items())
             + f" (largest relative difference {worst:.1e}; same payload, required < "
             f"{PEER_JEC_TOLERANCE:.0e}). After JER (different random numbers: compared, "
             "not required to agree), selected jets and their mean pt (GeV), calibrew / "
             "PocketCoffea: "]
    parts = []
    for variation, label in (("nominal", "nominal"), (up, "JES Total Up")):
        a, b = ours[variation], peer["variations"][variation]
        parts.append(f"{label} {a['jets']:,} / {b['jets']:,} jets, "
                     f"{a['pt_sum'] / a['jets']:.3f} / {b['pt_sum'] / b['jets']:.3f}")
    if work == "met":
        a, b = ours["nominal"]["met_mean"], peer["variations"]["nominal"]["met_mean"]
        parts.append(f"mean type-1 MET (nominal) {a:.3f} / {b:.3f} GeV")
    lines[-1] += "; ".join(parts) + "."
    return lines


def whole_process_table(args: argparse.Namespace, work: str, best: dict[str, dict],
                        columns: list[str]) -> list[str]:
    """The table lines of one work: each contender's best row, then the targets."""
    def cell(row: dict, key: str) -> str:
        return f"{row[key]:.2f}" if key in row else "-"

    ours, peer = best["calibrew"], best["pocketcoffea"]
    lines = [
        f"{WORK_TITLES[work]} ({ours['variations']} variations; PocketCoffea "
        f"{peer['variations']}), calibrew reading {len(columns)} branches:",
        "",
        "| process | wall (s) | events/s, whole process | imports (s) | build (s) "
        "| warm-up (s) | steady events/s | outside (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {name} | {row['wall_s']:.2f} | {row['rate']:,.0f} | {cell(row, 'imports_s')} "
              f"| {cell(row, 'build_s')} | {cell(row, 'warmup_s')} "
              f"| {row['steady_events'] / row['steady_s']:,.0f} "
              f"| {row['wall_s'] - row['child_s']:.2f} |"
              for name, row in best.items()]
    lines += ["", "| target | measured | |", "| --- | --- | --- |"]
    if "plain" in best:
        ratio = ours["rate"] / best["plain"]["rate"]
        lines.append(f"| whole process >= 2x the plain script | {ratio:.2f}x "
                     f"| {verdict(ratio >= 2, f'{2 / ratio:.1f}x faster needed')} |")
    ratio = ours["rate"] / peer["rate"]
    steady = (ours["steady_events"] / ours["steady_s"]) / (peer["steady_events"]
                                                           / peer["steady_s"])
    lines += [
        f"| whole process >= 5x PocketCoffea 0.9.13 (same run) | {ratio:.2f}x (steady state "
        f"{steady:.2f}x) | {verdict(ratio >= 5, f'{5 / ratio:.1f}x faster needed')} |",
        f"| (for reference) whole process / read floor | "
        f"{ours['rate'] / best['floor']['rate']:.3f} | |",
    ]
    return lines


def whole_process(args: argparse.Namespace) -> list[str]:
    """Each contender in its own process, interleaved, ``args.repeats`` rounds, for each work
    of ``args.work``; the best (shortest) wall of each, and the peer check, as table lines."""
    works = args.work.split(",")
    unknown = [work for work in works if work not in WORK_CONTENDERS]
    if unknown:
        raise SystemExit(f"error: unknown --work {', '.join(unknown)}; known: "
                         f"{', '.join(WORK_CONTENDERS)}")
    sample_file(args.events)  # made here, not in a timed child
    args.pocketcoffea_python = pocketcoffea_python(args.pocketcoffea_python)
    lines = [
        f"Whole process, measured {datetime.now(timezone.utc):%Y-%m-%d}: `python "
        f"tests/benchmarks/bench.py --whole-process --events {args.events} --chunksize "
        f"{args.chunksize} --jes-events {args.jes_events} --work {args.work}`. Each contender "
        f"runs in a fresh process, {args.jes_events:,} events in chunks of "
        f"{args.chunksize:,}, on one core; the wall is timed from before the spawn to the "
        f"process's end; the best of {args.repeats} interleaved rounds. calibrew: the jet "
        "chain, its process warmed up as its workers are (`run/warm_up.py`) and its first "
        "chunk the warm-up, ending as the `calibrew` command ends (`cli.end_process`: no "
        "interpreter teardown); PocketCoffea 0.9.13 (its own virtual "
        "environment: coffea 0.7, awkward 1): tests/benchmarks/peers/pocketcoffea_jets.py, "
        "coffea 0.7 NanoEvents per chunk and PocketCoffea's CalibratorsManager with its "
        "JetsCalibrator (and METCalibrator), calibrew's payload, the same histograms; plain: "
        "the uproot + correctionlib script; floor: uproot reading calibrew's branches into "
        "awkward arrays. Outside: the wall less the child's own clock (interpreter start, "
        "the standard library's imports, teardown). With the MET, calibrew propagates the "
        "smeared jets (`jet_pt: smeared`), as PocketCoffea's METCalibrator does. The payload's "
        "JER scale factors are JRV1 (a `systematic` input), which 0.9.13's smearing code no "
        "longer reads: the peer smears with PocketCoffea's own `get_jersmear` for them.",
    ]
    for work in works:
        best: dict[str, dict] = {}
        columns: list[str] = []
        for _ in range(args.repeats):
            for name in WORK_CONTENDERS[work]:
                row = spawn(name, args, columns, work)
                columns = row.get("columns", columns)
                print(json.dumps({k: v for k, v in row.items() if k != "columns"}), flush=True)
                if name not in best or row["wall_s"] < best[name]["wall_s"]:
                    best[name] = row
        check = peer_check(args, work)
        print("\n".join(check), flush=True)
        lines += ["", *whole_process_table(args, work, best, columns), "", *check]
    return lines


def verdict(ok: bool, distance: str) -> str:
    """``"met"``, or ``"not met: <distance>"``."""
    return "met" if ok else f"not met: {distance}"


def share_target(what: str, share: float, target: float, chunksize: int) -> str:
    """A table line: ``share`` of the awkward read floor against ``target`` (at 50k chunks)."""
    at = "" if chunksize == 50_000 else f" (measured at {chunksize:,}-event chunks)"
    distance = f"{target / share:.1f}x faster needed"
    return (f"| {what} >= {target} x the read floor, 50k-event chunks | {share:.3f} x{at} "
            f"| {verdict(share >= target, distance)} |")


def targets(demo: dict, floor: dict, jes_rows: list, chunksize: int,
            chunk_pair: list[dict]) -> list[str]:
    """Issue 17's targets, each met or its measured distance (or where it is measured)."""
    ratios = {label: ours["rate"] / plain["rate"] for label, _, ours, plain, _ in jes_rows}
    label, _, ours, _, jet_floor = jes_rows[0]
    setup = ours["build_s"] + ours["warmup_s"]
    at_200k = [run for run in [demo, *chunk_pair] if run["chunksize"] == 200_000]
    peak_run = at_200k[0] if at_200k else demo
    peak = peak_run["peak_mib"]
    lines = [
        "| target | measured | |",
        "| --- | --- | --- |",
        "| whole process >= 2x the plain script (jet chain, "
        + " / ".join(f"{k} JES sources" for k in ratios) + ") | steady state: "
        + " / ".join(f"{r:.2f}x" for r in ratios.values())
        + " (whole process: `--whole-process`) | steady state "
        + verdict(all(r >= 2 for r in ratios.values()),
                  "below 2x with " + ", ".join(k for k, r in ratios.items() if r < 2)
                  + " sources") + " |",
        "| whole process >= 5x PocketCoffea 0.9.13 | measured in the same run by "
        "`--whole-process` (both works: jets, and jets + type-1 MET) | met or its distance: "
        "see that table |",
        "| whole process >= 1.5x a coffea 2026 light analysis | measured in one run by "
        "tests/benchmarks/bench_light.py | met or its distance: see its table |",
        share_target(f"jet chain ({ours['variations']} variations, {label} JES source)",
                     ours["rate"] / jet_floor["rate"], 0.5, chunksize),
        share_target(f"demo chain ({demo['variations']} variations)",
                     demo["rate"] / floor["rate"], 0.15, chunksize),
    ]
    if len(chunk_pair) == 2:
        small, large = sorted(chunk_pair, key=lambda d: d["chunksize"])
        ratio = small["rate"] / large["rate"]
        lines.append(
            f"| demo chain: {small['chunksize']:,}-event chunks >= 80 % of the rate at "
            f"{large['chunksize']:,} | {ratio:.0%} "
            f"| {verdict(ratio >= 0.8, f'{0.8 / ratio:.2f}x faster small chunks needed')} |")
    else:
        lines.append("| demo chain: 50k-event chunks >= 80 % of the rate at 200k | not measured "
                     "in this run (`--chunk-pair 50000,200000`) | not measured |")
    lines += [
        f"| warm-up < 2 s | jet chain in one process, graph build (calibrators initialised) "
        f"{ours['build_s']:.2f} s + first chunk {ours['warmup_s']:.2f} s = {setup:.2f} s "
        "(client and worker in one process: an upper bound) "
        f"| {verdict(setup < 2, f'{setup - 2:.2f} s over')} |",
        "| strong scaling >= 90 % efficiency, < 10 % of wall outside compute | measured by "
        "tests/benchmarks/bench_scale.py | see its table |",
        f"| peak memory per worker < 2 GiB, demo chain, 200k-event chunks | {peak:,.0f} MiB"
        + ("" if peak_run["chunksize"] == 200_000
           else f" at {peak_run['chunksize']:,}-event chunks")
        + f" | {verdict(peak < 2048, f'{peak - 2048:,.0f} MiB over')} |",
    ]
    return lines


def floor_caption(floor: dict) -> str:
    """``"N events/s (awkward; numpy: M)"``: the floor and the other library's rate."""
    names = {"np": "numpy", "ak": "awkward"}
    other = next(lib for lib in floor["libraries"] if lib != floor["library"])
    return (f"{floor['rate']:,.0f} events/s ({names[floor['library']]}; {names[other]}: "
            f"{floor['libraries'][other]:,.0f})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--chunksize", type=int, default=200_000)
    parser.add_argument("--variations", default="2,10,100,200",
                        help="numbers of shifted variations (Up + Down) for (c)")
    parser.add_argument("--jes-events", type=int, default=200_000,
                        help="events for the JES-source scan (e, f)")
    parser.add_argument("--jes-sets", default="1,11,all",
                        help="JES source sets of the scan (e, f): any of 1, 11, all")
    parser.add_argument("--chunk-pair", default="",
                        help="two chunk sizes, e.g. 50000,200000: the demo at each, for the "
                             "small-chunk target")
    parser.add_argument("--whole-process", action="store_true",
                        help="only the whole-process comparison, each contender in a process "
                             "of its own")
    parser.add_argument("--repeats", type=int, default=2,
                        help="interleaved rounds of --whole-process (the best is kept)")
    parser.add_argument("--work", default="jets,met",
                        help="--whole-process works: jets (AK4 JEC, JES Total, JER), met (the "
                             "same and type-1 MET), or both")
    parser.add_argument("--pocketcoffea-python", default="",
                        help="the Python of an existing PocketCoffea 0.9.13 environment "
                             "(default: made once under the benchmark cache)")
    parser.add_argument("--child", choices=WORK_CONTENDERS["jets"], help=argparse.SUPPRESS)
    parser.add_argument("--columns", default="", help=argparse.SUPPRESS)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()

    if args.child:
        row = run_child(args.child, sample_file(args.events), args.chunksize, args.jes_events,
                        args.columns.split(","), args.work)
        print(json.dumps(row), flush=True)
        if args.child == "calibrew":  # its process ends as the calibrew command ends
            from pipeline.cli import end_process

            end_process(0)
        return 0
    if args.whole_process:
        from results_doc import publish

        publish(whole_process(args), "bench_whole", "Whole process", args.write)
        return 0

    path = sample_file(args.events)
    wanted = args.jes_sets.split(",")
    jes_rows = []
    for label, sources in jes_source_sets().items():
        if label.split(" ")[0] not in wanted:
            continue
        ours = bench_jet_chain(path, sources, args.chunksize, args.jes_events)
        plain = plain_eager_script(path, sources, args.chunksize, args.jes_events)
        jet_floor = bench_read_floor(path, ours["columns"], args.chunksize, args.jes_events)
        jes_rows.append((label, len(sources), ours, plain, jet_floor))
        print(f"JES {label}: calibrew {ours['rate']:,.0f}/s ({ours['variations']} variations, "
              f"{len(ours['columns'])} columns: {', '.join(ours['columns'])}), plain "
              f"{plain['rate']:,.0f}/s, read floor {floor_caption(jet_floor)}", flush=True)
    demo = bench_demo(path, args.chunksize)
    print(f"demo: {demo['rate']:,.0f} events/s, peak {demo['peak_mib']:,.0f} MiB", flush=True)
    floor = bench_read_floor(path, demo["columns"], args.chunksize)
    print(f"read floor: {floor_caption(floor)}", flush=True)
    chunk_pair = [demo if int(size) == args.chunksize else bench_demo(path, int(size))
                  for size in filter(None, args.chunk_pair.split(","))]
    for run in chunk_pair:
        print(f"demo at {run['chunksize']:,}-event chunks: {run['rate']:,.0f} events/s",
              flush=True)
    graphs = []
    for n in filter(None, args.variations.split(",")):
        graphs.append(bench_graph(path, int(n), args.chunksize))
        print(f"graph: {graphs[-1]}", flush=True)

    lines = [
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d} on {platform.machine()}, "
        f"{platform.python_version()}, one run: `python tests/benchmarks/bench.py "
        f"--events {args.events} --chunksize {args.chunksize}`; "
        f"{demo['events']:,} events resampled from nano_tt_v12.root, "
        f"{demo['chunks']} chunks.",
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| (a) demo job with its feature table, events/s per core ({demo['variations']} "
        f"variations, 1 worker x 1 thread) | {demo['rate']:,.0f} |",
        f"| (b) read floor: uproot, same {len(demo['columns'])} branches, events/s, the faster "
        f"of awkward and numpy arrays | {floor_caption(floor)} |",
        f"| (a)/(b) | {demo['rate'] / floor['rate']:.3f} |",
        f"| compressed bytes read per event | {floor['bytes_per_event']:.0f} |",
        f"| (d) peak worker memory (RSS), {args.chunksize:,}-event chunks "
        f"| {demo['peak_mib']:,.0f} MiB |",
        "",
        "| (c) variations | graph build + optimisation (s) | tasks | dask-awkward layers |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {g['variations']} | {g['seconds']:.2f} | {g['tasks']} | {g['layers']} |"
              for g in graphs]
    lines += [
        "",
        f"Jet chain (AK4: JEC, JES sources Up/Down, JER nominal/Up/Down; preselection, 2 "
        f"histograms), single core, {args.jes_events:,} events in chunks of "
        f"{args.chunksize:,}: (e) calibrew's graph for the dataset (reading the branches it "
        "uses), its chunks computed one after another in one process; (f) is a plain script: "
        "uproot + correctionlib, recomputing each variation from scratch, one after another, "
        f"reading {len(PLAIN_SCRIPT_BRANCHES)} branches. Variations and branches are those of "
        "calibrew's plan; the read floor of a row reads that row's branches (the faster of "
        "awkward and numpy arrays).",
        "",
        "| JES sources | variations | branches | (e) calibrew, events/s | jet read floor, "
        "events/s | (e) / floor | (f) plain eager script, events/s | (e)/(f) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {label} | {ours['variations']} | {len(ours['columns'])} "
              f"| {ours['rate']:,.0f} | {jet_floor['rate']:,.0f} "
              f"| {ours['rate'] / jet_floor['rate']:.3f} | {plain['rate']:,.0f} "
              f"| {ours['rate'] / plain['rate']:.2f} |"
              for label, _, ours, plain, jet_floor in jes_rows]
    lines += ["", *targets(demo, floor, jes_rows, args.chunksize, chunk_pair)]
    from results_doc import publish

    publish(lines, "bench", "Calibration chain", args.write)
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    raise SystemExit(main())
