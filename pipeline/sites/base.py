"""What every compute site is: the :class:`Site` base class and the site-type registry,
the :class:`Session` a started site returns, and the machine and duration helpers the
site types share."""

from __future__ import annotations

import abc
import importlib
import logging
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
)

from pipeline.config.plugins import Registry
from pipeline.errors import SiteError

#: glibc's ``M_MMAP_THRESHOLD`` for the workers (bytes). distributed's nanny sets
#: ``MALLOC_TRIM_THRESHOLD_``, which also freezes glibc's mmap threshold at 128 KiB: every
#: array above it is then a fresh mmap, page-faulted anew at each allocation. Measured on
#: the demo chain (one 200k-event chunk): 6.0 kHz with distributed's setting alone, 10.4 kHz
#: with this threshold added (10.6 kHz with neither), peak memory 1.38 / 1.46 / 1.56 GiB.
MMAP_THRESHOLD = 256 * 2**20
MMAP_DESCRIPTION = ("glibc's mmap threshold for the workers (MALLOC_MMAP_THRESHOLD_, bytes): "
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


def import_object(path: str) -> Any:
    """The object at ``module:name``, imported now (a cluster class: distributed and
    dask-jobqueue are imported only by the site that starts).

    Examples
    --------
    >>> import_object("os.path:join")("a", "b")
    'a/b'
    """
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


# --- the site types -------------------------------------------------------------------------

class Site(BaseModel, abc.ABC):
    """A compute site: what every profile has, and what every kind of site does.

    A concrete subclass declares ``type: Literal["name"] = "name"`` and registers itself in
    :data:`SITE_TYPES` under that name when defined; a second class of the same name is a
    :class:`~pipeline.config.plugins.NameClashError` naming both. It says which Dask cluster
    class it starts (:attr:`cluster_class`, ``module:Name``) and with which arguments
    (:meth:`cluster_kwargs`), and implements :meth:`describe`, :meth:`start` and
    :meth:`workers_override` (:meth:`check` when something can be known wrong before
    starting).

    Another batch system of dask-jobqueue is a class of a few lines (PBS here); a profile
    names it by import path (``type: my_sites:PbsSite``) or, once its module is imported or
    declared as an entry point of group ``calibrew.sites``, by its type (``type: pbs``)::

        class PbsSite(BatchSite):
            type: Literal["pbs"] = "pbs"
            cluster_class = "dask_jobqueue:PBSCluster"
            queue: str | None = None

            def cluster_kwargs(self) -> dict[str, Any]:
                return {**super().cluster_kwargs(), "queue": self.queue}

    Examples
    --------
    >>> from pipeline.sites import LocalSite
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
        SITE_TYPES[kind] = cls  # a second class of the same type: NameClashError

    def label(self) -> str:
        """How messages name this site: its profile name and file, or its type.

        Examples
        --------
        >>> from pipeline.sites import LocalSite
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
        >>> from pipeline.sites import LocalSite
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


#: the site classes by profile ``type``, filled as each class is defined; a profile may also
#: name its class by import path (``type: my_sites:PbsSite``)
SITE_TYPES: Registry[type[Site]] = Registry("site type", "calibrew.sites", base=Site)


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


def builtin_sites_dir() -> Path:
    """The built-in profiles: package data (``pipeline/defaults/sites``), installed with
    the package.

    Examples
    --------
    >>> sorted(p.stem for p in builtin_sites_dir().glob("*.yaml"))[:2]
    ['htcondor', 'local']
    """
    return Path(str(resources.files("pipeline") / "defaults" / "sites"))


def usable_cores() -> int:
    """The cores this process may use (CPU affinity and cgroup quota counted, as Dask does)."""
    from dask.system import CPU_COUNT

    return max(1, int(CPU_COUNT))


def machine_memory() -> int:
    """The bytes this process may use (cgroup and rlimit counted, as distributed does)."""
    from distributed.system import MEMORY_LIMIT

    return int(MEMORY_LIMIT)


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
    return error_text(errors[0]) if errors else None


def error_text(err: BaseException) -> str:
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


def close_after_failed_start(session: Session) -> None:
    """Close what a failed start left; a close that fails too is logged, not raised (the
    start's own error is the one to report)."""
    try:
        session.close()
    except SiteError as err:
        logger.warning("%s", err)


def wait_for_workers(client: Any, n: int, timeout: float, where: str) -> None:
    if n <= 0:
        return
    try:
        client.wait_for_workers(n, timeout=timeout)
    except TimeoutError:
        have = len(client.scheduler_info().get("workers", {}))
        client.close()
        raise SiteError(f"{have} of {n} worker(s) joined from {where} within "
                        f"{timeout:g} s ('worker_timeout')") from None
