"""Worker processes made ready for chunks before their first one.

Each eager chunk task collects reference cycles before and after its chunk
(:class:`~pipeline.graph.ChunkTask`: a user's code may leave cycles holding a chunk's
arrays). A full collection walks
every object the collector tracks, and once numba's compiler context has started a process
holds about 300,000 of them (modules, numba's registries), almost all for its whole life: 0.1
s a collection, 0.2 s a chunk. :func:`warm_process` starts what every chunk needs (calibrew's
chunk machinery imported, numba's compiler context, by loading the compiled table walk), then
collects and freezes what lives (``gc.freeze``): later collections skip those objects, and so
does the interpreter's teardown.

Freezing is done once per process, when no chunk is in it: a frozen object is never collected,
so a chunk's arrays frozen with it would stay in memory. The runner warms its workers with a
worker plugin (:class:`WarmWorkers`), which runs before a worker takes any task (workers that
join later included); a process that computes chunks itself (Dask's synchronous scheduler)
calls :func:`warm_process` before its first chunk.

Examples
--------
The runner, on its client before it submits chunks::

    warm_workers(client)

>>> WarmWorkers.name
'calibrew-warm-up'
"""

from __future__ import annotations

import asyncio
import gc
import threading
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

PLUGIN_NAME = "calibrew-warm-up"

_LOCK = threading.Lock()
_warm = False


def warm_process(freeze: bool = True) -> bool:
    """Make this process ready for chunks, once: import calibrew's chunk machinery, start
    numba's compiler context, then (with ``freeze``) collect reference cycles and freeze the
    objects left: they live as long as the process. Freeze only when no chunk, nor any other
    data that will be dropped, is in this process. Returns whether this call did it
    (``False``: done before)."""
    global _warm
    with _LOCK:
        if _warm:
            return False
        # imported here, in the worker plugin's thread, not when the plugin is unpickled in
        # the worker's event loop: calibrew's chunk machinery, coffea's NanoEvents, numba
        import pipeline.graph  # noqa: F401
        from pipeline.corrections.walker import load_kernel  # numba, with the walk

        load_kernel()
        if freeze:
            gc.collect()
            gc.freeze()
        _warm = True
        return True


class WarmWorkers(WorkerPlugin):
    """Runs :func:`warm_process` on each worker before it takes a task (a worker that joins
    later is set up when it registers), in a thread: the worker's event loop goes on
    answering the scheduler meanwhile. A worker that already runs tasks or holds data
    (a cluster shared with other work) is warmed without freezing: what it holds now may
    be dropped later."""

    name = PLUGIN_NAME

    async def setup(self, worker: Any) -> None:
        idle = not worker.state.all_running_tasks and len(worker.data) == 0
        await asyncio.get_running_loop().run_in_executor(None, warm_process, idle)


def warm_workers(client: Any) -> None:
    """Warm the workers of ``client`` (and those that join later) with :class:`WarmWorkers`;
    returns once the workers there now are warm."""
    client.register_plugin(WarmWorkers())
