"""Compute sites: turn a ``cluster/<name>.yaml`` profile into a Dask cluster and client.

A profile's ``type`` picks the kind of site:

- ``local``: a Dask ``LocalCluster`` on this machine;
- ``slurm`` / ``htcondor``: batch jobs, each running Dask workers, submitted through
  ``dask_jobqueue.SLURMCluster`` / ``HTCondorCluster``; the scheduler runs in the client;
- ``scheduler``: connect to a Dask scheduler that is already running (``address``).

Every key of a profile can be overridden on the command line
(``calibrew run JOB --site slurm -o jobs=8 -o adapt.maximum_jobs=20``); a key a profile's
type does not know is rejected with its name.

Examples
--------
>>> site = load_site("local", {"n_workers": 2})
>>> site.type, site.n_workers
('local', 2)
>>> load_site("slurm", {"lifetime": "20m"}).worker_args()[:2]
['--lifetime', '20m']
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.errors import ConfigError, SiteError, UnknownNameError
from pipeline.parameters import format_validation_error
from pipeline.samples import PROJECT_ROOT

#: glibc's ``M_MMAP_THRESHOLD`` for the workers (bytes). distributed's nanny sets
#: ``MALLOC_TRIM_THRESHOLD_``, which also freezes glibc's mmap threshold at 128 KiB: every
#: array above it is then a fresh mmap, page-faulted anew at each allocation. Measured on
#: the demo chain (one 200k-event chunk): 6.0 kHz with distributed's setting alone, 10.4 kHz
#: with this threshold added (10.6 kHz with neither), peak memory 1.38 / 1.46 / 1.56 GiB.
MMAP_THRESHOLD = 256 * 2**20
_MMAP_DESCRIPTION = ("glibc's mmap threshold for the workers (MALLOC_MMAP_THRESHOLD_, bytes): "
                     "large arrays come from the heap instead of fresh page-faulted mappings; "
                     "null leaves the workers' allocator as distributed sets it")


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


class Profile(BaseModel):
    """What every profile has: a one-line description shown by ``calibrew sites``."""

    model_config = ConfigDict(extra="forbid")
    description: str = ""


class LocalSite(Profile):
    """A Dask ``LocalCluster``: worker processes on this machine."""

    type: Literal["local"] = "local"
    n_workers: int | None = Field(default=None, gt=0, description="default: one per core")
    threads_per_worker: int = Field(default=1, gt=0)
    memory_limit: str | int | None = "auto"
    dashboard_address: str = ":8787"
    malloc_mmap_threshold: int | None = Field(default=MMAP_THRESHOLD, gt=0,
                                              description=_MMAP_DESCRIPTION)


class SchedulerSite(Profile):
    """An existing Dask scheduler (started by hand, by a facility, by ``dask-gateway``...)."""

    type: Literal["scheduler"] = "scheduler"
    address: str = Field(description="tcp://host:port of the scheduler")
    connect_timeout: float = Field(default=10.0, gt=0, description="seconds")
    wait_for_workers: int = Field(default=1, ge=0, description="workers needed to start")
    worker_timeout: float = Field(default=300.0, gt=0, description="seconds")


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


class BatchSite(Profile):
    """What SLURM and HTCondor profiles share (dask-jobqueue's job options)."""

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

    def jobqueue_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of the dask-jobqueue cluster class."""
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


class SlurmSite(BatchSite):
    """Workers in SLURM jobs (``dask_jobqueue.SLURMCluster``)."""

    type: Literal["slurm"] = "slurm"
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

    def jobqueue_kwargs(self) -> dict[str, Any]:
        return {**super().jobqueue_kwargs(), "queue": self.queue, "account": self.account,
                "walltime": self.walltime, "job_extra_directives": self.job_extra_directives}


class HTCondorSite(BatchSite):
    """Workers in HTCondor jobs (``dask_jobqueue.HTCondorCluster``)."""

    type: Literal["htcondor"] = "htcondor"
    disk: str = "4GiB"
    spool: bool = Field(default=False, description="condor_submit -spool (no shared "
                        "filesystem between the submit host and the workers' log files)")
    job_extra_directives: dict[str, str] = Field(default_factory=dict, description="extra "
                                                 "submit-description lines, e.g. +JobFlavour")

    def jobqueue_kwargs(self) -> dict[str, Any]:
        return {**super().jobqueue_kwargs(), "disk": self.disk,
                "job_extra_directives": self.job_extra_directives,
                "submit_command_extra": ["-spool"] if self.spool else []}


Site = LocalSite | SchedulerSite | SlurmSite | HTCondorSite
SITE_TYPES: dict[str, type[Profile]] = {"local": LocalSite, "scheduler": SchedulerSite,
                                        "slurm": SlurmSite, "htcondor": HTCondorSite}


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


def sites_dir() -> Path:
    """The folder of site profiles (``$CALIBREW_SITES`` or ``cluster/`` of the project)."""
    return Path(os.environ.get("CALIBREW_SITES", PROJECT_ROOT / "cluster"))


def available_sites() -> list[str]:
    return sorted(p.stem for p in sites_dir().glob("*.yaml"))


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
    :class:`ConfigError` naming the profile file and the key at fault.
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
    assert isinstance(site, LocalSite | SchedulerSite | SlurmSite | HTCondorSite)
    return site


def _read_profile(name: str) -> tuple[Path, dict[str, Any]]:
    from pipeline.config import read_yaml

    path = Path(name) if name.endswith((".yaml", ".yml")) else sites_dir() / f"{name}.yaml"
    if not path.exists():
        raise UnknownNameError("site", name, available_sites(), where="site")
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), [("", "expected a mapping at the top level")])
    return path, data


def workers_override(site_name: str, workers: int | None) -> dict[str, Any]:
    """``--workers N`` as a profile override: worker processes locally, the workers to wait
    for on a scheduler, a fixed number of jobs on batch (adaptive scaling off)."""
    if workers is None:
        return {}
    kind = _read_profile(site_name)[1].get("type", "local")
    return {"local": {"n_workers": workers}, "scheduler": {"wait_for_workers": workers}}.get(
        kind, {"jobs": workers, "adapt": None})


def describe(site: Site) -> str:
    """What ``site`` starts, in one line (its type and description are apart).

    Examples
    --------
    >>> describe(load_site("slurm", {"jobs": 3}))
    '3 job(s) of 1 core(s), 3GiB, partition local, walltime 00:30:00'
    """
    if isinstance(site, LocalSite):
        what = f"{site.n_workers or os.cpu_count()} worker process(es) on this machine"
    elif isinstance(site, SchedulerSite):
        what = f"the scheduler at {site.address}"
    else:
        scale = (f"{site.adapt.minimum_jobs}-{site.adapt.maximum_jobs} jobs (adaptive)"
                 if site.adapt else f"{site.jobs} job(s)")
        what = f"{scale} of {site.cores} core(s), {site.memory}"
        if isinstance(site, SlurmSite):
            what += f", partition {site.queue or '(default)'}, walltime {site.walltime}"
        if site.lifetime:
            what += f", lifetime {site.lifetime}"
    return what


def make_jobqueue_cluster(site: SlurmSite | HTCondorSite) -> Any:
    """The dask-jobqueue cluster of ``site`` (its scheduler starts; no job is submitted)."""
    if isinstance(site, SlurmSite):
        from dask_jobqueue import SLURMCluster

        return SLURMCluster(**site.jobqueue_kwargs())
    from dask_jobqueue import HTCondorCluster

    return HTCondorCluster(**site.jobqueue_kwargs())


def job_script(site: Site) -> str:
    """The submit script a batch site sends for each job."""
    if not isinstance(site, SlurmSite | HTCondorSite):
        raise SiteError(f"a {site.type!r} site submits no batch jobs: no job script")
    cluster = make_jobqueue_cluster(site)
    try:
        return str(cluster.job_script())
    finally:
        cluster.close()


@dataclass
class Session:
    """A started site: the client, the cluster it owns (if any), and how to close both."""

    client: Any
    cluster: Any = None

    @property
    def dashboard_link(self) -> str:
        return str(self.client.dashboard_link)

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def start_site(site: Site) -> Session:
    """Start (or connect to) the cluster of ``site`` and return the session."""
    from distributed import Client, LocalCluster

    if isinstance(site, LocalSite):
        import dask

        with dask.config.set(allocator_config(site.malloc_mmap_threshold)):
            cluster = LocalCluster(
                n_workers=site.n_workers or max(1, os.cpu_count() or 1),
                threads_per_worker=site.threads_per_worker, processes=True,
                memory_limit=site.memory_limit, dashboard_address=site.dashboard_address,
                silence_logs=40,
            )
        return Session(Client(cluster), cluster)
    if isinstance(site, SchedulerSite):
        try:
            client = Client(site.address, timeout=site.connect_timeout)
        except (OSError, TimeoutError) as err:
            raise SiteError(f"cannot reach the Dask scheduler at {site.address} (site key "
                            f"'address') within {site.connect_timeout:g} s "
                            f"('connect_timeout'): {err}") from None
        _wait_for_workers(client, site.wait_for_workers, site.worker_timeout,
                          f"the scheduler at {site.address}")
        return Session(client)
    cluster = make_jobqueue_cluster(site)
    try:
        # adaptive even for a fixed number of jobs (minimum = maximum): a job that ends
        # (walltime, lifetime, preemption) is replaced by a new one
        low, high = ((site.adapt.minimum_jobs, site.adapt.maximum_jobs) if site.adapt
                     else (site.jobs, site.jobs))
        cluster.adapt(minimum_jobs=low, maximum_jobs=high)
        client = Client(cluster)
        if site.worker_start_timeout is not None and low > 0:
            _wait_for_workers(client, 1, site.worker_start_timeout,
                              f"the {site.type} jobs (check the queue and log_directory)")
    except BaseException:
        cluster.close()
        raise
    return Session(client, cluster)


def _wait_for_workers(client: Any, n: int, timeout: float, where: str) -> None:
    if n <= 0:
        return
    try:
        client.wait_for_workers(n, timeout=timeout)
    except TimeoutError:
        have = len(client.scheduler_info().get("workers", {}))
        client.close()
        raise SiteError(f"{have} of {n} worker(s) joined from {where} within "
                        f"{timeout:g} s") from None
