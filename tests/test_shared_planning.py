"""Planning shared across datasets: one tracing per analysis shape, plans cached on disk."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import awkward as ak
import dask
import numpy as np
import pytest
import uproot
import yaml
from demo_job import with_datasets

from pipeline.analysis.loading import load_parameters
from pipeline.calibration import Calibrator
from pipeline.cli import main
from pipeline.config.models import AnalysisConfig
from pipeline.graph import build_dataset_graph, read_events
from pipeline.inputs.datafiles import find_data_file
from pipeline.inputs.datasets import Dataset, preprocess
from pipeline.run.identity import plan_identity
from pipeline.run.planning import PlanCache, Planner

MC = {"sample": "TTbar", "year": "2022_preEE", "isMC": True}
DATA = {"sample": "Muon", "year": "2022_preEE", "isMC": False, "era": "C"}
CUT = "(Jet.pt > 30) & (abs(Jet.eta) < 2.4)"


class CountedScale(Calibrator):
    """A jet pt scale (two variations on simulation) that counts the times it is traced:
    called on typetracers, when a dataset's chunk function is traced."""

    name = "test_counted_scale"
    has_variations = True
    calibrated_collections = ["Jet.pt"]
    traced = 0

    def initialize(self, events):
        self._variations = ["scaleUp", "scaleDown"] if self.isMC else []

    def calibrate(self, events, orig_colls, variation, already_applied_calibrators=None):
        if ak.backend(events) == "typetracer":
            type(self).traced += 1
        factor = {"scaleUp": 1.02, "scaleDown": 0.98}.get(variation, 1.0)
        return {"Jet.pt": orig_colls["Jet.pt"] * factor}


def config(files: dict[str, tuple[str, dict]]) -> AnalysisConfig:
    return AnalysisConfig.model_validate({
        "datasets": {name: {"files": [file], "metadata": meta}
                     for name, (file, meta) in files.items()},
        "calibrators": ["test_counted_scale"],
        "variations": {"shape": {"common": {"inclusive": ["test_counted_scale"]}}},
        "preselection": {"two_jets": f"ak.num(Jet[{CUT}]) >= 2"},
        "histograms": {
            "jet_pt": {"axes": [{"expr": f"Jet.pt[{CUT}]", "bins": 30, "start": 0,
                                 "stop": 300}]},
            "n_muons": {"axes": [{"expr": "ak.num(Muon)", "bins": 5, "start": 0, "stop": 5}]},
        },
    })


def datasets(cfg: AnalysisConfig) -> list[Dataset]:
    return [preprocess(Dataset(name, [str(spec.files[0])],
                               {**spec.metadata.model_dump(), "dataset": name}), 70)
            for name, spec in cfg.datasets.items()]


def vector(graph) -> np.ndarray:
    (total,) = dask.compute(graph.total(), scheduler="sync")
    return total


@pytest.fixture()
def shapes(tt_file) -> AnalysisConfig:
    """Two simulated datasets of one shape (one file, other names and cross-sections), and
    the same file declared as collision data: another shape."""
    return config({"tt_a": (tt_file, {**MC, "xsec": 1.0}), "tt_b": (tt_file, {**MC, "xsec": 2.0}),
                   "as_data": (tt_file, DATA)})


def test_one_tracing_per_analysis_shape(shapes):
    params = load_parameters()
    planner = Planner(shapes, params)
    counts, graphs = [], []
    for dataset in datasets(shapes):
        graphs.append(planner.graph(dataset))
        graphs[-1].chunk_tasks()
        counts.append(CountedScale.traced)
    first, second, data = counts
    assert first > 0
    assert second == first  # the second simulated dataset is not traced
    assert data > second  # data is another shape: traced
    assert planner.traced == 2
    assert list(graphs[0].plan.variations) == ["nominal", "scaleUp", "scaleDown"]
    assert list(graphs[2].plan.variations) == ["nominal"]
    # the columns and the results are those of each dataset planned alone
    for graph, dataset in zip(graphs, datasets(shapes)):
        alone = build_dataset_graph(dataset, shapes, params)
        assert graph.necessary_columns() == alone.necessary_columns()
        assert "Muon_pt" not in graph.necessary_columns()
        assert list(graph.plan.variations) == list(alone.plan.variations)
        assert np.array_equal(vector(graph), vector(alone))


