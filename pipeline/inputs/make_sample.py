"""``calibrew make-sample``: a large NanoAOD-like file made by resampling a small real one.

Events are drawn with replacement (seeded) from the source file. Every output event gets
a unique identity (``run`` kept, ``luminosityBlock`` = 1 + i // 1000, ``event`` = i + 1),
branch names follow NanoAOD (``Jet_pt`` with counter ``nJet``), and floating-point values
receive a small relative jitter (1e-4 Gaussian, seeded) so that compression behaves as on
real data instead of on repeated values. Angles keep their range: ``phi`` is wrapped.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import uproot

from pipeline.errors import InputFileError
from pipeline.inputs.datafiles import find_data_file

IDENTITY = ("run", "luminosityBlock", "event")
BATCH = 100_000
JITTER = 1e-4


def _collections(tree: Any, keep: list[str] | None) -> tuple[dict[str, list[str]], list[str]]:
    """Group jagged branches by collection (from their counter) and list the flat ones."""
    grouped: dict[str, list[str]] = {}
    flat: list[str] = []
    counters = set()
    keys = set(tree.keys())
    for name, branch in tree.items():
        if keep is not None and name not in IDENTITY and not any(
            fnmatch.fnmatch(name, p) for p in keep
        ):
            continue
        interpretation = branch.interpretation
        if isinstance(interpretation, uproot.interpretation.jagged.AsJagged):
            collection = name.split("_", 1)[0]
            if f"n{collection}" not in keys:
                continue  # a jagged branch that does not follow NanoAOD naming
            counters.add(f"n{collection}")
            grouped.setdefault(collection, []).append(name)
        elif isinstance(interpretation, uproot.interpretation.numerical.AsDtype):
            flat.append(name)
    flat = [n for n in flat if n not in counters]
    return grouped, flat


def _jitter(values: np.ndarray, name: str, rng: np.random.Generator) -> np.ndarray:
    if not np.issubdtype(values.dtype, np.floating):
        return values
    out = values * (1 + JITTER * rng.standard_normal(values.shape)).astype(values.dtype)
    if re.search(r"(^|_)phi$", name, flags=re.IGNORECASE):
        out = (np.mod(out + np.pi, 2 * np.pi) - np.pi).astype(values.dtype)
    return out


def make_sample(source: str | Path, out: str | Path, events: int, seed: int = 1,
                keep: list[str] | None = None, console: Any = None) -> Path:
    """Write ``events`` resampled events of ``source`` to ``out``; return its path.

    Parameters
    ----------
    keep
        fnmatch patterns of branches to keep (counters and the event identity are always
        kept); None keeps every branch.
    """
    src = find_data_file(source)
    out = Path(out)
    rng = np.random.default_rng(seed)
    try:
        handle = uproot.open(src)
        tree = handle["Events"]
    except Exception as err:
        raise InputFileError(f"cannot read NanoAOD file {src}: {err}") from err
    grouped, flat = _collections(tree, keep)
    names = flat + [b for branches in grouped.values() for b in branches]
    data = tree.arrays(names, library="ak")
    n_source = len(data)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.part")
    with uproot.recreate(tmp, compression=uproot.ZLIB(1)) as fout:
        written = 0
        while written < events:
            n = min(BATCH, events - written)
            pick = rng.integers(0, n_source, n)
            batch = data[pick]
            columns: dict[str, Any] = {}
            for name in flat:
                values = ak.to_numpy(batch[name])
                columns[name] = _jitter(values, name, rng)
            ids = np.arange(written, written + n, dtype=np.uint64)
            columns["event"] = ids + 1
            columns["luminosityBlock"] = (1 + ids // 1000).astype(np.uint32)
            for collection, branches in grouped.items():
                fields = {}
                for name in branches:
                    jagged = batch[name]
                    content = _jitter(ak.to_numpy(ak.flatten(jagged)), name, rng)
                    fields[name[len(collection) + 1:]] = ak.unflatten(content, ak.num(jagged))
                columns[collection] = ak.zip(fields)
            if written == 0:
                types = {k: (v.type.content if isinstance(v, ak.Array) else v.dtype)
                         for k, v in columns.items()}
                fout.mktree("Events", types)
            fout["Events"].extend(columns)
            written += n
            if console is not None:
                console.print(f"  {written:,} / {events:,} events", end="\r")
    handle.close()
    tmp.replace(out)
    return out
