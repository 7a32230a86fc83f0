"""Site profiles in cluster/: loaded, validated, overridden."""

from __future__ import annotations

import pytest

from pipeline.errors import ConfigError, UnknownNameError
from pipeline.sites import available_sites, load_site


def test_local_profile_and_overrides():
    assert "local" in available_sites()
    site = load_site("local", {"n_workers": 3})
    assert site.type == "local" and site.n_workers == 3 and site.threads_per_worker == 1


def test_unknown_site_lists_the_valid_ones():
    with pytest.raises(UnknownNameError, match="unknown site 'lxplus'; valid sites are: .*local"):
        load_site("lxplus")


def test_profile_with_unknown_key_is_rejected(tmp_path):
    profile = tmp_path / "mine.yaml"
    profile.write_text("type: local\nn_wrkers: 2\n")
    with pytest.raises(ConfigError, match=r"mine.yaml(.|\n)*n_wrkers: unknown key"):
        load_site(str(profile))


def test_every_profile_in_cluster_is_valid_and_listed(capsys):
    from pipeline.cli import main

    names = available_sites()
    assert {"local", "slurm", "htcondor", "scheduler", "slurm-hpc", "lxplus-htcondor"} <= set(names)
    assert main(["sites"]) == 0
    out = capsys.readouterr().out
    for name in names:
        assert f"  {name}  " in out
    assert "invalid" not in out


def test_command_line_override_with_unknown_key_is_named(capsys):
    from pipeline.cli import main

    assert main(["job-script", "--site", "slurm", "-o", "n_wrkers=3"]) == 2
    assert "n_wrkers: unknown key" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"adapt.maximum_jobs"):
        load_site("slurm", {"adapt.maximum_jobs": 0})
    with pytest.raises(ConfigError, match=r"type: unknown site type 'pbs'"):
        load_site("slurm", {"type": "pbs"})


def test_command_line_values(capsys):
    """``-o`` values are YAML, but a time keeps its colons; null turns a key off;
    ``--workers`` on an adaptive profile asks for that many jobs, fixed."""
    from pipeline.cli import _site_options, build_parser, main
    from pipeline.sites import workers_override

    args = build_parser().parse_args(["job-script", "--site", "slurm", "-o", "walltime=45:00",
                                      "-o", "adapt=null", "-o", "prologue=[a, b]"])
    assert _site_options(args) == {"walltime": "45:00", "adapt": None, "prologue": ["a", "b"]}
    assert main(["job-script", "--site", "slurm", "-o", "walltime=45:00"]) == 0
    assert "#SBATCH -t 45:00" in capsys.readouterr().out
    site = load_site("slurm-hpc", workers_override("slurm-hpc", 5))
    assert site.adapt is None and site.jobs == 5


def test_lifetime_must_end_before_the_walltime():
    with pytest.raises(ConfigError, match=r"lifetime 58m \+ lifetime_stagger 5m must be "
                                          "shorter than walltime 60"):
        load_site("slurm", {"walltime": 60, "lifetime": "58m"})  # SLURM: 60 minutes
    assert load_site("slurm", {"walltime": "1-00", "lifetime": "23h"}).lifetime == "23h"
    with pytest.raises(ConfigError, match=r"walltime: .*cannot read '1h' as a SLURM time"):
        load_site("slurm", {"walltime": "1h"})
    with pytest.raises(ConfigError, match=r"lifetime: .*cannot read '1h30' as a duration"):
        load_site("slurm", {"lifetime": "1h30"})


def test_slurm_job_script(capsys):
    from pipeline.cli import main

    assert main(["job-script", "--site", "slurm", "--lifetime", "20m", "-o", "cores=2",
                 "-o", "processes=2", "-o", "memory=6GiB", "-o", "account=cms",
                 "-o", "prologue=[source /opt/env/bin/activate]"]) == 0
    script = capsys.readouterr().out
    assert "#SBATCH -p local" in script and "#SBATCH -A cms" in script
    assert "#SBATCH --cpus-per-task=2" in script and "#SBATCH --mem=6G" in script
    assert "#SBATCH -t 00:30:00" in script
    assert "source /opt/env/bin/activate" in script
    assert "export MALLOC_MMAP_THRESHOLD_=268435456" in script.splitlines()
    worker = next(line for line in script.splitlines() if "dask_worker" in line)
    # after a prologue the worker runs the environment's python; 2 processes of 1 thread
    assert worker.startswith("python -m distributed.cli.dask_worker tcp://127.0.0.1:")
    assert "--nworkers 2" in worker and "--nthreads 1" in worker
    assert "--lifetime 20m --lifetime-stagger 5m" in worker


