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


def read_lazy(files: dict[str, Any], uproot_options: dict[str, Any] | None = None) -> Any:
    """Lazy NanoEvents of ``{file: {"object_path": tree, "steps": [[a, b], ...]}}``; files
    may be ``root://`` or ``https://`` URLs, read with ``uproot_options`` (e.g. the remote
    timeout of :meth:`pipeline.inputs.datasets.Dataset.uproot_options`)."""
    factory, schema = _factory()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Missing cross-reference")
        return factory.from_root(files, schemaclass=schema, mode="dask",
                                 uproot_options=uproot_options or {}).events()


def read_eager(file: str, tree: str = "Events", start: int | None = None,
               stop: int | None = None) -> Any:
    """Eager NanoEvents of one file (entries ``[start, stop)``)."""
    factory, schema = _factory()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Missing cross-reference")
        return factory.from_root({file: tree}, schemaclass=schema, mode="eager",
                                 entry_start=start, entry_stop=stop).events()
