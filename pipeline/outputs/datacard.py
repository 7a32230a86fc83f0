"""The combine datacard of a fit: ``datacard.txt`` and its templates, ``shapes.root``.

One datacard, one bin (channel) per fitted category. Every template is taken from
``shapes.root`` (``shapes * * shapes.root $CHANNEL/$PROCESS $CHANNEL/$PROCESS_$SYSTEMATIC``):
``<category>/<process>`` (nominal), ``<category>/<process>_<systematic>Up`` and ``Down``
(one-sided systematics mirrored), ``<category>/data_obs`` (the data, or the total
simulation: an Asimov observation, said in a comment of the datacard). The rates are ``-1``
(the templates' integrals), signals have process indices ``<= 0`` and backgrounds ``> 0``,
each shape systematic is a ``shape`` row with ``1`` for the processes that computed it,
each normalisation systematic a ``lnN`` row, and ``* autoMCStats 0`` adds the templates' MC
statistical uncertainties (Barlow-Beeston lite). The model, its names and its treatment of
negative yields are :mod:`pipeline.outputs.stat_model`'s.

Examples
--------
>>> import hist, tempfile
>>> from pipeline.outputs.merged import ProcessInfo
>>> h = (hist.Hist.new.StrCat(["sig", "bkg"], name="process").StrCat(["sr"], name="category")
...      .StrCat(["nominal"], name="variation").Reg(2, 0, 10, name="x").Weight())
>>> _ = h.fill(process=["sig", "bkg", "bkg"], category="sr", variation="nominal", x=[1, 1, 6])
>>> info = {n: ProcessInfo(n, k, n, None, (n,), ("2022",), ("nominal",))
...         for n, k in [("sig", "signal"), ("bkg", "background")]}
>>> fit = FitSpec(histogram="x", normalisation={"lumi": {"value": 1.014}})
>>> card, shapes = write_datacard(MergedResult({"x": h}, info, {"2022": 1.0}, 13.6), fit,
...                               Path(tempfile.mkdtemp()))
>>> print(card.read_text())  # doctest: +NORMALIZE_WHITESPACE
# combine datacard of histogram 'x' written by calibrew
# no data process: the observation is the total simulation of 'x' (an Asimov data set, mu = 1)
imax 1 number of channels
jmax 1 number of processes minus 1
kmax 1 number of nuisance parameters
------------------------------------------------------------
shapes * * shapes.root $CHANNEL/$PROCESS $CHANNEL/$PROCESS_$SYSTEMATIC
------------------------------------------------------------
bin          sr
observation  3
------------------------------------------------------------
bin          sr     sr
process      sig    bkg
process      0      1
rate         -1     -1
------------------------------------------------------------
lumi  lnN    1.014  1.014
------------------------------------------------------------
* autoMCStats 0
"""

from __future__ import annotations

from pathlib import Path

import hist
import numpy as np

from pipeline.config.models import FitSpec
from pipeline.outputs.atomic import atomic_path
from pipeline.outputs.merged import MergedResult
from pipeline.outputs.root_names import write_hist
from pipeline.outputs.stat_model import DATA_OBS, StatModel, stat_model

DATACARD = "datacard.txt"
SHAPES = "shapes.root"
_RULE = "-" * 60


def write_datacard(result: MergedResult, fit: FitSpec, folder: Path) -> list[Path]:
    """Write ``folder/datacard.txt`` and ``folder/shapes.root`` for ``fit``; return their
    paths.

    Raises :class:`~pipeline.errors.OutputError` when the fit cannot be made (see
    :func:`~pipeline.outputs.stat_model.stat_model`) or the files cannot be written.
    """
    model = stat_model(result, fit)
    folder = Path(folder)
    shapes = write_shapes(model, folder / SHAPES)
    card = folder / DATACARD
    with atomic_path(card) as tmp:
        tmp.write_text(datacard_text(model, SHAPES))
    return [card, shapes]


