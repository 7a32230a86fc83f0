"""Compute sites: turn a site profile (YAML) into a Dask cluster and client.

A profile's ``type`` picks its site class, one per kind of site, each knowing its Dask
cluster class, that class's arguments, how to describe, check and start itself:

- ``local`` (:class:`LocalSite`): a Dask ``LocalCluster`` on this machine;
- ``slurm`` / ``htcondor`` (:class:`SlurmSite` / :class:`HTCondorSite`): batch jobs, each
  running Dask workers, submitted through ``dask_jobqueue.SLURMCluster`` /
  ``HTCondorCluster``; the scheduler runs in the client;
- ``scheduler`` (:class:`SchedulerSite`): connect to a Dask scheduler that is already running
  (``address``).

The classes register themselves in :data:`SITE_TYPES` by their ``type`` when they are
defined (a new kind of site is one more subclass of :class:`Site`, or of :class:`BatchSite`
for another batch system); two classes of the same ``type`` are an error naming both.

Profiles are found by name (:func:`find_profiles`), the first found winning: in the folders
of ``$CALIBREW_SITES`` (one folder, or several separated by ``os.pathsep``), in ``cluster/``
of the working directory, in ``cluster/`` of the checkout the package runs from (an editable
install), and last among the built-in profiles, package data in ``pipeline/defaults/sites/``
(``local``, ``slurm``, ``slurm-hpc``, ``htcondor``, ``lxplus-htcondor``, ``scheduler``). A
user's profile of a built-in's name replaces it.

Every key of a profile can be overridden on the command line
(``calibrew run JOB --site slurm -o jobs=8 -o adapt.maximum_jobs=20``); a key a profile's
type does not know is rejected with its name.

A site that cannot start says so at once, naming the site and the setting to change
(:class:`~pipeline.errors.SiteError`): local workers beyond this machine's cores or memory
are refused unless ``oversubscribe`` is set (then started with a warning); local workers
must join within ``start_timeout``; a batch site's submit command (``sbatch``,
``condor_submit``) must be on PATH, and its refusal of a job is reported in its own words
instead of waiting ``worker_start_timeout`` for workers that will never come.
:meth:`Session.close` is bounded (``close_timeout``) and raises ``SiteError`` when the
cluster does not close cleanly.

Examples
--------
>>> site = load_site("local", {"n_workers": 2})
>>> site.type, site.n_workers
('local', 2)
>>> load_site("slurm", {"lifetime": "20m"}).worker_args()[:2]
['--lifetime', '20m']
>>> find_profiles()["local"].origin
'built-in'
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
import logging
import os
import re
import shlex
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.config.models import read_yaml
from pipeline.config.parameters import format_validation_error
from pipeline.errors import ConfigError, SiteError, UnknownNameError

#: glibc's ``M_MMAP_THRESHOLD`` for the workers (bytes). distributed's nanny sets
#: ``MALLOC_TRIM_THRESHOLD_``, which also freezes glibc's mmap threshold at 128 KiB: every
#: array above it is then a fresh mmap, page-faulted anew at each allocation. Measured on
#: the demo chain (one 200k-event chunk): 6.0 kHz with distributed's setting alone, 10.4 kHz
#: with this threshold added (10.6 kHz with neither), peak memory 1.38 / 1.46 / 1.56 GiB.
MMAP_THRESHOLD = 256 * 2**20
_MMAP_DESCRIPTION = ("glibc's mmap threshold for the workers (MALLOC_MMAP_THRESHOLD_, bytes): "
                     "large arrays come from the heap instead of fresh page-faulted mappings; "
                     "null leaves the workers' allocator as distributed sets it")

#: seconds :meth:`Session.close` waits for the client, then for the cluster, to close
CLOSE_TIMEOUT = 60.0

logger = logging.getLogger(__name__)


def allocator_config(threshold: int | None) -> dict[str, Any]:
    """The dask config that gives a ``LocalCluster``'s workers ``threshold`` (None: nothing).

    Examples
    --------
    >>> allocator_config(MMAP_THRESHOLD)
    {'distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_': 268435456}
    """
    if threshold is None:
        return {}
    return {"distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_": threshold}


def _import_object(path: str) -> Any:
    """The object at ``module:name``, imported now (a cluster class: distributed and
    dask-jobqueue are imported only by the site that starts).

    Examples
    --------
    >>> _import_object("os.path:join")("a", "b")
    'a/b'
    """
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


# --- the site types -------------------------------------------------------------------------

#: the site classes by profile ``type``, filled as each class is defined
SITE_TYPES: dict[str, type[Site]] = {}


class Site(BaseModel, abc.ABC):
    """A compute site: what every profile has, and what every kind of site does.

    A concrete subclass declares ``type: Literal["name"] = "name"`` and registers itself in
    :data:`SITE_TYPES` under that name when defined; a second class of the same name is a
    ``TypeError`` naming both. It says which Dask cluster class it starts
    (:attr:`cluster_class`, ``module:Name``) and with which arguments
    (:meth:`cluster_kwargs`), and implements :meth:`describe`, :meth:`start` and
    :meth:`workers_override` (:meth:`check` when something can be known wrong before
    starting).

    Another batch system of dask-jobqueue is a class of a few lines (PBS here), defined in
    a module imported before the profile is loaded::

        class PbsSite(BatchSite):
            type: Literal["pbs"] = "pbs"
            cluster_class = "dask_jobqueue:PBSCluster"
            queue: str | None = None

            def cluster_kwargs(self) -> dict[str, Any]:
                return {**super().cluster_kwargs(), "queue": self.queue}

    Examples
    --------
    >>> SITE_TYPES["local"] is LocalSite, SITE_TYPES["slurm"].cluster_class
    (True, 'dask_jobqueue:SLURMCluster')
    """

    model_config = ConfigDict(extra="forbid")
    type: str
    description: str = Field(default="", description="one line shown by calibrew sites")
    #: the Dask cluster class this kind of site starts (``module:Name``, imported when it
    #: starts); None when it connects to a cluster that runs already
    cluster_class: ClassVar[str | None] = None
    #: the profile's name and file, set by :func:`load_site` (for messages)
    _name: str | None = PrivateAttr(default=None)
    _path: str | None = PrivateAttr(default=None)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        kind = cls.model_fields["type"].default
        if not isinstance(kind, str):
            return  # a family of sites (BatchSite), not a site type of its own
        known = SITE_TYPES.get(kind)
        if known is not None and known is not cls:
            raise TypeError(f"site type {kind!r} is defined twice: by "
                            f"{known.__module__}.{known.__qualname__} and by "
                            f"{cls.__module__}.{cls.__qualname__} (give the new class its "
                            "own type: Literal['name'] = 'name')")
        SITE_TYPES[kind] = cls

    def label(self) -> str:
        """How messages name this site: its profile name and file, or its type.

        Examples
        --------
        >>> LocalSite().label()
        "the 'local' site"
        """
        if self._name is None:
            return f"the {self.type!r} site"
        if self._name == self._path:
            return f"site {self._path}"
        return f"site {self._name!r} ({self._path})"

    def setting(self, key: str, example: Any) -> str:
        """Where the user changes ``key``: the profile file, or ``-o key=...``.

        Examples
        --------
        >>> LocalSite().setting("start_timeout", 600)
        "'start_timeout' (-o start_timeout=600)"
        """
        where = ""
        if self._path:
            path = Path(self._path)
            # a built-in profile is package data: the user edits a copy of it, not it
            where = (f" in a copy of {path.name} in cluster/"
                     if path.parent == builtin_sites_dir() else f" in {path}")
        return f"{key!r}{where} (-o {key}={example})"

    def cluster_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :attr:`cluster_class` (none without one)."""
        return {}

    @abc.abstractmethod
    def describe(self) -> str:
        """What this site starts, in one line (its type and description apart)."""

    def check(self) -> None:
        """Raise :class:`SiteError` for what can be known wrong before starting (the
        default: nothing)."""

    @abc.abstractmethod
    def start(self, warn: Callable[[str], None]) -> Session:
        """Start (or connect to) the cluster and return the session; ``warn`` shows a
        warning to the user."""

    @classmethod
    @abc.abstractmethod
    def workers_override(cls, workers: int) -> dict[str, Any]:
        """``--workers N`` as overrides of this kind of profile."""

    def job_script(self) -> str:
        """The submit script of each batch job; a site without batch jobs raises
        :class:`SiteError`."""
        raise SiteError(f"a {self.type!r} site submits no batch jobs: no job script")


