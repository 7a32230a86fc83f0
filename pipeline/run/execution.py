"""Compute the chunks of a run on a Dask client: resume, retries, bad files, progress.

Each chunk task is submitted on its own (with ``retries``); as its histogram vector arrives
it is saved as a checkpoint (:mod:`pipeline.run.checkpoints`), so an interrupted run (Ctrl-C,
a killed client, a lost worker) resumes without redoing it. The chunks finished by an
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
    OutputError,
    UnreadableInputError,
    raised_by_reader,
    with_context,
)
from pipeline.graph import DatasetGraph
from pipeline.run.checkpoints import ChunkCheckpoints
from pipeline.run.progress import ChunkAttemptsPlugin, ProgressBoard, chunk_attempts

OnBadFile = Literal["fail", "skip"]
__all__ = ["READER_MODULES", "ChunkFailure", "DatasetRun", "OnBadFile", "compute_chunks",
           "is_unreadable_input"]


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

    @property
    def name(self) -> str:
        return self.graph.dataset.name

    @property
    def failed_chunks(self) -> set[int]:
        return {f.chunk for f in self.failed}

    def load_vector(self, index: int) -> np.ndarray | None:
        """Chunk ``index``'s histogram vector, ``None`` for a chunk left out."""
        return None if index in self.failed_chunks else self.checkpoints.load(index)

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


def compute_chunks(client: Any, runs: Sequence[DatasetRun], retries: int,
                   on_bad_file: OnBadFile, board: ProgressBoard) -> None:
    """Compute every chunk of ``runs`` not yet checkpointed; checkpoint each as it finishes.

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
    where: dict[Any, tuple[DatasetRun, int]] = {}
    tasks = []
    for run in runs:
        done = set(run.resumed)
        for index, task in enumerate(run.graph.chunk_tasks()):
            if index not in done:
                where[task.key] = (run, index)
                tasks.append(task)
    if not tasks:
        return
    start = time.perf_counter()
    futures = client.compute(tasks, retries=retries)
    pending = set(futures)
    try:
        for future in as_completed(futures):
            pending.discard(future)
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
                _save(run, index, result)
                run.computed.append(index)
                run.events_computed += chunk.entries
                board.advance(run.name, chunk.entries)
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
            run.seconds = time.perf_counter() - start
            future.release()
    finally:
        if pending:
            client.cancel(list(pending))
        _record_attempts(client, runs, where)


def _save(run: DatasetRun, index: int, vector: Any) -> None:
    """Checkpoint chunk ``index``; a disk that is full or read-only stops the run, naming
    the file (the chunks saved before are kept)."""
    try:
        run.checkpoints.save(index, vector)
    except OutputError as err:
        raise OutputError(f"dataset {run.name!r}: cannot save finished chunk {index}: {err}; "
                          "the chunks saved before are kept: rerun the same command to "
                          "resume once the output directory can be written") from None


def _attempts_of(client: Any, key: Any, retries: int) -> int:
    attempts = chunk_attempts(client)
    return attempts.get(key, retries + 1) if isinstance(key, tuple) else retries + 1


def _record_attempts(client: Any, runs: Sequence[DatasetRun],
                     where: dict[Any, tuple[DatasetRun, int]]) -> None:
    for key, count in chunk_attempts(client).items():
        if count > 1 and key in where:
            run, index = where[key]
            run.retried[index] = count
