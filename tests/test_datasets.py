"""Datasets, preprocessing into chunks, and finding the real sample files."""

from __future__ import annotations

import shutil

import pytest

from pipeline.datasets import Dataset, count_entries, preprocess, split_entries
from pipeline.errors import InputFileError
from pipeline.samples import find_data_file


def test_split_entries_covers_everything_once():
    for n, size in [(200, 50), (200, 7), (10, 100), (1_000_003, 100_000)]:
        ranges = split_entries(n, size)
        assert ranges[0][0] == 0 and ranges[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        assert max(b - a for a, b in ranges) <= size


def test_preprocess_and_cache(tt_file, tmp_path, monkeypatch):
    local = tmp_path / "tt.root"
    shutil.copy(tt_file, local)
    ds = preprocess(Dataset("tt", [str(local)], {"isMC": True}), chunksize=30)
    assert ds.entries == 200 and len(ds.chunks) == 7
    assert ds.steps_by_file()[str(local)]["steps"][0] == [0, 29]
    # the second call is answered by the cache: uproot is not asked again
    import pipeline.datasets as module

    def fail(*args, **kwargs):
        raise AssertionError("file was opened again")

    monkeypatch.setattr(module.uproot, "open", fail)
    assert count_entries(str(local)) == 200


def test_missing_file_is_named(tmp_path):
    missing = tmp_path / "nope.root"
    with pytest.raises(InputFileError, match=f"input file not found: {missing}"):
        count_entries(str(missing))


def test_unreadable_file_is_named(tmp_path, tt_file):
    bad = tmp_path / "truncated.root"
    bad.write_bytes(open(tt_file, "rb").read()[:5000])
    with pytest.raises(InputFileError, match=f"cannot read input file {bad}"):
        count_entries(str(bad))
    text = tmp_path / "notroot.root"
    text.write_text("hello")
    with pytest.raises(InputFileError, match=str(text)):
        count_entries(str(text))


def test_find_data_file_order_and_error(tmp_path, monkeypatch):
    (tmp_path / "nano_tt_v12.root").write_bytes(b"x")
    monkeypatch.setenv("CALIBREW_DATA", str(tmp_path))
    assert find_data_file("nano_tt_v12.root") == tmp_path / "nano_tt_v12.root"
    with pytest.raises(InputFileError, match="not_a_sample.root.*looked in: .*" + str(tmp_path)):
        find_data_file("not_a_sample.root", download=False)
