"""Cuts that need payloads, referenced as ``"@name"`` in a preselection.

A preselection entry is an expression (:class:`pipeline.selection.Expression`) or
``"@name"``: a :class:`Cut` of the :data:`CUTS` registry, configured by the parameters
``selections.<period>.<name>`` (e.g. ``"@jet_veto_map"``), or ``"@my_module:MyCut"``, a cut
of the user's own module, named by import path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import awkward as ak
import numpy as np

from pipeline.calibration import ops
from pipeline.calibration.columns import leaf_buffers, same_buffers
from pipeline.config.parameters import section
from pipeline.config.plugins import Registry
from pipeline.corrections import get_correction
from pipeline.errors import ConfigError
from pipeline.selection import Expression, Vocabulary


class Cut:
    """An event selection that needs parameters (payloads); settings from
    ``selections.<period>.<name>`` in the parameters. Defining a subclass with a ``name``
    registers it in :data:`CUTS`; :meth:`evaluate` returns one boolean per event."""

    name: str = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            CUTS[cls.name] = cls

    def __init__(self, params: Any, metadata: Mapping[str, Any], where: str) -> None:
        period = str(metadata.get("year", ""))
        settings = section(params, "selections", period, self.name)
        if settings is None:
            raise ConfigError("parameters", [(f"selections.{period}.{self.name}",
                              f"missing: {where} uses @{self.name}")])
        self.settings: dict[str, Any] = settings
        self.metadata = metadata
        self.where = where
        self.text = f"@{self.name}"

    def evaluate(self, events: Any) -> Any:
        """The mask of the events that pass."""
        raise NotImplementedError

    @property
    def depends(self) -> set[str] | None:
        """The collections the cut reads (None: any), for reuse across variations."""
        return None


#: The cuts by name: the built-in ones, then the ``calibrew.cuts`` entry points.
CUTS: Registry[type[Cut]] = Registry("cut", "calibrew.cuts", Cut)


class JetVetoMap(Cut):
    """Reject events with a jet in a vetoed (eta, phi) region of the JME jet veto map.

    Settings: ``json_path``, ``correction``, ``map_type`` (default ``jetvetomap``), and the
    jets considered: ``pt_min`` (15 GeV), ``jet_id_min`` (2, tight), ``max_em_fraction``
    (0.9), ``jets`` (``Jet``), as JME recommends.
    """

    name = "jet_veto_map"

    @property
    def depends(self) -> set[str] | None:
        return {self.settings.get("jets", "Jet")}

    def evaluate(self, events: Any) -> Any:
        jets = events[self.settings.get("jets", "Jet")]
        fields = [jets.pt, jets.jetId, jets.chEmEF, jets.neEmEF, jets.eta, jets.phi]
        flat = ops.flat_positions_of(fields)
        if flat is not None:  # an eager chunk: on flat numpy arrays
            return self._flat_evaluate(flat)
        considered = self._considered(*fields[:4])
        return ~ak.any(considered & self._vetoed(jets), axis=1)

    def _considered(self, pt: Any, jet_id: Any, ch_em: Any, ne_em: Any) -> Any:
        """The jets the veto looks at (jagged or flat arrays alike)."""
        s = self.settings
        return ((pt > s.get("pt_min", 15.0)) & (jet_id >= s.get("jet_id_min", 2))
                & ((ch_em + ne_em) < s.get("max_em_fraction", 0.9)))

    def _in_map(self, eta: Any, phi: Any) -> Any:
        """Whether each jet lies in a vetoed region (jagged or flat arrays alike)."""
        s = self.settings
        veto = get_correction(s["json_path"], s["correction"])
        # the map is defined for |eta| < 5.191 and phi in [-pi, pi]
        eta = np.minimum(np.maximum(eta, -5.19), 5.19)
        phi = np.minimum(np.maximum(phi, -3.1415), 3.1415)
        return veto.evaluate(s.get("map_type", "jetvetomap"), eta, phi) > 0

    def _vetoed(self, jets: Any) -> Any:
        """Jets in a vetoed region; evaluated again only when the jets' eta or phi change
        (a jet-energy variation changes neither)."""
        eta, phi = leaf_buffers(jets.eta), leaf_buffers(jets.phi)
        if eta is None or phi is None:
            return self._in_map(jets.eta, jets.phi)
        return self._cached(["jagged", *eta, *phi], lambda: self._in_map(jets.eta, jets.phi))

    def _cached(self, buffers: list[Any], compute: Callable[[], Any]) -> Any:
        """``compute()``, or its value kept from the last call on the very same
        ``buffers`` (compared by identity): the cut's one cache, for either path."""
        cached = getattr(self, "_cache", None)
        if cached is not None and same_buffers(cached[0], buffers):
            return cached[1]
        value = compute()
        self._cache = (buffers, value)
        return value

    def _flat_evaluate(self, flat: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> Any:
        """The mask from the :func:`ops.flat_positions` of the jets' pt, jetId, chEmEF,
        neEmEF, eta and phi. The veto map is looked up once per buffer of eta and phi
        values: the variations that re-sort the jets or change their pt share it."""
        counts = flat[0][0]
        pt, jet_id, ch_em, ne_em = (values[at] for _, values, at in flat[:4])
        (_, eta, eta_at), (_, phi, phi_at) = flat[4:]
        if len(eta) == len(phi) and np.array_equal(eta_at, phi_at):
            vetoed = self._cached(["flat", eta, phi], lambda: self._in_map(eta, phi))[eta_at]
        else:
            vetoed = self._in_map(eta[eta_at], phi[phi_at])
        hit = self._considered(pt, jet_id, ch_em, ne_em) & vetoed
        passed = np.ones(len(counts), dtype=bool)
        passed[ops.list_index(counts)[hit]] = False
        return ops.as_array(passed)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_cache"}


def make_cut(text: str, where: str, params: Any, metadata: Mapping[str, Any],
             vocabulary: Vocabulary | None = None) -> Any:
    """An :class:`Expression` (using ``vocabulary``: the analysis' functions and
    definitions), or the :class:`Cut` of a text ``"@name"`` or ``"@module:Class"``.

    Examples
    --------
    >>> make_cut("ak.num(Jet) > 1", "preselection.jets", None, {}).text
    'ak.num(Jet) > 1'
    >>> make_cut("@no_such_cut", "preselection.veto", None, {})
    Traceback (most recent call last):
    ...
    pipeline.errors.UnknownNameError: preselection.veto: unknown cut 'no_such_cut'; valid cuts ...
    """
    if text.startswith("@"):
        return CUTS.resolve(text[1:], where)(params, metadata, where)
    return Expression(text, where, vocabulary)
