"""A jet calibration configured for AK4 jets only: the lazy graph reads no FatJet branch and
equals the eager chunk processor (the calibrators' original collections are fetched lazily)."""

from __future__ import annotations

import dask
import numpy as np
from omegaconf import OmegaConf

from pipeline.analysis.loading import load_parameters
from pipeline.analysis.processor import ChunkProcessor
from pipeline.config.models import AnalysisConfig
from pipeline.graph import build_dataset_graph
from pipeline.inputs.datasets import Dataset, preprocess

METADATA = {"sample": "TTbar", "year": "2022_preEE", "isMC": True}
CUT = "(Jet.pt > 30) & (abs(Jet.eta) < 2.4)"


def ak4_only_parameters():
    """The default parameters with ``jets_calibration.collection`` holding AK4 jets alone."""
    params = load_parameters()
    OmegaConf.update(params, "jets_calibration.collection.2022_preEE",
                     {"AK4PFPuppi": "Jet"}, merge=False)
    return params


def jet_chain_config(tt_file: str) -> AnalysisConfig:
    return AnalysisConfig.model_validate({
        "datasets": {"tt": {"files": [tt_file], "metadata": METADATA}},
        "calibrators": ["jet_calibration"],
        "variations": {"shape": {"common": {"inclusive": ["jet_calibration"]}}},
        "preselection": {"two_jets": f"ak.num(Jet[{CUT}]) >= 2"},
        "histograms": {
            "jet_pt": {"axes": [{"expr": f"Jet.pt[{CUT}]", "name": "pt",
                                 "bins": 30, "start": 0, "stop": 300}]},
            "ht": {"axes": [{"expr": f"ak.sum(Jet.pt[{CUT}], axis=1)", "name": "ht",
                             "bins": 20, "start": 0, "stop": 1000}]},
        },
    })


def ak4_only_graph(tt_file: str):
    dataset = preprocess(Dataset("tt", [tt_file], {**METADATA, "dataset": "tt"}), 45)
    return build_dataset_graph(dataset, jet_chain_config(tt_file), ak4_only_parameters())


def test_parameters_hold_ak4_only():
    collection = ak4_only_parameters().jets_calibration.collection["2022_preEE"]
    assert OmegaConf.to_container(collection) == {"AK4PFPuppi": "Jet"}


def test_ak4_only_graph_reads_no_fatjet(tt_file):
    columns = ak4_only_graph(tt_file).necessary_columns()
    assert "Jet_pt" in columns and "GenJet_pt" in columns
    assert not {c for c in columns if "FatJet" in c or "GenJetAK8" in c}


def test_ak4_only_lazy_equals_eager(tt_file, tt_events):
    graph = ak4_only_graph(tt_file)
    assert len(graph.dataset.chunks) > 1
    (vector,) = dask.compute(graph.total(), scheduler="sync")
    lazy = graph.plan.unpack(vector)
    eager = ChunkProcessor(graph.plan).histograms(tt_events)
    assert set(lazy) == set(eager)
    for name in lazy:
        np.testing.assert_allclose(lazy[name].values(flow=True), eager[name].values(flow=True),
                                   rtol=1e-12, atol=0, err_msg=name)
        np.testing.assert_allclose(lazy[name].variances(flow=True),
                                   eager[name].variances(flow=True), rtol=1e-12, err_msg=name)
    assert lazy["jet_pt"].values().sum() > 0


def test_original_collections_fetch_on_first_use():
    import awkward as ak

    from pipeline.calibration.manager import OriginalCollections

    class Counting:
        """Events that count the columns asked of them."""

        def __init__(self, events):
            self.events, self.asked = events, []
            self.fields = events.fields

        def __getitem__(self, key):
            self.asked.append(key)
            return self.events[key]

    events = Counting(ak.Array([{"Jet": [{"pt": 1.0}], "FatJet": [{"pt": 2.0}]}]))
    original = OriginalCollections(events, ["Jet.pt", "FatJet.pt", "Photon.pt"])
    assert list(original) == ["Jet", "Jet.pt", "FatJet", "FatJet.pt"]
    before = list(events.asked)  # has_column looks at the fields of each collection
    assert "FatJet" in original and "Photon.pt" not in original
    assert original["Jet.pt"].tolist() == [[1.0]]
    assert original["Jet.pt"] is original["Jet.pt"]
    assert events.asked[len(before):] == ["Jet"]