class LocalSite(Site):
    """A Dask ``LocalCluster``: worker processes on this machine."""

    type: Literal["local"] = "local"
    cluster_class = "distributed:LocalCluster"
    n_workers: int | None = Field(default=None, gt=0, description="default: one per core")
    threads_per_worker: int = Field(default=1, gt=0)
    memory_limit: str | int | None = "auto"
    dashboard_address: str = ":8787"
    malloc_mmap_threshold: int | None = Field(default=MMAP_THRESHOLD, gt=0,
                                              description=_MMAP_DESCRIPTION)
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


class Adapt(BaseModel):
    """Adaptive scaling between a minimum and a maximum number of batch jobs."""

    model_config = ConfigDict(extra="forbid")
    minimum_jobs: int = Field(default=0, ge=0)
    maximum_jobs: int = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Adapt:
        if self.minimum_jobs > self.maximum_jobs:
            raise ValueError(f"minimum_jobs {self.minimum_jobs} > maximum_jobs "
                             f"{self.maximum_jobs}")
        return self


class BatchSite(Site):
    """What the batch sites share: jobs submitted through a dask-jobqueue cluster class
    (:attr:`cluster_class`, whose ``job_cls`` names the submit command), each running Dask
    workers that connect back to the scheduler in the client.

    A batch system dask-jobqueue supports is one subclass: its ``type``, its
    ``cluster_class`` and the options of its own (:meth:`cluster_kwargs`).
    """

    cluster_class: ClassVar[str]
    cores: int = Field(default=1, gt=0, description="cores per job")
    malloc_mmap_threshold: int | None = Field(default=MMAP_THRESHOLD, gt=0,
                                              description=_MMAP_DESCRIPTION)
    processes: int = Field(default=1, gt=0, description="worker processes per job")
    memory: str = Field(default="4GiB", description="memory per job")
    jobs: int = Field(default=1, gt=0, description="jobs kept running (without adapt)")
    adapt: Adapt | None = None
    lifetime: str | None = Field(default=None, description="workers retire after this "
                                 "(e.g. 55m), before the batch system kills them")
    lifetime_stagger: str = Field(default="5m", description="random spread of lifetime")
    python: str | None = Field(default=None, description="worker interpreter (default: "
                               "the client's, the same environment; 'python' after a "
                               "prologue, the environment it activates)")
    prologue: list[str] = Field(default_factory=list, description="shell lines run before "
                                "the worker starts (source an environment, module load...)")
    interface: str | None = Field(default=None, description="network interface of workers "
                                  "and scheduler (e.g. ib0, lo)")
    host: str | None = Field(default=None, description="address the scheduler listens on")
    scheduler_port: int = Field(default=0, ge=0, description="0: any free port")
    dashboard_address: str = ":8787"
    worker_ports: str | None = Field(default=None, description="port range of the workers "
                                     "and nannies, e.g. 10000:10100")
    local_directory: str | None = None
    log_directory: str | None = None
    death_timeout: float = Field(default=120.0, gt=0, description="seconds a worker waits "
                                 "for the scheduler before it exits")
    worker_extra_args: list[str] = Field(default_factory=list)
    worker_start_timeout: float | None = Field(default=None, gt=0, description="seconds to "
                                               "wait for the first worker (default: no limit)")

    @field_validator("lifetime", "lifetime_stagger")
    @classmethod
    def _duration_parses(cls, value: str | None) -> str | None:
        if value is not None:
            duration_s(value)
        return value

    def worker_args(self) -> list[str]:
        """Extra ``dask worker`` arguments: lifetime with stagger, port range, the user's."""
        args = []
        if self.lifetime:
            args += ["--lifetime", self.lifetime, "--lifetime-stagger", self.lifetime_stagger]
        if self.worker_ports:
            args += ["--worker-port", self.worker_ports, "--nanny-port", self.worker_ports]
        return args + list(self.worker_extra_args)

    def cluster_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of the dask-jobqueue cluster class (those all batch
        systems share; a subclass adds its own)."""
        scheduler: dict[str, Any] = {"dashboard_address": self.dashboard_address,
                                     "port": self.scheduler_port}
        if self.host:
            scheduler["host"] = self.host
        return {
            "cores": self.cores, "processes": self.processes, "memory": self.memory,
            "python": self.python or ("python" if self.prologue else sys.executable),
            "job_script_prologue": [
                *([f"export MALLOC_MMAP_THRESHOLD_={self.malloc_mmap_threshold}"]
                  if self.malloc_mmap_threshold is not None else []),
                *self.prologue],
            "interface": self.interface, "scheduler_options": scheduler,
            "local_directory": self.local_directory, "log_directory": self.log_directory,
            "death_timeout": self.death_timeout, "worker_extra_args": self.worker_args(),
            "job_name": "calibrew",
        }

    def make_cluster(self, record: Submissions | None = None) -> Any:
        """The dask-jobqueue cluster of this site (its scheduler starts; no job is
        submitted).

        With ``record``, every job submission (its id, or the submit command's refusal) is
        written there.
        """
        cluster = _import_object(self.cluster_class)
        kwargs = self.cluster_kwargs()
        if record is not None:
            kwargs["job_cls"] = _recording_job_class(cluster.job_cls, record)
        return cluster(**kwargs)

    def submit_command(self) -> str:
        """The program this site submits its jobs with (``sbatch``, ``condor_submit``).

        Examples
        --------
        >>> SlurmSite().submit_command(), HTCondorSite().submit_command()
        ('sbatch', 'condor_submit')
        """
        job = _import_object(self.cluster_class).job_cls
        return shlex.split(str(job.submit_command))[0]

    def job_script(self) -> str:
        cluster = self.make_cluster()
        try:
            return str(cluster.job_script())
        finally:
            cluster.close()

    def describe(self) -> str:
        """The jobs, their size, and the lifetime of their workers.

        Examples
        --------
        >>> SlurmSite(jobs=3, memory="3GiB", queue="short").describe()
        '3 job(s) of 1 core(s), 3GiB, partition short, walltime 01:00:00'
        """
        scale = (f"{self.adapt.minimum_jobs}-{self.adapt.maximum_jobs} jobs (adaptive)"
                 if self.adapt else f"{self.jobs} job(s)")
        what = f"{scale} of {self.cores} core(s), {self.memory}{self._describe_queue()}"
        if self.lifetime:
            what += f", lifetime {self.lifetime}"
        return what

    def _describe_queue(self) -> str:
        """What :meth:`describe` says of the batch system's queue (none by default)."""
        return ""

    def check(self) -> None:
        """Refuse a site whose submit command is not on PATH."""
        command = self.submit_command()
        if shutil.which(command) is None:
            raise SiteError(f"{self.label()} submits its jobs with {command!r}, which is "
                            "not found on PATH: run calibrew where the batch system's "
                            "commands are (a login or submit node, after loading their "
                            "module), or choose another site (--site)")

    def start(self, warn: Callable[[str], None]) -> Session:
        return _start_batch(self)

    @classmethod
    def workers_override(cls, workers: int) -> dict[str, Any]:
        """A fixed number of jobs (adaptive scaling off).

        Examples
        --------
        >>> SlurmSite.workers_override(5)
        {'jobs': 5, 'adapt': None}
        """
        return {"jobs": workers, "adapt": None}


class SlurmSite(BatchSite):
    """Workers in SLURM jobs (``dask_jobqueue.SLURMCluster``)."""

    type: Literal["slurm"] = "slurm"
    cluster_class = "dask_jobqueue:SLURMCluster"
    queue: str | None = Field(default=None, description="partition")
    account: str | None = None
    walltime: str = Field(default="01:00:00", description="SLURM time: minutes, MM:SS, "
                          "HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS")
    job_extra_directives: list[str] = Field(default_factory=list,
                                            description="extra #SBATCH lines, e.g. --qos=x")

    @field_validator("walltime", mode="before")
    @classmethod
    def _walltime_parses(cls, value: Any) -> str:
        slurm_time_s(str(value))
        return str(value)

    @model_validator(mode="after")
    def _lifetime_within_walltime(self) -> SlurmSite:
        if self.lifetime:
            latest = duration_s(self.lifetime) + duration_s(self.lifetime_stagger)
            if latest >= slurm_time_s(self.walltime):
                raise ValueError(f"lifetime {self.lifetime} + lifetime_stagger "
                                 f"{self.lifetime_stagger} must be shorter than walltime "
                                 f"{self.walltime}, or the batch system kills working workers")
        return self

    def cluster_kwargs(self) -> dict[str, Any]:
        return {**super().cluster_kwargs(), "queue": self.queue, "account": self.account,
                "walltime": self.walltime, "job_extra_directives": self.job_extra_directives}

    def _describe_queue(self) -> str:
        return f", partition {self.queue or '(default)'}, walltime {self.walltime}"


class HTCondorSite(BatchSite):
    """Workers in HTCondor jobs (``dask_jobqueue.HTCondorCluster``)."""

    type: Literal["htcondor"] = "htcondor"
    cluster_class = "dask_jobqueue:HTCondorCluster"
    disk: str = "4GiB"
    spool: bool = Field(default=False, description="condor_submit -spool (no shared "
                        "filesystem between the submit host and the workers' log files)")
    job_extra_directives: dict[str, str] = Field(default_factory=dict, description="extra "
                                                 "submit-description lines, e.g. +JobFlavour")

    def cluster_kwargs(self) -> dict[str, Any]:
        return {**super().cluster_kwargs(), "disk": self.disk,
                "job_extra_directives": self.job_extra_directives,
                "submit_command_extra": ["-spool"] if self.spool else []}


def slurm_time_s(text: str) -> float:
    """Seconds of a SLURM time: ``minutes``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``
    or ``D-HH:MM:SS``.

    Examples
    --------
    >>> slurm_time_s("30"), slurm_time_s("30:00"), slurm_time_s("01:30:00")
    (1800.0, 1800.0, 5400.0)
    >>> slurm_time_s("1-02"), slurm_time_s("1-02:30"), slurm_time_s("1-00:00:10")
    (93600.0, 95400.0, 86410.0)
    """
    text = text.strip()
    days, _, rest = text.rpartition("-") if "-" in text else ("", "", text)
    parts = rest.split(":")
    if not all(p.isdigit() for p in [*parts, *([days] if days else [])]) or len(parts) > 3:
        raise ValueError(f"cannot read {text!r} as a SLURM time (minutes, MM:SS, HH:MM:SS, "
                         "D-HH, D-HH:MM, D-HH:MM:SS)")
    numbers = [int(p) for p in parts]
    if days:  # D-HH[:MM[:SS]]
        hours, minutes, seconds = [*numbers, 0, 0][:3]
        return float(((int(days) * 24 + hours) * 60 + minutes) * 60 + seconds)
    hours, minutes, seconds = {1: [0, numbers[0], 0], 2: [0, *numbers]}.get(len(numbers),
                                                                            numbers)
    return float((hours * 60 + minutes) * 60 + seconds)


def duration_s(text: str) -> float:
    """Seconds in a Dask duration (``55m``, ``2h``, ``90s``), as ``--lifetime`` takes.

    Examples
    --------
    >>> duration_s("55m"), duration_s("2h")
    (3300.0, 7200.0)
    """
    from dask.utils import parse_timedelta

    try:
        return float(parse_timedelta(text))
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"cannot read {text!r} as a duration (e.g. 55m, 2h, 90s)") from None


