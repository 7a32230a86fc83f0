"""Sites that cannot start, and sessions that cannot close: one clear error, at once.

No test here starts more workers than the machine has: a cluster that would start them is
replaced by one that fails the test at once. Batch sites run against fake ``sbatch`` /
``scancel`` scripts on PATH (or a PATH without them); every wait is bounded generously,
and each test asserts on the outcome, never on how long it took.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.errors import SiteError
from pipeline.sites import Session, Site, load_site, start_site


def _cores() -> int:
    """The usable cores as Dask counts them (affinity and cgroup quota)."""
    from dask.system import CPU_COUNT

    return int(CPU_COUNT)


def _memory() -> int:
    """The usable memory as distributed counts it (cgroup and rlimit)."""
    from distributed.system import MEMORY_LIMIT

    return int(MEMORY_LIMIT)


class _NoClusterMayStart:
    """Stands for ``distributed.LocalCluster``: any start fails the test at once."""

    started: list[dict] = []

    def __init__(self, *args, **kwargs):
        type(self).started.append(kwargs)
        raise AssertionError(f"a LocalCluster was started with {kwargs}")


@pytest.fixture()
def no_local_cluster(monkeypatch):
    import distributed

    _NoClusterMayStart.started = []
    monkeypatch.setattr(distributed, "LocalCluster", _NoClusterMayStart)
    return _NoClusterMayStart


def test_local_workers_beyond_the_cores_are_refused_before_any_start(no_local_cluster):
    """``--workers 64`` on a 2-core machine: refused with the site, the numbers, the fix."""
    cores = _cores()
    n = 32 * cores  # 64 on the 2-core machine of the report
    site = load_site("local", {"n_workers": n, "dashboard_address": ":0"})
    with pytest.raises(SiteError) as caught:
        start_site(site)
    message = str(caught.value)
    assert no_local_cluster.started == []
    assert "site 'local' (" in message and "local.yaml" in message
    assert f"{n} worker process(es) x 1 thread(s) on {cores} usable core(s)" in message
    assert f"--workers {cores}" in message and "'oversubscribe'" in message
    assert "-o oversubscribe=true" in message


def test_memory_limits_beyond_the_machine_are_refused(no_local_cluster):
    """Explicit memory limits that add up to more than the machine has are refused too."""
    from dask.utils import format_bytes

    per_worker = _memory()  # two workers of the whole machine's memory each
    site = load_site("local", {"n_workers": 1, "memory_limit": 2 * per_worker,
                               "dashboard_address": ":0"})
    with pytest.raises(SiteError) as caught:
        start_site(site)
    message = str(caught.value)
    assert no_local_cluster.started == []
    assert f"1 x memory_limit {format_bytes(2 * per_worker)}" in message
    assert f"beyond this machine's {format_bytes(_memory())}" in message
    assert "Lower 'memory_limit' in " in message and "(-o memory_limit=auto)" in message


def test_auto_memory_limit_shares_the_machine_between_the_workers(no_local_cluster):
    """``memory_limit: auto`` gives each worker its share of the machine, whatever the
    number of workers (distributed's own ``auto`` gives each one its cores' share: with
    fewer workers than cores, memory left unused; with more, memory promised twice)."""
    site = load_site("local", {"n_workers": 1, "dashboard_address": ":0"})
    with pytest.raises(AssertionError, match="a LocalCluster was started"):
        start_site(site)
    (kwargs,) = no_local_cluster.started
    assert kwargs["memory_limit"] == _memory()


def test_oversubscribe_starts_them_with_a_warning(no_local_cluster):
    site = load_site("local", {"n_workers": 2 * _cores(), "oversubscribe": True,
                               "dashboard_address": ":0"})
    warnings: list[str] = []
    with pytest.raises(AssertionError, match="a LocalCluster was started"):
        start_site(site, warn=warnings.append)
    (warning,) = warnings
    assert f"{2 * _cores()} worker process(es)" in warning and "'oversubscribe' is set" in warning
    (kwargs,) = no_local_cluster.started
    assert kwargs["memory_limit"] == _memory() // (2 * _cores())


def test_too_many_workers_through_the_command_line(no_local_cluster, project_root, tmp_path,
                                                   capsys):
    """What the user sees: exit code 2 and the message, no traceback, nothing started."""
    from pipeline.cli import main

    n = 32 * _cores()
    code = main(["run", str(project_root / "jobs" / "demo.yaml"), "--output",
                 str(tmp_path / "out"), "--workers", str(n), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{n} worker process(es)" in err and "Traceback" not in err
    assert no_local_cluster.started == []


@pytest.fixture()
def hanging_worker_start(monkeypatch):
    """Worker processes whose start hangs until released (or 90 s pass): a machine too
    busy to start them. Yields the event that releases them."""
    from distributed import Nanny
    from distributed.core import Status

    release = threading.Event()

    async def instantiate(self):
        import asyncio

        for _ in range(900):
            if release.is_set():
                break
            await asyncio.sleep(0.1)
        return Status.failed  # the worker never started

    monkeypatch.setattr(Nanny, "instantiate", instantiate)
    yield release
    release.set()


def test_local_cluster_that_does_not_start_in_time(hanging_worker_start, monkeypatch):
    """A cluster that does not start: the site, the timeout and the setting named."""
    import distributed

    close = distributed.LocalCluster.close

    def close_releasing(self, *args, **kwargs):  # the workers give up once it closes
        hanging_worker_start.set()
        return close(self, *args, **kwargs)

    monkeypatch.setattr(distributed.LocalCluster, "close", close_releasing)
    site = load_site("local", {"n_workers": 1, "dashboard_address": ":0",
                               "start_timeout": 2})
    with pytest.raises(SiteError) as caught:
        start_site(site)
    message = str(caught.value)
    assert "0 of 1 worker process(es) of site 'local' (" in message
    assert "joined within 2 s" in message
    assert "raise 'start_timeout' in " in message and "(-o start_timeout=4)" in message


def test_a_close_that_hangs_is_an_error_and_goes_on_in_the_background(hanging_worker_start):
    """Session.close is bounded: a cluster that cannot close in time raises SiteError (the
    runner reports it as a warning), and the close finishes on its own afterwards."""
    from distributed import Client, LocalCluster
    from distributed.core import Status

    cluster = LocalCluster(n_workers=0, processes=True, dashboard_address=":0",
                           silence_logs=40)
    client = Client(cluster)
    cluster.scale(1)
    session = Session(client, cluster)
    session.label, session.close_timeout = "site 'x'", 1
    with pytest.raises(SiteError) as caught:
        session.close()
    message = str(caught.value)
    assert "site 'x' did not close cleanly (the cluster: still closing after 1 s" in message
    assert "its worker processes end with this process" in message
    assert cluster.status != Status.closed
    hanging_worker_start.set()
    for _ in range(1200):  # the close goes on, and ends once the worker start gives up
        if cluster.status == Status.closed:
            break
        time.sleep(0.1)
    assert cluster.status == Status.closed


def _fake_commands(folder: Path, sbatch: str) -> str:
    """A PATH whose ``sbatch`` runs the shell lines ``sbatch`` and whose ``scancel`` does
    nothing; the rest of PATH follows."""
    folder.mkdir()
    for name, body in (("sbatch", sbatch), ("scancel", "exit 0")):
        (folder / name).write_text(f"#!/bin/sh\n{body}\n")
        (folder / name).chmod(0o755)
    return f"{folder}{os.pathsep}{os.environ['PATH']}"


def _slurm(tmp_path: Path, **overrides) -> Site:
    return load_site("slurm", {"dashboard_address": ":0", "log_directory": str(tmp_path),
                               "python": sys.executable, **overrides})


REFUSAL = ("sbatch: error: Batch job submission failed: Invalid account or "
           "account/partition combination specified")


@pytest.mark.parametrize("worker_start_timeout", [120, None])
def test_sbatch_that_refuses_the_job_fails_at_once_with_its_own_words(
        tmp_path, monkeypatch, worker_start_timeout):
    monkeypatch.setenv("PATH", _fake_commands(tmp_path / "bin", f"echo '{REFUSAL}' >&2\n"
                                                                "exit 1"))
    site = _slurm(tmp_path, worker_start_timeout=worker_start_timeout)
    with pytest.raises(SiteError) as caught:
        start_site(site)
    message = str(caught.value)
    assert "site 'slurm' (" in message and "slurm.yaml" in message
    assert f"sbatch exited with code 1: {REFUSAL}" in message


def test_missing_sbatch_fails_before_anything_starts(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(SiteError) as caught:
        start_site(_slurm(tmp_path, worker_start_timeout=120))
    message = str(caught.value)
    assert "site 'slurm' (" in message
    assert "submits its jobs with 'sbatch', which is not found on PATH" in message


def test_submitted_jobs_whose_workers_never_join_name_the_jobs_and_the_setting(
        tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", _fake_commands(tmp_path / "bin",
                                              "echo 'Submitted batch job 4242'"))
    with pytest.raises(SiteError) as caught:
        start_site(_slurm(tmp_path, worker_start_timeout=2, jobs=1))
    message = str(caught.value)
    assert "no worker joined from the 1 job(s) of site 'slurm' (" in message
    assert "(job ids: 4242)" in message and str(tmp_path) in message
    assert "raise 'worker_start_timeout' in " in message
    assert "(-o worker_start_timeout=4)" in message


def test_a_refusal_while_computing_is_recorded_and_logged_once(tmp_path, monkeypatch, caplog):
    """Adaptive jobs submitted after the start: the session records the command's words
    (a runner may poll them) and logs one line, not a traceback."""
    monkeypatch.setenv("PATH", _fake_commands(tmp_path / "bin", f"echo '{REFUSAL}' >&2\n"
                                                                "exit 1"))
    site = _slurm(tmp_path, adapt={"minimum_jobs": 0, "maximum_jobs": 1})
    caplog.set_level(logging.ERROR, logger="pipeline.sites")
    session = start_site(site)
    try:
        assert session.submissions is not None and session.submissions.errors == []
        future = session.client.submit(sum, [1, 2])  # adaptive scaling asks for a job
        for _ in range(1200):
            if session.submissions.errors:
                break
            time.sleep(0.1)
        assert session.submissions.errors == [f"sbatch exited with code 1: {REFUSAL}"]
        future.cancel()
    finally:
        session.close()
    logged = [r.getMessage() for r in caplog.records if r.name == "pipeline.sites.batch"]
    assert logged and all(REFUSAL in line and "\n" not in line for line in logged)
    assert "a batch job was not submitted" in logged[0]


def test_check_site_refuses_before_anything_is_planned_or_started(no_local_cluster, tmp_path,
                                                                  monkeypatch):
    """What a runner calls right after loading the site, before planning: the same
    refusals as start_site, nothing started, and a sound site passes."""
    from pipeline.sites import check_site

    with pytest.raises(SiteError, match=r"site 'local' \(.*worker process\(es\) x 1 thread"):
        check_site(load_site("local", {"n_workers": 32 * _cores()}))
    check_site(load_site("local", {"n_workers": 2 * _cores(), "oversubscribe": True}))
    check_site(load_site("local"))
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(SiteError, match="submits its jobs with 'sbatch', which is not found"):
        check_site(_slurm(tmp_path))
    assert no_local_cluster.started == []
