"""Sites on this machine or an existing cluster: a Dask ``LocalCluster`` (``local``) and
a running Dask scheduler (``scheduler``)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, Literal

from pydantic import (
    Field,
)

from pipeline.errors import SiteError
from pipeline.sites.base import (
    MMAP_DESCRIPTION,
    MMAP_THRESHOLD,
    Session,
    Site,
    allocator_config,
    close_after_failed_start,
    error_text,
    import_object,
    machine_memory,
    usable_cores,
    wait_for_workers,
)


class LocalSite(Site):
    """A Dask ``LocalCluster``: worker processes on this machine."""

    type: Literal["local"] = "local"
    cluster_class = "distributed:LocalCluster"
    n_workers: int | None = Field(default=None, gt=0, description="default: one per core")
    threads_per_worker: int = Field(default=1, gt=0)
    memory_limit: str | int | None = "auto"
    dashboard_address: str = ":8787"
    malloc_mmap_threshold: int | None = Field(default=MMAP_THRESHOLD, gt=0,
                                              description=MMAP_DESCRIPTION)
    start_timeout: float = Field(default=300.0, gt=0, description="seconds for every worker "
                                 "to start and join (a busy machine starts them slowly)")
    oversubscribe: bool = Field(default=False, description="start more worker threads than "
                                "cores, or memory limits beyond the machine's memory, with a "
                                "warning (refused otherwise)")

    def workers(self) -> int:
        """The number of worker processes: ``n_workers``, or one per usable core."""
        return self.n_workers or usable_cores()

    def memory_per_worker(self) -> int | None:
        """Bytes each worker may use (None: no limit); ``auto`` shares the machine's memory.

        Examples
        --------
        >>> LocalSite(n_workers=2, memory_limit="3GiB").memory_per_worker() == 3 * 2**30
        True
        """
        from dask.utils import parse_bytes

        limit = self.memory_limit
        if limit is None or limit == 0:
            return None
        if limit == "auto":
            return machine_memory() // self.workers()
        try:  # a float below 1 is a fraction of the machine's memory, as distributed reads it
            number = float(limit)
        except ValueError:
            return int(parse_bytes(str(limit)))
        return int(number * machine_memory()) if number <= 1 else int(number)

    def overload(self) -> str | None:
        """Why this machine cannot run these workers well, with what to do (None when it
        can).

        More worker threads than usable cores only slow every worker down (awkward work
        holds the GIL and each process takes its share of memory), and memory limits that
        add up to more than the machine has let the kernel kill workers before Dask's own
        memory management sees them.
        """
        problems = self._overload_problems()
        if not problems:
            return None
        cores, memory = usable_cores(), machine_memory()
        per_worker = self.memory_per_worker()
        fits = cores // self.threads_per_worker
        if per_worker:
            fits = min(fits, memory // per_worker)
        advice = (f"ask for at most {fits} worker(s) (--workers {fits})" if fits >= 1 else
                  f"lower {self.setting('memory_limit', 'auto')}")
        return (f"{self.label()} asks for more than this machine has: "
                f"{' and '.join(problems)}. {advice[0].upper()}{advice[1:]}, or set "
                f"{self.setting('oversubscribe', 'true')} to start them anyway")

    def _overload_problems(self) -> list[str]:
        from dask.utils import format_bytes

        cores, memory = usable_cores(), machine_memory()
        n, threads = self.workers(), self.threads_per_worker
        problems = []
        if n * threads > cores:
            problems.append(f"{n} worker process(es) x {threads} thread(s) on {cores} usable "
                            "core(s)")
        per_worker = self.memory_per_worker()
        if per_worker is not None and n * per_worker > memory:
            problems.append(f"{n} x memory_limit {format_bytes(per_worker)} = "
                            f"{format_bytes(n * per_worker)}, beyond this machine's "
                            f"{format_bytes(memory)}")
        return problems

    def cluster_kwargs(self) -> dict[str, Any]:
        """The ``LocalCluster`` arguments: its workers are added once it runs (``scale``),
        so that their start is bounded by ``start_timeout``.

        Examples
        --------
        >>> LocalSite(n_workers=1, memory_limit=None).cluster_kwargs()["n_workers"]
        0
        """
        return {"n_workers": 0, "threads_per_worker": self.threads_per_worker,
                "processes": True, "memory_limit": self.memory_per_worker(),
                "dashboard_address": self.dashboard_address, "silence_logs": 40}

    def describe(self) -> str:
        """What this site starts.

        Examples
        --------
        >>> LocalSite(n_workers=2).describe()
        '2 worker process(es) on this machine'
        """
        return f"{self.workers()} worker process(es) on this machine"

    def check(self) -> None:
        """Refuse workers beyond this machine's cores or memory (unless ``oversubscribe``)."""
        problem = self.overload()
        if problem is not None and not self.oversubscribe:
            raise SiteError(problem)

    def start(self, warn: Callable[[str], None]) -> Session:
        return _start_local(self, warn)

    @classmethod
    def workers_override(cls, workers: int) -> dict[str, Any]:
        """Worker processes on this machine.

        Examples
        --------
        >>> LocalSite.workers_override(4)
        {'n_workers': 4}
        """
        return {"n_workers": workers}


