"""The feature-table format in one place: schema version, names, column types, part merge.

Everything that both writes and reads a feature table agrees through this module: the row
builder (:mod:`pipeline.analysis.table_rows`), the Zarr writer
(:mod:`pipeline.outputs.table_writer`), the reader (:mod:`pipeline.outputs.table_reader`)
and the ML readers (:mod:`pipeline.ml`). It is a leaf: it imports numpy and
:mod:`pipeline.errors` only, so that the ML readers load neither awkward nor dask.

Layout of one table (``<output>/<dataset>/<table>.zarr``)::

    features.zarr/            root group; attrs: schema_version, complete, parts, columns, ...
      parts/
        00000/                one group per graph partition, written by that partition only
          run, event, ...     1-D arrays (rows of the part)
          Jet/offsets         ragged collection: offsets + one content array per field
          Jet/pt
          FatJet/pt           padded collection: 2-D (rows, length) per field, plus ``mask``
          FatJet/mask
          variations/jesUp/   per shape variation: its pass mask and the columns it changes

Every table holds the :data:`RESERVED_COLUMNS` beside the configured ones: the event
identity (:data:`IDENTITY_TYPES`), the train/test ``fold`` (:data:`N_FOLDS` folds hashed
from the identity, see :data:`FOLD_PURPOSE`), ``weight`` and ``weight_variations``,
``label``, ``is_data``, ``pass``, and ``object_index`` / ``constituent_index`` in object and
constituent tables.

Examples
--------
>>> variation_prefix("jesUp") + PASS
'variations/jesUp/pass'
>>> part_name(3)
'00003'
>>> sorted(IDENTITY_DTYPES.items())[0]
('event', dtype('uint64'))
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import CalibrewError

#: The format's version, stored in the root attributes; a reader refuses any other.
SCHEMA_VERSION = 1

# -- groups and layouts ------------------------------------------------------------------
#: The group of the parts, one subgroup per graph partition (see :func:`part_name`).
PARTS = "parts"
#: The group, in each part, of the shape variations' own values.
VARIATIONS = "variations"
#: The name readers give the nominal values (no group of its own).
NOMINAL = "nominal"
#: A collection's ``layout`` attribute: ragged (offsets + contents) or padded (2-D + mask).
LAYOUT = "layout"
RAGGED = "ragged"
PADDED = "padded"
#: The arrays of a ragged and of a padded collection beside its fields.
OFFSETS = "offsets"
MASK = "mask"

# -- reserved columns --------------------------------------------------------------------
#: The event identity, as in NanoAOD, and its stored types.
RUN, LUMINOSITY_BLOCK, EVENT = "run", "luminosityBlock", "event"
IDENTITY_TYPES = {RUN: "uint32", LUMINOSITY_BLOCK: "uint32", EVENT: "uint64"}
IDENTITY = tuple(IDENTITY_TYPES)
IDENTITY_DTYPES = {k: np.dtype(v) for k, v in IDENTITY_TYPES.items()}
FOLD = "fold"
WEIGHT = "weight"
WEIGHT_VARIATIONS = "weight_variations"
LABEL = "label"
IS_DATA = "is_data"
PASS = "pass"
OBJECT_INDEX = "object_index"
CONSTITUENT_INDEX = "constituent_index"
#: Columns every table may hold (and :data:`VARIATIONS`): a configured column, collection
#: or alias cannot take these names.
RESERVED_COLUMNS = frozenset({
    *IDENTITY, FOLD, WEIGHT, WEIGHT_VARIATIONS, LABEL, IS_DATA, PASS, OBJECT_INDEX,
    CONSTITUENT_INDEX, VARIATIONS,
})

# -- folds -------------------------------------------------------------------------------
#: How many train/test folds; an event's fold is ``hash % N_FOLDS``, with the hash of
#: :func:`pipeline.rng.hash_identity` of ``(run, luminosityBlock, event, 0, FOLD_PURPOSE)``
#: (computed by the row builder, :func:`pipeline.analysis.table_rows.fold_of`, as
#: :mod:`pipeline.rng` needs awkward).
N_FOLDS = 10
FOLD_PURPOSE = "fold"
#: The fold rule as stored in the table's ``folds`` attribute.
FOLD_HASH = "splitmix64(run, luminosityBlock, event, 'fold')"

# -- attributes --------------------------------------------------------------------------
#: Root attributes the writer keeps (the runner adds the table's description): the
#: schema version, whether the table is complete (written last), what makes two runs
#: write the same table, the number of parts, the row counts of the parts read and their
#: indices, the parts left out, and the total row count.
ROOT_SCHEMA_VERSION = "schema_version"
ROOT_COMPLETE = "complete"
ROOT_IDENTITY = "identity"
ROOT_N_PARTS = "n_parts"
ROOT_PART_ROWS = "parts"
ROOT_PART_INDICES = "part_indices"
ROOT_SKIPPED_PARTS = "skipped_parts"
ROOT_ROWS = "rows"
#: Part attributes: rows (the writer's), input events, columns each variation stores again,
#: the values missing entries took, rows passing per variation (the row builder's).
PART_ROWS = "rows"
PART_EVENTS = "events"
PART_CHANGED = "changed_columns"
PART_SENTINELS = "sentinels"
PART_SELECTED = "selected"


class TableError(CalibrewError):
    """A feature table is incomplete, of another schema, or written with another config."""


@dataclass(frozen=True)
class RaggedColumn:
    """An object collection stored ragged: ``offsets`` (rows + 1) and per-field contents.

    Examples
    --------
    >>> column = RaggedColumn(np.array([0, 2, 3]), {"pt": np.array([30.0, 20.0, 50.0])})
    >>> rows_of(column)
    2
    """

    offsets: np.ndarray
    fields: Mapping[str, np.ndarray]


@dataclass(frozen=True)
class PaddedColumn:
    """An object collection padded to a fixed length: 2-D fields and a boolean ``mask``.

    Examples
    --------
    >>> column = PaddedColumn({"pt": np.zeros((3, 2))}, np.zeros((3, 2), dtype=bool))
    >>> rows_of(column)
    3
    """

    fields: Mapping[str, np.ndarray]
    mask: np.ndarray


#: A stored column: one value per row (1-D or 2-D numpy) or an object collection.
Column = np.ndarray | RaggedColumn | PaddedColumn


def rows_of(column: Column) -> int:
    """The number of rows of a column."""
    if isinstance(column, RaggedColumn):
        return len(column.offsets) - 1
    if isinstance(column, PaddedColumn):
        return len(column.mask)
    return len(column)


def part_name(index: int) -> str:
    """Group name of part ``index`` (zero-padded so that parts sort in order)."""
    return f"{index:05d}"


def variation_prefix(variation: str) -> str:
    """The path prefix of a shape variation's own columns in a part."""
    return f"{VARIATIONS}/{variation}/"


