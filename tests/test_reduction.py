"""The reduction on the workers: chunk vectors saved and summed there, along the tree.

The sums are checked bit for bit against a tree sum written plainly here; a synthetic
analysis with tens of MB of histograms per chunk and a thousand chunks checks that the
client receives one vector per dataset, whatever the number of chunks.
"""

from __future__ import annotations

import json
import pickle
import random

import numpy as np
import pytest
from demo_job import write_large_histogram_job
from distributed import Client, Future, LocalCluster

from pipeline.graph import SUM_FAN_IN
from pipeline.inputs.datafiles import find_data_file
from pipeline.run.checkpoints import ChunkCheckpoints, saved_chunks
from pipeline.run.reduction import ReductionTree, settle_chunk
from pipeline.run.runner import run_job


def plain_tree_sum(vectors: list[np.ndarray | None]) -> np.ndarray | None:
    """Groups of eight in order, level by level; ``None`` (a chunk left out) is skipped."""
    level = list(vectors)
    while True:
        sums = []
        for i in range(0, len(level), SUM_FAN_IN):
            parts = [v for v in level[i:i + SUM_FAN_IN] if v is not None]
            total = None
            for part in parts:
                total = part.copy() if total is None else total + part
            sums.append(total)
        level = sums
        if len(level) == 1:
            return level[0]


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        yield client


def _tree(client: Client, store: ChunkCheckpoints, n: int, resumed=()) -> ReductionTree:
    def submit(function, *args, key):
        return client.submit(function, *args, key=key)
    return ReductionTree(submit, store, n, "tt", resumed)


@pytest.mark.parametrize("n", [1, 8, 21, 70])
def test_worker_sums_equal_the_tree_sum_bit_for_bit(client, tmp_path, n):
    rng = np.random.default_rng(n)
    vectors = [rng.normal(size=50) * 10.0 ** rng.integers(-8, 8, size=50) for _ in range(n)]
    left_out = set(rng.choice(n, size=n // 7, replace=False).tolist()) if n > 7 else set()
    resumed = [i for i in range(0, n, 5) if i not in left_out]
    store = ChunkCheckpoints(tmp_path / ".chunks", {"run": n})
    store.open()
    for i in resumed:  # saved by an earlier run
        settle_chunk(vectors[i], store, i, "tt")
    tree = _tree(client, store, n, resumed)
    order = [i for i in range(n) if i not in resumed]
    random.Random(n).shuffle(order)  # chunks finish in any order
    for i in order:
        if i not in left_out:
            assert settle_chunk(vectors[i], store, i, "tt") is None
        tree.settle(i, left_out=i in left_out)
    assert tree.complete and tree.root is not None
    expected = plain_tree_sum([None if i in left_out else v for i, v in enumerate(vectors)])
    np.testing.assert_array_equal(tree.root.result(), expected)
    assert tree.root.result().tobytes() == expected.tobytes()
    # each group without a chunk left out is kept as its sum, the others chunk by chunk
    groups = {i // SUM_FAN_IN for i in left_out}
    names = sorted(p.name for p in store.folder.glob("*.npz"))
    for g in range(-(-n // SUM_FAN_IN)):
        first, stop = g * SUM_FAN_IN, min((g + 1) * SUM_FAN_IN, n)
        assert (f"group-{first:05d}-{stop:05d}.npz" in names) == (g not in groups)
    assert saved_chunks(store.folder) == sorted(set(range(n)) - left_out)
    assert ChunkCheckpoints(store.folder, {"run": n}).open() == sorted(set(range(n)) - left_out)


def test_a_resumed_group_is_read_from_its_sum(client, tmp_path):
    """An earlier run summed group 0 and died before removing its chunks' files."""
    vectors = [np.full(4, float(i + 1)) for i in range(10)]
    store = ChunkCheckpoints(tmp_path / ".chunks", {"run": 1})
    store.open()
    store.save_group(0, 8, plain_tree_sum(vectors[:8]))
    for i in (3, 8, 9):
        store.save(i, vectors[i])
    done = store.open()
    assert done == list(range(10))
    tree = _tree(client, store, 10, done)
    np.testing.assert_array_equal(tree.root.result(), plain_tree_sum(vectors))
    assert sorted(p.name for p in store.folder.glob("*.npz")) == [
        "group-00000-00008.npz", "group-00008-00010.npz"]


def test_an_unreadable_checkpoint_names_the_chunk(client, tmp_path):
    store = ChunkCheckpoints(tmp_path / ".chunks", {"run": 1})
    store.open()
    settle_chunk(np.ones(3), store, 0, "tt")
    (store.folder / "chunk-00001.npz").write_bytes(b"not a vector")
    tree = _tree(client, store, 2, [0, 1])
    with pytest.raises(Exception, match=r"dataset 'tt': the checkpoint of finished chunk 1 "
                                        r"cannot be read"):
        tree.root.result()


BINS = 1500  # a 1502 x 1502 histogram with its variances: 36 MB per chunk


def test_client_receives_one_vector_per_dataset(tmp_path, monkeypatch):
    """Five datasets of 40 chunks of five events each, 36 MB of histograms each: the client
    fetches small receipts and one vector per dataset; the sums equal a run in one chunk
    per dataset bit for bit."""
    source = find_data_file("nano_tt_v12.root")
    files = []
    for i in range(5):
        link = tmp_path / f"tt_{i}.root"
        link.symlink_to(source)
        files.append(str(link))
    fetched: list[int] = []
    original = Future.result

    def recording(self, *args, **kwargs):
        value = original(self, *args, **kwargs)
        fetched.append(len(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)))
        return value

    monkeypatch.setattr(Future, "result", recording)
    many = run_job(write_large_histogram_job(tmp_path, "many", files, 5, BINS), show_progress=False)
    monkeypatch.setattr(Future, "result", original)
    report = json.loads((tmp_path / "many" / "report.json").read_text())
    assert sum(d["chunks_computed"] for d in report["datasets"].values()) == 200
    vector_bytes = 2 * (BINS + 2) ** 2 * 8
    large = [size for size in fetched if size > vector_bytes // 2]
    assert len(large) == len(files), sorted(fetched)[-10:]
    assert max(size for size in fetched if size not in large) < 10_000  # receipts

    few = run_job(write_large_histogram_job(tmp_path, "few", files, 200, BINS), show_progress=False)
    for dataset in few.histograms:
        big, reference = many.histograms[dataset], few.histograms[dataset]
        assert reference["jet_eta_pt"].sum().value > 0
        for name in reference:
            assert (big[name].view(flow=True).tobytes()
                    == reference[name].view(flow=True).tobytes()), (dataset, name)
        assert not (tmp_path / "many" / dataset / ".chunks").exists()  # removed once written
