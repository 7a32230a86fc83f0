"""Exceptions that name what is at fault: a file, a key path, a calibrator, a weight, a
column."""

from __future__ import annotations

import contextlib
import inspect
import re
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: modules whose errors mean that an input file cannot be opened or read
READER_MODULES = ("uproot", "pyarrow", "fsspec", "awkward._connect.pyarrow", "zlib", "lz4",
                  "zstandard", "cramjam", "xxhash", "pipeline.inputs.nanoevents")


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

    def __reduce__(self) -> tuple[Any, ...]:  # pickled (to and from workers) whole
        return (type(self), (self.source, self.problems), self.__dict__)


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

    def __reduce__(self) -> tuple[Any, ...]:  # pickled (to and from workers) whole
        return (type(self), (self.kind, self.name, self.valid, self.where), self.__dict__)


class CalibrationError(CalibrewError):
    """A calibrator broke the calibrator contract (undeclared column, wrong structure...)."""


class WeightError(CalibrewError):
    """A weight failed (its ``compute`` raised) or broke the weight contract (a factor that
    is not one number per event, variation names)."""


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


class OutputError(CalibrewError):
    """The output directory cannot be written: a file in its place, read-only, full."""


class OutputLockedError(OutputError):
    """Another run holds the output directory (its pid and host are named)."""


class OutputConflictError(OutputError):
    """The output directory holds the outputs of another configuration."""


def raised_by_reader(err: BaseException) -> bool:
    """Whether ``err`` was raised inside a file reader (its traceback passes through uproot,
    pyarrow, fsspec or a decompressor): the input cannot be read, not the analysis' fault.

    Examples
    --------
    >>> raised_by_reader(ValueError("an analysis' error"))
    False
    """
    modules = [str(frame.f_globals.get("__name__", ""))
               for frame, _ in traceback.walk_tb(err.__traceback__)]
    modules.append(type(err).__module__)
    return any(m == r or m.startswith(r + ".") for m in modules for r in READER_MODULES)


def describe_failure(err: BaseException, cls: type | None = None) -> str:
    """What went wrong in a calibrator or a weight, in one line: a column the input lacks
    is named as the NanoAOD branch (``FatJet_genJetAK8Idx``); any other error by its type
    and first line, and the line of the class' own source (``cls``) it was raised from.

    Examples
    --------
    >>> import awkward as ak
    >>> try:
    ...     ak.Array([{"pt": [1.0]}]).eta
    ... except AttributeError as err:
    ...     describe_failure(err)
    "the input has no column 'eta'"
    """
    text = str(err)
    field = re.search(r"no field (?:named )?'([^']+)'", text)
    if field is not None:
        collection = _record_name(err)
        if collection and collection != "NanoEvents":
            return (f"the input has no column {collection}.{field.group(1)} (NanoAOD branch "
                    f"{collection}_{field.group(1)})")
        return f"the input has no column {field.group(1)!r}"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    where = ""
    source = _source_file(cls)
    if source is not None:
        frames = [f for f in traceback.extract_tb(err.__traceback__)
                  if Path(f.filename).resolve() == source]
        if frames:
            where = f" (raised at {source.name}:{frames[-1].lineno})"
    return f"{type(err).__name__}: {first}".rstrip(": ") + where


@contextlib.contextmanager
def plugin_call(error: type[CalibrewError], who: str, cls: type, stage: str,
                variation: str | None = None) -> Iterator[None]:
    """Run a call into a plugin class ``cls`` (a calibrator's or a weight's constructor or
    method ``stage``); an error that is not calibrew's own is raised as ``error``, naming the
    plugin (``who``), the stage, the variation and the column or line at fault
    (:func:`describe_failure`). An error raised inside a file reader (the input cannot be
    read) passes unchanged.

    Examples
    --------
    >>> with plugin_call(CalibrationError, "calibrator 'c'", object, "calibrate", "jesUp"):
    ...     raise ValueError("no payload for run 1")
    Traceback (most recent call last):
    ...
    pipeline.errors.CalibrationError: calibrator 'c' failed in calibrate() of variation ...
    """
    try:
        yield
    except CalibrewError:
        raise
    except Exception as err:
        if raised_by_reader(err):
            raise
        during = f"{stage}()" + (f" of variation {variation!r}" if variation else "")
        raise error(f"{who} failed in {during}: {describe_failure(err, cls)}") from err


def _record_name(err: BaseException) -> str:
    """The record (collection) name of the array a missing field was asked of: from
    awkward's note on the error, or the array in the innermost frame that holds one."""
    notes = " ".join(getattr(err, "__notes__", None) or [])
    owner = re.search(r"<(\w+?)Array", notes)
    if owner:
        return owner.group(1)
    for frame, _ in reversed(list(traceback.walk_tb(err.__traceback__))):
        array = frame.f_locals.get("self")
        layout = getattr(array, "layout", None)
        if layout is not None and hasattr(layout, "purelist_parameter"):
            try:
                name = layout.purelist_parameter("__record__")
            except Exception:  # not an awkward layout after all
                continue
            if isinstance(name, str):
                return name
    return ""


def _source_file(cls: type | None) -> Path | None:
    try:
        name = inspect.getsourcefile(cls) if cls is not None else None
    except TypeError:
        return None
    return Path(name).resolve() if name else None


def with_context(err: CalibrewError, context: str) -> CalibrewError:
    """A copy of ``err`` (same class) whose message ends with a line saying where it
    happened (the dataset, the file, the chunk).

    Examples
    --------
    >>> print(with_context(ExpressionError("preselection.x: cannot evaluate"), "dataset 'tt'"))
    preselection.x: cannot evaluate
      in dataset 'tt'
    """
    new = _rebuild(type(err), f"{err}\n  in {context}", dict(err.__dict__))
    new.__cause__ = err.__cause__
    return new


def _rebuild(cls: type[CalibrewError], message: str, state: dict[str, Any]) -> CalibrewError:
    """An error of class ``cls`` with ``message`` and attributes ``state``, made without
    calling ``cls.__init__`` (whatever its signature)."""
    new = cls.__new__(cls)
    new.__dict__.update(state)
    new.args = (message,)
    if isinstance(new, UnknownNameError):
        new.message = message
    return new


def is_deterministic(err: BaseException) -> bool:
    """Whether ``err`` would happen again if its chunk were retried: an error calibrew
    raised on purpose about the analysis or the outputs (an expression, a calibrator, a
    table), not an unreadable input (a network or storage hiccup may pass)."""
    return isinstance(err, CalibrewError) and not isinstance(err, UnreadableInputError)


@dataclass
class ChunkFault:
    """What a chunk task returns, instead of its histogram vector, when the analysis fails
    on it deterministically (:func:`is_deterministic`): Dask retries a task that raises,
    never one that returns, so the error is not computed again ``retries`` times."""

    error: CalibrewError

    def __reduce__(self) -> tuple[Any, ...]:
        # the error crosses from the worker whole, whatever its class' constructor takes
        err = self.error
        return (_fault, (type(err), str(err), dict(err.__dict__)))


def _fault(cls: type[CalibrewError], message: str, state: dict[str, Any]) -> ChunkFault:
    return ChunkFault(_rebuild(cls, message, state))