def test_another_input_form_is_another_shape(tt_file, data_file):
    """A file with other branches is traced on its own, even with the same metadata."""
    cfg = config({"tt": (tt_file, DATA), "other": (data_file, DATA)})
    planner = Planner(cfg, load_parameters())
    graphs = [planner.graph(dataset) for dataset in datasets(cfg)]
    assert planner.traced == 2
    for graph, dataset in zip(graphs, datasets(cfg)):
        assert graph.necessary_columns() == build_dataset_graph(
            dataset, cfg, load_parameters()).necessary_columns()


def test_traced_plans_are_cached(shapes, tmp_path):
    params = load_parameters()
    identity = plan_identity(shapes, params)
    cold = Planner(shapes, params, PlanCache(identity, tmp_path))
    expected = [cold.graph(dataset).necessary_columns() for dataset in datasets(shapes)]
    assert (cold.traced, cold.cached) == (2, 0)
    assert len(list(tmp_path.glob("*.json"))) == 2
    before = CountedScale.traced
    warm = Planner(shapes, params, PlanCache(identity, tmp_path))
    graphs = [warm.graph(dataset) for dataset in datasets(shapes)]
    for graph in graphs:
        graph.chunk_tasks()
    assert (warm.traced, warm.cached) == (0, 2)
    assert CountedScale.traced == before  # nothing traced
    assert [g.necessary_columns() for g in graphs] == expected
    # another configuration does not take them
    other = config({"tt_a": (datasets(shapes)[0].files[0], MC)})
    again = Planner(other, params, PlanCache(plan_identity(other, params), tmp_path))
    again.graph(datasets(other)[0])
    assert again.traced == 1