# --- where profiles are found ---------------------------------------------------------------

#: origin of a profile folder, as ``calibrew sites`` shows it
BUILT_IN = "built-in"


@dataclass(frozen=True)
class ProfileFolder:
    """A folder searched for site profiles, and where it comes from (``origin``)."""

    path: Path
    origin: str


@dataclass(frozen=True)
class ProfileFile:
    """A site profile found by name: its file, the origin of its folder, and the files of
    the same name it hides (in folders searched after its own)."""

    name: str
    path: Path
    origin: str
    hides: tuple[ProfileFile, ...] = ()


def builtin_sites_dir() -> Path:
    """The built-in profiles: package data (``pipeline/defaults/sites``), installed with
    the package.

    Examples
    --------
    >>> sorted(p.stem for p in builtin_sites_dir().glob("*.yaml"))[:2]
    ['htcondor', 'local']
    """
    return Path(str(resources.files("pipeline") / "defaults" / "sites"))


def _checkout_cluster_dir() -> Path | None:
    """``cluster/`` of the checkout the package runs from (an editable install): the
    package's parent folder when it holds a ``pyproject.toml`` and a ``cluster/``."""
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file() and (root / "cluster").is_dir():
        return root / "cluster"
    return None


def site_folders() -> list[ProfileFolder]:
    """The folders searched for profiles, first found first: the folders of
    ``$CALIBREW_SITES`` (``os.pathsep``-separated) in their order, ``cluster/`` of the
    working directory, ``cluster/`` of the checkout (an editable install), the built-in
    profiles. A folder is listed once (at its first place), whether it exists or not.

    Examples
    --------
    >>> site_folders()[-1].origin
    'built-in'
    """
    folders = [ProfileFolder(Path(p), "$CALIBREW_SITES")
               for p in os.environ.get("CALIBREW_SITES", "").split(os.pathsep) if p]
    try:
        folders.append(ProfileFolder(Path.cwd() / "cluster",
                                     "cluster/ of the working directory"))
    except FileNotFoundError:  # a working directory removed under this process
        pass
    checkout = _checkout_cluster_dir()
    if checkout is not None:
        folders.append(ProfileFolder(checkout, "cluster/ of the checkout"))
    folders.append(ProfileFolder(builtin_sites_dir(), BUILT_IN))
    unique: dict[Path, ProfileFolder] = {}
    for folder in folders:
        unique.setdefault(folder.path.resolve(), folder)
    return list(unique.values())


