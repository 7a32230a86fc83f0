"""Event weights: the generator weight for simulation, one for collision data."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import awkward as ak

from pipeline.errors import InputFileError


def generator_weight(events: Any, metadata: Mapping[str, Any]) -> Any:
    """``genWeight`` for MC (as float64), ones for data.

    Examples
    --------
    >>> import awkward as ak
    >>> generator_weight(ak.Array([{"genWeight": 2.0}]), {"isMC": True}).tolist()
    [2.0]
    >>> generator_weight(ak.Array([{"x": 1}]), {"isMC": False}).tolist()
    [1.0]
    """
    if metadata.get("isMC"):
        if "genWeight" not in events.fields:
            raise InputFileError(
                f"dataset {metadata.get('dataset', '?')!r} is MC but its events have no "
                "genWeight branch"
            )
        return ak.values_astype(events.genWeight, "float64")
    return ak.ones_like(events.run, dtype="float64")
