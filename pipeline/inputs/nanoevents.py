"""Reading NanoAOD as coffea NanoEvents, lazily (dask-awkward) or eagerly.

Column projection: with coffea's vector behaviours, ``Jet.pt`` is computed by the
``vector`` library from the azimuthal coordinates and so also reads ``Jet_phi``.
:func:`stored_fields_first` makes ``pt``, ``eta``, ``phi``, ``mass`` and ``energy`` return
the stored NanoAOD branch when the record has it (the same values, as NanoAOD stores
them), so a run reads only the branches it uses. Vector methods (``delta_r``, sums,
boosts) are unchanged.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import awkward as ak
import dask_awkward as dak
from dask.base import tokenize
from dask_awkward.layers import AwkwardInputLayer

from pipeline.inputs.open_trees import CachedTreeRead

DIRECT_FIELDS = ("pt", "eta", "phi", "mass", "energy")


class _StoredFieldFirst:
    """A descriptor: the record's own field when present, else the vector computation."""

    def __init__(self, name: str, fallback: Any) -> None:
        self.name, self.fallback = name, fallback

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self
        if self.name in obj.fields:
            return obj[self.name]
        return self.fallback.__get__(obj, objtype)


@functools.lru_cache(maxsize=1)
def stored_fields_first() -> None:
    """Install the stored-field-first properties on coffea's vector mixins (once)."""
    from coffea.nanoevents.methods import vector

    for cls in (vector.TwoVector, vector.PolarTwoVector, vector.ThreeVector,
                vector.SphericalThreeVector, vector.LorentzVector,
                vector.PtEtaPhiMLorentzVector, vector.PtEtaPhiELorentzVector):
        for name in DIRECT_FIELDS:
            fallback = getattr(cls, name, None)
            if fallback is None or isinstance(fallback, _StoredFieldFirst):
                continue
            if isinstance(fallback, property):
                setattr(cls, name, _StoredFieldFirst(name, fallback))


def _factory() -> Any:
    stored_fields_first()
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    return NanoEventsFactory, NanoAODSchema


def read_lazy(files: dict[str, Any], uproot_options: dict[str, Any] | None = None,
              known_base_form: str | None = None) -> Any:
    """Lazy NanoEvents of ``{file: {"object_path": tree, "steps": [[a, b], ...]}}``; files
    may be ``root://`` or ``https://`` URLs, read with ``uproot_options`` (e.g. the remote
    timeout of :meth:`pipeline.inputs.datasets.Dataset.uproot_options`).

    ``known_base_form``: the JSON of uproot's base form of the first file's tree (as
    :func:`base_form` gives it, ``typenames`` included), when known: then no file is opened.

    Each worker process opens a file once, not once per chunk
    (:class:`~pipeline.inputs.open_trees.CachedTreeRead`).
    """
    factory, schema = _factory()
    known = None if known_base_form is None else ak.forms.from_json(known_base_form)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Missing cross-reference")
        events = factory.from_root(files, schemaclass=schema, mode="dask",
                                   uproot_options=uproot_options or {},
                                   known_base_form=known).events()
    return read_like(events, files)


def base_form(events: Any) -> str | None:
    """The JSON of uproot's base form of lazy ``events`` (of :func:`read_lazy`), to read
    files of the same branches again without opening them; ``None`` when ``events`` do not
    come from uproot."""
    for layer in events.dask.layers.values():
        form = getattr(getattr(layer, "io_func", None), "base_form", None)
        if isinstance(layer, AwkwardInputLayer) and form is not None:
            return str(form.to_json())
    return None


def read_like(template: Any, files: dict[str, Any]) -> Any:
    """Lazy NanoEvents of ``files`` (as for :func:`read_lazy`) read by the read function of
    ``template``, lazy events of files with the same branches and uproot options: no file is
    opened, and neither the read function nor its form is built or hashed again.

    The collection's name is a hash of the template's and of the entry ranges. Its read
    function keeps the files it opens (:class:`~pipeline.inputs.open_trees.CachedTreeRead`).
    """
    (name, layer), = ((n, lay) for n, lay in template.dask.layers.items()
                      if isinstance(lay, AwkwardInputLayer))
    parts = [(file, spec["object_path"], start, stop, True)
             for file, spec in files.items() for start, stop in spec["steps"]]
    divisions = [0]
    for _, _, start, stop, _ in parts:
        divisions.append(divisions[-1] + stop - start)
    events = dak.from_map(CachedTreeRead.wrap(layer.io_func), parts, divisions=tuple(divisions),
                          label="from-uproot", token=tokenize(name, parts))
    assert isinstance(events, dak.Array)
    events._meta.attrs["@original_array"] = events  # as coffea's NanoEventsFactory does
    return events


def read_eager(file: str, tree: str = "Events", start: int | None = None,
               stop: int | None = None) -> Any:
    """Eager NanoEvents of one file (entries ``[start, stop)``)."""
    factory, schema = _factory()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Missing cross-reference")
        return factory.from_root({file: tree}, schemaclass=schema, mode="eager",
                                 entry_start=start, entry_stop=stop).events()
