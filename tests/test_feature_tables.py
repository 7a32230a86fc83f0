"""Feature tables from real runs: chunking-independent, resumable, never half visible, and
equal to an eager computation; bad table configs named; the readers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import types

import awkward as ak
import numpy as np
import pytest

from pipeline.analysis.loading import load_config
from pipeline.cli import main
from pipeline.errors import ConfigError, ExpressionError
from pipeline.ml import TableStream, open_table, torch_dataset, xgboost_iterator
from pipeline.table_layout import SCHEMA_VERSION, PaddedColumn, RaggedColumn, TableError

CONFIG = """
parameters: [{params}]
datasets:
  tt:
    files: [{tt}]
    metadata: {{sample: TTbar, year: 2022_preEE, isMC: true}}
variations:
  shape: {{common: {{inclusive: [jet_calibration, electron_scale_and_smearing]}}}}
  weights: {{common: {{inclusive: [pileup]}}}}
weights: {{common: {{inclusive: [pileup]}}}}
preselection:
  five_jets: "ak.num(Jet[(Jet.pt > 30) & (abs(Jet.eta) < 2.4)]) >= 5"
histograms:
  ht: {{axes: [{{expr: "ak.sum(Jet.pt, axis=1)", bins: 10, start: 0, stop: 1000}}]}}
tables:
  features:
    columns:
      ht: {{expr: "ak.sum(Jet.pt[Jet.pt > 30], axis=1)", unit: GeV}}
      lead_ele_pt: {{expr: "ak.firsts(Electron.pt)", unit: GeV, sentinel: -1}}
      n_muons: "ak.num(Muon)"
    collections:
      jets: {{expr: Jet, fields: [pt, eta, phi], layout: padded, length: 5, sort_by: pt}}
      electrons: {{expr: Electron, fields: [pt, eta]}}
    classes: [background, signal]
    labels: {{TTbar: signal}}
  jets:
    level: object
    objects: Jet
    select: "(obj.pt > 30) & (abs(obj.eta) < 2.4)"
    columns:
      pt: obj.pt
      eta: obj.eta
      met: PuppiMET.pt
      lead_muon_pt: {{expr: "ak.firsts(Muon.pt)", sentinel: -1}}
      lead_muon_charge: "ak.firsts(Muon.charge)"
    variations: [AK4PFPuppi_JERUp, ele_scaleUp]
