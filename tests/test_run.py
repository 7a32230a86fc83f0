"""End to end: ``calibrew run`` on the demo job with a real Dask LocalCluster, then plot."""

from __future__ import annotations

import json
import pickle
import shutil
import textwrap

import numpy as np
import pytest
import uproot
from datacard_reader import named_shapes, parse_datacard

from pipeline.cli import main
from pipeline.outputs.merged import load_merged


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, project_root):
    out = tmp_path_factory.mktemp("demo") / "out"
    code = main(["run", str(project_root / "jobs" / "demo.yaml"), "--output", str(out),
                 "--workers", "2"])
    assert code == 0
    return out


def test_demo_outputs(demo_run):
    report = json.loads((demo_run / "report.json").read_text())
    assert report["events_processed"] == 200
    assert report["events_per_s"] > 0 and report["wall_time_s"] > 0
    # each worker's first chunk (its warm-up) apart from the chunks after it
    rates = report["rates"]
    assert 1 <= rates["workers"] <= 2 and rates["first_chunk_per_worker_s"] > 0
    assert rates["steady_chunks"] == 4 - rates["workers"]
    assert (rates["steady_events_per_s_per_worker"] is None) == (rates["steady_chunks"] == 0)
    (name,) = report["datasets"]
    summary = report["datasets"][name]
    assert summary["chunks"] == 4
    assert summary["chunks_computed"] == 4 and summary["chunks_resumed"] == 0
    assert summary["cutflow"]["all events"]["events"] == 200
    assert 0 < summary["cutflow"]["jet_veto"]["events"] <= 200
    assert summary["sum_genweights"] == pytest.approx(
        float(np.sum(uproot.open(summary["files"][0])["Events"]["genWeight"].array(library="np"))))
    for path in summary["outputs"]:
        assert (demo_run / name / path.split("/")[-1]).exists()
    with open(demo_run / name / "histograms.pkl", "rb") as fh:
        histograms = pickle.load(fh)
    h = histograms["jet_pt"]
    assert [ax.name for ax in h.axes] == ["category", "variation", "pt"]
    assert list(h.axes["variation"])[0] == "nominal"
    variations = list(h.axes["variation"])
    # 1 + 2 x (11 regrouped JES + JER for AK4, Total + JER for AK8) + ele scale/smear + MET
    # unclustered; then the weights: pileup, 8 b-tag shape systematics, electron and muon SFs
    assert len(variations) == 1 + 2 * (12 + 2) + 4 + 2 + 2 * (1 + 8 + 1 + 1)
    assert {"met_unclusteredUp", "ele_smearDown", "btag_cferr1Up", "pileupDown"} <= set(variations)
    assert len(histograms["jet_eta_pt"].axes["variation"]) == 1  # variations: false
    assert not (demo_run / name / "histograms.root").exists()  # the merged file is ROOT's


def test_demo_feature_table(demo_run):
    from pipeline.ml import open_table

    report = json.loads((demo_run / "report.json").read_text())
    (name,) = report["datasets"]
    summary = report["datasets"][name]
    table = open_table(demo_run / name / "features.zarr")
    assert str(table.path) in summary["outputs"]
    # the nominal rows are the events passing the preselection, as in the cutflow
    assert table.attrs["rows_selected"]["nominal"] == summary["cutflow"]["two_jets"]["events"]
    assert len(table.to_numpy(["event"])["event"]) == summary["cutflow"]["two_jets"]["events"]
    shape = [v for v in summary["variations"] if v in table.variations()]
    assert len(table.variations()) == len(shape) == 34  # every shape variation is carried
    assert len(table.weight_variations()) == len(summary["variations"]) - 1 - 34
    jets, mask = table.padded("jets")
    assert jets.shape[1:] == (8, 5) and mask.any()
    # the jets collection is configured with variations: false; the jet-based columns vary
    assert all("jets" not in columns for columns in table.variations().values())
    assert "ht" in table.variations()["AK4PFPuppi_JERUp"]
    assert table.attrs["collections"]["jets"]["variations"] is False


