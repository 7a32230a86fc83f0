"""Read and replace event columns the same way on eager awkward and lazy dask-awkward arrays.

Eager arrays take fast paths on their buffers (no broadcast over the other columns); the
rest goes through the array adapter :mod:`pipeline.calibration.ops`.
"""

from __future__ import annotations

from typing import Any

import awkward as ak
import numpy as np

from pipeline.calibration import ops
from pipeline.errors import CalibrationError


def leaf_buffers(array: Any) -> list[Any] | None:
    """The numpy buffers (offsets, values) of an eager numeric (jagged) array, else None.

    Two arrays with the very same buffers hold the same values: a calibrator can tell that
    its inputs are those of the nominal (a variation left them alone) and reuse its result.

    Examples
    --------
    >>> import awkward as ak
    >>> jets = ak.Array([{"pt": [1.0, 2.0], "eta": [0.1, 0.2]}])
    >>> same_buffers(leaf_buffers(jets.eta), leaf_buffers(ak.with_field(jets, jets.pt * 2,
    ...                                                              "pt").eta))
    True
    """
    if not isinstance(array, ak.Array):  # a dask-awkward collection has no buffers
        return None
    layout = ak.to_layout(array)
    out = []
    while isinstance(layout, (ak.contents.ListOffsetArray, ak.contents.IndexedArray)):
        # lists, and objects taken in another order (a collection re-sorted by pt)
        if isinstance(layout, ak.contents.ListOffsetArray):
            out.append(layout.offsets.data)
        else:
            out.append(layout.index.data)
        layout = layout.content
    if not isinstance(layout, ak.contents.NumpyArray) or not isinstance(layout.data, np.ndarray):
        return None
    return [*out, layout.data]


def same_buffers(a: list[Any] | None, b: list[Any] | None) -> bool:
    """Whether two :func:`leaf_buffers` results are known to be the very same buffers."""
    return (a is not None and b is not None and len(a) == len(b)
            and all(x is y for x, y in zip(a, b)))


def split_key(key: str) -> tuple[str, ...]:
    """``"Jet.pt"`` -> ``("Jet", "pt")``; ``"Jet"`` -> ``("Jet",)``."""
    return tuple(key.split("."))


def has_column(events: Any, key: str) -> bool:
    """Whether ``events`` has the collection or ``Collection.field`` named by ``key``.

    Examples
    --------
    >>> import awkward as ak
    >>> ev = ak.Array([{"Jet": [{"pt": 1.0}]}])
    >>> has_column(ev, "Jet.pt"), has_column(ev, "Jet.eta"), has_column(ev, "MET")
    (True, False, False)
    """
    parts = split_key(key)
    fields = events.fields
    if parts[0] not in fields:
        return False
    if len(parts) == 1:
        return True
    return parts[1] in events[parts[0]].fields


def get_column(events: Any, key: str) -> Any:
    """Return the collection or field named by ``key`` (``"Jet"`` or ``"Jet.pt"``)."""
    parts = split_key(key)
    out = events[parts[0]]
    return out[parts[1]] if len(parts) == 2 else out


def with_column(events: Any, key: str, value: Any) -> Any:
    """Return a new events array with ``key`` set to ``value``; ``events`` is not modified.

    Examples
    --------
    >>> import awkward as ak
    >>> ev = ak.Array([{"Jet": [{"pt": 1.0}]}])
    >>> with_column(ev, "Jet.pt", ev.Jet.pt * 2).Jet.pt.tolist(), ev.Jet.pt.tolist()
    ([[2.0]], [[1.0]])
    """
    where = split_key(key)
    return ops.with_field(events, value, where=where if len(where) > 1 else where[0])


def _with_list_field(objects: Any, value: Any, field: str) -> Any:
    """``ops.with_field(objects, value, field)``; for an eager list of records and a value of
    the same list lengths, or a record per event and a value per event, the value's content
    is swapped in directly (no broadcast).

    Examples
    --------
    >>> jets = ak.Array([[{"pt": 1.0, "eta": 0.5}], [], [{"pt": 2.0, "eta": 1.5}]])
    >>> _with_list_field(jets, jets.pt * 10, "pt").tolist()
    [[{'pt': 10.0, 'eta': 0.5}], [], [{'pt': 20.0, 'eta': 1.5}]]
    >>> met = ak.Array([{"pt": 1.0, "phi": 0.5}])
    >>> _with_list_field(met, met.pt * 10, "pt").tolist()
    [{'pt': 10.0, 'phi': 0.5}]
    """
    if not (isinstance(objects, ak.Array) and isinstance(value, ak.Array)):
        return ops.with_field(objects, value, field)  # lazy, or a number for every object
    layout, new = ak.to_layout(objects), ak.to_layout(value)
    if (isinstance(layout, ak.contents.ListOffsetArray) and isinstance(
            new, ak.contents.ListOffsetArray) and ak.backend(objects, value) == "cpu"
            and isinstance(layout.content, ak.contents.RecordArray)
            and not layout.content.is_tuple and field in layout.content.fields):
        offsets, record = layout.offsets.data, layout.content
        if (offsets[0] == 0 and record.length == offsets[-1] == new.content.length
                and (new.offsets.data is offsets
                     or np.array_equal(new.offsets.data, offsets))):
            contents = [new.content if name == field else content
                        for name, content in zip(record.fields, record.contents)]
            swapped = ak.contents.ListOffsetArray(
                layout.offsets, ak.contents.RecordArray(
                    contents, record.fields, length=record.length,
                    parameters=record.parameters),
                parameters=layout.parameters)
            return ak.Array(swapped, behavior=objects.behavior, attrs=objects.attrs)
    if (isinstance(layout, ak.contents.RecordArray) and isinstance(new, ak.contents.NumpyArray)
            and not layout.is_tuple and field in layout.fields and new.length == layout.length
            and ak.backend(objects, value) == "cpu"):
        contents = [new if name == field else content
                    for name, content in zip(layout.fields, layout.contents)]
        record = ak.contents.RecordArray(contents, layout.fields, length=layout.length,
                                         parameters=layout.parameters)
        return ak.Array(record, behavior=objects.behavior, attrs=objects.attrs)
    return ops.with_field(objects, value, field)