def find_profiles() -> dict[str, ProfileFile]:
    """Every profile (``NAME.yaml``) of :func:`site_folders`, by name, in name order; of
    two profiles of the same name the one in the folder searched first wins (a user's
    profile replaces a built-in one).

    Examples
    --------
    >>> found = find_profiles()["slurm"]
    >>> found.path.name, found.origin
    ('slurm.yaml', 'built-in')
    """
    found: dict[str, ProfileFile] = {}
    for folder in site_folders():
        if not folder.path.is_dir():
            continue
        for path in sorted(folder.path.glob("*.yaml")):
            profile = ProfileFile(path.stem, path, folder.origin)
            first = found.get(path.stem)
            found[path.stem] = profile if first is None else dataclasses.replace(
                first, hides=(*first.hides, profile))
    return dict(sorted(found.items()))


def available_sites() -> list[str]:
    """The names of every profile found (:func:`find_profiles`).

    Examples
    --------
    >>> {"local", "slurm", "scheduler"} <= set(available_sites())
    True
    """
    return list(find_profiles())


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    node = data
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[last] = value


def load_site(name: str, overrides: dict[str, Any] | None = None) -> Site:
    """Load the profile ``name`` (or a path to a YAML file) and apply ``overrides``.

    ``overrides`` maps keys (dotted for nested ones, ``adapt.maximum_jobs``) to values
    (``None`` sets a key to null: ``adapt=None`` turns adaptive scaling off). Raises
    :class:`UnknownNameError` for a name no folder holds, with the names found, and
    :class:`ConfigError` naming the profile file and the key at fault.

    Examples
    --------
    >>> load_site("slurm-hpc", {"adapt": None, "jobs": 5}).describe()
    '5 job(s) of 1 core(s), 4GiB, partition standard, walltime 04:00:00, lifetime 220m'
    """
    path, data = _read_profile(name)
    for key, value in (overrides or {}).items():
        _set_dotted(data, key, value)
    kind = data.get("type", "local")
    model = SITE_TYPES.get(kind)
    if model is None:
        raise ConfigError(str(path), [("type", f"unknown site type {kind!r}; valid types "
                                       f"are: {', '.join(sorted(SITE_TYPES))}")])
    try:
        site = model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(str(path), format_validation_error(err)) from None
    site._name, site._path = name, str(path)
    return site


