"""Random smearing is keyed by event identity: the same numbers whatever the chunking and the
number of workers (real Dask LocalClusters, lazy dask-awkward graphs)."""

from __future__ import annotations

import awkward as ak
import pytest
from distributed import Client, LocalCluster

from pipeline.calibration import CalibratorsManager, ElectronsScaleCalibrator, JetsCalibrator
from pipeline.config.parameters import defaults
from pipeline.inputs.datasets import split_entries
from pipeline.inputs.nanoevents import read_lazy

MC = {"isMC": True, "year": "2022_preEE", "sample": "TTbar", "dataset": "tt"}


def smeared(tt_file: str, n_chunks: int, n_workers: int) -> dict:
    steps = [list(r) for r in split_entries(200, -(-200 // n_chunks))]
    events = read_lazy({tt_file: {"object_path": "Events", "steps": steps}})
    assert events.npartitions == n_chunks
    manager = CalibratorsManager([JetsCalibrator, ElectronsScaleCalibrator], events,
                                 defaults(), MC)
    wanted = {}
    for variation, calibrated in manager.calibration_loop(
            events, ["jet_calibration", "electron_scale_and_smearing"]):
        if variation == "nominal" or "JER" in variation or "smear" in variation:
            wanted[variation] = {"jet_pt": calibrated.Jet.pt,
                                 "fatjet_pt": calibrated.FatJet.pt,
                                 "electron_pt": calibrated.Electron.pt}
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        return client.compute(wanted).result()


@pytest.mark.slow
def test_smearing_is_bit_identical_across_chunks_and_workers(tt_file):
    one = smeared(tt_file, n_chunks=1, n_workers=1)
    seven = smeared(tt_file, n_chunks=7, n_workers=2)
    assert set(one) == set(seven)
    assert {"AK4PFPuppi_JERUp", "AK8PFPuppi_JERDown", "ele_smearUp"} <= set(one)
    for variation in one:
        for column in one[variation]:
            assert ak.all(one[variation][column] == seven[variation][column]), (variation, column)
