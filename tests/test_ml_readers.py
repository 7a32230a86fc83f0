"""The ML readers on a table with negative generator weights (an NLO sample).

The table is written by a real run on ``nano_dy.root``, a Drell-Yan NanoAOD sample whose
``genWeight`` is negative for 9 of its 40 events: its weight column is the generator
weight, signs included. Every reader that passes weights offers ``negative_weights``:
``"keep"`` (as stored), ``"abs"`` (absolute value) or ``"drop"`` (rows with a negative
weight left out).
"""

from __future__ import annotations

import numpy as np
import pytest
import uproot

from pipeline.cli import main
from pipeline.errors import CalibrewError
from pipeline.inputs.datafiles import find_data_file
from pipeline.ml import TableStream, open_table, xgboost_iterator

CONFIG = """
datasets:
  DY:
    files: [{dy}]
    metadata: {{sample: DY, year: "2018", isMC: true}}
calibrators: []
tables:
  features:
    columns:
      n_jets: "ak.num(Jet)"
      met: {{expr: MET.pt, unit: GeV}}
      lead_jet_pt: {{expr: "ak.firsts(Jet.pt)", unit: GeV, sentinel: -1}}
    classes: [background, signal]
    labels: {{DY: signal}}
"""
FEATURES = ["n_jets", "met", "lead_jet_pt"]