def _profile_path(name: str) -> Path:
    if name.endswith((".yaml", ".yml")):
        path = Path(name)
        if path.exists():
            return path
    else:
        found = find_profiles().get(name)
        if found is not None:
            return found.path
    raise UnknownNameError("site", name, available_sites(), where="site")


def _read_profile(name: str) -> tuple[Path, dict[str, Any]]:
    path = _profile_path(name)
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), [("", "expected a mapping at the top level")])
    return path, data


def usable_cores() -> int:
    """The cores this process may use (CPU affinity and cgroup quota counted, as Dask does)."""
    from dask.system import CPU_COUNT

    return max(1, int(CPU_COUNT))


def machine_memory() -> int:
    """The bytes this process may use (cgroup and rlimit counted, as distributed does)."""
    from distributed.system import MEMORY_LIMIT

    return int(MEMORY_LIMIT)


def workers_override(site_name: str, workers: int | None) -> dict[str, Any]:
    """``--workers N`` as a profile override (:meth:`Site.workers_override` of the
    profile's type): worker processes locally, the workers to wait for on a scheduler, a
    fixed number of jobs on batch (adaptive scaling off).

    Examples
    --------
    >>> workers_override("local", 3), workers_override("slurm", None)
    ({'n_workers': 3}, {})
    """
    if workers is None:
        return {}
    model = SITE_TYPES.get(_read_profile(site_name)[1].get("type", "local"))
    return {} if model is None else model.workers_override(workers)  # load_site says why


