"""``calibrew derive``: fit the e/gamma energy correction from a matched feature table.

Closes the loop of the e/gamma recipe (seed 001): the table of generator electrons matched
to reconstructed ones (``configs/recipes/egamma_calibration.yaml``) gives, for the matched
rows, ``gen_pt``, the reconstructed ``reco_pt`` and an eta column; the fit of
``gen_pt - reco_pt = a + b |eta|`` is written as a correctionlib payload that the
``derived_energy_correction`` calibrator applies in the next run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import CalibrewError
from pipeline.outputs.table_reader import open_table
from pipeline.recipes.egamma import (
    DEFAULT_CORRECTION,
    fit_linear_correction,
    write_correction_payload,
)


@dataclass(frozen=True)
class DerivedCorrection:
    """The fitted coefficients, the payload written and the response before and after."""

    a: float
    b: float
    eta_max: float
    rows: int
    payload: Path
    response_before: float
    response_after: float


def derive_correction(table_path: str | Path, out: str | Path, eta_column: str = "sc_eta",
                      eta_max: float = 2.5, name: str = DEFAULT_CORRECTION,
                      weighted: bool = False,
                      response_window: tuple[float, float] = (0.5, 1.5)) -> DerivedCorrection:
    """Fit the additive correction on the matched rows of a table and write the payload.

    Only rows with a response ``reco_pt / gen_pt`` inside ``response_window`` enter the fit
    (the core: a least-squares fit would otherwise follow the few badly measured objects,
    e.g. with hard bremsstrahlung). The response reported is the median of
    ``reco_pt / gen_pt`` over all matched rows, before and after applying the correction.
    ``weighted`` uses the table's ``weight``.
    """
    table = open_table(table_path)
    needed = ["matched", "gen_pt", "reco_pt", eta_column] + (["weight"] if weighted else [])
    missing = [c for c in needed if c not in table.event_columns()]
    if missing:
        raise CalibrewError(f"{table.path}: no column(s) {', '.join(missing)}; derive needs "
                            "a matched e/gamma table (configs/recipes/egamma_calibration.yaml)")
    data = table.to_numpy(needed)
    keep = data["matched"].astype(bool)
    if keep.sum() < 2:
        raise CalibrewError(f"{table.path}: {int(keep.sum())} matched row(s); a fit needs 2")
    abs_eta = np.minimum(np.abs(data[eta_column][keep].astype(np.float64)), eta_max)
    gen = data["gen_pt"][keep].astype(np.float64)
    reco = data["reco_pt"][keep].astype(np.float64)
    weights = data["weight"][keep] if weighted else None
    response = reco / gen
    core = (response > response_window[0]) & (response < response_window[1])
    if core.sum() < 2:
        raise CalibrewError(f"{table.path}: {int(core.sum())} matched row(s) with a response "
                            f"in {response_window}; a fit needs 2")
    a, b = fit_linear_correction(abs_eta[core], gen[core], reco[core],
                                 None if weights is None else weights[core])
    payload = write_correction_payload(Path(out), a, b, name=name, eta_max=eta_max)
    corrected = reco + a + b * abs_eta
    return DerivedCorrection(a, b, eta_max, int(core.sum()), payload,
                             float(np.median(response)), float(np.median(corrected / gen)))
