"""Names of systematic variations: the nominal, ``{source}Up`` / ``{source}Down`` pairs, and
the one-sided sources.

A calibrator (its ``_variations``) and a weight (the variations its ``compute`` returns)
name each variation ``{source}Up`` or ``{source}Down``, both directions of a source, unless
the class declares the source one-sided (``one_sided = ("topPt",)``): then ``{source}Up``
alone is its variation, a ``{source}Down`` it still lists is dropped (never computed), and
the results mirror the ``Up`` around the nominal.

Examples
--------
>>> validate_variation_names("calibrator", "c", ["jesUp", "jesDown", "topPtUp"], ("topPt",))
>>> without_one_sided_downs(["topPtUp", "topPtDown", "jesUp", "jesDown"], ("topPt",))
['topPtUp', 'jesUp', 'jesDown']
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from pipeline.errors import CalibrationError, CalibrewError, WeightError

NOMINAL = "nominal"

#: The error raised for a bad name, by the kind of object that gives it.
_ERRORS: dict[str, type[CalibrewError]] = {"calibrator": CalibrationError,
                                           "weight": WeightError}


def check_one_sided(kind: str, name: str, one_sided: object) -> None:
    """Check a class' ``one_sided`` declaration: a tuple (or list) of source names.

    Examples
    --------
    >>> check_one_sided("calibrator", "c", ("topPt",))
    >>> check_one_sided("weight", "w", ("topPtUp", "top pt"))
    Traceback (most recent call last):
    ...
    pipeline.errors.WeightError: weight 'w': one_sided entry 'top pt' must be a source name ...
    """
    error = _ERRORS[kind]
    if isinstance(one_sided, str) or not isinstance(one_sided, (tuple, list)):
        raise error(f"{kind} {name!r}: one_sided must be a tuple of source names, e.g. "
                    f"one_sided = ('topPt',), not {one_sided!r}")
    for source in one_sided:
        if not isinstance(source, str) or not source.isidentifier():
            raise error(f"{kind} {name!r}: one_sided entry {source!r} must be a source name "
                        "(an identifier, the variation's name without 'Up')")


def validate_variation_names(kind: str, name: str, variations: Sequence[str],
                             one_sided: Collection[str] = ()) -> None:
    """Check the ``{source}Up`` / ``{source}Down`` convention: both directions of a source,
    or ``{source}Up`` alone for a source declared in ``one_sided``.

    ``kind`` (``"calibrator"`` or ``"weight"``) and ``name`` name the class in the messages
    (a :class:`~pipeline.errors.CalibrationError` or a :class:`~pipeline.errors.WeightError`).

    Examples
    --------
    >>> validate_variation_names("calibrator", "c", ["jesUp", "jesDown"])
    >>> validate_variation_names("calibrator", "c", ["topPtUp"])
    Traceback (most recent call last):
    ...
    pipeline.errors.CalibrationError: calibrator 'c' declares variation 'topPtUp' without ...
    """
    error = _ERRORS[kind]
    seen = set()
    for var in variations:
        if not isinstance(var, str):
            raise error(f"{kind} {name!r} declares variation {var!r}, which is not a string")
        if var in seen:
            raise error(f"{kind} {name!r} declares variation {var!r} twice")
        seen.add(var)
        if var == NOMINAL:
            raise error(f"{kind} {name!r} declares variation 'nominal', which is reserved")
        _check_twin(kind, name, var, variations, one_sided)


def _check_twin(kind: str, name: str, var: str, variations: Sequence[str],
                one_sided: Collection[str]) -> None:
    """Check that ``var`` is ``{source}Up`` or ``{source}Down`` and its twin is there (or
    that it is the ``Up`` of a one-sided source)."""
    error = _ERRORS[kind]
    for direction, twin in (("Up", "Down"), ("Down", "Up")):
        if var.endswith(direction) and len(var) > len(direction):
            source = var[: -len(direction)]
            if source + twin in variations or (direction == "Up" and source in one_sided):
                return
            hint = ""
            if direction == "Up":
                hint = (f"; a source varied one way only is declared one-sided in the "
                        f"{kind}'s class: one_sided = ({source!r},)")
            raise error(f"{kind} {name!r} declares variation {var!r} without its twin "
                        f"{source + twin!r}{hint}")
    raise error(f"{kind} {name!r} declares variation {var!r}: variation names must be "
                "'{source}Up' or '{source}Down'")


def without_one_sided_downs(variations: Sequence[str], one_sided: Collection[str]) -> list[str]:
    """``variations`` less the ``{source}Down`` of each source declared one-sided."""
    drop = {f"{source}Down" for source in one_sided}
    return [v for v in variations if v not in drop]


__all__ = ["NOMINAL", "check_one_sided", "validate_variation_names", "without_one_sided_downs"]
