"""Datasets, preprocessing into chunks, and finding the real sample files."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pipeline.errors import InputFileError
from pipeline.inputs.datafiles import find_data_file
from pipeline.inputs.datasets import (
    Dataset,
    count_entries,
    preprocess,
    preprocess_datasets,
    split_entries,
)
from pipeline.inputs.scanning import ScanTask, cached_scan


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
    import pipeline.inputs.scanning as module

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


#: real sample files of different shapes (entries, branches, NanoAOD versions)
SAMPLES = ["nano_tt_v12.root", "nano_dimuon.root", "nano_dy.root", "nano_tt_v15.root",
           "pfnano.root", "nanoAOD_2015_CMS_Open_Data_ttbar.root"]


def _samples() -> list[str]:
    return [str(find_data_file(name)) for name in SAMPLES]


def _datasets(files: list[str]) -> list[Dataset]:
    """Three datasets over ``files``: the first file is in two of them."""
    return [Dataset("a", files[:3], {}), Dataset("b", [files[0], *files[3:]], {}),
            Dataset("c", [files[2]], {})]


def _serial(function, items):
    return [function(item) for item in items]


class Counting:
    """A serial ``scan_map`` that records the files it is given."""

    def __init__(self):
        self.files: list[str] = []

    def __call__(self, function, items):
        self.files += [item.file for item in items]
        return [function(item) for item in items]


def _summary(datasets: list[Dataset]) -> list[tuple]:
    return [(d.name, d.files, d.chunks, d.form_digest) for d in datasets]


def _cold(monkeypatch, tmp_path, name: str) -> None:
    """An empty preprocessing cache of its own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / name))


def _threads(function, items):
    """A ``scan_map`` that opens every file on a thread, local ones too."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(function, items))


def test_parallel_scans_equal_serial_ones_file_by_file(tmp_path, monkeypatch):
    files = _samples()
    _cold(monkeypatch, tmp_path, "serial")
    serial = [preprocess(d, 30, scan_map=_serial) for d in _datasets(files)]
    serial_scans = [cached_scan(f) for f in files]
    assert len({s.form_digest for s in serial_scans}) == len(files)
    for scan_map in (_threads, None):  # on threads, and the default
        _cold(monkeypatch, tmp_path, str(scan_map))
        assert [cached_scan(f) for f in files] == [None] * len(files)
        parallel = preprocess_datasets(_datasets(files), 30, scan_map=scan_map)
        assert _summary(parallel) == _summary(serial)
        assert [d.entries for d in parallel] == [280, 610, 40]
        assert [cached_scan(f) for f in files] == serial_scans


def test_cached_and_repeated_files_are_not_scanned_again(tmp_path, monkeypatch):
    files = _samples()
    _cold(monkeypatch, tmp_path, "cache")
    first = Counting()
    datasets = preprocess_datasets(_datasets(files[:4]), 50, scan_map=first)
    assert first.files == files[:4]  # files[0] and files[2] are in two datasets: scanned once
    again = Counting()
    assert _summary(preprocess_datasets(_datasets(files[:4]), 50, scan_map=again)) == \
        _summary(datasets)
    assert again.files == []
    more = Counting()
    preprocess_datasets(_datasets(files), 50, scan_map=more)
    assert more.files == files[4:]


def _bad_inputs(tmp_path, tt_file) -> tuple[str, str]:
    truncated = tmp_path / "truncated.root"
    truncated.write_bytes(open(tt_file, "rb").read()[:5000])
    return str(truncated), str(tmp_path / "missing.root")


def test_bad_files_are_reported_and_removed(tmp_path, tt_file, data_file):
    truncated, missing = _bad_inputs(tmp_path, tt_file)
    reported: list[tuple[str, str, str]] = []
    datasets = preprocess_datasets(
        [Dataset("a", [tt_file, truncated, data_file], {}), Dataset("b", [missing], {}),
         Dataset("c", [truncated, tt_file], {})], 100,
        on_error=lambda d, f, err: reported.append((d.name, f, str(err))))
    assert [(name, file) for name, file, _ in reported] == [
        ("a", truncated), ("b", missing), ("c", truncated)]
    assert reported[0][2].startswith(f"cannot read input file {truncated}: ")
    assert reported[1][2] == f"input file not found: {missing}"
    assert [d.files for d in datasets] == [[tt_file, data_file], [], [tt_file]]
    assert [d.entries for d in datasets] == [240, 0, 200]
    assert datasets[1].form_digest is None and datasets[1].chunks == []
    # without on_error, the first bad file in the datasets' order is raised, named
    with pytest.raises(InputFileError, match=f"input file not found: {missing}"):
        preprocess_datasets([Dataset("b", [tt_file, missing], {}),
                             Dataset("a", [truncated], {})], 100)
    with pytest.raises(InputFileError, match=f"cannot read input file {truncated}"):
        preprocess(Dataset("a", [data_file, truncated, missing], {}), 100)


def test_remote_and_local_files_are_scanned_together(xrootd_server, tmp_path, monkeypatch,
                                                    tt_file, data_file):
    from pipeline.config.models import RemoteSpec

    _cold(monkeypatch, tmp_path, "remote")
    urls = [f"{xrootd_server}/{Path(f).name}" for f in (tt_file, data_file)]
    missing = f"{xrootd_server}/not_there.root"
    remote = RemoteSpec(timeout_s=5, retries=0)
    reported: list[tuple[str, str]] = []
    remote_sets = [Dataset("r", [*urls, missing], {}, remote=remote),
                   Dataset("l", [tt_file, data_file], {})]
    counting = Counting()
    done = preprocess_datasets(remote_sets, 50, lambda d, f, err: reported.append((f, str(err))),
                               counting)
    assert counting.files == [*urls, tt_file, data_file]  # the missing URL: its stat failed
    assert [f for f, _ in reported] == [missing] and missing in reported[0][1]
    assert done[0].files == urls
    assert [(c.start, c.stop) for c in done[0].chunks] == [
        (c.start, c.stop) for c in done[1].chunks]
    assert done[0].form_digest == done[1].form_digest
    # the remote files' entries are cached under the server's identity of them
    assert [cached_scan(u, remote=remote) for u in urls] == [
        cached_scan(f) for f in (tt_file, data_file)]


@pytest.mark.slow
def test_scans_on_a_dask_cluster_equal_local_ones(tmp_path, monkeypatch, tt_file):
    from distributed import Client, LocalCluster

    files = _samples()
    truncated, missing = _bad_inputs(tmp_path, tt_file)
    reported: list[tuple[str, str, str]] = []

    def datasets() -> list[Dataset]:
        return [*_datasets(files), Dataset("bad", [truncated, files[1], missing], {})]

    def record(dataset: Dataset, file: str, err: InputFileError) -> None:
        reported.append((dataset.name, file, str(err)))

    _cold(monkeypatch, tmp_path, "local")
    local = preprocess_datasets(datasets(), 40, record)
    _cold(monkeypatch, tmp_path, "cluster")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        sent: list[ScanTask] = []

        def on_cluster(function, items):
            sent.extend(items)
            return client.gather(client.map(function, items, pure=False))

        clustered = preprocess_datasets(datasets(), 40, record, on_cluster)
        assert {t.file for t in sent} == {*files, truncated}  # the missing one is not sent
    assert _summary(clustered) == _summary(local)
    half = len(reported) // 2
    assert reported[:half] == reported[half:]
    assert [(d, f) for d, f, _ in reported[:half]] == [("bad", truncated), ("bad", missing)]
    # the client wrote the cache entries of what the workers scanned
    assert all(cached_scan(f) is not None for f in files)


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
