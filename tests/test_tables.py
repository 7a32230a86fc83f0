"""The Zarr feature-table store: parts, all-or-nothing visibility, resume, bad input."""

from __future__ import annotations

import json

import awkward as ak
import numpy as np
import pytest
import zarr

from pipeline.outputs.table_reader import open_table
from pipeline.outputs.table_writer import MIN_CHUNK_BYTES, TableWriter
from pipeline.table_layout import SCHEMA_VERSION, PaddedColumn, RaggedColumn, TableError

IDENTITY = {"config": "0123abcd", "dataset": "tt"}


def make_part(index: int, rows: int) -> dict:
    rng = np.random.default_rng(index)
    counts = rng.integers(0, 4, rows)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    n = int(offsets[-1])
    return {
        "event": np.arange(rows, dtype=np.uint64) + 1000 * index,
        "weight": rng.normal(size=rows).astype(np.float32),
        "Jet": RaggedColumn(offsets, {"pt": rng.exponential(50, n).astype(np.float32)}),
        "FatJet": PaddedColumn({"pt": rng.exponential(200, (rows, 2)).astype(np.float32)},
                               rng.random((rows, 2)) > 0.5),
    }


def write_all(path, parts, skip=()):
    writer = TableWriter(path, n_parts=len(parts), identity=IDENTITY)
    writer.prepare()
    for i, part in enumerate(parts):
        if i not in skip:
            writer.write_part(i, part)
    return writer


def test_round_trip_over_parts(tmp_path):
    parts = [make_part(i, rows) for i, rows in enumerate((5, 0, 17))]
    path = tmp_path / "features.zarr"
    write_all(path, parts).finalize({"dataset": "tt"})
    table = open_table(path)
    assert table.rows == 22 and table.attrs["parts"] == [5, 0, 17]
    data = table.to_numpy(["event", "weight"])
    np.testing.assert_array_equal(data["event"], np.concatenate([p["event"] for p in parts]))
    assert data["weight"].dtype == np.float32
    jets = table.to_awkward("Jet")
    expected = ak.concatenate([ak.unflatten(p["Jet"].fields["pt"], np.diff(p["Jet"].offsets))
                               for p in parts])
    assert ak.all(jets.pt == expected)
    fat = table.to_awkward("FatJet")
    assert len(fat) == 22
    assert ak.sum(ak.num(fat)) == sum(int(p["FatJet"].mask.sum()) for p in parts)
    assert set(table.to_pandas().columns) == {"event", "weight"}


def test_reader_never_sees_an_incomplete_table(tmp_path):
    path = tmp_path / "features.zarr"
    writer = write_all(path, [make_part(0, 3), make_part(1, 3)], skip=(1,))
    with pytest.raises(TableError, match="not complete"):
        open_table(path)
    with pytest.raises(TableError, match=r"parts \[1\] are missing"):
        writer.finalize({})
    with pytest.raises(TableError, match="not complete"):
        open_table(path)


def test_resume_writes_only_missing_parts_and_equals_uninterrupted(tmp_path):
    parts = [make_part(i, 9) for i in range(4)]
    whole = tmp_path / "whole.zarr"
    write_all(whole, parts).finalize({"dataset": "tt"})
    resumed = tmp_path / "resumed.zarr"
    write_all(resumed, parts, skip=(1, 3))  # the first run dies after parts 0 and 2
    # a part being written when the run died is a temporary directory: never counted
    (resumed / "parts" / ".tmp-00001-dead").mkdir()
    writer = TableWriter(resumed, n_parts=4, identity=IDENTITY)
    writer.prepare()
    assert writer.missing_parts() == [1, 3]
    for i in writer.missing_parts():
        writer.write_part(i, parts[i])
    writer.finalize({"dataset": "tt"})
    assert not list((resumed / "parts").glob(".tmp-*"))
    a, b = open_table(whole), open_table(resumed)
    for name in a.event_columns():
        np.testing.assert_array_equal(a.to_numpy([name])[name], b.to_numpy([name])[name])
    for name in a.collections():
        assert a.to_awkward(name).tolist() == b.to_awkward(name).tolist()


def test_other_configuration_or_schema_is_refused_and_left_intact(tmp_path):
    path = tmp_path / "features.zarr"
    write_all(path, [make_part(0, 4)]).finalize({})
    before = sorted(p.name for p in path.rglob("*"))
    with pytest.raises(TableError, match="another config, dataset is there"):
        TableWriter(path, n_parts=1, identity={"config": "other"}).prepare()
    meta = path / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["schema_version"] = SCHEMA_VERSION + 1
    meta.write_text(json.dumps(doc))
    with pytest.raises(TableError, match=f"schema version {SCHEMA_VERSION + 1}"):
        TableWriter(path, n_parts=1, identity=IDENTITY).prepare()
    with pytest.raises(TableError, match="schema version"):
        open_table(path)
    assert sorted(p.name for p in path.rglob("*")) == before


def test_rows_must_agree_and_chunks_are_large(tmp_path):
    writer = TableWriter(tmp_path / "t.zarr", n_parts=1, identity=IDENTITY)
    writer.prepare()
    with pytest.raises(TableError, match="'weight' has a different number of rows"):
        writer.write_part(0, {"event": np.arange(3), "weight": np.zeros(4)})
    rows = 600_000
    writer.write_part(0, {"event": np.arange(rows, dtype=np.uint64)})
    array = zarr.open_array(str(tmp_path / "t.zarr" / "parts" / "00000" / "event"), mode="r")
    assert array.chunks[0] * 8 >= MIN_CHUNK_BYTES
