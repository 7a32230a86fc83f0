"""Digests of the demo job's and the four recipes' outputs: a change leaves them bit-identical.

A structural change (moves, splits, inverted imports) must not change what a job writes. This
script runs the demo job and the four recipe jobs (the e/gamma recipe in its two passes with
``calibrew derive`` between them, as the README runs it) into a temporary folder and records one
SHA-256 digest per output quantity:

* per histogram (``histograms.pkl``): the values and the variances (flow bins included, with
  dtype and shape), and each axis (its type, name, edges or category labels);
* per ``summary.json``: every leaf (events, cutflow, sums of weights, variation names...) as its
  exact ``repr`` (bit-exact for floats); input files by their base name;
* per feature table (``*.zarr``): every zarr array's data, dtype and shape, keyed by its path in
  the store; the attributes are left out (provenance, code digest, paths change with any edit);
* the payload ``calibrew derive`` writes (its decoded JSON).

Plots, ``histograms.root``, ``report.json`` and the attributes hold timings, versions, paths or
library metadata and are not compared.

Usage, from the checkout (the jobs and ``pipeline`` of ``--root`` are used; by default the
checkout holding this script)::

    CALIBREW_DATA=/path/to/data python tests/benchmarks/output_digests.py --out digests.json
    python tests/benchmarks/output_digests.py --compare tests/benchmarks/output_digests.json

``--compare FILE`` runs the jobs and exits with status 1, listing each digest that differs, is
missing or is new; ``--outputs DIR`` digests outputs already written there instead of running.

Examples
--------
>>> import numpy as np
>>> len(_array_digest(np.arange(3)))
64
>>> _array_digest(np.arange(3)) == _array_digest(np.arange(3, dtype=np.int32))
False
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

# (name, job file relative to the root); the e/gamma recipe's second pass reads the payload
# the first pass's table derives (configs/recipes/params/egamma_derived.yaml names it relative
# to the working directory: output/egamma/egamma_correction.json.gz).
JOBS: list[tuple[str, str]] = [
    ("demo", "jobs/demo.yaml"),
    ("egamma", "jobs/recipe_egamma.yaml"),
    ("egamma_corrected", "jobs/recipe_egamma_corrected.yaml"),
    ("higgsml", "jobs/recipe_higgsml.yaml"),
    ("top_tagging", "jobs/recipe_top_tagging.yaml"),
    ("flows", "jobs/recipe_flows.yaml"),
]
DERIVE = ("output/egamma/TTbar/features.zarr", "output/egamma/egamma_correction.json.gz")


def _sha(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()


def _array_digest(array: Any) -> str:
    """SHA-256 of an array's dtype, shape and bytes (C order).

    Examples
    --------
    >>> _array_digest([1.0, 2.0]) == _array_digest(np.array([1.0, 2.0]))
    True
    """
    array = np.ascontiguousarray(np.asarray(array))
    return _sha(array.dtype.str.encode(), repr(array.shape).encode(), array.tobytes())


def _json_digest(value: Any) -> str:
    return _sha(json.dumps(value, sort_keys=True, separators=(",", ":")).encode())


def histogram_digests(path: Path) -> dict[str, str]:
    """Digests of each histogram of a ``histograms.pkl``: values, variances and axes."""
    with open(path, "rb") as f:
        histograms = pickle.load(f)
    out: dict[str, str] = {}
    for name in sorted(histograms):
        h = histograms[name]
        out[f"{name}/values"] = _array_digest(h.values(flow=True))
        variances = h.variances(flow=True)
        out[f"{name}/variances"] = "none" if variances is None else _array_digest(variances)
        for i, axis in enumerate(h.axes):
            if hasattr(axis, "edges") and not _is_category(axis):
                content: Any = _array_digest(axis.edges)
            else:
                content = [str(label) for label in axis]
            out[f"{name}/axis{i}"] = _json_digest(
                [type(axis).__name__, axis.name, content,
                 bool(getattr(axis.traits, "underflow", False)),
                 bool(getattr(axis.traits, "overflow", False))])
    return out


def _is_category(axis: Any) -> bool:
    return type(axis).__name__.endswith("Category")


def _leaves(value: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key in sorted(value):
            yield from _leaves(value[key], f"{prefix}/{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _leaves(item, f"{prefix}/{i}")
    else:
        yield prefix, value


def summary_digests(path: Path) -> dict[str, str]:
    """Each leaf of a ``summary.json`` as its exact ``repr`` (input files by base name)."""
    summary = json.loads(path.read_text())
    out: dict[str, str] = {}
    for key, value in _leaves(summary, ""):
        if key.startswith("/files/") and isinstance(value, str):
            value = Path(value).name
        out[key.lstrip("/")] = repr(value)
    return out


def table_digests(path: Path) -> dict[str, str]:
    """Digests of each array's data, dtype and shape in a zarr store (attributes left out)."""
    import zarr

    root = zarr.open_group(str(path), mode="r")
    out: dict[str, str] = {}
    for name, array in sorted(root.arrays(), key=lambda item: item[0]):
        out[name] = _array_digest(array[...])
    for name, _group in sorted(root.groups(), key=lambda item: item[0]):
        for key, digest in table_digests(path / name).items():
            out[f"{name}/{key}"] = digest
    return out


