"""The pyhf workspace of a fit (HistFactory JSON, ``pyhf.Workspace(spec)`` reads it).

One channel per fitted category, one sample per simulated process: the signals carry the
``normfactor`` ``mu`` (the measurement's parameter of interest), each shape systematic a
process computed is a ``histosys`` (one-sided ones mirrored), each normalisation systematic
a ``normsys`` (``hi`` its value, ``lo`` its inverse: a log-normal like combine's ``lnN``), and
every sample of a channel the ``staterror`` ``staterror_<channel>`` (Barlow-Beeston lite
from the templates' variances, like combine's ``autoMCStats``). The observations are the
data's, or without data the total simulation (Asimov): pyhf's schema allows no free notes,
so the measurement is then named ``calibrew_asimov`` instead of ``calibrew`` (and a warning
is logged). The model, its names and its treatment of negative yields are
:mod:`pipeline.outputs.stat_model`'s, shared with the combine datacard.

Examples
--------
>>> import hist
>>> from pipeline.outputs.merged import ProcessInfo
>>> h = (hist.Hist.new.StrCat(["sig", "bkg", "data"], name="process")
...      .StrCat(["sr"], name="category").StrCat(["nominal"], name="variation")
...      .Reg(2, 0, 10, name="x").Weight())
>>> _ = h.fill(process=["sig", "bkg", "bkg", "data"], category="sr", variation="nominal",
...            x=[1, 1, 6, 6])
>>> info = {n: ProcessInfo(n, k, n, None, (n,), ("2022",), ("nominal",))
...         for n, k in [("sig", "signal"), ("bkg", "background"), ("data", "data")]}
>>> spec = build_workspace(MergedResult({"x": h}, info, {"2022": 1.0}, 13.6),
...                        FitSpec(histogram="x"))
>>> [(s["name"], s["data"], [m["type"] for m in s["modifiers"]])
...  for s in spec["channels"][0]["samples"]]
[('sig', [1.0, 0.0], ['normfactor', 'staterror']), ('bkg', [1.0, 1.0], ['staterror'])]
>>> spec["observations"], spec["measurements"][0]["config"]["poi"]
([{'name': 'sr', 'data': [0.0, 1.0]}], 'mu')
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config.models import FitSpec
from pipeline.outputs.atomic import atomic_path
from pipeline.outputs.merged import MergedResult
from pipeline.outputs.stat_model import (
    POI,
    Channel,
    Sample,
    StatModel,
    stat_model,
    staterror_name,
)

#: the measurement's name; with an Asimov observation (no data) ``calibrew_asimov``
MEASUREMENT = "calibrew"
WORKSPACE_VERSION = "1.0.0"


def build_workspace(result: MergedResult, fit: FitSpec) -> dict[str, Any]:
    """The pyhf workspace specification of ``fit`` on ``result`` (a JSON-ready dict).

    Raises :class:`~pipeline.errors.OutputError` when the fit cannot be made: no signal
    process (names the config key ``processes.<name>.kind``), an unknown histogram or
    category (see :func:`~pipeline.outputs.stat_model.stat_model`).
    """
    return workspace_spec(stat_model(result, fit))


def write_workspace(result: MergedResult, fit: FitSpec, path: Path) -> Path:
    """Write the workspace of ``fit`` as JSON to ``path``; return it."""
    path = Path(path)
    spec = build_workspace(result, fit)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(spec, indent=1) + "\n")
    return path


def workspace_spec(model: StatModel) -> dict[str, Any]:
    """The pyhf workspace specification of ``model``."""
    measurement = f"{MEASUREMENT}_asimov" if model.asimov else MEASUREMENT
    return {
        "channels": [{"name": c.name, "samples": [_sample(model, c, s) for s in c.samples]}
                     for c in model.channels],
        "observations": [{"name": c.name, "data": _floats(c.observed)}
                         for c in model.channels],
        "measurements": [{"name": measurement, "config": {"poi": POI, "parameters": []}}],
        "version": WORKSPACE_VERSION,
    }


def _sample(model: StatModel, channel: Channel, sample: Sample) -> dict[str, Any]:
    modifiers: list[dict[str, Any]] = []
    if sample.is_signal:
        modifiers.append({"name": POI, "type": "normfactor", "data": None})
    modifiers += [{"name": name, "type": "histosys",
                   "data": {"hi_data": _floats(shape.up), "lo_data": _floats(shape.down)}}
                  for name, shape in sample.shapes.items()]
    modifiers += [{"name": n.name, "type": "normsys", "data": {"hi": n.value, "lo": 1 / n.value}}
                  for n in model.normalisation if sample.name in n.samples]
    modifiers.append({"name": staterror_name(channel.name), "type": "staterror",
                      "data": _floats(np.sqrt(sample.variances))})
    return {"name": sample.name, "data": _floats(sample.values), "modifiers": modifiers}


def _floats(values: np.ndarray) -> list[float]:
    return [float(v) for v in values]
