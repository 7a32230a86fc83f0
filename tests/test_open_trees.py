"""Input files opened once per process (pipeline.inputs.open_trees): chunks read through the
kept tree equal the eager read, a file is opened once for all its chunks and again when it
is replaced, and a failed read drops its tree (its retry opens the file again) with the
error still classified as unreadable input."""

from __future__ import annotations

import os
import shutil

import awkward as ak
import dask
import pytest
import uproot

from pipeline.inputs import open_trees
from pipeline.inputs.nanoevents import read_eager, read_lazy
from pipeline.inputs.open_trees import CachedTreeRead
from pipeline.run.execution import is_unreadable_input

STEPS = [[0, 40], [40, 90], [90, 150], [150, 200]]


@pytest.fixture()
def opens(monkeypatch) -> list[str]:
    """The files opened (``uproot.ReadOnlyFile``s made) from now on, in this process; the
    kept trees are forgotten before and after."""
    opened: list[str] = []
    make = uproot.ReadOnlyFile.__init__

    def counting(self, file_path, *args, **kwargs):
        opened.append(str(file_path))
        make(self, file_path, *args, **kwargs)

    open_trees.forget_all()
    monkeypatch.setattr(uproot.ReadOnlyFile, "__init__", counting)
    yield opened
    open_trees.forget_all()


def _jets(path: str, steps: list[list[int]]):
    return read_lazy({path: {"object_path": "Events", "steps": steps}}).Jet


def _compute(lazy, scheduler: str = "sync") -> ak.Array:
    return ak.concatenate(dask.compute(*lazy.to_delayed(), scheduler=scheduler))


def test_the_reader_is_wrapped(tt_file):
    """uproot's per-chunk read function is recognised (a change of uproot must fail here,
    not silently open every chunk's file again)."""
    events = read_lazy({tt_file: {"object_path": "Events", "steps": STEPS}})
    (layer,) = (lay for lay in events.dask.layers.values() if hasattr(lay, "io_func"))
    assert isinstance(layer.io_func, CachedTreeRead), (
        f"uproot {uproot.__version__}: its read function is no longer wrapped")
    assert CachedTreeRead.wrap(layer.io_func) is layer.io_func  # not wrapped twice


@pytest.mark.parametrize("scheduler", ["sync", "threads"])
def test_chunks_read_once_opened_equal_the_eager_read(tt_file, tt_events, opens, scheduler):
    jets = _jets(tt_file, STEPS)
    opens.clear()  # the client opens the first file for the form
    lazy = _compute(jets[["pt", "eta", "mass", "genJetIdx"]], scheduler)
    assert opens == [tt_file], "the file is opened once for all its chunks"
    assert open_trees.kept() == 1
    eager = tt_events.Jet[["pt", "eta", "mass", "genJetIdx"]]
    assert ak.array_equal(lazy, eager)
    assert ak.to_list(ak.num(lazy)) == ak.to_list(ak.num(eager))


def test_without_the_cache_every_chunk_opens_its_file(tt_file, tt_events, opens, monkeypatch):
    monkeypatch.setattr(open_trees, "MAX_OPEN", 0)
    jets = _jets(tt_file, STEPS)
    opens.clear()
    assert ak.array_equal(_compute(jets.pt), tt_events.Jet.pt)
    assert opens == [tt_file] * len(STEPS) and open_trees.kept() == 0


def test_a_replaced_file_is_opened_again(tt_file, data_file, tmp_path, opens):
    copy = str(tmp_path / "events.root")
    shutil.copy(tt_file, copy)
    jets = _jets(copy, [[0, 40]])  # the data file has 40 events
    opens.clear()
    assert ak.array_equal(_compute(jets.pt), read_eager(tt_file, stop=40).Jet.pt)
    shutil.copy(data_file, copy)  # the same branches read, other events and branch titles
    assert ak.array_equal(_compute(jets.pt), read_eager(data_file, stop=40).Jet.pt,
                          check_parameters=False)
    assert opens.count(copy) == 2 and open_trees.kept() == 1  # the old tree is dropped