def json_float(value: float) -> float | str:
    """A float for the JSON attributes: NaN as the string ``"nan"``.

    Examples
    --------
    >>> json_float(float("nan")), json_float(-999.0)
    ('nan', -999.0)
    """
    return "nan" if value != value else value


def folds_attr() -> dict[str, Any]:
    """The table's ``folds`` attribute: how many, and how an event's fold is hashed."""
    return {"n": N_FOLDS, "hash": FOLD_HASH}


def group_attrs(path: str | Path) -> dict[str, Any]:
    """The attributes of the Zarr v3 group at ``path`` (read from its ``zarr.json``)."""
    with open(Path(path) / "zarr.json") as fh:
        return dict(json.load(fh).get("attributes", {}))


def part_attrs(events: int, changed: Mapping[str, list[str]], sentinels: Mapping[str, Any],
               selected: Mapping[str, int]) -> dict[str, Any]:
    """The attributes the row builder stores on a part (the writer adds its rows).

    Parameters
    ----------
    events
        Input events of the chunk.
    changed
        Per shape variation, the columns (and collections, and ``weight``) it stores again.
    sentinels
        Per column, the value its missing entries took.
    selected
        Per variation (nominal included), the rows that pass.
    """
    return {PART_EVENTS: events, PART_CHANGED: dict(changed),
            PART_SENTINELS: {k: json_float(v) for k, v in sentinels.items()},
            PART_SELECTED: dict(selected)}