def describe(site: Site) -> str:
    """What ``site`` starts, in one line (its type and description are apart).

    Examples
    --------
    >>> describe(load_site("slurm", {"jobs": 3}))
    '3 job(s) of 1 core(s), 3GiB, partition local, walltime 00:30:00'
    """
    return site.describe()


# --- batch jobs -----------------------------------------------------------------------------

@dataclass
class Submissions:
    """What a batch site's submit command did: the jobs it took, and its refusals, each in
    the command's own words (its stderr)."""

    command: str
    site: str
    job_ids: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: whether someone polls :attr:`errors` (start_site does while it waits); otherwise a
    #: refusal is logged as one line, so that it does not pass unseen
    watched: bool = False


def _submit_error_text(command: str, err: BaseException) -> str:
    """The submit command's own words from dask-jobqueue's error (exit code, stderr).

    Examples
    --------
    >>> err = RuntimeError("Command exited with non-zero exit code.\\nExit code: 1\\n"
    ...                    "Command:\\nsbatch /tmp/x.sh\\nstdout:\\n\\nstderr:\\n"
    ...                    "sbatch: error: invalid partition\\n\\n")
    >>> _submit_error_text("sbatch", err)
    'sbatch exited with code 1: sbatch: error: invalid partition'
    """
    text = str(err)
    found = re.search(r"Exit code: (-?\d+)\n.*?\nstdout:\n(.*?)\nstderr:\n(.*)", text, re.S)
    if found:
        code, out, said = found.groups()
        words = " ".join((said.strip() or out.strip() or "(no output)").splitlines())
        return f"{command} exited with code {code}: {words}"
    if isinstance(err, OSError):
        return f"cannot run {command}: {err}"
    return f"{command}: {' '.join(text.split())}"  # e.g. no job id in its output


