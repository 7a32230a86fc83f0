"""Reduce a dataset's chunks on the workers, along the sum tree, keeping them resumable.

A chunk task's histogram vector never travels to the client. In the chunk's task
(:func:`settling`), :func:`settle_chunk` saves it as the chunk's checkpoint (atomically, in
the output directory: a shared filesystem on batch) and hands the client only a receipt.
As the chunks of a group (the first level of the tree, ``SUM_FAN_IN`` chunks in order) are
all settled, the client submits :func:`reduce_group`: a worker sums their checkpoints,
saves the sum in their place and keeps it in memory for the next level; the levels above are
summed by :func:`~pipeline.graph.sum_vectors` on the workers as their children are
submitted (:class:`ReductionTree`). The client receives one vector per dataset: the root's.

The additions are those of :meth:`~pipeline.graph.DatasetGraph.total`, in the same order, so
the sums are the same bits whatever the workers, the retries or the resumes. A chunk left
out (an unreadable file, with ``on_bad_file="skip"``) is a ``None`` in its group's sum, and
its group is not replaced by its sum: a later run computes only that chunk.

Examples
--------
>>> import numpy as np, tempfile
>>> from pathlib import Path
>>> store = ChunkCheckpoints(Path(tempfile.mkdtemp()), {"config": "abc"})
>>> store.open()
[]
>>> for index, vector in enumerate([np.array([1.0, 2.0]), np.array([3.0, 4.0])]):
...     settle_chunk(vector, store, index, "tt")  # the chunk's checkpoint, saved
>>> reduce_group(store, 0, 2, frozenset(), "tt")
array([4., 6.])
>>> store.open()  # the two chunks are kept as their sum
[0, 1]
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from dask._task_spec import Task
from dask.delayed import Delayed

from pipeline.errors import ChunkFault, OutputError
from pipeline.graph import SUM_FAN_IN, low_level_graph, one_layer, sum_vectors, tree_levels
from pipeline.run.checkpoints import ChunkCheckpoints

REDUCE_PREFIX = "calibrew-reduce"
#: the reduction runs before more chunks: its nodes free the workers' memory
REDUCE_PRIORITY = 10


def settle_chunk(result: Any, store: ChunkCheckpoints, index: int,
                 dataset: str) -> ChunkFault | None:
    """On the worker: save chunk ``index``'s vector ``result`` as its checkpoint; return
    ``None`` (the receipt), or the chunk's :class:`ChunkFault` as it is (nothing saved).

    Raises :class:`OutputError` naming the dataset and chunk when the checkpoint cannot be
    written (a full or read-only disk).
    """
    if isinstance(result, ChunkFault):
        return result
    try:
        store.save(index, result)
    except OutputError as err:
        raise OutputError(f"dataset {dataset!r}: cannot save finished chunk {index}: {err}; "
                          "the chunks saved before are kept: rerun the same command to "
                          "resume once the output directory can be written") from None
    return None


def settling(tasks: Sequence[Delayed], indices: Sequence[int], store: ChunkCheckpoints,
             dataset: str) -> list[Delayed]:
    """The chunk tasks ``tasks`` (delayed, of one graph; chunks ``indices`` of ``dataset``)
    each fused with :func:`settle_chunk`: one task per chunk, under the chunk task's own key,
    that computes the chunk, saves its checkpoint in ``store`` and returns the receipt.

    One scheduler task per chunk instead of two: the scheduler (in the client's process on
    a local cluster and under dask-jobqueue) handles half as many.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from dask._task_spec import Task
    >>> from dask.delayed import Delayed
    >>> store = ChunkCheckpoints(Path(tempfile.mkdtemp()), {"config": "abc"})
    >>> _ = store.open()
    >>> chunk = Delayed(("chunk", 3), {("chunk", 3): Task(("chunk", 3), np.ones, 2)})
    >>> (task,) = settling([chunk], [3], store, "tt")
    >>> task.key, task.compute(scheduler="sync"), store.load(3)
    (('chunk', 3), None, array([1., 1.]))
    """
    graph = low_level_graph(tasks)
    name = f"{REDUCE_PREFIX}-settle-{uuid.uuid4().hex}"
    for task, index in zip(tasks, indices, strict=True):
        spec = graph[task.key]
        chunk = Task(None, spec.func, *spec.args, **spec.kwargs)
        graph[task.key] = Task(task.key, settle_chunk, chunk, store, index, dataset,
                               _data_producer=spec.data_producer)
    return one_layer(graph, [task.key for task in tasks], name)


def reduce_group(store: ChunkCheckpoints, first: int, stop: int, left_out: frozenset[int],
                 dataset: str) -> np.ndarray | None:
    """On a worker: the sum of chunks ``[first, stop)`` from their checkpoints (those in
    ``left_out`` are left out), in order. With none left out, the sum is saved in place of
    the chunks' files (an earlier run's saved sum is taken as it is).

    Raises :class:`OutputError` naming the dataset and the chunk whose checkpoint is
    missing or cannot be read.
    """
    saved = store.load_group(first, stop)
    if saved is not None:
        total: np.ndarray | None = saved
    else:
        total = sum_vectors(None if i in left_out else _load(store, i, dataset)
                            for i in range(first, stop))
        if left_out or total is None:
            return total
        store.save_group(first, stop, total)
    for index in range(first, stop):
        store.remove(index)
    return total


def _load(store: ChunkCheckpoints, index: int, dataset: str) -> np.ndarray:
    try:
        return store.load(index)
    except (OSError, ValueError) as err:
        raise OutputError(f"dataset {dataset!r}: the checkpoint of finished chunk {index} "
                          f"cannot be read ({type(err).__name__}: {err}); rerun with "
                          "--fresh to compute the dataset again") from None


class ReductionTree:
    """The client's bookkeeping of one dataset's reduction: which chunks are settled, and
    the futures of the tree's nodes not yet handed to their parent.

    ``submit(function, *args, key=...)`` submits a task (``client.submit`` with the run's
    retries); :meth:`settle` returns the futures of the root when it is submitted (the only
    node whose outcome the client watches: an error below it reaches it).
    """

    def __init__(self, submit: Any, store: ChunkCheckpoints, n_chunks: int, dataset: str,
                 settled: Iterable[int] = ()) -> None:
        self._submit = submit
        self.store = store
        self.dataset = dataset
        self.sizes = tree_levels(n_chunks)
        self._token = uuid.uuid4().hex[:8]
        self._waiting = {g: set(range(g * SUM_FAN_IN, min((g + 1) * SUM_FAN_IN, n_chunks)))
                         for g in range(self.sizes[1])} if n_chunks else {}
        self._left_out: set[int] = set()
        self._nodes: dict[tuple[int, int], Any] = {}
        #: the future of the root (the dataset's vector); ``None`` until it is submitted
        self.root: Any = None
        for index in settled:
            self.settle(index)

    @property
    def complete(self) -> bool:
        """Whether every chunk is settled (the root is then submitted)."""
        return not self._waiting

    def settle(self, index: int, left_out: bool = False) -> list[Any]:
        """Chunk ``index`` is saved (or, ``left_out``, will never be); submit what became
        ready. Returns ``[root future]`` when the root was submitted, else ``[]``."""
        group = index // SUM_FAN_IN
        if left_out:
            self._left_out.add(index)
        waiting = self._waiting[group]
        waiting.discard(index)
        if waiting:
            return []
        del self._waiting[group]
        first, stop = group * SUM_FAN_IN, min((group + 1) * SUM_FAN_IN, self.sizes[0])
        future = self._submit(reduce_group, self.store, first, stop,
                              frozenset(self._left_out & set(range(first, stop))),
                              self.dataset, key=self._key(1, group))
        return self._add(1, group, future)

    def _add(self, level: int, index: int, future: Any) -> list[Any]:
        if level == len(self.sizes) - 1:
            self.root = future
            return [future]
        self._nodes[(level, index)] = future
        parent = index // SUM_FAN_IN
        children = range(parent * SUM_FAN_IN,
                         min((parent + 1) * SUM_FAN_IN, self.sizes[level]))
        if not all((level, i) in self._nodes for i in children):
            return []
        parts = [self._nodes.pop((level, i)) for i in children]
        return self._add(level + 1, parent,
                         self._submit(sum_vectors, parts, key=self._key(level + 1, parent)))

    def _key(self, level: int, index: int) -> str:
        return f"{REDUCE_PREFIX}-{self.dataset}-{self._token}-L{level}-{index}"
