"""Systematic uncertainties from a histogram's variation axis: pairs, one-sided, mirrored.

A source with an ``Up`` and a ``Down`` variation (``JERUp``, ``JERDown``) is one shape
systematic named ``JER``. A source with only an ``Up`` variation is one-sided: its
``Down`` is the ``Up`` mirrored around the nominal (``2 nominal - up``), here, when the
results are made; it never costs an extra shape pass.

Examples
--------
>>> [(s.name, s.down) for s in shape_systematics(["nominal", "JERUp", "JERDown", "topPtUp"])]
[('JER', 'JERDown'), ('topPt', None)]
>>> up, down = up_down(np.array([10.0, 4.0]), np.array([12.0, 5.0]), None)
>>> down.tolist()
[8.0, 3.0]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ShapeSystematic:
    """A source of shape uncertainty: its name and its variations (``down`` ``None``:
    one-sided, mirrored)."""

    name: str
    up: str
    down: str | None

    @property
    def one_sided(self) -> bool:
        return self.down is None


def shape_systematics(variations: Sequence[str]) -> list[ShapeSystematic]:
    """The systematics of ``variations`` (a variation axis), in the axis' order.

    A variation that ends neither in ``Up`` nor in ``Down``, or a ``Down`` without its
    ``Up``, is not a systematic (a named alternative); it is left out.
    """
    present = set(variations)
    out = []
    for variation in variations:
        if variation.endswith("Up"):
            name = variation[:-2]
            down = f"{name}Down"
            out.append(ShapeSystematic(name, variation, down if down in present else None))
    return out


def up_down(nominal: np.ndarray, up: np.ndarray,
            down: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The up and down values of a systematic: ``down`` mirrored from ``up`` when the
    systematic is one-sided (``down`` ``None``)."""
    return up, (2 * nominal - up if down is None else down)