def _recording_job_class(base: type, record: Submissions) -> type:
    """``base`` (a dask-jobqueue job class) whose submissions are written to ``record``.

    A refused submission is recorded instead of raised: raised, it would reach only the
    event loop's log (a raw traceback), never the caller, and the job slot stays dead
    either way (dask-jobqueue does not submit it again).
    """
    from distributed.core import Status

    class RecordingJob(base):
        async def start(self) -> None:
            try:
                await super().start()
            except Exception as err:
                message = _submit_error_text(record.command, err)
                record.errors.append(message)
                if not record.watched:
                    logger.error("%s: a batch job was not submitted: %s", record.site,
                                 message)
                self.status = Status.running  # a slot without a job: nothing to cancel
            else:
                record.job_ids.append(str(self.job_id))

    RecordingJob.__name__ = RecordingJob.__qualname__ = base.__name__
    return RecordingJob


def make_jobqueue_cluster(site: BatchSite, record: Submissions | None = None) -> Any:
    """The dask-jobqueue cluster of ``site`` (:meth:`BatchSite.make_cluster`)."""
    return site.make_cluster(record)


def submit_command(site: BatchSite) -> str:
    """The program a batch site submits its jobs with (:meth:`BatchSite.submit_command`)."""
    return site.submit_command()


def job_script(site: Site) -> str:
    """The submit script a batch site sends for each job (:meth:`Site.job_script`)."""
    return site.job_script()


# --- sessions -------------------------------------------------------------------------------

@dataclass
class Session:
    """A started site: the client, the cluster it owns (if any), and how to close both.

    ``label`` names the site in messages; ``submissions`` is what a batch site's submit
    command did (None for other sites): a runner may poll ``submissions.errors`` while it
    computes, for jobs that adaptive scaling submits later.
    """

    client: Any
    cluster: Any = None
    label: str = "the site"
    submissions: Submissions | None = None
    close_timeout: float = CLOSE_TIMEOUT

    @property
    def dashboard_link(self) -> str:
        return str(self.client.dashboard_link)

    def close(self) -> None:
        """Close the client, then the cluster it owns, each within ``close_timeout`` s.

        Both are always tried. Raises :class:`SiteError` naming what did not close and
        why (a timeout, a lost connection), and for a batch site the job ids that may still
        be queued or running; a close that timed out goes on in the background (it is not
        cancelled half-way). Nothing computed depends on it: write outputs before closing,
        and report this error as a warning.
        """
        problems = []
        for what, thing in (("the client", self.client), ("the cluster", self.cluster)):
            if thing is not None:
                problem = _close_within(thing, self.close_timeout)
                if problem is not None:
                    problems.append(f"{what}: {problem}")
        if problems:
            raise SiteError(f"{self.label} did not close cleanly ({'; '.join(problems)})"
                            + self._leftovers())

    def _leftovers(self) -> str:
        if self.submissions is not None and self.submissions.job_ids:
            cancel = "scancel" if self.submissions.command == "sbatch" else "condor_rm"
            ids = " ".join(self.submissions.job_ids)
            return (f"; its batch jobs may still be queued or running: check them and "
                    f"cancel those left ({cancel} {ids})")
        if self.cluster is not None:
            return "; its worker processes end with this process"
        return ""


