"""Worker processes warmed up before their first chunk (pipeline/run/warm_up.py): numba's
compiler context started and the long-lived objects frozen out of the cyclic collector's
way, without freezing any chunk's arrays."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from pipeline.run.warm_up import PLUGIN_NAME, warm_workers


def _worker_state() -> dict:
    import gc

    from pipeline.corrections.walker import _walk

    return {"frozen": gc.get_freeze_count(), "walk_loaded": len(_walk.signatures)}


def test_workers_are_warm_before_their_first_task():
    """Warmed, each worker has numba's context started; frozen where it held nothing."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.wait_for_workers(1)
        (first,) = client.scheduler_info()["workers"]
        before = client.run(_worker_state)[first]
        held = client.scatter(list(range(10)))  # data the first worker holds: not frozen
        warm_workers(client)
        cluster.scale(2)  # a worker that joins later is warmed as it registers
        client.wait_for_workers(2)
        after = client.run(_worker_state)
        plugins = client.run(lambda dask_worker: sorted(dask_worker.plugins))
        del held
    assert before == {"frozen": 0, "walk_loaded": 0}
    assert after.pop(first) == {"frozen": 0, "walk_loaded": 1}
    ((_, joined),) = after.items()
    assert joined["walk_loaded"] == 1 and joined["frozen"] > 50_000
    assert all(PLUGIN_NAME in names for names in plugins.values())


PROCESS_CHECK = textwrap.dedent("""
    import gc, json, sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    from pipeline.run.warm_up import warm_process
    from pipeline.analysis.loading import load_parameters
    from pipeline.analysis.processor import ChunkProcessor
    from pipeline.graph import ChunkTask, build_dataset_graph
    from pipeline.inputs.nanoevents import read_eager
    from test_graph import dataset, make_config

    graph = build_dataset_graph(dataset({path!r}, 100), make_config(), load_parameters())
    task = ChunkTask(ChunkProcessor(graph.plan))
    first, again = warm_process(), warm_process()
    frozen, tracked = gc.get_freeze_count(), len(gc.get_objects())
    events = read_eager({path!r}, start=0, stop=100)
    vector = task(events)
    task.processor(events)  # the bare processor leaves its cycles to the collector
    del events
    collected = gc.collect()
    total = float(np.asarray(vector, dtype=float).sum())
    print(json.dumps({{"first": first, "again": again, "frozen": frozen, "tracked": tracked,
                      "collected": collected, "sum": total}}))
""")


def test_a_warm_process_freezes_once_and_no_chunk(tt_file, tmp_path):
    """Frozen once, most tracked objects with it; the reference cycles of a chunk computed
    afterwards are collected."""
    from pathlib import Path

    tests = str(Path(__file__).resolve().parent)
    script = PROCESS_CHECK.format(tests=tests, path=str(tt_file))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    state = json.loads(done.stdout.strip().splitlines()[-1])
    assert state["first"] is True and state["again"] is False
    assert state["frozen"] > 10 * state["tracked"]
    assert state["collected"] > 1000 and state["sum"] > 0  # the chunk's cycles: not frozen
