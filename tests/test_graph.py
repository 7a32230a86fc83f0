"""The per-dataset lazy graph: projection, lazy == eager, size independent of variations."""

from __future__ import annotations

import gc
import tempfile
from pathlib import Path

import awkward as ak
import cloudpickle
import dask
import hist
import numpy as np
import pytest
from omegaconf import OmegaConf

from pipeline.analysis.loading import calibrator_classes, load_parameters
from pipeline.analysis.processor import ChunkProcessor
from pipeline.calibration import Calibrator, CalibratorsManager
from pipeline.config.models import AnalysisConfig
from pipeline.graph import ChunkTask, build_dataset_graph, share_common_arguments
from pipeline.inputs.datasets import Dataset, preprocess
from pipeline.inputs.nanoevents import read_eager

METADATA = {"sample": "TTbar", "year": "2022_preEE", "isMC": True}
CUT = "(Jet.pt > 30) & (abs(Jet.eta) < 2.4)"


def make_config(**overrides) -> AnalysisConfig:
    base = {
        "datasets": {"tt": {"files": ["nano_tt_v12.root"], "metadata": METADATA}},
        "calibrators": ["jet_calibration"],
        "variations": {"shape": {"common": {"inclusive": ["jet_calibration"]}}},
        "preselection": {"two_jets": f"ak.num(Jet[{CUT}]) >= 2"},
        "categories": {"inclusive": "True", "four_jets": f"ak.num(Jet[{CUT}]) >= 4"},
        "histograms": {
            "jet_pt": {"axes": [{"expr": f"Jet.pt[{CUT}]", "name": "pt",
                                 "bins": 30, "start": 0, "stop": 300}]},
            "ht": {"axes": [{"expr": f"ak.sum(Jet.pt[{CUT}], axis=1)", "name": "ht",
                             "bins": 20, "start": 0, "stop": 1000}]},
        },
    }
    base.update(overrides)
    return AnalysisConfig.model_validate(base)


def dataset(tt_file: str, chunksize: int) -> Dataset:
    return preprocess(Dataset("tt", [tt_file], {**METADATA, "dataset": "tt"}), chunksize)


def compute(graph) -> dict[str, hist.Hist]:
    (vector,) = dask.compute(graph.total(), scheduler="sync")
    return graph.plan.unpack(vector)


def test_column_projection_is_exact(tt_file):
    cfg = make_config(calibrators=[], variations={})
    graph = build_dataset_graph(dataset(tt_file, 70), cfg, load_parameters())
    assert graph.necessary_columns() == {"nJet", "Jet_pt", "Jet_eta", "genWeight"}


def test_column_projection_with_jet_calibration(tt_file):
    graph = build_dataset_graph(dataset(tt_file, 70), make_config(), load_parameters())
    jets = {f"Jet_{f}" for f in ("pt", "eta", "phi", "mass", "rawFactor", "area", "genJetIdx")}
    fatjets = {f"FatJet_{f}" for f in ("pt", "eta", "phi", "mass", "rawFactor", "area",
                                        "genJetAK8Idx")}
    gen = {f"{c}_{f}" for c in ("GenJet", "GenJetAK8") for f in ("pt", "eta", "phi")}
    counters = {"nJet", "nFatJet", "nGenJet", "nGenJetAK8"}
    expected = jets | fatjets | gen | counters | {
        "Rho_fixedGridRhoFastjetAll", "genWeight", "run", "luminosityBlock", "event"}
    assert graph.necessary_columns() == expected


def ak4_only_parameters():
    """The default parameters and a user's parameter file that drops the default AK8 jets
    (``AK8PFPuppi: null``; the calibrator still declares the AK8 collection: it must then
    be read by no one)."""
    path = Path(tempfile.mkdtemp()) / "ak4_only.yaml"
    path.write_text("jets_calibration:\n  collection:\n    2022_preEE: {AK8PFPuppi: null}\n")
    params = load_parameters([path])
    assert OmegaConf.to_container(params.jets_calibration.collection["2022_preEE"]) == {
        "AK4PFPuppi": "Jet", "AK8PFPuppi": None}
    return params