def _close_within(thing: Any, timeout: float) -> str | None:
    """Close ``thing`` (a client, a cluster) in a daemon thread, waiting ``timeout`` s for
    it; what went wrong, or None. distributed cancels a close that times out half-way (a
    cluster then stays 'closing' for good): this one goes on in the background instead."""
    errors: list[BaseException] = []

    def close() -> None:
        try:
            thing.close()
        except BaseException as err:  # reported to the caller
            errors.append(err)

    thread = threading.Thread(target=close, name=f"close {type(thing).__name__}",
                              daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return f"still closing after {timeout:g} s; it goes on in the background"
    return _error_text(errors[0]) if errors else None


def _error_text(err: BaseException) -> str:
    text = " ".join(str(err).split())
    if isinstance(err, TimeoutError):
        return f"timed out{': ' + text if text else ''}"
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _print_warning(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def check_site(site: Site) -> None:
    """What can be known wrong before starting ``site``, at once (:meth:`Site.check`):
    raises :class:`SiteError` for local workers beyond this machine's cores or memory
    (unless ``oversubscribe``) and for a batch site whose submit command is not on PATH.

    :func:`start_site` checks the same; a runner calls this first to fail before planning.
    """
    site.check()


def start_site(site: Site, warn: Callable[[str], None] | None = None) -> Session:
    """Start (or connect to) the cluster of ``site`` and return the session
    (:meth:`Site.start`).

    Raises :class:`SiteError` naming the site, and the setting that changes the outcome,
    when it cannot start: local workers beyond this machine's cores or memory (unless
    ``oversubscribe``, then ``warn`` is called with the warning; default: printed on
    stderr), local workers that fail or do not join within ``start_timeout``, an
    unreachable scheduler, a batch submit command that is missing or refuses the jobs (with
    its own error), batch workers that do not join within ``worker_start_timeout``.
    """
    return site.start(warn or _print_warning)


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
            cluster = _import_object(site.cluster_class)(**site.cluster_kwargs())
        except (OSError, TimeoutError, RuntimeError) as err:
            raise SiteError(f"{site.label()}: the Dask scheduler did not start: "
                            f"{_error_text(err)}") from None
        session = Session(None, cluster, site.label())
        try:
            session.client = Client(cluster)  # first: a client awaits its cluster's workers
            cluster.scale(n)
            _wait_for_local_workers(session, site, n)
        except BaseException as err:
            _close_after_failed_start(session)
            if isinstance(err, OSError | TimeoutError | RuntimeError):
                raise SiteError(f"{site.label()} did not start: {_error_text(err)}") from None
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


def _close_after_failed_start(session: Session) -> None:
    """Close what a failed start left; a close that fails too is logged, not raised (the
    start's own error is the one to report)."""
    try:
        session.close()
    except SiteError as err:
        logger.warning("%s", err)


def _start_scheduler(site: SchedulerSite) -> Session:
    from distributed import Client

    try:
        client = Client(site.address, timeout=site.connect_timeout)
    except (OSError, TimeoutError) as err:
        raise SiteError(f"cannot reach the Dask scheduler at {site.address} (site key "
                        f"'address') within {site.connect_timeout:g} s "
                        f"('connect_timeout'): {err}") from None
    _wait_for_workers(client, site.wait_for_workers, site.worker_timeout,
                      f"the scheduler at {site.address}")
    return Session(client, label=site.label())


def _start_batch(site: BatchSite) -> Session:
    from distributed import Client

    site.check()
    record = Submissions(site.submit_command(), site.label(), watched=True)
    cluster = site.make_cluster(record)
    session = Session(None, cluster, site.label(), record)
    try:
        # adaptive even for a fixed number of jobs (minimum = maximum): a job that ends
        # (walltime, lifetime, preemption) is replaced by a new one
        low, high = ((site.adapt.minimum_jobs, site.adapt.maximum_jobs) if site.adapt
                     else (site.jobs, site.jobs))
        session.client = Client(cluster)  # first: a client awaits its cluster's jobs
        cluster.adapt(minimum_jobs=low, maximum_jobs=high)
        if low > 0:
            _wait_for_batch_start(session, site, record, low)
    except BaseException:
        _close_after_failed_start(session)
        raise
    finally:
        record.watched = False
    return session


def _wait_for_batch_start(session: Session, site: BatchSite, record: Submissions,
                          jobs: int) -> None:
    """Wait until a worker joins, or, without ``worker_start_timeout``, until the first
    ``jobs`` submissions are done; a refused submission raises at once, with its words."""
    timeout = site.worker_start_timeout
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            session.client.wait_for_workers(1, timeout=0.5)
            return
        except TimeoutError:
            pass
        if record.errors:
            raise SiteError(f"{site.label()}: {record.command} refused the job "
                            f"({len(record.errors)} of {jobs} submission(s) failed): "
                            f"{record.errors[0]}")
        if deadline is None and len(record.job_ids) >= jobs:
            return  # submitted; the queue decides when they start
        if timeout is not None and deadline is not None and time.monotonic() > deadline:
            ids = ", ".join(record.job_ids) or "none"
            raise SiteError(
                f"no worker joined from the {len(record.job_ids)} job(s) of {site.label()} "
                f"within {timeout:g} s (job ids: {ids}): check the queue (are they still "
                f"pending?) and the job logs in {site.log_directory or 'the jobs folder'}; "
                f"raise {site.setting('worker_start_timeout', int(2 * timeout))} for a "
                "busy queue")


def _wait_for_workers(client: Any, n: int, timeout: float, where: str) -> None:
    if n <= 0:
        return
    try:
        client.wait_for_workers(n, timeout=timeout)
    except TimeoutError:
        have = len(client.scheduler_info().get("workers", {}))
        client.close()
        raise SiteError(f"{have} of {n} worker(s) joined from {where} within "
                        f"{timeout:g} s ('worker_timeout')") from None