@pytest.fixture(scope="module")
def table_path(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("nlo_table")
    (tmp_path / "analysis.yaml").write_text(
        CONFIG.format(dy=find_data_file("nano_dy.root")))
    (tmp_path / "job.yaml").write_text(
        f"config: analysis.yaml\noutput: {tmp_path / 'out'}\nchunksize: 15\nworkers: 1\n")
    assert main(["run", str(tmp_path / "job.yaml"), "--no-progress"]) == 0
    return tmp_path / "out" / "DY" / "features.zarr"


@pytest.fixture(scope="module")
def stored(table_path):
    """The table's own columns, and the file's generator weights they must come from."""
    data = open_table(table_path).to_numpy([*FEATURES, "label", "weight", "event"])
    events = uproot.open(find_data_file("nano_dy.root"))["Events"].arrays(
        ["event", "genWeight"], library="np")
    by_event = dict(zip(events["event"].tolist(), events["genWeight"].tolist()))
    expected = np.array([by_event[e] for e in data["event"].tolist()], dtype=np.float32)
    np.testing.assert_array_equal(data["weight"], expected)
    assert 0 < (data["weight"] < 0).sum() < len(data["weight"])  # an NLO sample: mixed signs
    return data


def test_xgboost_refuses_negative_weights_itself(stored):
    # The premise: xgboost (3.x) raises on any negative weight, in DMatrix and
    # QuantileDMatrix alike ("Weights must be positive values"); zero is accepted.
    import xgboost

    x = np.column_stack([stored[f].astype(np.float32) for f in FEATURES])
    for matrix in (xgboost.DMatrix, xgboost.QuantileDMatrix):
        with pytest.raises(xgboost.core.XGBoostError, match="Weights must be positive"):
            matrix(x, label=stored["label"], weight=stored["weight"])


@pytest.mark.parametrize("matrix_type", ["QuantileDMatrix", "DMatrix"])
def test_xgboost_default_is_absolute_weights(table_path, stored, matrix_type):
    import xgboost

    matrix = getattr(xgboost, matrix_type)(xgboost_iterator(table_path, FEATURES))
    assert matrix.num_row() == len(stored["weight"])  # every event kept
    np.testing.assert_array_equal(matrix.get_weight(), np.abs(stored["weight"]))
    np.testing.assert_array_equal(matrix.get_label(), stored["label"])
    booster = xgboost.train({"tree_method": "hist", "objective": "binary:logistic"}, matrix,
                            num_boost_round=2)  # fmt: skip
    assert booster.num_boosted_rounds() == 2


def test_xgboost_drop_leaves_out_negative_weight_events(table_path, stored):
    import xgboost

    matrix = xgboost.QuantileDMatrix(xgboost_iterator(table_path, FEATURES,
                                                      negative_weights="drop"))  # fmt: skip
    positive = stored["weight"] >= 0
    assert matrix.num_row() == positive.sum() < len(positive)
    np.testing.assert_array_equal(matrix.get_weight(), stored["weight"][positive])
    # what the iterator hands to xgboost: the kept rows' features, labels and weights
    handed: list[dict] = []
    iterator = xgboost_iterator(table_path, FEATURES, negative_weights="drop")
    while iterator.next(lambda **kwargs: handed.append(kwargs)):
        pass
    x = np.concatenate([h["data"] for h in handed])
    dense = np.column_stack([stored[f].astype(np.float32) for f in FEATURES])
    np.testing.assert_array_equal(x, dense[positive])
    np.testing.assert_array_equal(np.concatenate([h["label"] for h in handed]),
                                  stored["label"][positive])  # fmt: skip
    assert all(h["feature_names"] == FEATURES for h in handed)


def test_xgboost_keep_names_the_option(table_path, stored):
    import xgboost

    with pytest.raises(CalibrewError) as err:
        xgboost.QuantileDMatrix(xgboost_iterator(table_path, FEATURES, negative_weights="keep"))
    message = str(err.value)
    negative = int((stored["weight"] < 0).sum())
    assert "negative_weights" in message and "'abs'" in message and "'drop'" in message
    assert str(table_path) in message and "'weight'" in message
    assert f"{negative} row" in message


def test_xgboost_without_weights_passes_every_row(table_path, stored):
    # weight=None passes no weights: the choice does not apply, nothing is refused
    import xgboost

    matrix = xgboost.DMatrix(xgboost_iterator(table_path, FEATURES, weight=None,
                                              negative_weights="keep"))  # fmt: skip
    assert matrix.num_row() == len(stored["weight"])
    assert matrix.get_weight().size == 0


def test_unknown_choice_is_named(table_path):
    with pytest.raises(CalibrewError, match=r"negative_weights.*'absolute'.*keep, abs, drop"):
        xgboost_iterator(table_path, FEATURES, negative_weights="absolute")
    with pytest.raises(CalibrewError, match=r"negative_weights.*'absolute'.*keep, abs, drop"):
        TableStream(table_path, ["weight"], negative_weights="absolute")


def _stream(table_path, policy: str | None, columns=("met", "weight", "event")) -> dict:
    kwargs = {} if policy is None else {"negative_weights": policy}
    batches = list(TableStream(table_path, list(columns), batch_size=7, shuffle=False,
                               **kwargs))  # fmt: skip
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def test_stream_default_keeps_signed_weights(table_path, stored):
    got = _stream(table_path, None)
    np.testing.assert_array_equal(got["weight"], stored["weight"])
    np.testing.assert_array_equal(got["met"], stored["met"])
    assert (got["weight"] < 0).any()


def test_stream_abs_and_drop(table_path, stored):
    got = _stream(table_path, "abs")
    np.testing.assert_array_equal(got["weight"], np.abs(stored["weight"]))
    np.testing.assert_array_equal(got["event"], stored["event"])
    got = _stream(table_path, "drop")
    positive = stored["weight"] >= 0
    np.testing.assert_array_equal(got["weight"], stored["weight"][positive])
    np.testing.assert_array_equal(got["met"], stored["met"][positive])
    np.testing.assert_array_equal(got["event"], stored["event"][positive])
    # dropping needs the weight, not that the caller asks for it
    got = _stream(table_path, "drop", columns=("met",))
    assert list(got) == ["met"]
    np.testing.assert_array_equal(got["met"], stored["met"][positive])


def test_stream_shuffled_drop_keeps_every_positive_row_once(table_path, stored):
    batches = list(TableStream(table_path, ["event", "weight"], batch_size=5, seed=3,
                               negative_weights="drop"))  # fmt: skip
    events = np.concatenate([b["event"] for b in batches])
    positive = stored["weight"] >= 0
    assert sorted(events.tolist()) == sorted(stored["event"][positive].tolist())
    assert all((b["weight"] >= 0).all() for b in batches)
