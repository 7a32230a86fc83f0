"""Writing output files so that a reader sees the old file or the whole new one, never half."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import OutputError


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block succeeds.

    On an error the temporary file is removed and ``path`` is left as it was. An
    :class:`OSError` (a full disk, a read-only directory, a file where a directory should
    be) is raised as :class:`~pipeline.errors.OutputError` naming ``path``.

    Examples
    --------
    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "out.txt"
    >>> with atomic_path(target) as tmp:
    ...     _ = tmp.write_text("done")
    >>> target.read_text()
    'done'
    >>> with atomic_path(target / "below.txt") as tmp:  # out.txt is a file
    ...     pass
    Traceback (most recent call last):
    ...
    pipeline.errors.OutputError: cannot write .../out.txt/below.txt: ...
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            yield tmp
            tmp.replace(path)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
    except OSError as err:
        raise OutputError(f"cannot write {path}: {describe_os_error(err)}") from err


def describe_os_error(err: OSError) -> str:
    """The reason of an :class:`OSError` in words, with a hint for the usual ones.

    Examples
    --------
    >>> import errno
    >>> describe_os_error(OSError(errno.ENOSPC, "No space left on device"))
    'No space left on device (the disk is full)'
    """
    reason = err.strerror or str(err) or type(err).__name__
    hint = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
            errno.EROFS: "the file system is read-only",
            errno.EACCES: "no permission to write there",
            errno.ENOTDIR: "a file is where a directory should be",
            errno.EEXIST: "a file is where a directory should be"}.get(err.errno or 0)
    return f"{reason} ({hint})" if hint else reason
