"""The light analysis of issue 17, in calibrew and written by hand in coffea 2026, agree.

tests/benchmarks/bench_light.py times the two; this test checks that they compute the same
thing on the 200-event sample: the same events in each b-tag region at the nominal, and the
same histograms (HT and the leading jet's pt, per region, for the nominal, JES Total Up/Down
and the b-tag weight's hf and lf systematics) to 1e-6. Both read float32 NanoAOD branches and
evaluate the same payloads in float64 (calibrew with its compiled corrections, coffea with
correctionlib), so the sums agree to about 1e-15; 1e-6 is the float32 bound of the issue.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.inputs.datafiles import find_data_file

sys.path.insert(0, str(Path(__file__).resolve().parent / "benchmarks" / "light"))

import light_calibrew
import light_coffea

TT = "nano_tt_v12.root"
CHUNKSIZE = 100  # two chunks of the 200 events
#: the events of each region at the nominal (both versions give these; not vacuous)
REGION_EVENTS = {"1b": 13, "2b": 39}
RTOL = 1e-6
VARIATIONS = {"nominal", "AK4PFPuppi_JES_TotalUp", "AK4PFPuppi_JES_TotalDown",
              "btag_hfUp", "btag_hfDown", "btag_lfUp", "btag_lfDown"}


@pytest.fixture(scope="module")
def outputs():
    """calibrew's histograms (its graph's chunks in this process) and coffea's output
    (processor.Runner with the IterativeExecutor)."""
    from coffea import processor

    path = str(find_data_file(TT))
    data_dir = str(find_data_file(light_coffea.JERC_PAYLOAD).parent)
    ours = light_calibrew.run_in_process(light_calibrew.dataset_graph(path, CHUNKSIZE)[0])
    theirs = light_coffea.run(path, data_dir, CHUNKSIZE, processor.IterativeExecutor(
        status=False))
    return ours, theirs


@pytest.mark.slow
def test_the_same_events_in_each_region(outputs):
    ours, theirs = outputs
    assert light_calibrew.region_events(ours) == REGION_EVENTS
    assert theirs["events"] == REGION_EVENTS
    assert theirs["processed"] == 200


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ht", "lead_jet_pt"])
def test_the_same_histograms(outputs, name):
    ours, theirs = outputs
    mine, other = ours[name], theirs["histograms"][name]
    assert set(mine.axes["variation"]) == set(other.axes["variation"]) == VARIATIONS
    np.testing.assert_array_equal(mine.axes[2].edges, other.axes[2].edges)
    for region in light_coffea.REGIONS:
        for variation in VARIATIONS:
            where = {"category": region, "variation": variation}
            one, two = mine[where], other[where]
            assert one.values().sum() > 0, (region, variation)
            # an event in another bin would move a whole weight (hundreds) between bins
            np.testing.assert_allclose(one.values(flow=True), two.values(flow=True),
                                       rtol=RTOL, err_msg=f"{name} {region} {variation}")
            np.testing.assert_allclose(one.variances(flow=True), two.variances(flow=True),
                                       rtol=2 * RTOL, err_msg=f"{name} {region} {variation}")


@pytest.mark.slow
def test_the_variations_move_the_histograms(outputs):
    """Not vacuous: each variation differs from the nominal (a variation that silently
    repeated the nominal in both versions would agree too)."""
    ours, _ = outputs
    h = ours["ht"]
    nominal = h[{"category": "2b", "variation": "nominal"}].values()
    for variation in VARIATIONS - {"nominal"}:
        assert not np.allclose(h[{"category": "2b", "variation": variation}].values(),
                               nominal, rtol=1e-6), variation
