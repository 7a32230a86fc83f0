"""A run's results: the merged, normalised histograms and the statistical models.

After the per-dataset outputs, a run (and ``calibrew merge``) writes into its output
directory ``histograms.pkl`` and ``histograms.root`` (every histogram by process,
:mod:`pipeline.outputs.merge`), ``merged.json``, and with the config's ``fit``, in ``fit/``,
the combine datacard with its shapes (``datacard.txt``, ``shapes.root``,
:mod:`pipeline.outputs.datacard`) and the pyhf workspace (``workspace.json``,
:mod:`pipeline.outputs.workspace`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config.models import AnalysisConfig
from pipeline.errors import ConfigError
from pipeline.outputs.datacard import write_datacard
from pipeline.outputs.merge import DATASET_SUMMARY, merge_run, normalisation_problems
from pipeline.outputs.merged import MERGED_HISTOGRAMS, MERGED_INFO, MERGED_ROOT, MergedResult
from pipeline.outputs.workspace import write_workspace

FIT = "fit"
WORKSPACE = "workspace.json"


@dataclass
class Results:
    """What :func:`write_results` wrote (``skipped``: why nothing was, when so)."""

    merged: MergedResult | None = None
    paths: list[Path] = field(default_factory=list)
    skipped: str | None = None

    def report(self) -> dict[str, Any]:
        """The run report's ``results`` entry."""
        if self.merged is None:
            return {"merged": False, "why": self.skipped}
        return {"merged": True, "outputs": [str(p) for p in self.paths],
                "processes": {name: list(p.datasets) for name, p in
                              self.merged.processes.items()},
                "luminosity_fb": self.merged.luminosity, "notes": self.merged.notes}


def check_results(cfg: AnalysisConfig, params: Any, datasets: list[str]) -> str | None:
    """Check, before anything is computed, that the results of ``datasets`` can be made.

    With ``processes`` in the config, a missing cross-section or luminosity raises
    :class:`~pipeline.errors.ConfigError` naming the key. Without (one process per sample
    by default), it returns why no merged result will be written (``None`` if it will).
    """
    problems = normalisation_problems(cfg, params, datasets)
    if not problems:
        return None
    if cfg.processes or cfg.fit is not None:
        raise ConfigError("analysis config and parameters", problems)
    keys = ", ".join(key for key, _ in problems)
    return (f"no merged results: the simulation cannot be normalised ({keys} missing); "
            "add them to get the datasets merged into processes (docs/results.md)")


def written_datasets(output: Path, cfg: AnalysisConfig) -> list[str]:
    """The config's datasets whose outputs are in ``output`` (this run's and earlier
    runs' into the same directory)."""
    return [name for name in cfg.datasets if (output / name / DATASET_SUMMARY).is_file()]


def write_results(output: Path, cfg: AnalysisConfig, params: Any) -> Results:
    """Merge the datasets written in ``output`` and write the results (each file
    atomically)."""
    datasets = written_datasets(output, cfg)
    why = check_results(cfg, params, datasets)
    if why is not None:
        return Results(skipped=why)
    merged = merge_run(output, cfg, params, datasets)
    paths = [output / MERGED_HISTOGRAMS, output / MERGED_ROOT, output / MERGED_INFO]
    if cfg.fit is not None:
        paths += write_datacard(merged, cfg.fit, output / FIT)
        paths.append(write_workspace(merged, cfg.fit, output / FIT / WORKSPACE))
    return Results(merged, paths)
