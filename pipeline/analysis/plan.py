"""What runs on a dataset's chunks: the config and parameters compiled for one dataset.

:func:`make_plan` compiles the analysis config's expressions (preselection, categories,
histogram axes, feature tables) and fixes the histogram layouts for one dataset; the
:class:`ProcessingPlan` it returns is all the chunk function
(:class:`~pipeline.analysis.processor.ChunkProcessor`) needs. A feature table is compiled into
a :class:`TablePlan` by :func:`make_table_plan`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import hist
import numpy as np

from pipeline.analysis.histogram_fill import (
    CUTFLOW,
    HistogramLayout,
    cutflow_histogram,
    from_vector,
    to_vector,
)
from pipeline.analysis.loading import analysis_vocabulary, calibrator_classes
from pipeline.calibration.calibrator import Calibrator
from pipeline.config.models import AnalysisConfig, CollectionSpec, ColumnSpec, TableSpec
from pipeline.cuts import make_cut
from pipeline.errors import ConfigError
from pipeline.selection import Expression, Vocabulary
from pipeline.table_layout import folds_attr, json_float
from pipeline.variations import NOMINAL
from pipeline.weights import canonical_weight_names

#: the first step of every cutflow
ALL_EVENTS = "all events"


@dataclass(frozen=True)
class TablePlan:
    """One table of one dataset, compiled: expressions, variations carried, label."""

    name: str
    spec: TableSpec
    preselection: tuple[tuple[str, Any], ...] | None
    aliases: tuple[tuple[str, Expression], ...]
    objects: Expression | None
    select: Expression | None
    columns: tuple[tuple[str, Expression, ColumnSpec], ...]
    collections: tuple[tuple[str, Expression, CollectionSpec], ...]
    variations: tuple[str, ...]
    weight_variations: tuple[str, ...]
    label: int | None
    label_expr: Expression | None
    is_data: bool

    @property
    def level(self) -> str:
        return self.spec.level

    def attrs(self) -> dict[str, Any]:
        """The table's static description (root attributes; the runner adds the sentinels
        the parts used)."""
        columns = {}
        for name, _, spec in self.columns:
            columns[name] = {"expr": spec.expr, "dtype": spec.dtype, "unit": spec.unit,
                             "sentinel": json_float(self.sentinel(spec)),
                             "description": spec.description}
        collections = {name: {"expr": spec.expr, "fields": spec.fields, "layout": spec.layout,
                              "length": spec.length, "sort_by": spec.sort_by,
                              "dtype": spec.dtype, "units": spec.units,
                              "variations": spec.variations}
                       for name, _, spec in self.collections}
        return {
            "table": self.name,
            "level": self.level,
            "objects": self.spec.objects,
            "select": self.spec.select,
            "aliases": dict(self.spec.aliases),
            "columns": columns,
            "collections": collections,
            "shape_variations": list(self.variations),
            "weight_variations": list(self.weight_variations),
            "labels": {"classes": self.spec.class_names(), "by_sample": dict(self.spec.labels),
                       "label": self.label, "expr": self.spec.label},
            "folds": folds_attr(),
            "units": {"weight": "per event (generator weight x weights)"},
        }

    def sentinel(self, spec: ColumnSpec) -> float:
        return self.spec.sentinel if spec.sentinel is None else spec.sentinel


def make_table_plan(name: str, spec: TableSpec, params: Any, metadata: Mapping[str, Any],
                    shape_variations: Sequence[str], weight_variations: Sequence[str],
                    vocabulary: Vocabulary | None = None) -> TablePlan:
    """Compile table ``name`` for one dataset; unknown variation names are config errors.
    ``vocabulary``: the analysis' own expression functions and definitions."""
    where = f"tables.{name}"
    if not metadata.get("isMC"):
        carried: list[str] = []  # collision data have no shape variations
    elif spec.variations == "all":
        carried = [v for v in shape_variations if v != NOMINAL]
    elif spec.variations == "none":
        carried = []
    else:
        carried = list(spec.variations)
        known = [v for v in shape_variations if v != NOMINAL]
        bad = [(f"{where}.variations[{i}]", f"unknown shape variation {v!r} for dataset "
                f"{metadata.get('dataset')!r}; its variations are: {', '.join(known) or 'none'}")
               for i, v in enumerate(carried) if v not in known]
        if bad:
            raise ConfigError("analysis config", bad)
    preselection = None
    if spec.preselection is not None:
        preselection = tuple((cut, make_cut(text, f"{where}.preselection.{cut}", params,
                                            metadata, vocabulary))
                             for cut, text in spec.preselection.items())
    sample = str(metadata.get("sample"))
    label = spec.class_names().index(spec.labels[sample]) if sample in spec.labels else None
    return TablePlan(
        name=name,
        spec=spec,
        preselection=preselection,
        aliases=tuple((a, Expression(text, f"{where}.aliases.{a}", vocabulary))
                      for a, text in spec.aliases.items()),
        objects=(Expression(spec.objects, f"{where}.objects", vocabulary) if spec.objects
                 else None),
        select=Expression(spec.select, f"{where}.select", vocabulary) if spec.select else None,
        columns=tuple((c, Expression(s.expr, f"{where}.columns.{c}", vocabulary), s)
                      for c, s in spec.column_specs().items()),
        collections=tuple((c, Expression(s.expr, f"{where}.collections.{c}.expr",
                                                 vocabulary), s)
                          for c, s in spec.collections.items()),
        variations=tuple(carried),
        weight_variations=tuple(weight_variations) if spec.weight_variations else (),
        label=label,
        label_expr=Expression(spec.label, f"{where}.label", vocabulary) if spec.label else None,
        is_data=not bool(metadata.get("isMC")),
    )


