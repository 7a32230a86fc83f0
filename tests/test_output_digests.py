"""The digest script of tests/benchmarks sees a one-ulp change in any output it compares."""

from __future__ import annotations

import gzip
import importlib.util
import json
import pickle
import sys
from pathlib import Path

import hist
import numpy as np
import zarr

SCRIPT = Path(__file__).parent / "benchmarks" / "output_digests.py"


def _script():
    spec = importlib.util.spec_from_file_location("output_digests", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["output_digests"] = module
    spec.loader.exec_module(module)
    return module


def _outputs(root: Path, bump: str = "") -> Path:
    """A job's outputs in miniature: histograms, summary, a zarr table, a derived payload."""
    out = root / "output" / "job" / "dataset"
    out.mkdir(parents=True)
    h = hist.Hist(hist.axis.StrCategory(["nominal", "up"], name="variation"),
                  hist.axis.Regular(4, 0, 1, name="x"), storage=hist.storage.Weight())
    h.fill(variation="nominal", x=[0.1, 0.5, 0.5], weight=[1.0, 2.0, 0.5])
    if bump == "hist":
        h.fill(variation="up", x=[0.9], weight=[1e-300])
    (out / "histograms.pkl").write_bytes(pickle.dumps({"x": h}))
    weighted = 3.5 if bump != "summary" else np.nextafter(3.5, 4.0)
    (out / "summary.json").write_text(json.dumps(
        {"events": 3, "files": [str(root / "data.root")], "cutflow": {"all": weighted}}))
    group = zarr.open_group(str(out / "features.zarr"), mode="w")
    values = np.array([1.0, 2.0, 3.0])
    if bump == "table":
        values[1] = np.nextafter(2.0, 3.0)
    group.create_group("parts").create_group("00000").create_array(
        "pt", data=values)
    group.attrs["identity"] = {"code": str(root)}  # changes with any code edit: not compared
    (root / "output" / "job" / "payload.json.gz").write_bytes(
        gzip.compress(json.dumps({"a": 1.0 if bump != "payload" else 1.5}).encode()))
    return root


def test_digests_are_stable_and_see_one_ulp(tmp_path, capsys):
    script = _script()
    base = script.output_digests(_outputs(tmp_path / "a") / "output")
    assert base == script.output_digests(_outputs(tmp_path / "b") / "output")
    assert {"job/dataset/histograms.pkl/x/values", "job/dataset/histograms.pkl/x/axis0",
            "job/dataset/summary.json/cutflow/all", "job/dataset/features.zarr/parts/00000/pt",
            "job/payload.json.gz"} <= set(base)
    for bump, key in [("hist", "histograms.pkl/x/values"), ("summary", "summary.json/cutflow/all"),
                      ("table", "features.zarr/parts/00000/pt"), ("payload", "payload.json.gz")]:
        changed = script.output_digests(_outputs(tmp_path / bump, bump) / "output")
        differences = script.compare(base, changed)
        assert differences, bump
        assert all(line.startswith("differs: ") for line in differences), differences
        assert any(line.endswith(key) for line in differences), (bump, differences)

    # --compare on outputs already written: 0 when identical, 1 listing what differs
    record = tmp_path / "record.json"
    assert script.main(["--outputs", str(tmp_path / "a"), "--out", str(record)]) == 0
    assert script.main(["--outputs", str(tmp_path / "b"), "--compare", str(record)]) == 0
    assert script.main(["--outputs", str(tmp_path / "table"), "--compare", str(record)]) == 1
    assert "differs: job/dataset/features.zarr/parts/00000/pt" in capsys.readouterr().out
    (tmp_path / "b" / "output" / "job" / "payload.json.gz").unlink()
    assert script.main(["--outputs", str(tmp_path / "b"), "--compare", str(record)]) == 1
    assert "missing: job/payload.json.gz" in capsys.readouterr().out
