"""Flat Parquet event tables as input: eager and lazy reads, projection, identity, errors."""

from __future__ import annotations

import dask
import dask_awkward as dak
import numpy as np
import pandas as pd
import pytest

from pipeline.errors import InputFileError
from pipeline.graph import read_events
from pipeline.inputs.datafiles import find_data_file
from pipeline.inputs.datasets import Dataset, preprocess
from pipeline.inputs.parquet import file_key, read_parquet_eager

PARQUET = "FAIR_Universe_HiggsML_data.parquet"


@pytest.fixture(scope="module")
def parquet_file():
    return str(find_data_file(PARQUET))


def test_eager_read_equals_pandas_with_a_synthetic_identity(parquet_file):
    frame = pd.read_parquet(parquet_file)
    events = read_parquet_eager(parquet_file, 100, 250)
    np.testing.assert_array_equal(np.asarray(events.PRI_met), frame.PRI_met.to_numpy()[100:250])
    assert events.event.tolist() == list(range(100, 250))
    assert set(events.run.tolist()) == {0}
    assert set(events.luminosityBlock.tolist()) == {file_key(parquet_file)}


def test_lazy_read_projects_and_does_not_depend_on_chunking(parquet_file):
    frame = pd.read_parquet(parquet_file)
    results = []
    for chunksize in (1000, 143):
        dataset = preprocess(Dataset("h", [parquet_file], {"sample": "h"}), chunksize)
        events = read_events(dataset)
        assert events.npartitions == len(dataset.chunks)
        value = events.PRI_had_pt * 2 + events.event
        (columns,) = dak.report_necessary_columns(value).values()
        assert set(columns) == {"PRI_had_pt", "event"}  # only what is used
        results.append(dask.compute(value, scheduler="sync")[0].to_numpy())
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_allclose(results[0], frame.PRI_had_pt.to_numpy() * 2 + np.arange(1000),
                               rtol=1e-6)


def test_unreadable_parquet_file_is_named(tmp_path):
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"not a parquet file")
    with pytest.raises(InputFileError, match="broken.parquet"):
        preprocess(Dataset("h", [str(bad)], {"sample": "h"}), 100)
