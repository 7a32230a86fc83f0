"""The feature-table format in one leaf module; its writer and reader apart.

The ML readers (:mod:`pipeline.ml`) run where the analysis stack may not be installed (a
training node, a notebook): importing them must load zarr and numpy, not Dask, awkward,
coffea or uproot. The format (:mod:`pipeline.table_layout`) is shared by the row builder,
the writer, the reader and the configuration; each name is defined there only.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pipeline.table_layout as layout

PACKAGE = Path(layout.__file__).resolve().parent
#: what the analysis stack is made of: none of it may be loaded by a table reader
HEAVY = ("dask", "distributed", "dask_awkward", "awkward", "coffea", "uproot", "numba",
         "hist", "correctionlib", "vector", "pandas", "pyarrow", "pydantic")


def loaded_after(statement: str) -> tuple[set[str], set[str]]:
    """Top-level packages and ``pipeline`` modules loaded by ``statement`` in a fresh
    interpreter."""
    code = (f"import sys, json; {statement}; "
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    modules = set(json.loads(out))
    return ({m.split(".")[0] for m in modules},
            {m for m in modules if m == "pipeline" or m.startswith("pipeline.")})


def test_ml_readers_load_no_analysis_stack():
    top, ours = loaded_after("import pipeline.ml")
    assert "zarr" in top and "numpy" in top
    assert sorted(top & set(HEAVY)) == []
    # the reader side only: the format, the reader, the ML modules, the errors
    assert ours <= {"pipeline", "pipeline.errors", "pipeline.table_layout", "pipeline.outputs",
                    "pipeline.outputs.table_reader", "pipeline.ml", "pipeline.ml.stream",
                    "pipeline.ml.torch", "pipeline.ml.weights", "pipeline.ml.xgboost"}, ours


def test_format_module_is_a_leaf():
    top, ours = loaded_after("import pipeline.table_layout")
    assert sorted(top & {*HEAVY, "zarr"}) == []
    assert ours <= {"pipeline", "pipeline.errors", "pipeline.table_layout"}, ours
    tree = ast.parse((PACKAGE / "table_layout.py").read_text())
    imported = {node.module for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module}
    imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for a in node.names}
    assert {m for m in imported if m.startswith("pipeline")} == {"pipeline.errors"}


def test_reader_and_writer_apart():
    _, ours = loaded_after("import pipeline.outputs.table_reader")
    assert "pipeline.outputs.table_writer" not in ours
    _, ours = loaded_after("import pipeline.outputs.table_writer")
    assert "pipeline.outputs.table_reader" not in ours


def test_format_names_have_one_definition():
    import pipeline.analysis.table_rows
    import pipeline.config.models
    import pipeline.inputs.parquet

    assert pipeline.config.models.RESERVED_COLUMNS is layout.RESERVED_COLUMNS
    assert pipeline.inputs.parquet.IDENTITY_TYPES is layout.IDENTITY_TYPES
    # no module of the package but the format assigns the format's names
    names = {"SCHEMA_VERSION", "RESERVED_COLUMNS", "IDENTITY_TYPES", "IDENTITY_DTYPES",
             "N_FOLDS", "RaggedColumn", "PaddedColumn", "TableError", "Column"}
    for path in PACKAGE.rglob("*.py"):
        if path.name == "table_layout.py":
            continue
        tree = ast.parse(path.read_text())
        for node in tree.body:
            targets = ([t.id for t in node.targets if isinstance(t, ast.Name)]
                       if isinstance(node, ast.Assign) else
                       [node.name] if isinstance(node, ast.ClassDef | ast.FunctionDef) else [])
            assert not set(targets) & names, f"{path}: defines {set(targets) & names}"


def test_reserved_columns_are_what_a_table_holds():
    """Every structural column the row builder writes is reserved (and no other name)."""
    structural = {*layout.IDENTITY, layout.FOLD, layout.WEIGHT, layout.WEIGHT_VARIATIONS,
                  layout.LABEL, layout.IS_DATA, layout.PASS, layout.OBJECT_INDEX,
                  layout.CONSTITUENT_INDEX, layout.VARIATIONS}
    assert structural == layout.RESERVED_COLUMNS
    assert layout.variation_prefix("jesUp").split("/")[0] == layout.VARIATIONS


def test_fold_follows_the_format():
    """An event's fold is part of the format: the folds of tables already written (their
    train/test split) stay the same."""
    from pipeline.analysis.table_rows import fold_of
    from pipeline.rng import hash_identity

    run = np.array([1, 1, 7, 355100], dtype=np.uint32)
    lumi = np.array([2, 2, 9, 41], dtype=np.uint32)
    event = np.array([0, 1_000_003, 2_000_006, 123_456_789_012], dtype=np.uint64)
    assert fold_of(run, lumi, event).tolist() == [6, 0, 2, 1]
    expected = (np.asarray(hash_identity(run, lumi, event, 0, layout.FOLD_PURPOSE))
                % np.uint64(layout.N_FOLDS)).astype(np.uint8)
    assert fold_of(run, lumi, event).tolist() == expected.tolist()
    assert layout.folds_attr() == {"n": 10, "hash": "splitmix64(run, luminosityBlock, "
                                   "event, 'fold')"}


def test_merge_part_attrs():
    a = layout.part_attrs(5, {"up": ["weight", "x"]}, {"x": float("nan"), "n": -1},
                          {"nominal": 3, "up": 4})
    b = layout.part_attrs(6, {"up": ["weight", "x"]}, {"x": float("nan"), "n": -1},
                          {"nominal": 2, "up": 0})
    merged = layout.merge_part_attrs([a, b], "t.zarr")
    assert merged.rows_selected == {"nominal": 5, "up": 4}
    assert merged.changed_columns == {"up": ["weight", "x"]}
    assert merged.sentinels == {"x": "nan", "n": -1}
    empty = layout.merge_part_attrs([], "t.zarr")
    assert (empty.changed_columns, empty.rows_selected, empty.sentinels) == ({}, {}, {})
    other = layout.part_attrs(1, {"up": ["x"]}, {}, {})
    with pytest.raises(layout.TableError, match="t.zarr: parts store different columns"):
        layout.merge_part_attrs([a, other], "t.zarr")
