"""Datasets, preprocessing into chunks, and finding the real sample files."""

from __future__ import annotations

import shutil

import pytest

from pipeline.errors import InputFileError
from pipeline.inputs.datafiles import find_data_file
from pipeline.inputs.datasets import Dataset, count_entries, preprocess, split_entries


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
    import pipeline.inputs.datasets as module

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


def _no_download(monkeypatch) -> list[str]:
    """Record (and refuse) every download attempt; the list must stay empty."""
    import pipeline.inputs.datafiles as samples

    attempts: list[str] = []

    def fail(*args, **kwargs):
        attempts.append(repr(args))
        raise AssertionError(f"a download was attempted: {args}")

    for name in ("_download", "_coffea_sdist", "_unpack_coffea_samples"):
        if hasattr(samples, name):
            monkeypatch.setattr(samples, name, fail)
    monkeypatch.setattr(samples.urllib.request, "urlopen", fail)
    monkeypatch.setattr(samples.subprocess, "run", fail)
    monkeypatch.delenv("CALIBREW_OFFLINE", raising=False)
    return attempts


@pytest.mark.parametrize("name", ["nano_tt_v21.root", "nano_tt_v12.rot",
                                  "pog/2022_Sumer22/JME_jet_jerc.json.gz",
                                  "pog/2022_Summer22/JMW_jet_jerc.json.gz"])
def test_typo_data_file_fails_at_once_without_download(tmp_path, monkeypatch, name):
    attempts = _no_download(monkeypatch)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(InputFileError) as info:
        find_data_file(name)
    assert attempts == []
    text = str(info.value)
    assert repr(name) in text and "not found" in text
    assert str(tmp_path / "cache" / "calibrew" / "data") in text
    assert "no public source" in text


def test_dataset_file_lookup_lists_the_config_folder(tmp_path, monkeypatch):
    from pipeline.inputs.datasets import resolve_files

    attempts = _no_download(monkeypatch)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    config_dir = tmp_path / "analysis"
    config_dir.mkdir()
    with pytest.raises(InputFileError) as info:
        resolve_files(["nano_tt_v21.root"], config_dir)
    assert attempts == []
    text = str(info.value)
    looked = text.split("looked in:", 1)[1]
    # the config's own folder is looked in first, then the data folders
    assert looked.index(str(config_dir / "nano_tt_v21.root")) < looked.index(
        str(tmp_path / "cache" / "calibrew" / "data" / "nano_tt_v21.root"))
    # with the dataset's name, the error names its key
    with pytest.raises(InputFileError, match=r"dataset 'tt' \(datasets\.tt\.files\[1\]\): "
                                             r"data file 'nano_tt_v21\.root' not found"):
        resolve_files(["https://example.org/a.root", "nano_tt_v21.root"], config_dir, "tt")
    assert attempts == []
    # a file beside the config is found
    (config_dir / "mine.root").write_bytes(b"x")
    assert resolve_files(["mine.root"], config_dir) == [str(config_dir / "mine.root")]


def test_known_public_names_are_downloaded(tmp_path, monkeypatch):
    import pipeline.inputs.datafiles as samples

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("CALIBREW_DATA", str(tmp_path / "empty"))
    monkeypatch.setattr(samples, "PROJECT_ROOT", tmp_path / "nowhere" / "project")
    monkeypatch.delenv("CALIBREW_OFFLINE", raising=False)
    asked = []

    def fake_download(path, target):
        asked.append(str(path))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"x")

    monkeypatch.setattr(samples, "_download", fake_download)
    for name in ["nano_tt_v12.root", "jet_jerc_Summer22_V3.json.gz",
                 "pog/2022_Summer22/JME_jet_jerc.json.gz"]:
        assert find_data_file(name) == tmp_path / "cache" / "calibrew" / "data" / name
    assert asked == ["nano_tt_v12.root", "jet_jerc_Summer22_V3.json.gz",
                     "pog/2022_Summer22/JME_jet_jerc.json.gz"]
