"""The merged results: processes, normalisation, one merged file, the checks before a run."""

from __future__ import annotations

import json
import pickle

import hist
import numpy as np
import pytest

from pipeline.analysis.histogram_fill import CUTFLOW
from pipeline.config.models import AnalysisConfig
from pipeline.config.parameters import defaults
from pipeline.errors import ConfigError, InputFileError
from pipeline.outputs.merge import merge_run
from pipeline.outputs.merged import load_merged
from pipeline.outputs.results import check_results, write_results

LUMI_2022 = 7.9804  # fb^-1, pipeline/defaults/luminosity.yaml
MC = {"year": "2022_preEE", "isMC": True}
DATA = {"year": "2022_preEE", "isMC": False, "era": "C"}
STEPS = ["all events", "two_jets"]


def dataset_histogram(rng, variations, categories=("inclusive", "four_jets")):
    h = hist.Hist(hist.axis.StrCategory(list(categories), name="category"),
                  hist.axis.StrCategory(list(variations), name="variation"),
                  hist.axis.Regular(5, 0, 100, name="ht", label="$H_T$ [GeV]"),
                  storage=hist.storage.Weight())
    view = h.view(flow=True)
    view["value"] = rng.uniform(0, 50, view.shape)
    view["variance"] = rng.uniform(0, 5, view.shape)
    return h


def cutflow(rng, sumw):
    h = hist.Hist(hist.axis.StrCategory(STEPS, name="step"),
                  hist.axis.StrCategory(["weighted", "events"], name="kind"),
                  storage=hist.storage.Weight())
    h[:, "weighted"] = np.stack([[sumw, sumw / 2], [sumw ** 2, sumw ** 2 / 4]], axis=-1)
    h[:, "events"] = np.stack([[100.0, 50.0], [100.0, 50.0]], axis=-1)
    return h


def write_dataset(folder, name, h, sumw, left_out=()):
    (folder / name).mkdir(parents=True)
    rng = np.random.default_rng(len(name))
    (folder / name / "histograms.pkl").write_bytes(
        pickle.dumps({"ht": h, CUTFLOW: cutflow(rng, sumw)}))
    (folder / name / "summary.json").write_text(json.dumps(
        {"dataset": name, "sum_genweights": sumw, "chunks_left_out": list(left_out)}))


def config(**extra):
    files = {"files": ["x.root"]}
    base = {
        "datasets": {
            "tt_a": {**files, "metadata": {**MC, "sample": "TTbar", "xsec": 98.0}},
            "tt_b": {**files, "metadata": {**MC, "sample": "TTbar", "xsec": 98.0}},
            "dy": {**files, "metadata": {**MC, "sample": "DY", "xsec": 6000.0}},
            "run_c": {**files, "metadata": {**DATA, "sample": "Data"}},
        },
        "categories": {"inclusive": "True", "four_jets": "True"},
        "histograms": {"ht": {"axes": [{"expr": "x", "bins": 5, "start": 0, "stop": 100}]}},
        "processes": {
            "dy": {"datasets": ["dy"], "label": "Drell-Yan", "color": "#3f90da"},
            "ttbar": {"datasets": ["tt_a", "tt_b"], "kind": "signal",
                      "label": "$t\\bar{t}$"},
            "data": {"datasets": ["run_c"], "kind": "data", "label": "Pseudo-data"},
        },
    }
    base.update(extra)
    return AnalysisConfig.model_validate(base)


@pytest.fixture
def run_output(tmp_path):
    rng = np.random.default_rng(7)
    shapes = ["nominal", "JERUp", "JERDown", "pileupUp", "pileupDown"]
    inputs = {
        "tt_a": (dataset_histogram(rng, shapes), 1000.0),
        "tt_b": (dataset_histogram(rng, ["nominal", "pileupUp", "pileupDown"]), 250.0),
        "dy": (dataset_histogram(rng, shapes), 5e5),
        "run_c": (dataset_histogram(rng, ["nominal"]), 100.0),
    }
    for name, (h, sumw) in inputs.items():
        write_dataset(tmp_path, name, h, sumw, left_out=[3] if name == "dy" else [])
    return tmp_path, inputs


