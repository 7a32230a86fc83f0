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
for another batch system); two classes of the same ``type`` are an error naming both. The
base class, the registry and the session are in :mod:`pipeline.sites.base`, the built-in
types in :mod:`~pipeline.sites.local` and :mod:`~pipeline.sites.batch`, the profiles in
:mod:`~pipeline.sites.profiles`.

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


from pipeline.sites.base import (
    MMAP_THRESHOLD,
    SITE_TYPES,
    Session,
    Site,
    allocator_config,
    builtin_sites_dir,
    check_site,
    start_site,
)
from pipeline.sites.batch import (
    BatchSite,
    HTCondorSite,
    SlurmSite,
    job_script,
    make_jobqueue_cluster,
    submit_command,
)
from pipeline.sites.local import LocalSite, SchedulerSite
from pipeline.sites.profiles import (
    BUILT_IN,
    available_sites,
    describe,
    find_profiles,
    load_site,
    site_folders,
    workers_override,
)

__all__ = [
    "BUILT_IN", "MMAP_THRESHOLD", "SITE_TYPES", "BatchSite", "HTCondorSite", "LocalSite",
    "SchedulerSite", "Session", "Site", "SlurmSite", "allocator_config", "available_sites",
    "builtin_sites_dir", "check_site", "describe", "find_profiles", "job_script", "load_site",
    "make_jobqueue_cluster", "site_folders", "start_site", "submit_command",
    "workers_override",
]
