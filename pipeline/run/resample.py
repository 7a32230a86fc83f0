"""A job's ``resample:``: its datasets' files resampled into larger files, made once.

To measure a rate, a job needs more events than the small sample files hold: each file is
resampled (:func:`~pipeline.inputs.make_sample.make_sample`) into a file of the cache,
``~/.cache/calibrew/samples/``, keyed by the source's path, size and modification time and
by the resampling settings, so a second run reuses it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from rich.console import Console

from pipeline.config.models import ResampleSpec
from pipeline.errors import ConfigError
from pipeline.inputs.datafiles import cache_dir
from pipeline.inputs.datasets import Dataset
from pipeline.inputs.make_sample import make_sample
from pipeline.inputs.parquet import is_parquet


def resampled_path(source: Path, events: int, seed: int, keep: list[str] | None) -> Path:
    """Where the resampled copy of ``source`` is cached (it may not exist yet).

    Examples
    --------
    >>> import tempfile
    >>> src = Path(tempfile.mkdtemp()) / "tt.root"
    >>> _ = src.write_bytes(b"x")
    >>> resampled_path(src, 1000, 1, None).name.startswith("tt_1000_")
    True
    >>> resampled_path(src, 1000, 1, None) == resampled_path(src, 1000, 2, None)
    False
    """
    stat = source.stat()
    identity = "|".join([str(source.resolve()), str(stat.st_size), str(stat.st_mtime_ns),
                         str(events), str(seed), " ".join(sorted(keep or ["*"]))])
    tag = hashlib.sha256(identity.encode()).hexdigest()[:12]
    return cache_dir() / "samples" / f"{source.stem}_{events}_{tag}.root"


def resample_datasets(datasets: list[Dataset], spec: ResampleSpec, job: str,
                      console: Console) -> None:
    """Replace each dataset's files by resampled copies holding ``spec.events`` events
    together (split evenly over its files), made once into the cache.

    Raises :class:`~pipeline.errors.ConfigError` (key ``resample``) for remote or Parquet
    files, which cannot be resampled.
    """
    for dataset in datasets:
        bad = [f for f in dataset.files if is_parquet(f) or "://" in f]
        if bad:
            raise ConfigError(job, [("resample", f"dataset {dataset.name!r}: {bad[0]} is "
                                     "remote or Parquet; only local NanoAOD files can be "
                                     "resampled")])
        per_file = -(-spec.events // max(len(dataset.files), 1))
        dataset.files = [str(_made(Path(f), per_file, spec.seed + i, spec.keep, console))
                         for i, f in enumerate(dataset.files)]


def _made(source: Path, events: int, seed: int, keep: list[str] | None,
          console: Any) -> Path:
    path = resampled_path(source, events, seed, keep)
    if not path.exists():
        console.print(f"resampling {source.name} into {path} ({events:,} events, made once; "
                      "events repeat: for rates, not physics)")
        make_sample(source, path, events, seed=seed, keep=keep)
    return path