def with_object_fields(objects: Any, fields: dict[str, Any]) -> Any:
    """A collection with several fields set, lazily or eagerly alike.

    Eager fields of the collection's own list lengths are swapped in without a broadcast.

    Examples
    --------
    >>> jets = ak.Array([[{"pt": 1.0}], []])
    >>> with_object_fields(jets, {"pt": jets.pt * 2, "ptx": jets.pt}).tolist()
    [[{'pt': 2.0, 'ptx': 1.0}], []]
    """
    for field, value in fields.items():
        objects = _with_list_field(objects, value, field)
    return objects


def with_columns(events: Any, columns: dict[str, Any]) -> Any:
    """Return new events with several columns replaced or added, grouped by collection.

    On eager and typetracer arrays whose top level is a record (NanoEvents), each touched
    collection is rebuilt once and swapped into the event record without broadcasting over
    the hundreds of other branches: far cheaper than one ``ak.with_field`` per column.

    Examples
    --------
    >>> import awkward as ak
    >>> ev = ak.Array([{"Jet": [{"pt": 1.0, "mass": 2.0}], "MET": {"pt": 3.0}}])
    >>> out = with_columns(ev, {"Jet.pt": ev.Jet.pt + 1, "Jet.mass": ev.Jet.mass * 0})
    >>> out.Jet.tolist(), out.MET.pt.tolist()
    ([[{'pt': 2.0, 'mass': 0.0}]], [3.0])
    """
    layout = events.layout if isinstance(events, ak.Array) else None  # None: lazy
    if not isinstance(layout, ak.contents.RecordArray) or layout.is_tuple:
        for key, value in columns.items():
            events = with_column(events, key, value)
        return events
    grouped: dict[str, dict[str, Any]] = {}
    for key, value in columns.items():
        collection, _, field = key.partition(".")
        grouped.setdefault(collection, {})[field] = value
    contents = dict(zip(layout.fields, layout.contents))
    for collection, fields in grouped.items():
        if "" in fields:
            new = fields.pop("")
            if not fields:
                contents[collection] = ak.to_layout(new)
                continue
            base = new
        else:
            base = events[collection]
        for field, value in fields.items():
            base = _with_list_field(base, value, field)
        contents[collection] = ak.to_layout(base)
    rebuilt = ak.contents.RecordArray(
        list(contents.values()), list(contents.keys()),
        length=layout.length, parameters=layout.parameters,
    )
    return ak.Array(rebuilt, behavior=events.behavior, attrs=events.attrs)


def _describe(array: Any) -> str:
    return str(array.type) if hasattr(array, "type") else type(array).__name__


def check_structure(calibrator: str, key: str, old: Any, new: Any) -> None:
    """Raise :class:`CalibrationError` if ``new`` cannot replace ``old``.

    A replacement must be an array of the same kind (eager or lazy), with the same
    nesting depth and, when eager, the same number of events and objects per event.
    ``old`` is None for a column the calibrator creates.
    """
    where = f"calibrator {calibrator!r} returned column {key!r}"
    if not ops.is_array(new):
        raise CalibrationError(
            f"{where} as {type(new).__name__}; expected an awkward or dask-awkward array"
        )
    if old is None:
        return
    if ops.is_lazy(old) != ops.is_lazy(new):
        kinds = ("lazy", "eager") if ops.is_lazy(old) else ("eager", "lazy")
        raise CalibrationError(f"{where} as a {kinds[1]} array but the events are {kinds[0]}")
    if old.ndim != new.ndim:
        raise CalibrationError(
            f"{where} with a different structure: expected {_describe(old)}, "
            f"got {_describe(new)}"
        )
    if ops.is_lazy(new) or ak.backend(new) == "typetracer":  # no lengths to compare
        return
    if len(old) != len(new):
        raise CalibrationError(
            f"{where} with {len(new)} events; the events have {len(old)}"
        )
    for axis in range(1, old.ndim):
        if not ak.all(ak.num(old, axis=axis) == ak.num(new, axis=axis), axis=None):
            raise CalibrationError(
                f"{where} with a different number of objects per event at axis {axis} "
                f"than the column it replaces"
            )
