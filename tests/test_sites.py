"""Site profiles (built-in, in cluster/, in $CALIBREW_SITES): found, loaded, validated,
overridden; the site classes, one per type."""

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


def test_every_profile_is_valid_and_listed(capsys):
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
    assert site.cluster_kwargs()["worker_extra_args"][:4] == [
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


BUILT_INS = {"local", "slurm", "slurm-hpc", "htcondor", "lxplus-htcondor", "scheduler"}


def test_builtin_profiles_are_package_data():
    """The built-in profiles live in the package (found from an installed wheel too), not
    in the checkout's cluster/."""
    from pathlib import Path

    import pipeline
    from pipeline.sites import builtin_sites_dir, find_profiles

    folder = builtin_sites_dir()
    assert folder == Path(pipeline.__file__).parent / "defaults" / "sites"
    assert {p.stem for p in folder.glob("*.yaml")} == BUILT_INS
    found = find_profiles()
    assert {name: found[name].origin for name in BUILT_INS} == dict.fromkeys(BUILT_INS,
                                                                             "built-in")
    assert load_site("local")._path == str(folder / "local.yaml")


def test_user_profiles_add_to_and_replace_the_builtin_ones(tmp_path, monkeypatch, capsys):
    """$CALIBREW_SITES (folders in order) wins over cluster/ of the working directory,
    which wins over the built-in profiles; `calibrew sites` says where each comes from."""
    import os

    from pipeline.cli import main
    from pipeline.sites import builtin_sites_dir, find_profiles, workers_override

    first, second, project = tmp_path / "first", tmp_path / "second", tmp_path / "project"
    for folder in (first, second, project / "cluster"):
        folder.mkdir(parents=True)
    (first / "slurm.yaml").write_text("type: slurm\nqueue: mine\ndescription: first\n")
    (second / "slurm.yaml").write_text("type: slurm\nqueue: other\n")
    (second / "big.yaml").write_text("type: local\nn_workers: 1\ndescription: second\n")
    (project / "cluster" / "big.yaml").write_text("type: local\nn_workers: 7\n")
    (project / "cluster" / "lab.yaml").write_text("type: scheduler\naddress: tcp://lab:8786\n")
    (project / "cluster" / "local.yaml").write_text("type: local\nthreads_per_worker: 2\n")
    monkeypatch.chdir(project)
    monkeypatch.setenv("CALIBREW_SITES", f"{first}{os.pathsep}{second}")

    found = find_profiles()
    assert BUILT_INS | {"big", "lab"} == set(found)
    assert found["slurm"].path == first / "slurm.yaml"
    assert [(h.path, h.origin) for h in found["slurm"].hides] == [
        (second / "slurm.yaml", "$CALIBREW_SITES"),
        (builtin_sites_dir() / "slurm.yaml", "built-in")]
    assert found["big"].path == second / "big.yaml"
    assert found["local"].origin == "cluster/ of the working directory"
    assert found["htcondor"].origin == "built-in"
    site = load_site("slurm")
    assert site.queue == "mine" and site.description == "first"
    assert site.label() == f"site 'slurm' ({first / 'slurm.yaml'})"
    assert load_site("local").threads_per_worker == 2
    assert load_site("lab").address == "tcp://lab:8786"
    assert workers_override("lab", 3) == {"wait_for_workers": 3}

    assert main(["sites"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"$CALIBREW_SITES: {first} $CALIBREW_SITES: {second}" in out
    assert f"cluster/ of the working directory: {project / 'cluster'}" in out
    assert "slurm slurm: 1 job(s) of 1 core(s), 4GiB, partition mine" in out
    assert f"[{first / 'slurm.yaml'}, replacing {second / 'slurm.yaml'}, the built-in one]" in out
    assert "big local: 1 worker process(es) on this machine (second)" in out
    assert "htcondor htcondor: 4 job(s)" in out and "[built-in]" in out


ECHO_SITE = """
from typing import Literal

from pipeline.errors import SiteError
from pipeline.sites import Site


class EchoSite(Site):
    \"\"\"A site type of a test: describes itself, starts nothing.\"\"\"

    type: Literal["test-echo"] = "test-echo"
    nodes: int = 1

    def describe(self) -> str:
        return f"{self.nodes} echo node(s)"

    def start(self, warn):
        raise SiteError(f"{self.label()} starts nothing")

    @classmethod
    def workers_override(cls, workers: int) -> dict:
        return {"nodes": workers}
"""


def test_site_types_register_themselves_and_refuse_a_clash(tmp_path, monkeypatch):
    """One class per site type, registered by its `type` when defined; a second class of a
    known type is an error naming both; a profile names a type of the user's own by import
    path."""
    import importlib

    from pipeline.config.plugins import NameClashError
    from pipeline.errors import SiteError
    from pipeline.sites import (
        SITE_TYPES,
        HTCondorSite,
        LocalSite,
        SchedulerSite,
        SlurmSite,
        job_script,
        workers_override,
    )

    assert dict(SITE_TYPES) == {"local": LocalSite, "scheduler": SchedulerSite,
                                "slurm": SlurmSite, "htcondor": HTCondorSite}
    monkeypatch.setattr(SITE_TYPES, "_items", dict(SITE_TYPES._items))  # restored after
    with pytest.raises(NameClashError, match=r"site type name 'slurm' is already used by "
                                             r"pipeline\.sites\.batch\.SlurmSite .*; choose "
                                             r"another name for .*test_site_types_regi.*MySlurm"):
        class MySlurm(SlurmSite):
            queue: str | None = "mine"
    assert SITE_TYPES["slurm"] is SlurmSite

    folder = tmp_path / "usermods"
    folder.mkdir()
    (folder / "calibrew_test_echo_site.py").write_text(ECHO_SITE)
    monkeypatch.syspath_prepend(str(folder))
    importlib.invalidate_caches()
    profile = tmp_path / "echo.yaml"
    profile.write_text("type: calibrew_test_echo_site:EchoSite\n")
    site = load_site(str(profile), workers_override(str(profile), 4))
    assert type(site).__name__ == "EchoSite" and site.describe() == "4 echo node(s)"
    assert site.type == "test-echo" and SITE_TYPES["test-echo"] is type(site)
    with pytest.raises(SiteError, match="a 'test-echo' site submits no batch jobs"):
        job_script(site)
    profile.write_text("type: calibrew_test_echo_site:NoSuchSite\n")
    with pytest.raises(ConfigError, match=r"type: cannot load site type|has no attribute "
                                          r"'NoSuchSite'; site types defined there: EchoSite"):
        load_site(str(profile))
    profile.write_text("type: pbs\n")
    with pytest.raises(ConfigError, match=r"type: unknown site type 'pbs'; valid types are: "
                                          r"htcondor, local, scheduler, slurm, test-echo"):
        load_site(str(profile))


def test_each_site_type_names_its_cluster_class():
    """The cluster class of each type is importable; a batch type's job class names the
    submit command checked on PATH."""
    from pipeline.sites import SITE_TYPES, BatchSite
    from pipeline.sites.base import import_object

    classes = {kind: cls.cluster_class for kind, cls in SITE_TYPES.items()}
    assert classes == {"local": "distributed:LocalCluster", "scheduler": None,
                       "slurm": "dask_jobqueue:SLURMCluster",
                       "htcondor": "dask_jobqueue:HTCondorCluster"}
    commands = {}
    for kind, cls in SITE_TYPES.items():
        if cls.cluster_class is not None:
            assert isinstance(import_object(cls.cluster_class), type)
        if issubclass(cls, BatchSite):
            commands[kind] = cls.model_validate({}).submit_command()
    assert commands == {"slurm": "sbatch", "htcondor": "condor_submit"}
