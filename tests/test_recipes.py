"""The recipes of configs/recipes for the four downstream ML stages, run on the real files."""

from __future__ import annotations

import awkward as ak
import numpy as np
import uproot

from pipeline.cli import main
from pipeline.inputs.datafiles import find_data_file
from pipeline.ml import open_table


def run_recipe(project_root, tmp_path, job: str, output: str, extra: str = ""):
    """Run ``jobs/<job>`` (its config and parameters) into ``tmp_path/<output>``."""
    text = (project_root / "jobs" / job).read_text()
    spec = tmp_path / job
    spec.write_text("\n".join(
        line.replace("../", f"{project_root}/") for line in text.splitlines()
        if not line.startswith("output:")) + f"\noutput: {tmp_path / output}\n{extra}")
    assert main(["run", str(spec), "--no-progress"]) == 0
    return tmp_path / output


def test_egamma_table_and_the_derived_correction_closes_the_loop(project_root, tmp_path):
    first = run_recipe(project_root, tmp_path, "recipe_egamma.yaml", "egamma")
    table = open_table(first / "TTbar" / "features.zarr")
    data = table.to_numpy()
    # rows: every generator electron in acceptance, matched or not
    events = uproot.open(find_data_file("nano_tt_v12.root"))["Events"].arrays(
        ["GenPart_pdgId", "GenPart_status", "GenPart_pt", "GenPart_eta"])
    gen = ((abs(events.GenPart_pdgId) == 11) & (events.GenPart_status == 1)
           & (events.GenPart_pt > 5) & (abs(events.GenPart_eta) < 2.5))
    assert table.rows == int(ak.sum(gen))
    matched = data["matched"]
    assert 0 < matched.sum() < table.rows
    assert np.all(data["reco_pt"][~matched] == -1) and np.all(data["reco_pt"][matched] > 0)
    assert np.all(data["sieie"][matched] > 0)
    assert table.attrs["events_total"] == 200  # the pre-selection count, for rates
    assert set(table.variations()) == {"ele_scaleUp", "ele_scaleDown", "ele_smearUp",
                                       "ele_smearDown"}
    # the matched electrons are near their generator electron
    dr = np.hypot(data["reco_eta"][matched] - data["gen_eta"][matched],
                  np.angle(np.exp(1j * (data["reco_phi"][matched] - data["gen_phi"][matched]))))
    assert dr.max() <= 0.1 + 1e-6
    payload = tmp_path / "egamma_correction.json.gz"
    assert main(["derive", str(first / "TTbar" / "features.zarr"), "--out", str(payload)]) == 0
    params = tmp_path / "derived.yaml"
    params.write_text("derived_energy_correction:\n  2022_preEE:\n"
                      f"    json_path: {payload}\n    collection: Electron\n")
    second = run_recipe(project_root, tmp_path, "recipe_egamma.yaml", "corrected",
                        extra=f"parameters: [{params}]\n")
    after = open_table(second / "TTbar" / "features.zarr").to_numpy()
    np.testing.assert_array_equal(after["matched"], matched)
    np.testing.assert_array_equal(after["gen_pt"], data["gen_pt"])

    def response(d):
        return float(np.median(d["reco_pt"][matched] / d["gen_pt"][matched]))

    assert abs(response(after) - 1) < abs(response(data) - 1)
    assert not np.array_equal(after["reco_pt"][matched], data["reco_pt"][matched])


def test_top_tagging_constituents(project_root, tmp_path):
    out = run_recipe(project_root, tmp_path, "recipe_top_tagging.yaml", "top")
    table = open_table(out / "TTbar_PFNano" / "features.zarr")
    jets = uproot.open(find_data_file("pfnano.root"))["Events"].arrays(
        ["FatJet_pt", "FatJet_eta"])
    selected = (jets.FatJet_pt > 200) & (abs(jets.FatJet_eta) < 2.0)
    assert table.rows == int(ak.sum(selected)) > 0
    data = table.to_numpy()
    np.testing.assert_array_equal(data["pt"], ak.to_numpy(ak.flatten(
        jets.FatJet_pt[selected])).astype(np.float32))
    assert np.all(data["label"] == 1) and table.attrs["labels"]["classes"] == ["qcd", "top"]
    values, mask = table.padded("constituents")
    assert values.shape == (table.rows, 200, 4)
    np.testing.assert_array_equal(mask.sum(axis=1), np.minimum(data["n_constituents"], 200))
    pt = values[..., table.fields("constituents").index("pt")]
    assert np.all(np.diff(np.where(mask, pt, 0), axis=1) <= 0)  # pt-ordered, zero-padded
    assert np.all(values[~mask] == 0)
    pre, pre_mask = table.padded("preprocessed")
    assert pre.shape == (table.rows, 80, 7)
    fields = table.fields("preprocessed")
    lead = pre[:, 0, :]
    np.testing.assert_allclose(lead[:, fields.index("eta")], 0, atol=1e-6)
    np.testing.assert_allclose(lead[:, fields.index("phi")], 0, atol=1e-6)
    assert np.all(pre[:, 2, fields.index("eta")][pre_mask[:, 2]] >= 0)  # flipped: 3rd eta >= 0


