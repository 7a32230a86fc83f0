"""Progress of a run: one terminal bar per dataset, and the attempts each chunk took.

The bars are drawn by the client as chunk results arrive (:class:`ProgressBoard`); a
scheduler plugin (:class:`ChunkAttemptsPlugin`) counts how many times each chunk task was
started, so that chunks retried after an error or a lost worker are reported, and records
which worker computed each chunk and how long it took (the rates a run reports).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

PLUGIN_NAME = "calibrew-chunk-attempts"
CHUNK_PREFIX = "calibrew-chunk-"


@dataclass(frozen=True)
class ChunkCompute:
    """One chunk task computed: its key, the worker, when it started (the worker's clock)
    and the seconds it took."""

    key: tuple[str, int]
    worker: str
    start: float
    seconds: float


class ChunkAttemptsPlugin(SchedulerPlugin):
    """Counts, per chunk task key, the times the task went to a worker (``processing``), and
    records each chunk task computed (:class:`ChunkCompute`, as plain tuples)."""

    name = PLUGIN_NAME

    def __init__(self, prefix: str = CHUNK_PREFIX) -> None:
        self.prefix = prefix
        self.attempts: dict[str, int] = {}
        #: (label, worker, start, seconds) of the chunk tasks that finished
        self.computed: list[tuple[str, str, float, float]] = []

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if finish not in ("processing", "memory") or not isinstance(key, tuple) \
                or len(key) != 2:
            return
        name, index = key
        if not (isinstance(name, str) and name.startswith(self.prefix)):
            return
        label = f"{name}/{int(index)}"
        if finish == "processing":
            self.attempts[label] = self.attempts.get(label, 0) + 1
            return
        for span in kwargs.get("startstops") or ():
            if span.get("action") == "compute":
                self.computed.append((label, str(kwargs.get("worker", "")), span["start"],
                                      span["stop"] - span["start"]))


def _attempts(dask_scheduler: Any = None) -> dict[str, int]:
    plugin = dask_scheduler.plugins.get(PLUGIN_NAME)
    return dict(plugin.attempts) if plugin else {}


def _computed(dask_scheduler: Any = None) -> list[tuple[str, str, float, float]] | None:
    plugin = dask_scheduler.plugins.get(PLUGIN_NAME)
    return list(plugin.computed) if plugin else None


def _key(label: str) -> tuple[str, int]:
    name, index = label.rsplit("/", 1)
    return name, int(index)


def chunk_computes(client: Any) -> list[ChunkCompute] | None:
    """The chunk tasks the workers computed, as the scheduler's plugin recorded them
    (``None`` when it could not be installed there)."""
    try:
        recorded = client.run_on_scheduler(_computed)
    except Exception:
        return None
    if recorded is None:
        return None
    return [ChunkCompute(_key(label), worker, start, seconds)
            for label, worker, start, seconds in recorded]


def chunk_attempts(client: Any) -> dict[tuple[str, int], int]:
    """``{(chunk layer name, partition index): attempts}`` recorded on the scheduler (empty
    when the plugin could not be installed there, e.g. a scheduler without calibrew)."""
    try:
        recorded = client.run_on_scheduler(_attempts)
    except Exception:
        return {}
    return {_key(label): count for label, count in recorded.items()}


class ProgressBoard:
    """One bar per dataset: chunks done of all, events/s since the start, elapsed time.

    ``datasets`` maps a dataset name to ``(chunks in all, chunks already done)``; use it as
    a context manager and call :meth:`advance` as chunks finish. With ``enabled=False``
    nothing is drawn.

    Examples
    --------
    >>> with ProgressBoard({"tt": (4, 1)}, enabled=False) as board:
    ...     board.advance("tt", 1000)
    >>> board.done["tt"], board.events["tt"]
    (2, 1000)
    """

    def __init__(self, datasets: Mapping[str, tuple[int, int]], console: Any = None,
                 enabled: bool = True) -> None:
        self.datasets = dict(datasets)
        self.done = {name: resumed for name, (_, resumed) in datasets.items()}
        self.events = dict.fromkeys(datasets, 0)
        self.failed = dict.fromkeys(datasets, 0)
        self.console = console
        self.enabled = enabled
        self._bar: Any = None
        self._tasks: dict[str, Any] = {}
        self._start = time.perf_counter()

    def __enter__(self) -> ProgressBoard:
        self._start = time.perf_counter()
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._bar = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("chunks"), TextColumn("{task.fields[rate]}"),
                TextColumn("{task.fields[failed]}"), TimeElapsedColumn(),
                console=self.console, transient=False)
            self._bar.__enter__()
            self._tasks = {name: self._bar.add_task(name, total=total, completed=resumed,
                                                    rate="", failed="")
                           for name, (total, resumed) in self.datasets.items()}
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def advance(self, dataset: str, events: int, failed: bool = False) -> None:
        """One chunk of ``dataset`` finished (with ``events`` events) or failed."""
        self.done[dataset] += 1
        self.events[dataset] += events
        self.failed[dataset] += int(failed)
        if self._bar is not None:
            elapsed = max(time.perf_counter() - self._start, 1e-9)
            bad = self.failed[dataset]
            self._bar.update(self._tasks[dataset], completed=self.done[dataset],
                             rate=f"{self.events[dataset] / elapsed:,.0f} ev/s",
                             failed=f"[red]{bad} failed[/]" if bad else "")

    def print(self, message: str) -> None:
        """A line above the bars (or on the console when no bar is drawn)."""
        if self._bar is not None:
            self._bar.console.print(message, highlight=False)
        elif self.console is not None:
            self.console.print(message, highlight=False)
