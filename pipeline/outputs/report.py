"""The run report, ``<output>/report.json``: what ran, how fast, what was written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.outputs.atomic import atomic_path


def write_json(data: Any, path: Path) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return path