class SchedulerSite(Site):
    """An existing Dask scheduler (started by hand, by a facility, by ``dask-gateway``...)."""

    type: Literal["scheduler"] = "scheduler"
    address: str = Field(description="tcp://host:port of the scheduler")
    connect_timeout: float = Field(default=10.0, gt=0, description="seconds")
    wait_for_workers: int = Field(default=1, ge=0, description="workers needed to start")
    worker_timeout: float = Field(default=300.0, gt=0, description="seconds")

    def describe(self) -> str:
        """What this site connects to.

        Examples
        --------
        >>> SchedulerSite(address="tcp://10.0.0.5:8786").describe()
        'the scheduler at tcp://10.0.0.5:8786'
        """
        return f"the scheduler at {self.address}"

    def start(self, warn: Callable[[str], None]) -> Session:
        return _start_scheduler(self)

    @classmethod
    def workers_override(cls, workers: int) -> dict[str, Any]:
        """The workers to wait for before the run starts."""
        return {"wait_for_workers": workers}


def _start_local(site: LocalSite, warn: Callable[[str], None]) -> Session:
    import dask
    from distributed import Client

    site.check()
    if site.overload() is not None:  # oversubscribe is set
        warn(f"{site.label()} asks for more than this machine has: "
             f"{' and '.join(site._overload_problems())}; starting them since "
             "'oversubscribe' is set")
    n = site.workers()
    # the workers are started after the scheduler, so that their start is bounded
    # (start_timeout) and a cluster that fails to start is closed, not left behind
    with dask.config.set(allocator_config(site.malloc_mmap_threshold)):
        try:
            cluster = import_object(site.cluster_class)(**site.cluster_kwargs())
        except (OSError, TimeoutError, RuntimeError) as err:
            raise SiteError(f"{site.label()}: the Dask scheduler did not start: "
                            f"{error_text(err)}") from None
        session = Session(None, cluster, site.label())
        try:
            session.client = Client(cluster)  # first: a client awaits its cluster's workers
            cluster.scale(n)
            _wait_for_local_workers(session, site, n)
        except BaseException as err:
            close_after_failed_start(session)
            if isinstance(err, OSError | TimeoutError | RuntimeError):
                raise SiteError(f"{site.label()} did not start: {error_text(err)}") from None
            raise
    return session


def _wait_for_local_workers(session: Session, site: LocalSite, n: int) -> None:
    from distributed.core import Status

    deadline = time.monotonic() + site.start_timeout
    while True:
        remaining = deadline - time.monotonic()
        try:
            session.client.wait_for_workers(n, timeout=max(0.1, min(1.0, remaining)))
            return
        except TimeoutError:
            pass
        nannies = list(session.cluster.workers.values())
        failed = sum(w.status in (Status.failed, Status.closing, Status.closed)
                     for w in nannies)
        if failed:
            raise SiteError(f"{failed} of {n} worker process(es) of {site.label()} failed "
                            "to start (their errors are above)")
        if remaining <= 0:
            joined = len(session.client.scheduler_info().get("workers", {}))
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
            raise SiteError(
                f"{joined} of {n} worker process(es) of {site.label()} joined within "
                f"{site.start_timeout:g} s: this machine may be too busy to start them in "
                f"time (load average {load:.1f} on {usable_cores()} usable core(s)); raise "
                f"{site.setting('start_timeout', int(2 * site.start_timeout))}, or ask "
                "for fewer workers (--workers)")


def _start_scheduler(site: SchedulerSite) -> Session:
    from distributed import Client

    try:
        client = Client(site.address, timeout=site.connect_timeout)
    except (OSError, TimeoutError) as err:
        raise SiteError(f"cannot reach the Dask scheduler at {site.address} (site key "
                        f"'address') within {site.connect_timeout:g} s "
                        f"('connect_timeout'): {err}") from None
    wait_for_workers(client, site.wait_for_workers, site.worker_timeout,
                      f"the scheduler at {site.address}")
    return Session(client, label=site.label())
