"""Exceptions that name what is at fault: a file, a key path, a calibrator, a column."""

from __future__ import annotations

from collections.abc import Iterable


class CalibrewError(Exception):
    """Base class of every error calibrew raises on purpose."""


class ConfigError(CalibrewError):
    """A configuration, parameter or job file is invalid.

    Parameters
    ----------
    source
        The file (or description of the Python object) that holds the bad value.
    problems
        One ``(key_path, message)`` pair per problem found.

    Examples
    --------
    >>> str(ConfigError("job.yaml", [("output", "field required")]))
    'job.yaml: invalid configuration\\n  - output: field required'
    """

    def __init__(self, source: str, problems: Iterable[tuple[str, str]]):
        self.source = source
        self.problems = list(problems)
        lines = [f"{source}: invalid configuration"]
        lines += [f"  - {path or '<top level>'}: {msg}" for path, msg in self.problems]
        super().__init__("\n".join(lines))


class UnknownNameError(CalibrewError, KeyError):
    """A name (calibrator, period, histogram...) is not registered; lists the valid ones."""

    def __init__(self, kind: str, name: str, valid: Iterable[str], where: str = ""):
        self.kind, self.name, self.valid, self.where = kind, name, sorted(valid), where
        prefix = f"{where}: " if where else ""
        self.message = (
            f"{prefix}unknown {kind} {name!r}; valid {kind}s are: "
            + (", ".join(self.valid) if self.valid else "(none)")
        )
        super().__init__(self.message)

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.message


class CalibrationError(CalibrewError):
    """A calibrator broke the calibrator contract (undeclared column, wrong structure...)."""


class InputFileError(CalibrewError):
    """A data or payload file is missing, unreadable, or lacks something we need."""


class UnreadableInputError(InputFileError):
    """An input data file could not be read for a chunk (``--on-bad-file`` decides)."""


class ExpressionError(CalibrewError):
    """A selection, category or histogram expression cannot be evaluated on the events."""


class SiteError(CalibrewError):
    """A compute site cannot be started or reached (scheduler, batch system, workers)."""


class ChunkError(CalibrewError):
    """A chunk could not be processed (its file is unreadable, or a worker kept dying)."""
