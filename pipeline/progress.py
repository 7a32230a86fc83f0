"""Chunk progress: a scheduler plugin counts finished chunk tasks; rich draws the bars."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

PLUGIN_NAME = "calibrew-chunk-progress"


class ChunkProgressPlugin(SchedulerPlugin):
    """Records, per chunk layer, which partitions have finished (state ``memory``)."""

    name = PLUGIN_NAME

    def __init__(self, prefix: str = "calibrew-chunk-") -> None:
        self.prefix = prefix
        self.done: dict[str, set[int]] = {}

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if finish != "memory" or not isinstance(key, tuple) or len(key) != 2:
            return
        name, index = key
        if isinstance(name, str) and name.startswith(self.prefix):
            self.done.setdefault(name, set()).add(int(index))


def _finished(dask_scheduler: Any = None) -> dict[str, list[int]]:
    plugin = dask_scheduler.plugins.get(PLUGIN_NAME)
    return {k: sorted(v) for k, v in plugin.done.items()} if plugin else {}


def finished_chunks(client: Any) -> dict[str, list[int]]:
    """``{chunk layer name: [finished partition indices]}`` from the scheduler."""
    return client.run_on_scheduler(_finished)


def watch(client: Any, futures: list[Any], layers: Mapping[str, tuple[str, list[int]]],
          console: Any = None, interval: float = 0.5) -> None:
    """Draw one progress bar per dataset (chunks, events/s) until ``futures`` are done.

    ``layers`` maps a chunk layer name to ``(dataset name, entries per chunk)``.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("chunks"), TextColumn("{task.fields[rate]}"), TimeElapsedColumn()]
    start = time.perf_counter()
    with Progress(*columns, console=console, transient=False) as bar:
        tasks = {layer: bar.add_task(name, total=len(entries), rate="")
                 for layer, (name, entries) in layers.items()}
        while True:
            all_done = all(f.done() for f in futures)
            done = finished_chunks(client)
            elapsed = max(time.perf_counter() - start, 1e-9)
            for layer, task in tasks.items():
                indices = done.get(layer, [])
                entries = layers[layer][1]
                events = sum(entries[i] for i in indices if i < len(entries))
                bar.update(task, completed=len(indices), rate=f"{events / elapsed:,.0f} ev/s")
            if all_done:
                break
            time.sleep(interval)
