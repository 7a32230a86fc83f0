"""Plan a run's datasets: one traced plan per analysis shape, kept on disk.

Tracing a dataset's chunk function on typetracers (every calibrator and expression, to
find its variations and the columns it reads) is the costly part of building its graph.
What it yields depends only on the dataset's
:func:`~pipeline.graph.analysis_shape` and on the configuration, parameters and code
(:func:`~pipeline.run.identity.plan_identity`), so the :class:`Planner` traces each shape
once, and builds every dataset's graph from that plan without tracing again. A traced plan
is saved under ``<cache dir>/plans/`` (:class:`PlanCache`): a rerun traces nothing. A
cache entry that cannot be read is reported and traced again; an entry is written
atomically, and a cache that cannot be written only costs a note.

Examples
--------
>>> import tempfile
>>> from pipeline.graph import TracedPlan
>>> cache = PlanCache({"config": "abc"}, Path(tempfile.mkdtemp()))
>>> shape = {"metadata": {"isMC": True}}
>>> cache.load(shape) is None
True
>>> cache.save(shape, TracedPlan(("nominal",), (), frozenset({"nJet"})))
>>> cache.load(shape).columns
frozenset({'nJet'})
>>> PlanCache({"config": "xyz"}, cache.folder).load(shape) is None  # another config
True
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.analysis.processor import TableSink
from pipeline.config.models import AnalysisConfig
from pipeline.errors import OutputError
from pipeline.graph import (
    DatasetGraph,
    TracedPlan,
    analysis_shape,
    build_dataset_graph,
    read_events,
    trace_plan,
)
from pipeline.inputs.datafiles import cache_dir
from pipeline.inputs.datasets import Dataset
from pipeline.outputs.atomic import atomic_path

PLANS = "plans"


def _ignore(message: str) -> None:
    """A note nobody reads (the default of :class:`PlanCache` and :class:`Planner`)."""


class PlanCache:
    """Traced plans on disk, one JSON file per plan: ``<folder>/<key>.json``, the key a hash
    of ``identity`` (:func:`~pipeline.run.identity.plan_identity`) and the analysis shape.

    ``folder`` defaults to ``<cache dir>/plans``; ``note`` is told about an entry that
    cannot be read (it is then traced again) or written.
    """

    def __init__(self, identity: Mapping[str, Any], folder: Path | None = None,
                 note: Callable[[str], None] = _ignore) -> None:
        self.identity = dict(identity)
        self.folder = cache_dir() / PLANS if folder is None else folder
        self.note = note

    def key(self, shape: Mapping[str, Any]) -> str:
        """The name of the plan of ``shape`` (a hash)."""
        text = json.dumps({"identity": self.identity, "shape": shape}, sort_keys=True,
                          default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def path(self, shape: Mapping[str, Any]) -> Path:
        return self.folder / f"{self.key(shape)}.json"

    def load(self, shape: Mapping[str, Any]) -> TracedPlan | None:
        """The saved plan of ``shape``, or ``None`` (none saved, or one that cannot be read:
        noted)."""
        path = self.path(shape)
        if not path.exists():
            return None
        try:
            entry = json.loads(path.read_text())
            if entry["identity"] != self.identity or entry["shape"] != _as_json(shape):
                raise ValueError("it belongs to another configuration or shape")
            return TracedPlan.from_dict(entry["plan"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            self.note(f"the saved plan {path} cannot be used ({type(err).__name__}: {err}); "
                      "it is traced again")
            return None

    def save(self, shape: Mapping[str, Any], plan: TracedPlan) -> None:
        """Save ``plan`` as the plan of ``shape`` (atomically; a failure is noted)."""
        path = self.path(shape)
        entry = {"identity": self.identity, "shape": _as_json(shape), "plan": plan.as_dict()}
        try:
            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps(entry, indent=1, sort_keys=True))
        except OutputError as err:
            self.note(f"the traced plan cannot be saved: {err}")


def _as_json(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples as lists, keys as strings)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


@dataclass
class Planner:
    """Builds the graphs of a run's datasets, tracing once per analysis shape (the plans
    are taken from, and saved to, ``cache`` when given).

    ``traced`` and ``cached`` count the plans traced and those taken from the cache;
    ``read`` holds the lazy events of the first NanoAOD dataset of each shape and uproot
    options: the others are read by their read function (no file opened, no form rebuilt).
    """

    cfg: AnalysisConfig
    params: Any
    cache: PlanCache | None = None
    plans: dict[str, TracedPlan] = field(default_factory=dict)
    read: dict[str, Any] = field(default_factory=dict)
    traced: int = 0
    cached: int = 0

    def graph(self, dataset: Dataset,
              sinks: Mapping[str, TableSink] | None = None) -> DatasetGraph:
        """The graph of ``dataset`` (its chunk tasks writing the tables' parts into
        ``sinks``), from the plan of its shape: traced here if no dataset of its shape was
        planned before (in this run, or one with the same identity when cached)."""
        # with the digest preprocessing found, no file is opened for the shape
        events = None if dataset.form_digest is not None else read_events(dataset)
        shape = analysis_shape(dataset, self.cfg, None if events is None else events._meta)
        key = json.dumps(shape, sort_keys=True, default=str)
        plan = self.plans.get(key)
        if plan is None and self.cache is not None:
            plan = self.cache.load(shape)
            self.cached += plan is not None
        if plan is None:
            events = read_events(dataset) if events is None else events
            plan = trace_plan(dataset, self.cfg, self.params, events, sinks)
            self.traced += 1
            if self.cache is not None:
                self.cache.save(shape, plan)
        elif events is None:
            events = self._read(dataset, key, plan)
        self.plans[key] = plan
        return build_dataset_graph(dataset, self.cfg, self.params, sinks, traced=plan,
                                   events=events)

    def _read(self, dataset: Dataset, key: str, plan: TracedPlan) -> Any:
        """The lazy NanoEvents of ``dataset`` (of shape ``key``), no input file opened."""
        like_key = json.dumps([key, dataset.uproot_options()], sort_keys=True, default=str)
        like = self.read.get(like_key)
        events = read_events(dataset, plan.base_form, like)
        self.read.setdefault(like_key, events)
        return events