def test_demo_results(demo_run):
    """The demo's merged result, normalised, and both statistical models: pyhf fits the
    workspace, and every shape the datacard names is in its shapes file."""
    import pyhf

    report = json.loads((demo_run / "report.json").read_text())
    assert report["results"]["merged"]
    (name,) = report["datasets"]
    summary = report["datasets"][name]
    merged = load_merged(demo_run)
    assert list(merged.processes) == ["ttbar", "pseudo_data"]
    assert merged.processes["pseudo_data"].kind == "data"
    assert merged.luminosity == {"2022_preEE": pytest.approx(7.9804)}
    with open(demo_run / name / "histograms.pkl", "rb") as fh:
        dataset = pickle.load(fh)["ht"]
    scale = 98.04 * 1000 * 7.9804 / summary["sum_genweights"]
    np.testing.assert_allclose(merged.histograms["ht"][{"process": "ttbar"}].values(),
                               scale * dataset.values(), rtol=1e-12)

    with uproot.open(demo_run / "histograms.root") as root:
        np.testing.assert_allclose(root["jet_pt/inclusive/ttbar"].values(), merged.histograms[
            "jet_pt"][{"process": "ttbar", "category": "inclusive", "variation": "nominal"}
        ].values())
        assert "jet_pt/inclusive/ttbar_AK4PFPuppi_JERUp" in root
        assert "cutflow/ttbar" in root and "cutflow_events/pseudo_data" in root
    workspace = pyhf.Workspace(json.loads((demo_run / "fit" / "workspace.json").read_text()))
    model = workspace.model()
    data = workspace.data(model)
    assert np.all(np.isfinite(pyhf.infer.mle.fit(data, model)))
    # with the nuisance parameters at their nominal values, the pseudo-data made from the
    # signal give mu = 1 within its Poisson fluctuations (a fit of every parameter is free to
    # pull the 200-event sample's noisy variations far: see docs/results.md)
    fixed = [True] * model.config.npars
    fixed[model.config.poi_index] = False
    best = pyhf.infer.mle.fit(data, model, fixed_params=fixed)
    assert float(best[model.config.poi_index]) == pytest.approx(1.0, abs=0.01)
    card = parse_datacard((demo_run / "fit" / "datacard.txt").read_text())
    assert list(card["observation"]) == ["four_jets"]
    names = named_shapes(card)
    assert len(names) > 50  # the nominal, data_obs and every systematic's Up and Down
    with uproot.open(demo_run / "fit" / "shapes.root") as shapes:
        missing = [n for n in names if n not in shapes]
    assert missing == []


def test_plot(demo_run):
    assert main(["plot", str(demo_run), "--variations", "--top", "3"]) == 0
    pngs = sorted((demo_run / "plots").glob("*.png"))
    names = {p.name for p in pngs}
    assert {"jet_pt_inclusive.png", "jet_pt_four_jets.png", "jet_eta_pt_inclusive.png",
            "ht_four_jets.png"} <= names
    assert "cutflow_inclusive.png" not in names
    assert all(p.stat().st_size > 10_000 for p in pngs)
    assert (demo_run / "plots" / "variations" / "ht_four_jets.png").exists()


def test_cli_errors_are_clear(tmp_path, capsys, project_root, monkeypatch):
    monkeypatch.setenv("CALIBREW_OFFLINE", "1")  # a missing file is not looked for online
    monkeypatch.chdir(tmp_path)  # the job's relative output goes here
    config = (project_root / "configs" / "demo.yaml").read_text()
    (tmp_path / "params").mkdir()
    shutil.copy(project_root / "configs" / "params" / "2022_preEE.yaml", tmp_path / "params")
    (tmp_path / "cfg.yaml").write_text(config.replace("preselection:", "preselections:"))
    (tmp_path / "job.yaml").write_text(textwrap.dedent("""
        config: cfg.yaml
        output: out
    """))
    assert main(["run", str(tmp_path / "job.yaml")]) == 2
    err = capsys.readouterr().err
    assert "cfg.yaml" in err and "preselections: unknown key" in err
    (tmp_path / "cfg.yaml").write_text(config.replace("nano_tt_v12.root", "nano_missing.root"))
    assert main(["run", str(tmp_path / "job.yaml")]) == 2
    err = capsys.readouterr().err
    assert "nano_missing.root" in err and "not found" in err
    report = json.loads((tmp_path / "out" / "report.json").read_text())  # an input's fault
    assert report["status"] == "failed" and "nano_missing.root" in report["error"]
    (tmp_path / "cfg.yaml").write_text(config.replace('expr: "PuppiMET.pt"',
                                                      'expr: "PuppiMET.ptt"'))
    assert main(["run", str(tmp_path / "job.yaml")]) == 2
    err = capsys.readouterr().err
    assert "histograms.met.axes[0].expr: cannot evaluate 'PuppiMET.ptt'" in err
    # nothing written: the previous report is left as it was
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["report.json"]
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == report


def test_make_sample(tmp_path):
    from pipeline.inputs.nanoevents import read_eager

    out = tmp_path / "big.root"
    assert main(["make-sample", "nano_tt_v12.root", str(out), "--events", "1234",
                 "--keep", "Jet_*", "genWeight", "Rho_*"]) == 0
    events = read_eager(str(out))
    assert len(events) == 1234
    ids = np.stack([events.run.to_numpy(), events.luminosityBlock.to_numpy(),
                    events.event.to_numpy()], axis=1)
    assert len(np.unique(ids, axis=0)) == 1234
    with uproot.open(out) as f:
        keys = set(f["Events"].keys())
    assert {"nJet", "Jet_pt", "Jet_rawFactor", "genWeight", "Rho_fixedGridRhoFastjetAll"} <= keys
    assert not any(k.startswith("Electron") for k in keys)
    phi = events.Jet.phi
    assert float(np.max(np.abs(np.asarray(phi.layout.content.data)))) <= np.pi