def test_unreadable_plan_is_traced_again(shapes, tmp_path):
    params = load_parameters()
    identity = plan_identity(shapes, params)
    dataset = datasets(shapes)[0]
    Planner(shapes, params, PlanCache(identity, tmp_path)).graph(dataset)
    (entry,) = tmp_path.glob("*.json")
    good = entry.read_text()
    for damaged in (good[: len(good) // 2], json.dumps({"plan": {"shape": 3}})):
        entry.write_text(damaged)
        notes: list[str] = []
        planner = Planner(shapes, params, PlanCache(identity, tmp_path, note=notes.append))
        planner.graph(dataset)
        assert planner.traced == 1
        assert len(notes) == 1 and str(entry) in notes[0] and "traced again" in notes[0]
        assert json.loads(entry.read_text()) == json.loads(good)  # rewritten


def test_warm_cache_opens_no_input_file(shapes, tmp_path, monkeypatch):
    """With the plans cached and the files preprocessed, planning opens no input file, and
    builds the same graphs as planning cold (tt_a read with the plan's base form, tt_b
    with tt_a's read function)."""
    params = load_parameters()
    identity = plan_identity(shapes, params)
    cold = Planner(shapes, params, PlanCache(identity, tmp_path))
    expected = [cold.graph(dataset) for dataset in datasets(shapes)]
    preprocessed = datasets(shapes)  # from the preprocessing cache: opens nothing
    opened: list[str] = []
    real_open = uproot.reading.ReadOnlyFile.__init__

    def counted(self, file_path, *args, **kwargs):
        opened.append(str(file_path))
        real_open(self, file_path, *args, **kwargs)

    monkeypatch.setattr(uproot.reading.ReadOnlyFile, "__init__", counted)
    warm = Planner(shapes, params, PlanCache(identity, tmp_path))
    graphs = [warm.graph(dataset) for dataset in preprocessed]
    for graph in graphs:
        graph.chunk_tasks()
    assert (warm.traced, warm.cached) == (0, 2)
    assert opened == []
    monkeypatch.undo()
    for graph, cold_graph in zip(graphs, expected):
        assert graph.necessary_columns() == cold_graph.necessary_columns()
        assert np.array_equal(vector(graph), vector(cold_graph))
    # the counting is real: reading without the plan's form opens the file
    monkeypatch.setattr(uproot.reading.ReadOnlyFile, "__init__", counted)
    read_events(preprocessed[0])
    assert opened == [preprocessed[0].files[0]]


def write_job(tmp: Path, output: Path) -> Path:
    """The demo analysis, few variations, on two datasets of one shape (the demo file)."""
    project = Path(__file__).resolve().parent.parent
    cfg = yaml.safe_load((project / "configs" / "demo.yaml").read_text())
    cfg["parameters"] = [str(project / "configs" / p) for p in cfg["parameters"]]
    (spec,) = cfg["datasets"].values()
    spec["files"] = [str(find_data_file("nano_tt_v12.root"))]
    with_datasets(cfg, {"tt_a": spec, "tt_b": {**spec, "metadata": {**spec["metadata"],
                                                                     "xsec": 1.0}}})
    cfg["variations"] = {"shape": {"common": {"inclusive": ["met_rescaling"]}},
                         "weights": {"common": {"inclusive": ["pileup"]}}}
    (tmp / "shared.analysis.yaml").write_text(yaml.safe_dump(cfg))
    job = tmp / "shared.job.yaml"
    job.write_text(f"config: shared.analysis.yaml\noutput: {output}\nchunksize: 100\n"
                   "workers: 1\n")
    return job


def test_rerun_plans_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # a cold plan cache
    reports, histograms = [], []
    for run in ("first", "second"):
        out = tmp_path / run
        assert main(["run", str(write_job(tmp_path, out)), "--no-progress"]) == 0
        reports.append(json.loads((out / "report.json").read_text()))
        histograms.append({name: (out / name / "histograms.pkl").read_bytes()
                           for name in ("tt_a", "tt_b")})
    assert reports[0]["plans"] == {"traced": 1, "from_cache": 0}
    assert reports[1]["plans"] == {"traced": 0, "from_cache": 1}
    assert histograms[0] == histograms[1]
    a, b = (pickle.loads(histograms[0][name]) for name in ("tt_a", "tt_b"))
    for name in a:  # one plan, the same results for both datasets
        assert np.array_equal(a[name].values(flow=True), b[name].values(flow=True)), name
    columns = [r["datasets"][n]["columns_read"] for r in reports for n in ("tt_a", "tt_b")]
    assert columns[0] and all(c == columns[0] for c in columns)


SHAPE_SCRIPT = """
import dataclasses, json, sys
from pipeline.analysis.loading import load_config
from pipeline.graph import analysis_shape, read_events
from pipeline.inputs.datasets import Dataset, preprocess
cfg = load_config(sys.argv[1])
(name, spec), = cfg.datasets.items()
dataset = preprocess(Dataset(name, [sys.argv[2]], {**spec.metadata.model_dump(),
                                                   "dataset": name}), 50)
unscanned = dataclasses.replace(dataset, form_digest=None)  # the form of the events instead
print(json.dumps([analysis_shape(dataset, cfg),
                  analysis_shape(unscanned, cfg, read_events(dataset)._meta)], sort_keys=True))
"""


def test_shape_is_the_same_in_another_process(tt_file, project_root, tmp_path):
    """The shape keys the plan cache: it does not depend on a process' hash seed (the
    NanoEvents schema builds its records' fields in set order), whether its form digest
    comes from preprocessing (each process its own cache) or from the events' form."""
    shapes = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(project_root),
               "XDG_CACHE_HOME": str(tmp_path / seed)}
        done = subprocess.run([sys.executable, "-c", SHAPE_SCRIPT,
                               str(project_root / "configs" / "demo.yaml"), tt_file],
                              env=env, capture_output=True, text=True, check=True)
        shapes.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert shapes[0] == shapes[1]
    assert shapes[0][0]["form"] != shapes[0][1]["form"]  # two digests: both computed
    assert shapes[0][0]["metadata"] == {"era": None, "generator_weight": "genWeight",
                                     "isMC": True, "year": "2022_preEE"}