@dataclass(frozen=True)
class MergedParts:
    """What a table's parts say together (see :func:`merge_part_attrs`)."""

    #: Per shape variation, the columns it stores again (the same in every part).
    changed_columns: dict[str, list[str]]
    #: Rows passing per variation, summed over the parts.
    rows_selected: dict[str, int]
    #: Per column, the value missing entries took (the first part's).
    sentinels: dict[str, Any]


def merge_part_attrs(parts: Sequence[Mapping[str, Any]], where: str | Path) -> MergedParts:
    """Merge the parts' attributes into the table's; parts must store the same columns.

    Raises
    ------
    TableError
        If parts store different columns per variation (``where`` names the table).

    Examples
    --------
    >>> a = part_attrs(10, {"up": ["x"]}, {"x": float("nan")}, {"nominal": 4, "up": 5})
    >>> b = part_attrs(10, {"up": ["x"]}, {"x": float("nan")}, {"nominal": 1, "up": 0})
    >>> merge_part_attrs([a, b], "t.zarr").rows_selected
    {'nominal': 5, 'up': 5}
    >>> merge_part_attrs([a, part_attrs(1, {}, {}, {})], "t.zarr")
    Traceback (most recent call last):
    ...
    pipeline.table_layout.TableError: t.zarr: parts store different columns per variation (2 layouts); calibrators must change the same collections in every chunk
    """  # noqa: E501
    changed = {json.dumps(p.get(PART_CHANGED), sort_keys=True) for p in parts}
    if len(changed) > 1:
        raise TableError(f"{where}: parts store different columns per variation "
                         f"({len(changed)} layouts); calibrators must change the same "
                         "collections in every chunk")
    selected: dict[str, int] = {}
    for p in parts:
        for variation, count in p.get(PART_SELECTED, {}).items():
            selected[variation] = selected.get(variation, 0) + int(count)
    first = parts[0] if parts else {}
    return MergedParts(changed_columns=first.get(PART_CHANGED, {}) if parts else {},
                       rows_selected=selected,
                       sentinels=dict(first.get(PART_SENTINELS, {})))


__all__ = [
    "CONSTITUENT_INDEX", "EVENT", "FOLD", "FOLD_HASH", "FOLD_PURPOSE", "IDENTITY",
    "IDENTITY_DTYPES", "IDENTITY_TYPES", "IS_DATA", "LABEL", "LAYOUT", "LUMINOSITY_BLOCK",
    "MASK", "NOMINAL", "N_FOLDS", "OBJECT_INDEX", "OFFSETS", "PADDED", "PARTS", "PART_CHANGED",
    "PART_EVENTS", "PART_ROWS", "PART_SELECTED", "PART_SENTINELS", "PASS", "RAGGED",
    "RESERVED_COLUMNS", "ROOT_COMPLETE", "ROOT_IDENTITY", "ROOT_N_PARTS", "ROOT_PART_INDICES",
    "ROOT_PART_ROWS", "ROOT_ROWS", "ROOT_SCHEMA_VERSION", "ROOT_SKIPPED_PARTS", "RUN",
    "SCHEMA_VERSION", "VARIATIONS", "WEIGHT", "WEIGHT_VARIATIONS", "Column", "MergedParts",
    "PaddedColumn", "RaggedColumn", "TableError", "folds_attr", "group_attrs", "json_float",
    "merge_part_attrs", "part_attrs", "part_name", "rows_of", "variation_prefix",
]