def test_merged_histogram_is_the_sum_of_the_datasets_times_their_scales(run_output):
    folder, inputs = run_output
    merged = merge_run(folder, config(), defaults())
    h = merged.histograms["ht"]
    assert list(h.axes["process"]) == ["dy", "ttbar", "data"]
    assert list(h.axes["variation"]) == ["nominal", "JERUp", "JERDown", "pileupUp",
                                         "pileupDown"]
    members = {"dy": ["dy"], "ttbar": ["tt_a", "tt_b"], "data": ["run_c"]}
    xsec = {"tt_a": 98.0, "tt_b": 98.0, "dy": 6000.0, "run_c": None}
    for process, datasets in members.items():
        for category in ("inclusive", "four_jets"):
            for variation in h.axes["variation"]:
                want_values = np.zeros(7)
                want_variances = np.zeros(7)
                for dataset in datasets:
                    one, sumw = inputs[dataset]
                    scale = (1.0 if xsec[dataset] is None
                             else xsec[dataset] * 1000 * LUMI_2022 / sumw)
                    # a dataset without the variation counts with its nominal
                    source = variation if variation in one.axes["variation"] else "nominal"
                    part = one[{"category": category, "variation": source}]
                    want_values += scale * part.values(flow=True)
                    want_variances += scale ** 2 * part.variances(flow=True)
                got = h[{"process": process, "category": category, "variation": variation}]
                np.testing.assert_allclose(got.values(flow=True), want_values, rtol=1e-12)
                np.testing.assert_allclose(got.variances(flow=True), want_variances,
                                           rtol=1e-12)
    assert merged.processes["ttbar"].variations == ("nominal", "JERUp", "JERDown", "pileupUp",
                                                    "pileupDown")
    assert merged.processes["data"].variations == ("nominal",)
    assert merged.luminosity == {"2022_preEE": LUMI_2022}
    assert merged.energy_tev == 13.6
    assert any("'dy': 1 chunk(s) left out" in note for note in merged.notes)
    flow = merged.histograms[CUTFLOW]
    tt_scale = [98.0 * 1000 * LUMI_2022 / s for s in (1000.0, 250.0)]
    np.testing.assert_allclose(flow[{"process": "ttbar", "kind": "weighted"}].values(),
                               [1000.0 * tt_scale[0] + 250.0 * tt_scale[1],
                                500.0 * tt_scale[0] + 125.0 * tt_scale[1]])
    np.testing.assert_allclose(flow[{"process": "data", "kind": "events"}].values(),
                               [100.0, 50.0])


def test_merged_result_is_written_and_read_back(run_output):
    folder, _ = run_output
    results = write_results(folder, config(), defaults())
    assert results.merged is not None and results.report()["merged"]
    back = load_merged(folder)
    assert back.processes == results.merged.processes
    assert back.processes["ttbar"].label == "$t\\bar{t}$"
    assert back.processes["ttbar"].datasets == ("tt_a", "tt_b")
    for name, h in results.merged.histograms.items():
        assert back.histograms[name] == h


def test_default_processes_are_the_samples(run_output):
    folder, _ = run_output
    merged = merge_run(folder, config(processes={}), defaults())
    assert {n: (p.kind, p.datasets) for n, p in merged.processes.items()} == {
        "TTbar": ("background", ("tt_a", "tt_b")), "DY": ("background", ("dy",)),
        "Data": ("data", ("run_c",))}


def test_a_dataset_in_no_process_is_named(run_output):
    folder, _ = run_output
    cfg = config()
    cfg.processes["dy"].datasets.remove("dy")
    cfg.processes["dy"].datasets.append("tt_a")
    cfg.processes["ttbar"].datasets.remove("tt_a")
    merged = merge_run(folder, cfg, defaults())
    assert any("in no process, not merged: dy" in note for note in merged.notes)


def test_normalisation_needs_the_cross_section_and_the_luminosity(run_output):
    folder, _ = run_output
    cfg = config()
    cfg.datasets["dy"].metadata.xsec = None
    cfg.datasets["tt_b"].metadata.year = "2024"
    with pytest.raises(ConfigError) as err:
        check_results(cfg, defaults(), list(cfg.datasets))
    assert "datasets.dy.metadata.xsec" in str(err.value)
    assert "luminosity.2024" in str(err.value)
    # without 'processes', the run goes on without merged results, and says why
    cfg = config(processes={})
    cfg.datasets["dy"].metadata.xsec = None
    why = check_results(cfg, defaults(), list(cfg.datasets))
    assert why is not None and "datasets.dy.metadata.xsec" in why
    assert write_results(folder, cfg, defaults()).merged is None
    assert not (folder / "merged.json").exists()


def test_unreadable_dataset_outputs_name_the_dataset(run_output):
    folder, _ = run_output
    (folder / "dy" / "histograms.pkl").write_bytes(b"not a pickle")
    with pytest.raises(InputFileError, match="dataset 'dy'"):
        merge_run(folder, config(), defaults())


