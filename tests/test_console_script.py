"""The ``calibrew`` console script ends its process with ``os._exit`` once the command is done
(pipeline.cli.console_main): nothing printed is lost, the exit status is the command's, and
a run's outputs are complete."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import tomllib

from pipeline.cli import main

TIMEOUT_S = 600  # a bound, not an expectation


def _console(args: list[str], cwd) -> subprocess.CompletedProcess:
    """``calibrew ARGS`` as the console script runs it (``pipeline.cli.console_main``)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stdout buffered
    env["COLUMNS"] = "200"
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S)


def _ports_masked(text: str) -> str:
    """``text`` with its TCP ports replaced (a job script names its own scheduler's)."""
    return re.sub(r":\d{2,5}\b", ":PORT", text)


def test_the_console_script_is_console_main(project_root):
    with open(project_root / "pyproject.toml", "rb") as fh:
        scripts = tomllib.load(fh)["project"]["scripts"]
    assert scripts["calibrew"] == "pipeline.cli:console_main"


@pytest.mark.parametrize("args", [["sites"], ["job-script", "--site", "slurm"]])
def test_the_whole_output_arrives(args, project_root, capsys, monkeypatch):
    """``sites`` prints with rich, ``job-script`` with ``print`` (buffered on a pipe)."""
    monkeypatch.setenv("COLUMNS", "200")
    assert main(args) == 0
    expected = capsys.readouterr().out
    done = _console(args, project_root)
    assert done.returncode == 0, done.stderr
    assert _ports_masked(done.stdout) == _ports_masked(expected) and done.stdout.strip()


def test_an_error_is_printed_whole_and_its_status_kept(project_root, tmp_path):
    missing = tmp_path / "no_such_job.yaml"
    done = _console(["run", str(missing), "--no-progress"], project_root)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") or "error: " in done.stderr
    assert str(missing) in done.stderr


@pytest.mark.slow
def test_a_run_prints_its_last_line_and_writes_its_outputs(project_root, tmp_path):
    done = _console(["run", "jobs/demo.yaml", "--output", str(tmp_path / "demo"),
                     "--no-progress", "--workers", "1"], project_root)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert report["status"] == "complete"
    lines = done.stdout.strip().splitlines()
    assert any(line.startswith("processed 200 events") for line in lines), done.stdout
    assert lines[-1] == f"note: {report['results']['notes'][-1]}"  # what it prints last