def _condor_arguments(value: str) -> list[str]:
    """Split an HTCondor 'new syntax' Arguments value: double-quoted, arguments separated
    by spaces, single quotes group (doubled to escape), doubled double quotes escape."""
    assert value.startswith('"') and value.endswith('"'), value
    text, args, current, quoted, i = value[1:-1], [], "", False, 0
    started = False
    while i < len(text):
        c = text[i]
        if c == "'" and quoted and text[i + 1 : i + 2] == "'":
            current, i = current + "'", i + 2
            continue
        if c == '"' and text[i + 1 : i + 2] == '"':
            current, i, started = current + '"', i + 2, True
            continue
        if c == "'":
            quoted, started = not quoted, True
        elif c.isspace() and not quoted:
            if started:
                args.append(current)
            current, started = "", False
        else:
            current, started = current + c, True
        i += 1
    assert not quoted, f"unbalanced quotes in {value}"
    if started:
        args.append(current)
    return args


def test_htcondor_submit_description_is_valid_and_its_worker_joins(tmp_path):
    """No HTCondor daemons here: the submit description is parsed by the HTCondor bindings,
    and the worker command it carries is run by hand; it joins the site's scheduler."""
    import os
    import subprocess

    import htcondor2 as htcondor
    from distributed import Client

    from pipeline.sites import make_jobqueue_cluster

    site = load_site("lxplus-htcondor", {"prologue": [f"cd {tmp_path}"], "host": "127.0.0.1",
                                         "scheduler_port": 0, "dashboard_address": ":0",
                                         "worker_ports": "", "log_directory": str(tmp_path)})
    cluster = make_jobqueue_cluster(site)
    worker = None
    try:
        submit = htcondor.Submit(cluster.job_script())
        assert submit["Executable"] == "/bin/sh"
        assert submit["MY.JobFlavour"] == '"longlunch"'  # +JobFlavour, as condor reads it
        assert submit.expand("MY.DaskWorkerMemory") == str(2 * 1024**3)
        assert submit.expand("Output").startswith(str(tmp_path))
        assert cluster._dummy_job.submit_command.split()[-1] == "-spool"
        shell, args = _condor_arguments(submit["Arguments"])
        # the workers' allocator setting, then the profile's prologue, then the worker
        assert shell == "-c" and args.startswith(
            f"export MALLOC_MMAP_THRESHOLD_=268435456; cd {tmp_path}; python -m distributed")
        assert "--lifetime 110m --lifetime-stagger 5m" in args
        env = {**os.environ, "PATH": f"{os.path.dirname(os.sys.executable)}:{os.environ['PATH']}"}
        worker = subprocess.Popen(["/bin/sh", "-c", args], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with Client(cluster) as client:
            client.wait_for_workers(1, timeout=120)
            assert client.submit(os.getpid).result(timeout=60) != os.getpid()
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=60)
        cluster.close()


def test_batch_site_starts_adaptive_when_workers_have_a_lifetime():
    """With a lifetime and no adapt block, retired workers are replaced (adaptive min=max)."""
    from pipeline.sites import SlurmSite

    site = load_site("slurm", {"lifetime": "20m", "jobs": 3})
    assert isinstance(site, SlurmSite) and site.adapt is None
    assert site.jobqueue_kwargs()["worker_extra_args"][:4] == [
        "--lifetime", "20m", "--lifetime-stagger", "5m"]


def _allocator_setting() -> str | None:
    import os

    return os.environ.get("MALLOC_MMAP_THRESHOLD_")


def test_local_workers_get_the_allocator_setting(monkeypatch):
    from pipeline.sites import start_site

    # distributed's nanny also sets the variable in the process that starts the workers, and
    # an inherited value wins over the config: start from an environment without it
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    for threshold, expected in ((None, None), (1 << 20, str(1 << 20))):
        session = start_site(load_site("local", {"n_workers": 1, "dashboard_address": ":0",
                                                 "malloc_mmap_threshold": threshold}))
        try:
            assert set(session.client.run(_allocator_setting).values()) == {expected}
        finally:
            session.close()