def test_flow_tables_have_one_layout_for_data_and_mc(project_root, tmp_path):
    out = run_recipe(project_root, tmp_path, "recipe_flows.yaml", "flows")
    mc = open_table(out / "DY_MC" / "features.zarr")
    data = open_table(out / "Data" / "features.zarr")
    assert mc.event_columns() == data.event_columns()
    for name in mc.event_columns():
        assert mc.parts[0][name].dtype == data.parts[0][name].dtype, name
    m, d = mc.to_numpy(), data.to_numpy()
    assert not m["is_data"].any() and d["is_data"].all()
    assert np.all(m["label"] == 0) and np.all(d["label"] == 1)
    assert np.all(d["weight"] == 1)
    gen_weight = uproot.open(find_data_file("nano_dy.root"))["Events"]["genWeight"].array()
    assert set(np.unique(m["weight"]).tolist()) <= set(np.asarray(gen_weight).tolist())
    for key in ("pt", "sc_eta", "phi", "rho", "r9", "sieie", "pfRelIso03_all"):
        assert key in mc.event_columns()
    assert mc.attrs["columns"]["rho"]["unit"] == "GeV"
    # stable event keys: (run, luminosityBlock, event, object_index) unique
    keys = set(zip(m["run"].tolist(), m["luminosityBlock"].tolist(), m["event"].tolist(),
                   m["object_index"].tolist()))
    assert len(keys) == mc.rows


def test_higgsml_from_parquet_matches_the_challenge_definitions(project_root, tmp_path):
    """Each variation's table equals the challenge's own single pass (apply_systematics on
    the file's PRI columns, post-selection, DER recomputed), bit for bit."""
    import pandas as pd

    from pipeline.recipes.higgsml import (
        DER_FEATURES,
        PRI_FEATURES,
        apply_systematics,
        derived_features,
        post_selection_mask,
    )
    from pipeline.rng import normal

    out = run_recipe(project_root, tmp_path, "recipe_higgsml.yaml", "higgsml")
    table = open_table(out / "HiggsML" / "features.zarr")
    frame = pd.read_parquet(find_data_file("FAIR_Universe_HiggsML_data.parquet"))
    pri = {k: frame[k].to_numpy() for k in PRI_FEATURES}
    assert set(table.variations()) == {f"{p}{d}" for p in ("tes", "jes", "soft_met")
                                       for d in ("Up", "Down")}
    data = table.to_numpy(variation=None)
    rows = data["event"].astype(np.int64)  # the row number in the file (no event identity)
    identity = (data["run"], data["luminosityBlock"], data["event"], data["event"] * 0)
    normals = {"normal_x": normal(*identity, "higgsml:soft_met:x"),
               "normal_y": normal(*identity, "higgsml:soft_met:y")}
    cases = {"nominal": {}, "tesUp": {"tes": 1.01}, "tesDown": {"tes": 0.99},
             "jesUp": {"jes": 1.01}, "jesDown": {"jes": 0.99}, "soft_metUp": {"soft_met": 1.0}}
    for variation, shift in cases.items():
        source = {k: v[rows] for k, v in pri.items()}
        expected = apply_systematics(source, **shift, **(normals if "soft_met" in shift else {}))
        expected.update(derived_features(expected))
        passed = ak.to_numpy(post_selection_mask(expected))
        got = table.to_numpy([*PRI_FEATURES, *DER_FEATURES], variation=None)
        stored = table.variations().get(variation, [])
        for name in (*PRI_FEATURES, *DER_FEATURES):
            values = _variation_column(table, variation, name, stored, got[name])
            np.testing.assert_array_equal(values[passed],
                                          ak.to_numpy(expected[name]).astype(np.float32)[passed],
                                          err_msg=f"{variation} {name}")
        pass_mask = (data["pass"] if variation == "nominal"
                     else _variation_column(table, variation, "pass", stored, None))
        np.testing.assert_array_equal(pass_mask, passed, err_msg=variation)
    # the weight and label come from the file's columns
    nominal = table.to_numpy(["event", "weight", "label"])
    rows = nominal["event"].astype(np.int64)
    np.testing.assert_array_equal(nominal["weight"], frame["weights"].to_numpy()[rows])
    np.testing.assert_array_equal(nominal["label"], frame["labels"].to_numpy()[rows])
    assert table.attrs["events_total"] == len(frame)


def _variation_column(table, variation, name, stored, nominal):
    """Column ``name`` of ``variation`` for every stored row (its own or the nominal)."""
    if variation != "nominal" and name in stored:
        return np.concatenate([p["variations"][variation][name][...] for p in table.parts])
    return nominal