def datacard_text(model: StatModel, shapes: str = SHAPES) -> str:
    """The datacard of ``model``, its templates in the file ``shapes`` (beside it)."""
    samples = model.sample_names()
    columns = [(c, s) for c in model.channels for s in c.samples]
    index = _process_indices(model)
    lines = [f"# combine datacard of histogram {model.histogram!r} written by calibrew"]
    lines += [f"# {note}" for note in model.notes]
    lines += [f"imax {len(model.channels)} number of channels",
              f"jmax {len(samples) - 1} number of processes minus 1",
              f"kmax {len(model.shape_systematics) + len(model.normalisation)} number of "
              "nuisance parameters", _RULE,
              f"shapes * * {shapes} $CHANNEL/$PROCESS $CHANNEL/$PROCESS_$SYSTEMATIC", _RULE]
    lines += _table([["bin", "", *(c.name for c in model.channels)],
                     ["observation", "", *(_number(c.observed.sum()) for c in model.channels)]])
    lines.append(_RULE)
    rows = [["bin", "", *(c.name for c, _ in columns)],
            ["process", "", *(s.name for _, s in columns)],
            ["process", "", *(str(index[s.name]) for _, s in columns)],
            ["rate", "", *("-1" for _ in columns)]]
    systematics = [[name, "shape", *("1" if name in s.shapes else "-" for _, s in columns)]
                   for name in model.shape_systematics]
    systematics += [[n.name, "lnN", *(_number(n.value) if s.name in n.samples else "-"
                                      for _, s in columns)] for n in model.normalisation]
    table = _table(rows + systematics)
    lines += table[:len(rows)]
    if systematics:
        lines += [_RULE, *table[len(rows):]]
    lines += [_RULE, "* autoMCStats 0"]
    return "\n".join(lines) + "\n"


def write_shapes(model: StatModel, path: Path) -> Path:
    """Write the templates of ``model`` to the ROOT file ``path`` (TH1D with the observable's
    axis title in TLatex and the process label as title)."""
    import uproot

    with atomic_path(path) as tmp, uproot.recreate(tmp) as out:
        for channel in model.channels:
            for sample in channel.samples:
                label = sample.process.label
                key = f"{channel.name}/{sample.name}"
                write_hist(out, key, _th1(model, sample.values, sample.variances), label)
                for name, shape in sample.shapes.items():
                    for side, values, variances in [("Up", shape.up, shape.up_variances),
                                                    ("Down", shape.down, shape.down_variances)]:
                        write_hist(out, f"{key}_{name}{side}",
                                   _th1(model, values, variances), f"{label} ({name}{side})")
            title = "Asimov data (total simulation)" if model.asimov else "Data"
            write_hist(out, f"{channel.name}/{DATA_OBS}",
                       _th1(model, channel.observed, channel.observed_variances), title)
    return path


def _th1(model: StatModel, values: np.ndarray, variances: np.ndarray) -> hist.Hist:
    """A 1-D weighted histogram on the model's observable axis (no flow contents)."""
    h = hist.Hist(model.axis, storage=hist.storage.Weight())
    view = h.view(flow=False)
    view["value"] = values
    view["variance"] = variances
    return h


def _process_indices(model: StatModel) -> dict[str, int]:
    """combine's process indices: signals 0, -1, -2...; backgrounds 1, 2... (process
    order)."""
    out: dict[str, int] = {}
    signal, background = 0, 1
    for sample in model.channels[0].samples:
        if sample.is_signal:
            out[sample.name], signal = signal, signal - 1
        else:
            out[sample.name], background = background, background + 1
    return out


def _table(rows: list[list[str]]) -> list[str]:
    """Rows of cells as lines: a name column, a type column, value columns, aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        head = f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}" if widths[1] else \
            f"{row[0]:<{widths[0]}}"
        cells = [f"{cell:<{width}}" for cell, width in zip(row[2:], widths[2:], strict=True)]
        lines.append("  ".join([head, *cells]).rstrip())
    return lines


def _number(value: float) -> str:
    """A yield or factor in the datacard: exact enough for combine's consistency checks."""
    return f"{float(value):.10g}"