"""


def write_job(tmp_path, chunksize: int, output: str, extra: str = "", workers: int = 2):
    cfg = tmp_path / "analysis.yaml"
    if not cfg.exists():
        from pipeline.inputs.datafiles import find_data_file

        params = os.path.abspath("configs/params/2022_preEE.yaml")
        cfg.write_text(CONFIG.format(params=params, tt=find_data_file("nano_tt_v12.root"))
                       + extra)
    job = tmp_path / f"job_{output}.yaml"
    job.write_text(f"config: analysis.yaml\noutput: {tmp_path / output}\n"
                   f"chunksize: {chunksize}\nworkers: {workers}\n")
    return job


def read_all(path):
    """Every column of a table in every variation, and its collections."""
    table = open_table(path)
    out = {}
    for variation in [None, "nominal", *table.variations()]:
        for name, values in table.to_numpy(variation=variation).items():
            out[(variation, name)] = values
    for name in table.collections():
        out[("collection", name)] = table.to_awkward(name, variation=None).tolist()
    return table, out


def assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if key[0] == "collection":
            assert a[key] == b[key], key
        else:
            assert a[key].dtype == b[key].dtype, key
            np.testing.assert_array_equal(a[key], b[key], err_msg=str(key))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, project_root):
    os.chdir(project_root)
    tmp = tmp_path_factory.mktemp("tables")
    for chunksize, name in ((1000, "one"), (29, "seven")):
        assert main(["run", str(write_job(tmp, chunksize, name)), "--no-progress"]) == 0
    return tmp


def test_one_and_seven_chunks_give_the_same_tables(runs):
    for table in ("features", "jets"):
        one, a = read_all(runs / "one" / "tt" / f"{table}.zarr")
        seven, b = read_all(runs / "seven" / "tt" / f"{table}.zarr")
        assert one.part_rows == [one.rows] and len(seven.part_rows) == 7
        assert_same(a, b)
        for key in ("events_total", "rows_selected", "changed_columns", "columns"):
            assert one.attrs[key] == seven.attrs[key]
        assert one.attrs["sum_genweights"] == pytest.approx(seven.attrs["sum_genweights"],
                                                            rel=1e-12)


def test_table_contents(runs, tt_events):
    table = open_table(runs / "one" / "tt" / "features.zarr")
    attrs = table.attrs
    assert attrs["events_total"] == 200
    assert attrs["sum_genweights"] == pytest.approx(float(np.sum(tt_events.genWeight)))
    assert attrs["labels"] == {"classes": ["background", "signal"], "by_sample": {"TTbar":
                               "signal"}, "label": 1, "expr": None}
    assert attrs["columns"]["ht"]["unit"] == "GeV"
    assert attrs["provenance"]["config_digest"] == load_config(
        runs / "analysis.yaml").digest()
    assert "jet_jerc_Summer22_V3.json.gz" in attrs["provenance"]["payload_checksums"]
    data = table.to_numpy(variation=None)
    # rows: events passing the preselection in any variation, in file order
    assert np.all(np.diff(data["event"].astype(np.int64)) != 0)
    assert data["label"].tolist() == [1] * table.rows
    assert data["fold"].max() <= 9 and len(set(data["fold"].tolist())) > 5
    assert data["weight_variations"].shape == (table.rows, 2)
    assert table.weight_variations() == ["pileupUp", "pileupDown"]
    assert data["ht"].dtype == np.float32 and data["n_muons"].dtype == np.int64
    # the nominal pass mask is the preselection at nominal
    nominal = table.to_numpy(["event"])["event"]
    assert len(nominal) == attrs["rows_selected"]["nominal"] < table.rows
    # a JES variation changes ht and the pass mask; an electron one only the electron column
    variations = table.variations()
    # the columns and collections reading a changed collection, and the pass mask
    assert variations["AK4PFPuppi_JERUp"] == ["ht", "jets", "pass"]
    assert variations["ele_scaleUp"] == ["electrons", "lead_ele_pt", "pass"]
    nominal_jets = table.padded("jets", variation=None)[0]
    up_jets = table.padded("jets", variation="AK4PFPuppi_JERUp")
    assert up_jets[0].shape[0] == attrs["rows_selected"]["AK4PFPuppi_JERUp"]
    assert not np.array_equal(table.padded("jets", variation=None)[0],
                              _padded_all_rows(table, "jets", "AK4PFPuppi_JERUp"))
    assert nominal_jets.shape == _padded_all_rows(table, "jets", "AK4PFPuppi_JERUp").shape
    up = table.to_numpy(["ht"], variation="AK4PFPuppi_JERUp")["ht"]
    assert len(up) == attrs["rows_selected"]["AK4PFPuppi_JERUp"]
    lead = data["lead_ele_pt"]
    assert np.all((lead == -1) | (lead > 0)) and np.any(lead == -1)  # sentinel for no electron
    padded, mask = table.padded("jets")
    assert padded.shape == (len(nominal), 5, 3) and mask.shape == (len(nominal), 5)
    pts = padded[..., table.fields("jets").index("pt")]
    assert np.all(np.diff(np.where(mask, pts, 0), axis=1) <= 0)  # sorted by pt, decreasing
    electrons = table.to_awkward("electrons")
    _, emask = table.padded("electrons", ["pt"], length=3)
    np.testing.assert_array_equal(emask.sum(axis=1), np.minimum(ak.num(electrons), 3))
    frame = table.to_pandas(["event", "ht", "weight_variations"], folds=[0, 1, 2])
    assert list(frame.columns) == ["event", "ht", "weight_pileupUp", "weight_pileupDown"]
    assert len(frame) == int(np.isin(table.to_numpy(["fold"])["fold"], [0, 1, 2]).sum())


def _padded_all_rows(table, collection, variation):
    """A variation's own padded collection over every stored row."""
    return np.concatenate([np.stack([p["variations"][variation][collection][f][...]
                                     for f in table.fields(collection)], axis=-1)
                           for p in table.parts])