@pytest.mark.parametrize(("processes", "message"), [
    ({"x": {"datasets": ["nope"]}}, "processes.x: unknown dataset 'nope'"),
    ({"x": {"datasets": ["dy"]}, "y": {"datasets": ["dy"]}},
     "processes.y: dataset 'dy' is already in process 'x'"),
    ({"x": {"datasets": ["run_c"]}}, "processes.x: dataset 'run_c' is collision data"),
    ({"x": {"datasets": ["dy"], "kind": "data"}},
     "processes.x: dataset 'dy' is simulation (isMC: true), the process is kind 'data'"),
])
def test_wrong_processes_are_config_errors(processes, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config(processes=processes)


@pytest.mark.parametrize(("fit", "message"), [
    ({"histogram": "mjj"}, "fit.histogram: unknown histogram 'mjj'"),
    ({"histogram": "ht", "categories": ["two_b"]}, "fit.categories: 'two_b' is not a category"),
    ({"histogram": "ht", "normalisation": {"lumi": {"value": 1.014, "processes": ["qcd"]}}},
     "fit.normalisation.lumi.processes: unknown process 'qcd'"),
])
def test_wrong_fit_is_a_config_error(fit, message):
    with pytest.raises(ValueError, match=message):
        config(fit=fit)


def test_processes_and_fit_do_not_change_the_run_identity():
    assert config().digest() == config(processes={}).digest() == config(
        fit={"histogram": "ht"}).digest()


def test_pseudo_data_is_the_fluctuated_simulation_and_says_so(run_output):
    folder, _ = run_output
    processes = {"dy": {"datasets": ["dy"]}, "ttbar": {"datasets": ["tt_a", "tt_b"]}}
    asimov = merge_run(folder, config(processes=processes,
                                      pseudo_data={"fluctuate": False}), defaults())
    h = asimov.histograms["ht"]
    total = h[{"process": "dy", "variation": "nominal"}].values(flow=True) + h[
        {"process": "ttbar", "variation": "nominal"}].values(flow=True)
    np.testing.assert_array_equal(
        h[{"process": "pseudo_data", "variation": "nominal"}].values(flow=True), total)
    assert asimov.processes["pseudo_data"].kind == "data"
    assert any("pseudo-data" in note for note in asimov.notes)

    cfg = config(processes=processes, pseudo_data={"seed": 3})
    first = merge_run(folder, cfg, defaults()).histograms["ht"][{"process": "pseudo_data"}]
    again = merge_run(folder, cfg, defaults()).histograms["ht"][{"process": "pseudo_data"}]
    assert first == again  # seeded
    counts = first[{"variation": "nominal"}].values(flow=True)
    np.testing.assert_array_equal(counts, np.round(counts))
    assert not np.array_equal(counts, total)
    # Poisson: within five standard deviations of the expectation, bin by bin
    assert np.all(np.abs(counts - total) < 5 * np.sqrt(total) + 1)
    with pytest.raises(ValueError, match="pseudo_data: the analysis has collision data"):
        config(pseudo_data={})


def test_merged_root_file_names_templates_as_combine_does(run_output):
    import uproot

    folder, _ = run_output
    merged = merge_run(folder, config(), defaults())
    h = merged.histograms["ht"]
    with uproot.open(folder / "histograms.root") as root:
        for process in ("dy", "ttbar", "data"):
            for variation in merged.processes[process].variations:
                key = f"ht/four_jets/{process}" + ("" if variation == "nominal"
                                                   else f"_{variation}")
                np.testing.assert_array_equal(root[key].values(), h[{
                    "process": process, "category": "four_jets",
                    "variation": variation}].values())
        assert "ht/inclusive/data_JERUp" not in root  # data computed no variation
        assert root["ht/inclusive/ttbar"].member("fXaxis").member("fTitle") == "H_{T} [GeV]"
        assert root["ht/inclusive/ttbar"].member("fTitle") == "t#bar{t}"
        np.testing.assert_allclose(root["cutflow_events/data"].values(), [100.0, 50.0])


def test_results_with_a_fit_write_both_statistical_models(run_output):
    import pyhf

    folder, _ = run_output
    cfg = config(fit={"histogram": "ht", "categories": ["four_jets"],
                      "normalisation": {"lumi": {"value": 1.014}}})
    results = write_results(folder, cfg, defaults())
    names = {p.name for p in results.paths}
    assert {"datacard.txt", "shapes.root", "workspace.json"} <= names
    spec = json.loads((folder / "fit" / "workspace.json").read_text())
    workspace = pyhf.Workspace(spec)
    assert workspace.channels == ["four_jets"]
    assert "lumi" in (folder / "fit" / "datacard.txt").read_text()


def test_calibrew_merge_redoes_the_results_of_a_job(run_output, capsys):
    import yaml

    from pipeline.cli import main

    folder, _ = run_output
    data = config().model_dump(mode="json", exclude_none=True)
    (folder / "analysis.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    job = folder / "job.yaml"
    job.write_text(f"config: analysis.yaml\noutput: {folder}\n")
    assert main(["merge", str(job)]) == 0
    assert "into 3 process(es)" in capsys.readouterr().out
    assert list(load_merged(folder).processes) == ["dy", "ttbar", "data"]
    # a change of the processes needs no computation: merge again
    data["processes"]["ttbar"]["label"] = "top pairs"
    (folder / "analysis.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(["merge", str(job)]) == 0
    assert load_merged(folder).processes["ttbar"].label == "top pairs"
    empty = folder / "nothing"
    assert main(["merge", str(job), "--output", str(empty)]) != 0
    assert "no dataset of analysis.yaml has outputs there" in capsys.readouterr().err
