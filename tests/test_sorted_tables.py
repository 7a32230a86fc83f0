"""Feature tables whose objects come from jets that the calibrator re-sorts by pt.

The jets are re-sorted in every variation, so a jet's position changes from one variation to
the next. A table's rows are the nominal's objects (in the nominal's order); each variation's
values and pass mask are those of the same jet, found through ``Jet.original_index``. The
references are the calibrated events of each variation, looked up jet by jet.
"""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest

from pipeline.analysis.loading import calibrator_classes, load_parameters
from pipeline.analysis.plan import make_plan
from pipeline.analysis.processor import ChunkProcessor
from pipeline.calibration import CalibratorsManager
from pipeline.config.models import AnalysisConfig
from pipeline.errors import ExpressionError

FILE_METADATA = {"sample": "TTbar", "year": "2022_preEE", "isMC": True}
METADATA = {**FILE_METADATA, "dataset": "tt"}


def config(tables: dict) -> AnalysisConfig:
    return AnalysisConfig.model_validate({
        "datasets": {"tt": {"files": ["nano_tt_v12.root"], "metadata": FILE_METADATA}},
        "calibrators": ["jet_calibration"],
        "variations": {"shape": {"common": {"inclusive": ["jet_calibration"]}}},
        "tables": tables,
    })


def tables_of(events, tables: dict):
    cfg, params = config(tables), load_parameters()
    manager = CalibratorsManager(calibrator_classes(cfg), events, params, METADATA)
    variations = manager.variations_to_run(["jet_calibration"])
    plan = make_plan(cfg, params, METADATA, variations)
    calibrated = dict(manager.calibration_loop(events, ["jet_calibration"]))
    return ChunkProcessor(plan).tables(events), calibrated


def by_jet(events, field):
    """{(event number, original index): value} for every jet of the calibrated events."""
    out = {}
    for number, index, value in zip(ak.to_list(events.event), ak.to_list(events.Jet.original_index),
                                    ak.to_list(events.Jet[field])):
        for i, v in zip(index, value):
            out[(number, i)] = v
    return out


def test_rows_of_resorted_jets_stay_aligned_across_variations(tt_events):
    tables = {"jets": {"level": "object", "objects": "Jet", "select": "obj.pt > 40",
                       "columns": {"pt": "obj.pt", "idx": "obj.original_index",
                                   "n": "ak.num(Jet)"}}}
    out, calibrated = tables_of(tt_events, tables)
    columns, _ = out["jets"]
    variations = [v for v in calibrated if v != "nominal"]
    assert len(variations) >= 20
    rows = list(zip(columns["event"].tolist(), columns["idx"].tolist()))
    assert len(set(rows)) == len(rows)  # one row per jet
    nominal = calibrated["nominal"]
    # the rows are the nominal's objects in the nominal's order: the leading jet first
    pt_nominal = by_jet(nominal, "pt")
    np.testing.assert_array_equal(columns["pt"], np.float32([pt_nominal[r] for r in rows]))
    position = {}
    for number, index in zip(ak.to_list(nominal.event), ak.to_list(nominal.Jet.original_index)):
        for k, i in enumerate(index):
            position[(number, i)] = k
    assert columns["object_index"].tolist() == [position[r] for r in rows]
    moved = 0
    for variation in variations:
        pt = by_jet(calibrated[variation], "pt")
        expected = np.float32([pt[r] for r in rows])
        # a variation that leaves the jets alone stores no column of its own
        got = columns.get(f"variations/{variation}/pt", columns["pt"])
        np.testing.assert_array_equal(got, expected, err_msg=variation)
        np.testing.assert_array_equal(columns[f"variations/{variation}/pass"],
                                      np.array([pt[r] > 40 for r in rows]), err_msg=variation)
        sorted_order = ak.to_list(calibrated[variation].Jet.original_index)
        moved += sum(o != n for o, n in zip(sorted_order, ak.to_list(nominal.Jet.original_index)))
    assert moved > 0  # some variations do reorder jets within an event
    # rows kept: those passing in any variation
    keep_any = {r for v in calibrated for r, p in by_jet(calibrated[v], "pt").items() if p > 40}
    assert set(rows) == keep_any


def test_objects_that_change_identity_in_a_variation_are_named(tt_events):
    # the leading jet is another jet in some variations: rows cannot follow one object
    tables = {"lead": {"level": "object", "objects": "Jet[:, :1]",
                       "columns": {"pt": "obj.pt"}}}
    with pytest.raises(ExpressionError, match=r"tables\.lead\.objects: .*other objects in "
                                              r"variation"):
        tables_of(tt_events, tables)


def test_constituents_follow_resorted_jets():
    """The link table's jetIdx counts the jets in the file's order; re-sorted jets find
    their own constituents through original_index."""
    from pipeline.recipes.toptagging import jet_constituents

    events = ak.Array([{
        "FatJet": [{"pt": 300.0, "original_index": 1}, {"pt": 200.0, "original_index": 0}],
        "PFCands": [{"pt": 10.0, "eta": 0.1, "phi": 0.2, "mass": 0.0},
                    {"pt": 50.0, "eta": 0.0, "phi": 0.1, "mass": 0.0},
                    {"pt": 30.0, "eta": 1.0, "phi": -2.0, "mass": 0.0}],
        "FatJetPFCands": [{"jetIdx": 0, "pFCandsIdx": 0}, {"jetIdx": 1, "pFCandsIdx": 2},
                          {"jetIdx": 0, "pFCandsIdx": 1}]}])
    # file order: jet 0 owns candidates 0 and 1, jet 1 owns candidate 2
    assert jet_constituents(events).pt.tolist() == [[[30.0], [50.0, 10.0]]]