def output_digests(outputs: Path) -> dict[str, str]:
    """Every digest of the outputs under ``outputs`` (one folder per job), keyed by path."""
    out: dict[str, str] = {}
    for file in sorted(outputs.rglob("*")):
        rel = file.relative_to(outputs).as_posix()
        if file.name == "histograms.pkl":
            out.update({f"{rel}/{k}": v for k, v in histogram_digests(file).items()})
        elif file.name == "summary.json":
            out.update({f"{rel}/{k}": v for k, v in summary_digests(file).items()})
        elif file.suffix == ".zarr" and file.is_dir():
            out.update({f"{rel}/{k}": v for k, v in table_digests(file).items()})
        elif file.name.endswith(".json.gz"):
            out[rel] = _json_digest(json.loads(gzip.decompress(file.read_bytes())))
    return out


def _env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("CALIBREW_DATA", str(root.parent / "shared" / "data"))
    return env


def run_jobs(root: Path, workdir: Path, names: list[str], workers: int) -> str:
    """Run the jobs of ``root`` in ``workdir``; return the file of the ``pipeline`` used."""
    env = _env(root)
    cli = [sys.executable, "-m", "pipeline"]
    used = subprocess.run([sys.executable, "-c", "import pipeline; print(pipeline.__file__)"],
                          cwd=workdir, env=env, check=True, capture_output=True, text=True)
    for name, job in JOBS:
        if name not in names:
            continue
        command = [*cli, "run", str(root / job), "--output", f"output/{name}", "--no-progress",
                   "--workers", str(workers)]
        print("+", " ".join(command), file=sys.stderr, flush=True)
        subprocess.run(command, cwd=workdir, env=env, check=True)
        if name == "egamma":
            derive = [*cli, "derive", DERIVE[0], "--out", DERIVE[1]]
            print("+", " ".join(derive), file=sys.stderr, flush=True)
            subprocess.run(derive, cwd=workdir, env=env, check=True)
    return used.stdout.strip()


def environment(root: Path) -> dict[str, Any]:
    """What the digests depend on besides the code: the commit, the machine, the versions
    of the numerical libraries (numpy's vectorized ``exp`` differs by an ulp between CPUs)."""
    import importlib.metadata
    import platform

    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    versions = {}
    for name in ("numpy", "awkward", "numba", "correctionlib", "coffea", "dask", "hist", "zarr",
                 "uproot", "pyarrow", "scipy"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return {"commit": commit, "python": platform.python_version(),
            "machine": f"{platform.machine()} {platform.processor()}".strip(),
            "versions": versions}


def compare(recorded: dict[str, str], current: dict[str, str]) -> list[str]:
    """The differences between two digest maps, one line each (empty when identical).

    Examples
    --------
    >>> compare({"a": "1", "b": "2"}, {"a": "1", "b": "3", "c": "4"})
    ['differs: b', 'new: c']
    """
    lines = []
    for key in sorted(set(recorded) | set(current)):
        if key not in current:
            lines.append(f"missing: {key}")
        elif key not in recorded:
            lines.append(f"new: {key}")
        elif recorded[key] != current[key]:
            lines.append(f"differs: {key}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT,
                        help="checkout whose jobs and pipeline run (default: this one)")
    parser.add_argument("--out", type=Path, help="write the digests (JSON) here")
    parser.add_argument("--compare", type=Path, metavar="FILE",
                        help="compare with recorded digests; exit 1 listing the differences")
    parser.add_argument("--jobs", default=",".join(name for name, _ in JOBS),
                        help="comma-separated job names (default: all)")
    parser.add_argument("--workers", type=int, default=2, help="local workers per job")
    parser.add_argument("--outputs", type=Path,
                        help="digest outputs already written in this folder (no run)")
    parser.add_argument("--keep", type=Path, help="run in this folder and keep the outputs")
    args = parser.parse_args(argv)

    names = args.jobs.split(",")
    unknown = set(names) - {name for name, _ in JOBS}
    if unknown:
        parser.error(f"unknown jobs {sorted(unknown)}; known: {[name for name, _ in JOBS]}")
    if "egamma_corrected" in names and "egamma" not in names:
        parser.error("egamma_corrected needs egamma (its derived payload)")

    meta: dict[str, Any] = {"jobs": names, **environment(args.root.resolve())}
    if args.outputs:
        digests = output_digests(args.outputs / "output")
        meta["jobs"] = sorted({key.split("/")[0] for key in digests})
    else:
        with tempfile.TemporaryDirectory(prefix="calibrew-digests-") as tmp:
            workdir = args.keep or Path(tmp)
            workdir.mkdir(parents=True, exist_ok=True)
            meta["pipeline"] = run_jobs(args.root.resolve(), workdir, names, args.workers)
            digests = output_digests(workdir / "output")
    print(f"{len(digests)} digests; pipeline: {meta.get('pipeline', 'not run')}", file=sys.stderr)

    if args.out:
        args.out.write_text(json.dumps({"meta": meta, "digests": digests}, indent=1,
                                       sort_keys=True) + "\n")
    if args.compare:
        record = json.loads(args.compare.read_text())
        for key in ("versions", "python", "machine"):
            if record.get("meta", {}).get(key) != meta.get(key):
                print(f"warning: {key} differs from the record's: {record['meta'].get(key)}"
                      f" (recorded) and {meta.get(key)} (now)", file=sys.stderr)
        recorded = record["digests"]
        if not args.outputs:  # the jobs run (all recorded ones when digesting a folder)
            recorded = {k: v for k, v in recorded.items() if k.split("/")[0] in names}
        differences = compare(recorded, digests)
        for line in differences:
            print(line)
        if differences:
            print(f"{len(differences)} difference(s) with {args.compare}", file=sys.stderr)
            return 1
        print(f"identical to {args.compare} ({len(digests)} digests)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
