"""Batch sites: Dask workers in batch jobs submitted through dask-jobqueue (``slurm``,
``htcondor``; another batch system is one more subclass of :class:`BatchSite`)."""

from __future__ import annotations

import logging
import re
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from pipeline.errors import SiteError
from pipeline.sites.base import (
    MMAP_DESCRIPTION,
    MMAP_THRESHOLD,
    Session,
    Site,
    Submissions,
    close_after_failed_start,
    duration_s,
    import_object,
    slurm_time_s,
)

logger = logging.getLogger(__name__)


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
                                              description=MMAP_DESCRIPTION)
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
        cluster = import_object(self.cluster_class)
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
        job = import_object(self.cluster_class).job_cls
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


# --- batch jobs -----------------------------------------------------------------------------

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
        close_after_failed_start(session)
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