def test_ak4_only_graph_reads_no_fatjet(tt_file):
    graph = build_dataset_graph(dataset(tt_file, 45), make_config(), ak4_only_parameters())
    assert not [v for v in graph.plan.variations if "AK8" in v]
    assert len(graph.plan.variations) < len(build_dataset_graph(
        dataset(tt_file, 45), make_config(), load_parameters()).plan.variations)
    columns = graph.necessary_columns()
    assert "Jet_pt" in columns and "GenJet_pt" in columns
    assert not {c for c in columns if "FatJet" in c or "GenJetAK8" in c}


@pytest.mark.parametrize("jets", ["AK4 and AK8", "AK4 only"])
def test_lazy_equals_eager(tt_file, tt_events, jets):
    cfg = make_config()
    params = load_parameters() if jets == "AK4 and AK8" else ak4_only_parameters()
    graph = build_dataset_graph(dataset(tt_file, 45), cfg, params)
    assert len(graph.dataset.chunks) == 5
    lazy = compute(graph)
    eager = ChunkProcessor(graph.plan).histograms(tt_events)
    assert set(lazy) == set(eager)
    for name in lazy:
        np.testing.assert_allclose(lazy[name].values(flow=True), eager[name].values(flow=True),
                                   rtol=1e-12, atol=0, err_msg=name)
        np.testing.assert_allclose(lazy[name].variances(flow=True),
                                   eager[name].variances(flow=True), rtol=1e-12, err_msg=name)
    assert lazy["cutflow"]["all events", "events"].value == 200
    assert lazy["jet_pt"].values().sum() > 0


def test_histograms_match_an_independent_eager_computation(tt_file, tt_events):
    """The jet_pt histogram, filled by hand from the calibration loop, with hist."""
    cfg = make_config()
    params = load_parameters()
    lazy = compute(build_dataset_graph(dataset(tt_file, 60), cfg, params))["jet_pt"]
    manager = CalibratorsManager(calibrator_classes(cfg), tt_events, params,
                                 {**METADATA, "dataset": "tt"})
    weight = tt_events.genWeight
    for variation, ev in manager.calibration_loop(tt_events, ["jet_calibration"]):
        good = (ev.Jet.pt > 30) & (abs(ev.Jet.eta) < 2.4)
        n_good = ak.num(ev.Jet[good])
        for category, mask in (("inclusive", n_good >= 2), ("four_jets", n_good >= 4)):
            pts = ev.Jet.pt[good][mask]
            w = ak.broadcast_arrays(weight[mask], pts)[0]
            expected = hist.Hist(hist.axis.Regular(30, 0, 300), storage=hist.storage.Weight())
            expected.fill(ak.to_numpy(ak.flatten(pts)), weight=ak.to_numpy(ak.flatten(w)))
            got = lazy[{"category": category, "variation": variation}]
            np.testing.assert_allclose(got.values(flow=True), expected.values(flow=True),
                                       rtol=1e-12, err_msg=f"{category} {variation}")


def test_chunking_does_not_change_results(tt_file):
    cfg = make_config()
    params = load_parameters()
    one = compute(build_dataset_graph(dataset(tt_file, 1000), cfg, params))
    seven = compute(build_dataset_graph(dataset(tt_file, 29), cfg, params))
    for name in one:
        np.testing.assert_allclose(one[name].values(flow=True), seven[name].values(flow=True),
                                   rtol=1e-12, err_msg=name)


class ManyVariations(Calibrator):
    """A jet pt scale with a configurable number of Up/Down variations (graph-size test)."""

    name = "test_many_variations"
    has_variations = True
    calibrated_collections = ["Jet.pt"]
    n_sources = 1

    def initialize(self, events):
        self._variations = [f"s{i}{d}" for i in range(self.n_sources) for d in ("Up", "Down")]

    def calibrate(self, events, orig_colls, variation, already_applied_calibrators=None):
        shift = 0.0
        if variation in self._variations:
            i = int(variation[1:].removesuffix("Up").removesuffix("Down"))
            shift = (0.001 * (i + 1)) * (1 if variation.endswith("Up") else -1)
        return {"Jet.pt": orig_colls["Jet.pt"] * (1 + shift)}