def test_lazy_table_equals_eager(runs, tt_events):
    """The run's tables equal the chunk processor run eagerly on the whole file."""
    from pipeline.analysis.loading import load_parameters
    from pipeline.analysis.plan import make_plan
    from pipeline.analysis.processor import ChunkProcessor
    from pipeline.graph import plan_variations

    cfg = load_config(runs / "analysis.yaml")
    params = load_parameters(cfg.parameters)
    metadata = {**cfg.datasets["tt"].metadata.model_dump(), "dataset": "tt"}
    shape, weights = plan_variations(cfg, params, metadata, tt_events)
    eager = ChunkProcessor(make_plan(cfg, params, metadata, shape + weights, shape)).tables(
        tt_events)
    for name, (columns, _) in eager.items():
        table = open_table(runs / "seven" / "tt" / f"{name}.zarr")
        for column in table.event_columns():
            np.testing.assert_array_equal(table.to_numpy([column], variation=None)[column],
                                          columns[column], err_msg=column)
        first = table.part_rows[0]
        for variation, stored in table.variations().items():
            for column in stored:
                node = table.parts[0]["variations"][variation][column]
                eager_value = columns[f"variations/{variation}/{column}"]
                if isinstance(eager_value, RaggedColumn):  # the first part's rows
                    end = int(eager_value.offsets[first])
                    np.testing.assert_array_equal(node["offsets"][...],
                                                  eager_value.offsets[: first + 1])
                    for field, values in eager_value.fields.items():
                        np.testing.assert_array_equal(node[field][...], values[:end])
                elif isinstance(eager_value, PaddedColumn):
                    np.testing.assert_array_equal(node["mask"][...], eager_value.mask[:first])
                    for field, values in eager_value.fields.items():
                        np.testing.assert_array_equal(node[field][...], values[:first])
                else:
                    np.testing.assert_array_equal(node[...], eager_value[:first])


def test_object_level_rows(runs, tt_events):
    table = open_table(runs / "one" / "tt" / "jets.zarr")
    data = table.to_numpy(variation=None)
    from pipeline.calibration import CalibratorsManager, JetsCalibrator
    from pipeline.config.parameters import defaults

    # every stored row is a jet of its event at its position among the nominal's jets,
    # which the jet calibrator sorts by pt (eta: unchanged by calibration)
    (_, nominal), = CalibratorsManager([JetsCalibrator], tt_events, defaults(), {
        "isMC": True, "year": "2022_preEE", "sample": "TTbar", "dataset": "tt"}
    ).calibration_loop(tt_events)
    jets = nominal.Jet
    index = {int(e): i for i, e in enumerate(tt_events.event)}
    rows = [index[int(e)] for e in data["event"]]
    np.testing.assert_array_equal(
        data["eta"], np.asarray([jets.eta[r][k] for r, k in zip(rows, data["object_index"])],
                                dtype=np.float32))
    assert table.attrs["level"] == "object"
    assert set(table.variations()) == {"AK4PFPuppi_JERUp", "ele_scaleUp"}
    assert "pt" in table.variations()["AK4PFPuppi_JERUp"]
    assert "pt" not in table.variations()["ele_scaleUp"]
    # a per-event value that can be missing, taken for each jet of its event
    muons = tt_events.Muon.pt
    expected = np.asarray([muons[r][0] if len(muons[r]) else -1 for r in rows], np.float32)
    np.testing.assert_array_equal(data["lead_muon_pt"], expected)
    # an integer column that can be missing: -1, and the attributes say so
    assert data["lead_muon_charge"].dtype == np.int32
    assert table.attrs["columns"]["lead_muon_charge"]["sentinel"] == -1
    assert set(np.unique(data["lead_muon_charge"])) <= {-1, 1}


