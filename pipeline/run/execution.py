"""Compute the chunks of a run on a Dask client: resume, retries, bad files, progress.

Each chunk task is submitted on its own (with ``retries``). The chunk task itself saves its
histogram vector as a checkpoint (:mod:`pipeline.run.checkpoints`), so an interrupted run
(Ctrl-C, a killed client, a lost worker) resumes without redoing it, and
the workers sum the chunks along the tree (:mod:`pipeline.run.reduction`): the client
receives a small receipt per chunk and one vector per dataset. The chunks finished by an
earlier run of the same identity are not submitted at all.

A chunk whose analysis fails deterministically (an expression's, a calibrator's or a table
part's error, raised by calibrew on purpose) is not retried: the chunk task returns the
error (:class:`~pipeline.errors.ChunkFault`) and the run stops with its message, naming the
config key or calibrator, the dataset, the chunk's file and entries.

A chunk that fails after its retries is classified:

- its file cannot be opened or read (the error was raised inside the readers: uproot,
  pyarrow, fsspec, the decompressors, or is an :class:`UnreadableInputError`): with
  ``on_bad_file="fail"`` the run stops, with ``"skip"`` the chunk is left out of the
  outputs. Either way it is printed and reported (file, entries, error);
- anything else (a worker that died on it again and again, an error outside calibrew's
  checks) stops the run: skipping it would silently change the analysis.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from rich.markup import escape

from pipeline.errors import (
    READER_MODULES,
    CalibrewError,
    ChunkError,
    ChunkFault,
    UnreadableInputError,
    raised_by_reader,
    with_context,
)
from pipeline.graph import DatasetGraph
from pipeline.run.checkpoints import ChunkCheckpoints
from pipeline.run.progress import (
    ChunkAttemptsPlugin,
    ChunkCompute,
    ProgressBoard,
    chunk_attempts,
    chunk_computes,
)
from pipeline.run.reduction import REDUCE_PRIORITY, ReductionTree, settling
from pipeline.run.warm_up import warm_workers

OnBadFile = Literal["fail", "skip"]
__all__ = ["READER_MODULES", "ChunkFailure", "ChunkRates", "ComputeTimes", "DatasetRun",
           "OnBadFile", "compute_chunks", "is_unreadable_input"]


@dataclass
class ChunkFailure:
    """A chunk that could not be processed."""

    dataset: str
    chunk: int
    file: str
    start: int
    stop: int
    error: str
    bad_file: bool
    attempts: int = 0

    def describe(self) -> str:
        what = "unreadable input" if self.bad_file else "processing error"
        return (f"{self.dataset}: chunk {self.chunk} ({self.file}, entries "
                f"[{self.start}, {self.stop})) failed after {self.attempts} attempt(s), "
                f"{what}: {self.error}")

    def as_dict(self) -> dict[str, Any]:
        return {"chunk": self.chunk, "file": self.file, "entries": [self.start, self.stop],
                "error": self.error, "unreadable_input": self.bad_file,
                "attempts": self.attempts}


@dataclass
class DatasetRun:
    """What the computation of one dataset did."""

    graph: DatasetGraph
    checkpoints: ChunkCheckpoints
    resumed: list[int]
    computed: list[int] = field(default_factory=list)
    failed: list[ChunkFailure] = field(default_factory=list)
    retried: dict[int, int] = field(default_factory=dict)  # chunk -> attempts
    events_computed: int = 0
    seconds: float = 0.0
    #: the future of the dataset's summed vector, on a worker (:mod:`pipeline.run.reduction`)
    total: Any = None

    @property
    def name(self) -> str:
        return self.graph.dataset.name

    @property
    def failed_chunks(self) -> set[int]:
        return {f.chunk for f in self.failed}

    def vector(self) -> np.ndarray:
        """The dataset's histogram vector: the sum of its chunks, fetched from the worker
        that summed them (zeros when every chunk was left out)."""
        vector = self.total.result() if self.total is not None else None
        self.total = None  # the worker may forget it
        return vector if vector is not None else np.zeros(self.graph.plan.vector_size)

    def report(self) -> dict[str, Any]:
        return {
            "chunks_resumed": len(self.resumed),
            "chunks_computed": len(self.computed),
            "chunks_failed": [f.as_dict() for f in self.failed],
            "chunks_retried": [{"chunk": c, "attempts": a}
                               for c, a in sorted(self.retried.items())],
            "events_computed": self.events_computed,
            "compute_s": self.seconds,
            "events_per_s": self.events_computed / self.seconds if self.seconds else None,
        }


def is_unreadable_input(err: BaseException) -> bool:
    """Whether ``err`` says a file cannot be opened or read (not an analysis error): an
    :class:`UnreadableInputError`, or an error raised inside a reader (its traceback passes
    through uproot, pyarrow, fsspec or a decompressor).

    Examples
    --------
    >>> import awkward as ak
    >>> try:
    ...     ak.Array([[1.0, 2.0], [3.0]]) * ak.Array([[1.0], [2.0, 3.0]])
    ... except ValueError as err:
    ...     is_unreadable_input(err)  # an analysis' broadcasting error
    False
    """
    if isinstance(err, UnreadableInputError):
        return True
    if isinstance(err, CalibrewError):
        return False
    return raised_by_reader(err)


def _error_text(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}".strip()


@dataclass
class ComputeTimes:
    """When the computation's first chunk finished (seconds from its start; ``None`` when
    no chunk was computed), and each chunk task the workers computed with its number of
    events (``chunks`` is ``None`` when the scheduler cannot record them)."""

    first_chunk_s: float | None = None
    chunks: list[ChunkCompute] | None = None
    events: dict[Any, int] = field(default_factory=dict)

    @property
    def chunk_task_s(self) -> float | None:
        """The seconds the workers spent computing chunk tasks."""
        return None if self.chunks is None else sum(c.seconds for c in self.chunks)

    def rates(self) -> ChunkRates | None:
        """Each worker's first chunk (its warm-up: payloads, compiled corrections) apart from
        the chunks after it (the steady rate); ``None`` when nothing was recorded.

        Examples
        --------
        >>> chunk = lambda i, worker, start: ChunkCompute(("c", i), worker, start, 2.0 - i % 2)
        >>> times = ComputeTimes(chunks=[chunk(0, "a", 0), chunk(1, "a", 2), chunk(2, "b", 0),
        ...                              chunk(3, "b", 2)],
        ...                      events={("c", i): 100 for i in range(4)})
        >>> times.rates()
        ChunkRates(first_chunk_s=2.0, steady_events_per_s=100.0, steady_chunks=2, workers=2)
        """
        if not self.chunks:
            return None
        by_worker: dict[str, list[ChunkCompute]] = {}
        for chunk in sorted(self.chunks, key=lambda c: c.start):
            by_worker.setdefault(chunk.worker, []).append(chunk)
        firsts = [chunks[0].seconds for chunks in by_worker.values()]
        steady = [c for chunks in by_worker.values() for c in chunks[1:]]
        seconds = sum(c.seconds for c in steady)
        events = sum(self.events.get(c.key, 0) for c in steady)
        return ChunkRates(first_chunk_s=sum(firsts) / len(firsts),
                          steady_events_per_s=events / seconds if steady and seconds else None,
                          steady_chunks=len(steady), workers=len(by_worker))


@dataclass(frozen=True)
class ChunkRates:
    """A run's rates: the mean time of each worker's first chunk (warm-up included) and the
    events per second of one worker over the chunks after its first (``None``: no worker
    computed a second chunk)."""

    first_chunk_s: float
    steady_events_per_s: float | None
    steady_chunks: int
    workers: int

    def describe(self) -> str:
        """The rates in words, for the run's last line.

        Examples
        --------
        >>> ChunkRates(12.0, None, 0, 2).describe()
        'first chunk per worker 12.0 s (warm-up included); too few chunks for a steady rate'
        """
        first = f"first chunk per worker {self.first_chunk_s:.1f} s (warm-up included)"
        if self.steady_events_per_s is None:
            return f"{first}; too few chunks for a steady rate"
        return (f"{first}, then {self.steady_events_per_s:,.0f} events/s per worker "
                f"({self.steady_chunks} chunks)")

    def as_dict(self) -> dict[str, Any]:
        return {"first_chunk_per_worker_s": self.first_chunk_s,
                "steady_events_per_s_per_worker": self.steady_events_per_s,
                "steady_chunks": self.steady_chunks, "workers": self.workers}


def compute_chunks(client: Any, runs: Sequence[DatasetRun], retries: int,
                   on_bad_file: OnBadFile, board: ProgressBoard) -> ComputeTimes:
    """Compute every chunk of ``runs`` not yet checkpointed, and sum each dataset's chunks,
    on the workers (each run's :attr:`DatasetRun.total` is then the future of its vector).

    Raises :class:`ChunkError` when a chunk fails and the run must stop, or the chunk's own
    :class:`CalibrewError` (naming the config key, calibrator or column at fault); the
    other chunks are cancelled, those finished stay checkpointed.
    """
    from distributed import as_completed

    try:
        client.register_plugin(ChunkAttemptsPlugin())
    except Exception as problem:  # a scheduler started elsewhere may not import calibrew
        board.print(f"[yellow]note:[/] retried chunks cannot be counted on this scheduler "
                    f"({_error_text(problem)})")
    try:
        warm_workers(client)
    except Exception as problem:  # the first chunk of each worker then warms it
        board.print(f"[yellow]note:[/] the workers could not be warmed up before their first "
                    f"chunk ({_error_text(problem)})")

    def submit(function: Any, *args: Any, key: str) -> Any:
        return client.submit(function, *args, key=key, retries=retries,
                             priority=REDUCE_PRIORITY)

    where: dict[Any, tuple[DatasetRun, int]] = {}  # chunk task key -> its dataset, index
    tasks: list[Any] = []
    trees: dict[str, ReductionTree] = {}
    for run in runs:
        trees[run.name] = ReductionTree(submit, run.checkpoints, len(run.graph.dataset.chunks),
                                        run.name, run.resumed)
        done = set(run.resumed)
        chunks = run.graph.chunk_tasks()
        todo = [index for index in range(len(chunks)) if index not in done]
        if todo:
            for index, task in zip(todo, settling([chunks[i] for i in todo], todo,
                                                  run.checkpoints, run.name), strict=True):
                where[task.key] = (run, index)
                tasks.append(task)
    times = ComputeTimes(events={key: run.graph.dataset.chunks[index].entries
                                 for key, (run, index) in where.items()})
    start = time.perf_counter()
    sums = {t.root.key: name for name, t in trees.items() if t.root is not None}  # resumed
    # the chunk tasks are optimised already (DatasetGraph.chunk_tasks): kept whole, so that
    # their keys (counted by the attempts plugin) stay theirs
    computed = client.compute(tasks, retries=retries, optimize_graph=False) if tasks else []
    futures = computed + [t.root for t in trees.values() if t.root is not None]
    pending = set(futures)
    completed = as_completed(futures)
    try:
        for future in completed:
            pending.discard(future)
            if future.key in sums:  # a dataset's sum
                _check_total(future, sums[future.key])
                continue
            run, index = where[future.key]
            chunk = run.graph.dataset.chunks[index]
            result = future.result() if future.status == "finished" else None
            if isinstance(result, ChunkFault):  # the analysis' fault: not retried
                err = result.error
                run.failed.append(ChunkFailure(run.name, index, chunk.file, chunk.start,
                                               chunk.stop, _error_text(err), False, 1))
                board.advance(run.name, 0, failed=True)
                raise with_context(err, f"dataset {run.name!r}, file {chunk.file}, entries "
                                        f"[{chunk.start}, {chunk.stop}) (chunk {index}); "
                                        "not retried: it would fail the same way "
                                        "again") from None
            if future.status == "finished":
                if times.first_chunk_s is None:
                    times.first_chunk_s = time.perf_counter() - start
                run.computed.append(index)
                run.events_computed += chunk.entries
                board.advance(run.name, chunk.entries)
                submitted = trees[run.name].settle(index)
            elif future.status == "cancelled":
                raise ChunkError(f"{run.name}: chunk {index} ({chunk.file}) was cancelled by "
                                 "the scheduler (lost connection or restart); the chunks "
                                 "finished are kept: rerun the same command to resume")
            else:
                err = future.exception()
                failure = ChunkFailure(run.name, index, chunk.file, chunk.start, chunk.stop,
                                       _error_text(err), is_unreadable_input(err))
                failure.attempts = _attempts_of(client, future.key, retries)
                run.failed.append(failure)
                board.advance(run.name, 0, failed=True)
                if isinstance(err, CalibrewError) and not failure.bad_file:
                    # its own message names the key; where it happened is added
                    raise with_context(err, f"dataset {run.name!r}, file {chunk.file}, "
                                            f"entries [{chunk.start}, {chunk.stop}) "
                                            f"(chunk {index})") from None
                if on_bad_file == "fail" or not failure.bad_file:
                    hint = ("; or use --on-bad-file skip to leave it out"
                            if failure.bad_file else "")
                    raise ChunkError(f"{failure.describe()}\nThe chunks finished are kept: "
                                     f"rerun the same command to resume{hint}.") from err
                board.print(f"[yellow]skipped[/] {escape(failure.describe())}")
                submitted = trees[run.name].settle(index, left_out=True)
            run.seconds = time.perf_counter() - start
            sums.update((f.key, run.name) for f in submitted)
            pending.update(submitted)
            completed.update(submitted)
            future.release()
    finally:
        if pending:
            client.cancel(list(pending))
        _record_attempts(client, where)
    for run in runs:
        run.total = trees[run.name].root
    computes = chunk_computes(client)  # the chunk tasks only: not their shared argument
    times.chunks = None if computes is None else [c for c in computes if c.key in where]
    return times


def _check_total(future: Any, name: str) -> None:
    """Raise the error of dataset ``name``'s sum (a checkpoint that cannot be read or
    written, a worker lost again and again)."""
    if future.status == "finished":
        return
    if future.status == "cancelled":
        raise ChunkError(f"dataset {name!r}: the sum of its chunks was cancelled by the "
                         "scheduler (lost connection or restart); the chunks finished are "
                         "kept: rerun the same command to resume")
    err = future.exception()
    if isinstance(err, CalibrewError):
        raise err
    raise ChunkError(f"dataset {name!r}: the sum of its chunks failed: {_error_text(err)}; "
                     "the chunks finished are kept: rerun the same command to "
                     "resume") from err


def _attempts_of(client: Any, key: Any, retries: int) -> int:
    attempts = chunk_attempts(client)
    return attempts.get(key, retries + 1) if isinstance(key, tuple) else retries + 1


def _record_attempts(client: Any, where: dict[Any, tuple[DatasetRun, int]]) -> None:
    for key, count in chunk_attempts(client).items():
        if count > 1 and key in where:
            run, index = where[key]
            run.retried[index] = count