def test_chunk_tasks_share_the_reader_and_chunk_function(tt_file):
    """The scheduler serialises each task's spec on its own: the reader (with the file's
    whole form) and the chunk function are one task that every chunk task depends on, not
    a quarter of a megabyte in each."""
    graph = build_dataset_graph(dataset(tt_file, 20), make_config(), load_parameters())
    tasks = graph.chunk_tasks()
    specs = dict(tasks[0].dask)
    chunk_keys = [t.key for t in tasks]
    (shared,) = set(specs) - set(chunk_keys)
    assert all(specs[key].dependencies == {shared} for key in chunk_keys)
    assert max(len(cloudpickle.dumps(specs[key])) for key in chunk_keys) < 2000
    assert len(cloudpickle.dumps(specs[shared])) > 50 * 2000
    eager = dask.compute(*tasks, scheduler="sync")
    plain = graph.chunks.to_delayed(optimize_graph=True)
    assert all(np.array_equal(a, b) for a, b in
               zip(eager, dask.compute(*plain, scheduler="sync"), strict=True))


def _worker_address(shared: dict, index: int) -> str:
    from distributed import get_worker
    return get_worker().address


def test_few_chunks_spread_over_the_workers():
    """Chunk tasks depend on their shared argument; with few of them (at most twice the
    threads) Dask's scheduler would place every one on the worker holding it. They are
    data producers, so they go to the least busy worker instead."""
    from dask._task_spec import Task
    from dask.delayed import Delayed
    from distributed import Client, LocalCluster

    shared = {"reader": "the same object in every task"}
    tasks = [Delayed(("chunk", i), {("chunk", i): Task(("chunk", i), _worker_address,
                                                       shared, i)})
             for i in range(4)]
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.wait_for_workers(2)
        computed = client.compute(share_common_arguments(tasks, "chunk-shared"),
                                  optimize_graph=False)
        workers = client.gather(computed)
    assert len(set(workers)) == 2


def test_a_chunk_task_leaves_no_cyclic_garbage(tt_file):
    """Reference cycles that hold a chunk's arrays (a user's calibrator may leave them, and
    calibrew's own expressions did) wait for Python's cyclic collector: the task collects
    them, so that a worker does not carry them into its next chunks."""
    graph = build_dataset_graph(dataset(tt_file, 100), make_config(), load_parameters())
    events = read_eager(tt_file, start=0, stop=100)
    processor = ChunkProcessor(graph.plan)

    def leaving_cycles(chunk):
        out = processor(chunk)
        for _ in range(200):
            node = {"events": chunk}
            node["self"] = node
        return out

    gc.collect()
    leaving_cycles(events)  # bare, its cycles stay for the collector
    bare = gc.collect()
    first = ChunkTask(leaving_cycles)(events)
    left = gc.collect()  # objects of the test's own machinery, if any
    assert np.array_equal(first, ChunkTask(processor)(events))
    assert bare >= 200 and left < bare / 4


@pytest.mark.parametrize("n_sources", [1, 50])
def test_graph_size_does_not_grow_with_variations(tt_file, n_sources, monkeypatch):
    monkeypatch.setattr(ManyVariations, "n_sources", n_sources)
    cfg = make_config(calibrators=["test_many_variations"],
                      variations={"shape": {"common": {"inclusive": ["test_many_variations"]}}})
    graph = build_dataset_graph(dataset(tt_file, 50), cfg, load_parameters())
    assert len(graph.plan.variations) == 1 + 2 * n_sources
    assert len(graph.chunks.dask.layers) == 2  # read, fused chunk function
    total = graph.total()
    # 4 chunks, the read-and-process function they share, one sum, whatever the variations
    assert len(total.dask) == 4 + 1 + 1
    hists = compute(graph)
    assert hists["jet_pt"].axes["variation"].size == 1 + 2 * n_sources


def test_expression_errors_name_the_config_key(tt_file):
    cfg = make_config(histograms={"bad": {"axes": [{"expr": "Jet.ptt", "bins": 3,
                                                     "start": 0, "stop": 1}]}})
    from pipeline.errors import ExpressionError

    graph = build_dataset_graph(dataset(tt_file, 100), cfg, load_parameters())
    with pytest.raises(ExpressionError, match=r"histograms.bad.axes\[0\].expr: cannot evaluate "
                                              r"'Jet.ptt': no field 'ptt'"):
        graph.total()
    cfg = make_config(preselection={"x": "Jets.pt > 1"})
    graph = build_dataset_graph(dataset(tt_file, 100), cfg, load_parameters())
    with pytest.raises(ExpressionError,
                       match="preselection.x: .*no collection, column or definition 'Jets'"):
        graph.total()