def test_killed_run_resumes_to_the_same_table(runs, tmp_path, project_root):
    """Kill a run after its first parts; nothing is visible; the rerun writes the rest."""
    job = write_job(runs, 29, "killed", workers=1)
    table_path = runs / "killed" / "tt" / "features.zarr"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(job), "--no-progress"],
                            cwd=project_root, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    # two parts written, whichever the scheduler ran first (the chunks are independent)
    while time.time() < deadline and len(list((table_path / "parts").glob("0*"))) < 2:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    written = sorted(p.name for p in (table_path / "parts").glob("0*"))
    assert 1 < len(written) < 7, written
    with pytest.raises(TableError, match="not complete"):
        open_table(table_path)
    stamps = {n: (table_path / "parts" / n / "zarr.json").stat().st_mtime_ns for n in written}
    assert main(["run", str(job), "--no-progress"]) == 0
    for name, stamp in stamps.items():  # the parts written before the kill were kept
        assert (table_path / "parts" / name / "zarr.json").stat().st_mtime_ns == stamp
    _, a = read_all(runs / "seven" / "tt" / "features.zarr")
    _, b = read_all(table_path)
    assert_same(a, b)
    # a rerun of the finished job keeps the complete table as it is
    stamps = {p: p.stat().st_mtime_ns for p in (table_path / "parts").rglob("*")}
    assert main(["run", str(job), "--no-progress"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (table_path / "parts").rglob("*")} == stamps
    assert_same(a, read_all(table_path)[1])


def test_table_of_another_schema_or_config_is_refused_untouched(runs, tmp_path):
    src = runs / "one" / "tt" / "features.zarr"
    out = tmp_path / "out"
    (out / "tt").mkdir(parents=True)
    dst = out / "tt" / "features.zarr"
    subprocess.run(["cp", "-r", str(src), str(dst)], check=True)
    meta = dst / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["schema_version"] = SCHEMA_VERSION + 1
    meta.write_text(json.dumps(doc))
    before = {p: p.stat().st_mtime_ns for p in dst.rglob("*")}
    job = tmp_path / "job.yaml"
    job.write_text(f"config: {runs / 'analysis.yaml'}\noutput: {out}\nchunksize: 1000\n")
    with pytest.raises(TableError, match=f"schema version {SCHEMA_VERSION + 1}"):
        from pipeline.run.runner import run_job

        run_job(job, show_progress=False)
    assert {p: p.stat().st_mtime_ns for p in dst.rglob("*")} == before
    assert not (out / "report.json").exists()


BAD_TABLES = [
    ("columns: {x: Jet.ptt}", ExpressionError, r"tables\.t\.columns\.x: .*'ptt'"),
    ("columns: {x: Jet.pt}\n    labels: {Nope: signal}\n    classes: [signal]", ConfigError,
     r"tables\.t\.labels\.Nope: unknown sample"),
    ("collections: {j: {expr: Jet, fields: [pt], layout: padded, length: 0}}", ConfigError,
     r"tables\.t\.collections\.j\.length"),
    ("columns: {event: Jet.pt}", ConfigError, r"reserved"),
    ("columns: {x: Jet.pt}\n    aliases: {obj: Jet}", ConfigError, r"alias 'obj'"),
    ("columns: {j: Jet.pt}\n    collections: {j: {expr: Jet, fields: [pt]}}", ConfigError,
     r"j: both a column and a collection"),
    ("columns: {x: Jet.pt}", ExpressionError, r"one value per event"),
    ("level: object\n    objects: Jet\n    columns: {x: obj.pt}\n    variations: [JESUp]",
     ConfigError, r"tables\.t\.variations\[0\]: unknown shape variation 'JESUp'"),
]


@pytest.mark.parametrize(("table", "error", "message"), BAD_TABLES)
def test_bad_table_config_is_named(tmp_path, table, error, message):
    from pipeline.inputs.datafiles import find_data_file

    cfg = tmp_path / "a.yaml"
    cfg.write_text(textwrap.dedent(f"""\
        datasets:
          tt:
            files: [{find_data_file("nano_tt_v12.root")}]
            metadata: {{sample: TTbar, year: 2022_preEE, isMC: true}}
        calibrators: [jet_calibration]
        variations: {{shape: {{common: {{inclusive: [jet_calibration]}}}}}}
        tables:
          t:
        """) + f"    {table}\n")
    job = tmp_path / "job.yaml"
    job.write_text(f"config: a.yaml\noutput: {tmp_path / 'out'}\n")
    with pytest.raises(error, match=message):
        from pipeline.run.runner import run_job

        run_job(job, show_progress=False)
    assert not (tmp_path / "out").exists()  # found before anything is written


def test_table_stream_shuffles_and_covers_every_row_once(runs):
    table = open_table(runs / "seven" / "tt" / "features.zarr")
    events = table.to_numpy(["event"])["event"]
    stream = TableStream(table, ["event", "ht"], padded={"jets": None}, batch_size=16,
                         buffer_rows=40, seed=3)
    batches = list(stream)
    seen = np.concatenate([b["event"] for b in batches])
    assert sorted(seen.tolist()) == sorted(events.tolist())
    assert seen.tolist() != events.tolist()  # shuffled
    assert all(b["jets"].shape[1:] == (5, 3) and b["jets.mask"].shape[1] == 5 for b in batches)
    again = np.concatenate([b["event"] for b in TableStream(table, ["event"], batch_size=16,
                                                            buffer_rows=40, seed=3)])
    np.testing.assert_array_equal(seen, again)  # reproducible from the seed
    stream.set_epoch(1)
    assert np.concatenate([b["event"] for b in stream]).tolist() != seen.tolist()
    shards = [np.concatenate([b["event"] for b in TableStream(table, ["event"], seed=3)
                              .shard(i, 3)] or [np.zeros(0)]) for i in range(3)]
    assert sorted(np.concatenate(shards).tolist()) == sorted(events.tolist())
    # rows of a variation and of some folds only
    jer = list(TableStream(table, ["ht"], variation="AK4PFPuppi_JERUp", folds=[0, 1],
                           shuffle=False, batch_size=10_000))
    expected = table.to_numpy(["ht"], variation="AK4PFPuppi_JERUp", folds=[0, 1])["ht"]
    np.testing.assert_array_equal(jer[0]["ht"], expected)


def test_torch_dataset_shards_across_loader_workers(runs, monkeypatch):
    """The torch adapter with a minimal stand-in for torch (PyTorch itself is optional and
    its CUDA wheels are gigabytes, so CI does not install it)."""
    info = types.SimpleNamespace(id=1, num_workers=2)
    data = types.ModuleType("torch.utils.data")
    data.IterableDataset = object
    data.get_worker_info = lambda: info
    utils = types.ModuleType("torch.utils")
    utils.data = data
    torch = types.ModuleType("torch")
    torch.utils = utils
    torch.as_tensor = lambda v: ("tensor", v)
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch.utils", utils)
    monkeypatch.setitem(sys.modules, "torch.utils.data", data)
    path = runs / "seven" / "tt" / "features.zarr"
    dataset = torch_dataset(path, ["event"], seed=5, block_rows=4)
    batches = list(dataset)
    assert all(kind == "tensor" for b in batches for kind, _ in b.values())
    got = np.concatenate([v for b in batches for _, v in b.values()])
    expected = TableStream(path, ["event"], seed=5, block_rows=4).shard(1, 2)
    assert sorted(got.tolist()) == sorted(np.concatenate([b["event"] for b in expected]).tolist())


def test_xgboost_quantile_dmatrix_from_the_iterator(runs):
    xgboost = pytest.importorskip("xgboost")  # in the test extras: installed in CI
    path = runs / "seven" / "tt" / "jets.zarr"
    table = open_table(path)
    data = table.to_numpy(["pt", "eta", "met", "object_index"])
    # any event-level column can be the label or the weight (xgboost wants weights > 0;
    # generator weights can be negative, so MET stands in for a weight here)
    it = xgboost_iterator(table, ["pt", "eta"], label="object_index", weight="met")
    matrix = xgboost.QuantileDMatrix(it, max_bin=16)
    assert matrix.num_row() == len(data["pt"]) and matrix.num_col() == 2
    assert matrix.feature_names == ["pt", "eta"]
    np.testing.assert_array_equal(matrix.get_weight(), data["met"])
    np.testing.assert_array_equal(matrix.get_label(), data["object_index"])
    booster = xgboost.train({"max_depth": 2, "max_bin": 16}, matrix, num_boost_round=2)
    assert booster.num_boosted_rounds() == 2
    direct = xgboost.QuantileDMatrix(np.column_stack([data["pt"], data["eta"]]), max_bin=16,
                                     weight=data["met"])
    np.testing.assert_array_equal(matrix.get_quantile_cut()[1], direct.get_quantile_cut()[1])


def test_inspect_prints_schema_variations_and_provenance(runs, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")  # no line wrapping
    path = runs / "one" / "tt" / "features.zarr"
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    for expected in ("level event", "lead_ele_pt", "AK4PFPuppi_JERUp", "pileupUp",
                     "jet_jerc_Summer22_V3.json.gz", "padded to 5"):
        assert expected in text
    assert main(["inspect", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == open_table(path).rows
    assert main(["inspect", str(runs / "nothing.zarr")]) == 2


def _run_config(tmp_path, text: str, params: str | None = None):
    cfg = tmp_path / "a.yaml"
    cfg.write_text(textwrap.dedent(text))
    job = tmp_path / "job.yaml"
    extra = f"parameters: [{params}]\n" if params else ""
    job.write_text(f"config: a.yaml\noutput: {tmp_path / 'out'}\nchunksize: 4\n{extra}")
    from pipeline.run.runner import run_job

    return run_job(job, show_progress=False)


def test_constituent_level_rows(tmp_path):
    from pipeline.inputs.datafiles import find_data_file
    from pipeline.inputs.nanoevents import read_eager
    from pipeline.recipes.toptagging import jet_constituents

    path = find_data_file("pfnano.root")
    _run_config(tmp_path, f"""\
        datasets:
          pf: {{files: [{path}], metadata: {{sample: PF, year: "2018", isMC: true}}}}
        calibrators: []
        tables:
          constituents:
            level: constituent
            objects: "jet_constituents(events, 'FatJet')"
            preselection: {{}}
            columns: {{pt: obj.pt, jet_pt: FatJet.pt, n_jets: "ak.num(FatJet)"}}
        """)
    table = open_table(tmp_path / "out" / "pf" / "constituents.zarr")
    data = table.to_numpy()
    events = read_eager(str(path))
    cands = jet_constituents(events, "FatJet")
    assert table.rows == int(ak.sum(ak.num(ak.flatten(cands, axis=1), axis=1)))
    index = {int(e): i for i, e in enumerate(events.event)}
    rows = [index[int(e)] for e in data["event"]]
    np.testing.assert_array_equal(data["pt"], np.asarray(
        [cands.pt[r][j][k] for r, j, k in zip(rows, data["object_index"],
                                               data["constituent_index"])], np.float32))
    np.testing.assert_array_equal(data["jet_pt"], np.asarray(
        [events.FatJet.pt[r][j] for r, j in zip(rows, data["object_index"])], np.float32))
    np.testing.assert_array_equal(data["n_jets"], ak.to_numpy(ak.num(events.FatJet))[rows])


def test_object_collection_must_follow_the_objects(tmp_path):
    from pipeline.inputs.datafiles import find_data_file

    with pytest.raises(ExpressionError, match=r"tables\.t\.collections\.c\.expr: .* one list "
                                              r"per object"):
        _run_config(tmp_path, f"""\
            datasets:
              tt: {{files: [{find_data_file("nano_tt_v12.root")}],
                    metadata: {{sample: TTbar, year: 2022_preEE, isMC: true}}}}
            calibrators: []
            tables:
              t:
                level: object
                objects: "Jet[Jet.pt > 30]"
                collections: {{c: {{expr: "ak.singletons(Jet)", fields: [pt]}}}}
            """)


def test_resorted_objects_without_identity_cannot_carry_variations(tmp_path):
    # re-sorted jets are followed across variations by Jet.original_index (see
    # test_sorted_tables.py); objects that lost it cannot be
    from pipeline.inputs.datafiles import find_data_file

    params = tmp_path / "sort.yaml"
    params.write_text("jets_calibration:\n  sort_by_pt:\n    2022_preEE: {AK4PFPuppi: true}\n")
    with pytest.raises(ConfigError, match=r"tables\.t\.objects: .*Jet.*re-sorts.*original_index"):
        _run_config(tmp_path, f"""\
            parameters: [{os.path.abspath("configs/params/2022_preEE.yaml")}]
            datasets:
              tt: {{files: [{find_data_file("nano_tt_v12.root")}],
                    metadata: {{sample: TTbar, year: 2022_preEE, isMC: true}}}}
            calibrators: [jet_calibration]
            variations: {{shape: {{common: {{inclusive: [jet_calibration]}}}}}}
            tables:
              t: {{level: object, objects: Jet.pt, columns: {{pt: obj}}}}
            """, params=str(params))
    assert not (tmp_path / "out").exists()