def _basket_middle(path: str) -> int:
    """Where the middle of the first ``Jet_pt`` basket of ``path`` is."""
    with uproot.open(path) as handle:
        branch = handle["Events"]["Jet_pt"]
        return int(branch.member("fBasketSeek")[0]) + int(branch.member("fBasketBytes")[0]) // 2


def _overwrite(path: str, seek: int, payload: bytes | None = None) -> bytes:
    """Overwrite ``path`` at ``seek`` in place (its size and modification time kept) with
    ``payload``, or with garbage; returns the bytes it replaced."""
    stat = os.stat(path)
    with open(path, "r+b") as fh:
        fh.seek(seek)
        old = fh.read(1024)
        fh.seek(seek)
        fh.write(payload if payload is not None else bytes(range(256)) * 4)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    return old


def test_a_failed_read_drops_the_tree_and_its_retry_opens_the_file(tt_file, tmp_path, opens):
    copy = str(tmp_path / "events.root")
    shutil.copy(tt_file, copy)
    identity = open_trees.file_identity(copy, {})
    jets = _jets(copy, [[0, 50]])
    seek = _basket_middle(copy)
    opens.clear()
    good = _compute(jets.pt)
    assert open_trees.kept() == 1
    original = _overwrite(copy, seek)  # the kept tree now reads a corrupted basket
    assert open_trees.file_identity(copy, {}) == identity
    with pytest.raises(Exception) as failure:
        _compute(jets.pt)
    assert is_unreadable_input(failure.value), failure.value
    assert open_trees.kept() == 0 and opens == [copy]
    _overwrite(copy, seek, original)  # repaired: the retry opens the file again
    assert ak.array_equal(_compute(jets.pt), good)
    assert opens == [copy, copy] and open_trees.kept() == 1


def test_a_missing_file_is_an_error_of_uproot(tmp_path, tt_file, opens):
    copy = str(tmp_path / "events.root")
    shutil.copy(tt_file, copy)
    jets = _jets(copy, [[0, 50]])
    os.remove(copy)
    with pytest.raises(FileNotFoundError) as failure:
        _compute(jets.pt)
    assert is_unreadable_input(failure.value) and open_trees.kept() == 0


def test_entries_beyond_the_file_are_an_error_of_uproot(tt_file, opens):
    jets = _jets(tt_file, [[0, 50], [150, 10_000]])
    with pytest.raises(ValueError, match="out of bounds") as failure:
        _compute(jets.pt)
    assert is_unreadable_input(failure.value)


def test_at_most_max_open_trees_are_kept(tt_file, tmp_path, opens, monkeypatch):
    monkeypatch.setattr(open_trees, "MAX_OPEN", 2)
    copies = []
    for name in "abc":
        copies.append(str(tmp_path / f"{name}.root"))
        shutil.copy(tt_file, copies[-1])
    for copy in [*copies, copies[-1]]:
        _compute(_jets(copy, [[0, 20]]).pt)
    assert open_trees.kept() == 2
    opens.clear()
    _compute(_jets(copies[0], [[0, 20]]).pt)  # the least recently used was dropped
    assert opens.count(copies[0]) == 2  # for the form, then for the chunk


def test_remote_chunks_read_once_opened_equal_the_local_read(xrootd_server, tt_file,
                                                               tt_events, opens):
    url = f"{xrootd_server}/{os.path.basename(tt_file)}"
    assert open_trees.file_identity(url, {"timeout": 10}) is not None
    events = read_lazy({url: {"object_path": "Events", "steps": STEPS}}, {"timeout": 10})
    opens.clear()
    assert ak.array_equal(_compute(events.Jet.pt), tt_events.Jet.pt)
    assert opens == [url] and open_trees.kept() == 1