@dataclass(frozen=True)
class ProcessingPlan:
    """Everything the per-chunk function needs, fixed when the graph is built."""

    calibrators: tuple[type[Calibrator], ...]
    params: Any
    metadata: Mapping[str, Any]
    variation_calibrators: tuple[str, ...]
    weights: tuple[str, ...]
    varied_weights: tuple[str, ...]
    variations: tuple[str, ...]
    preselection: tuple[tuple[str, Any], ...]
    categories: tuple[tuple[str, Expression], ...]
    histograms: tuple[tuple[HistogramLayout, tuple[Expression, ...]], ...]
    tables: tuple[TablePlan, ...] = ()
    #: the analysis' functions and definitions (for the weights' selections)
    vocabulary: Vocabulary | None = None
    #: the histograms whose observables are computed on the events of their categories only
    on_selected: frozenset[str] = frozenset()

    @property
    def cutflow_steps(self) -> list[str]:
        return [ALL_EVENTS, *(name for name, _ in self.preselection),
                *(f"category: {name}" for name, _ in self.categories)]

    @property
    def layouts(self) -> list[HistogramLayout]:
        return [layout for layout, _ in self.histograms]

    def empty_histograms(self) -> dict[str, hist.Hist]:
        """Every histogram of the plan, empty, the cutflow last (the vector's order)."""
        out = {layout.name: layout.empty() for layout in self.layouts}
        out[CUTFLOW] = cutflow_histogram(self.cutflow_steps)
        return out

    @property
    def vector_size(self) -> int:
        return sum(to_vector(h).size for h in self.empty_histograms().values())

    def unpack(self, vector: np.ndarray) -> dict[str, hist.Hist]:
        """Turn the summed vector back into ``{name: Hist}``."""
        out, offset = {}, 0
        for name, h in self.empty_histograms().items():
            size = to_vector(h).size
            out[name] = from_vector(h, vector[offset : offset + size])
            offset += size
        return out


def make_plan(
    cfg: AnalysisConfig,
    params: Any,
    metadata: Mapping[str, Any],
    variations: Sequence[str],
    shape_variations: Sequence[str] | None = None,
) -> ProcessingPlan:
    """Compile the config's expressions and fix the histogram layouts for one dataset.

    ``shape_variations`` (default: all of ``variations``) are those of the calibrators, the
    others being weight variations.
    """
    vocabulary = analysis_vocabulary(cfg)
    categories = tuple((name, Expression(expr, f"categories.{name}", vocabulary))
                       for name, expr in cfg.categories.items())
    histograms = []
    for hname, spec in cfg.histograms.items():
        cats = tuple(spec.categories or cfg.categories)
        hvars = tuple(variations) if spec.variations else (NOMINAL,)
        layout = HistogramLayout(hname, spec, cats, hvars)
        exprs = tuple(Expression(a.expr, f"histograms.{hname}.axes[{i}].expr", vocabulary)
                      for i, a in enumerate(spec.axes))
        histograms.append((layout, exprs))
    shape = list(variations if shape_variations is None else shape_variations)
    weight_variations = [v for v in variations if v not in shape]
    tables = tuple(make_table_plan(name, spec, params, metadata, shape, weight_variations,
                                   vocabulary)
                   for name, spec in cfg.tables.items())
    return ProcessingPlan(
        tables=tables,
        calibrators=tuple(calibrator_classes(cfg)),
        params=params,
        metadata=dict(metadata),
        variation_calibrators=tuple(cfg.variations_for_sample(str(metadata["sample"]))),
        weights=canonical_weight_names(cfg.weights_for_sample(str(metadata["sample"]))),
        varied_weights=canonical_weight_names(
            cfg.weight_variations_for_sample(str(metadata["sample"]))),
        variations=tuple(variations),
        preselection=tuple(
            (name, make_cut(expr, f"preselection.{name}", params, metadata, vocabulary))
            for name, expr in cfg.preselection.items()),
        categories=categories,
        histograms=tuple(histograms),
        vocabulary=vocabulary,
        on_selected=frozenset(layout.name for layout, exprs in histograms
                              if computed_on_selected(layout.spec.evaluate_on, exprs)),
    )


#: the functions whose work grows faster than the objects (``auto`` computes the
#: observables calling them on the events of the histogram's categories only)
COMBINATORICS = frozenset({"ak.combinations", "ak.argcombinations", "ak.cartesian",
                           "ak.argcartesian"})


def computed_on_selected(evaluate_on: str, expressions: Sequence[Expression]) -> bool:
    """Whether observables are computed on the events of their histogram's categories only:
    ``evaluate_on`` says so (``selected``), or is ``auto`` and they call combinatorics.

    Examples
    --------
    >>> computed_on_selected("auto", [Expression("ak.combinations(Jet, 3).slot0.pt", "doc")])
    True
    >>> computed_on_selected("auto", [Expression("ak.sum(Jet.pt, axis=1)", "doc")])
    False
    """
    if evaluate_on == "auto":
        return any(e.calls & COMBINATORICS for e in expressions)
    return evaluate_on == "selected"


__all__ = ["ALL_EVENTS", "COMBINATORICS", "ProcessingPlan", "TablePlan",
           "computed_on_selected", "make_plan", "make_table_plan"]
