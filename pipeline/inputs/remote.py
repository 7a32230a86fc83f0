"""Remote input files (``root://`` through fsspec-xrootd, ``https://``): stat, listing and
globbing with timeouts and retries (:class:`~pipeline.config.models.RemoteSpec`).

A remote file has no local mtime: preprocessing caches key it by URL, size and the
server's modification time or ETag (:func:`remote_identity`).
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable
from typing import Any, TypeVar

import fsspec
from XRootD import client as xrootd_client

from pipeline.config.models import RemoteSpec
from pipeline.errors import InputFileError

T = TypeVar("T")
GLOB_CHARS = frozenset("*?[")
#: Seconds waited before the n-th retry (then the last value): short, the run has its own
#: chunk retries for longer outages.
BACKOFF_S = (0.5, 1.0, 2.0, 4.0)


def is_remote(path: str) -> bool:
    """Whether ``path`` is a URL rather than a local path.

    Examples
    --------
    >>> is_remote("root://eos.cern.ch//store/a.root"), is_remote("/data/a.root")
    (True, False)
    """
    return "://" in path


def has_glob(path: str) -> bool:
    """Whether ``path`` contains glob characters (``*``, ``?``, ``[``).

    Examples
    --------
    >>> has_glob("/data/*.root"), has_glob("/data/a.root")
    (True, False)
    """
    return any(c in GLOB_CHARS for c in path)


def storage_options(url: str, remote: RemoteSpec) -> dict[str, Any]:
    """The fsspec (and uproot) options reading ``url``: the request timeout for XRootD.

    Examples
    --------
    >>> storage_options("root://host//a.root", RemoteSpec(timeout_s=5))
    {'timeout': 5}
    >>> storage_options("https://host/a.root", RemoteSpec())
    {}
    """
    if url.startswith(("root://", "xroot://")):
        return {"timeout": max(1, round(remote.timeout_s))}
    return {}


def xrootd_environment(remote: RemoteSpec) -> dict[str, str]:
    """The XRootD client settings (environment variables) that bound how long one attempt
    waits for a server: its connection window is the timeout, and it connects once (the
    retries are calibrew's, :func:`with_retries`, and the run's chunk retries). The XRootD
    defaults wait up to 5 x 120 s for a server that is down. Workers get them through their
    environment; :func:`_filesystem` applies them in this process.

    Examples
    --------
    >>> xrootd_environment(RemoteSpec(timeout_s=10))
    {'XRD_CONNECTIONWINDOW': '10', 'XRD_CONNECTIONRETRY': '1', 'XRD_REQUESTTIMEOUT': '10'}
    """
    return {f"XRD_{key.upper()}": str(value) for key, value in _xrootd_settings(remote).items()}


def _xrootd_settings(remote: RemoteSpec) -> dict[str, int]:
    seconds = max(1, round(remote.timeout_s))
    return {"ConnectionWindow": seconds, "ConnectionRetry": 1, "RequestTimeout": seconds}


def with_retries(action: Callable[[], T], what: str, remote: RemoteSpec) -> T:
    """``action()``, tried ``1 + remote.retries`` times on ``OSError``; then an
    :class:`InputFileError` naming ``what`` and the last error.

    Examples
    --------
    >>> with_retries(lambda: 3, "root://host//a.root", RemoteSpec())
    3
    """
    attempts = 1 + remote.retries
    for attempt in range(attempts):
        try:
            return action()
        except (OSError, TimeoutError) as err:
            last = err
            if attempt + 1 < attempts:
                time.sleep(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])
    raise InputFileError(f"cannot read remote file {what} ({attempts} attempt(s), timeout "
                         f"{remote.timeout_s:g} s): {type(last).__name__}: {last}") from last


def _filesystem(url: str, remote: RemoteSpec) -> tuple[Any, str]:
    """The fsspec filesystem and path of ``url``, XRootD's settings applied first."""
    if url.startswith(("root://", "xroot://")):
        for key, value in _xrootd_settings(remote).items():
            xrootd_client.EnvPutInt(key, value)
    try:
        return fsspec.core.url_to_fs(url, **storage_options(url, remote))
    except (ImportError, ValueError) as err:
        raise InputFileError(f"{url}: unsupported remote URL: {err}") from None


def remote_identity(url: str, remote: RemoteSpec) -> list[Any]:
    """What identifies the version of a remote file: its size and the server's
    modification time or ETag (whichever it reports); raises naming the file when it
    cannot be reached or does not exist."""
    fs, path = _filesystem(url, remote)
    folder = path.rsplit("/", 1)[0]

    def stat() -> dict[str, Any]:
        fs.invalidate_cache(folder)  # a listing cached earlier may be stale
        return fs.info(path)

    info = with_retries(stat, url, remote)
    return [info.get("size"), info.get("mtime") or info.get("ETag") or info.get("etag")]


def list_remote(url: str, remote: RemoteSpec) -> list[str]:
    """The ``.root`` files of a remote folder (``url`` ends with ``/``), or those matching a
    glob in the URL's last component, as sorted URLs.

    Raises :class:`InputFileError` naming ``url`` when the server cannot be reached or
    the folder does not exist.
    """
    fs, path = _filesystem(url, remote)
    folder, pattern = (path.rstrip("/"), "*.root") if url.endswith("/") else path.rsplit("/", 1)
    if has_glob(folder):
        raise InputFileError(f"{url}: a remote glob may only be in the file name, not in "
                             "the folders")

    def listing() -> list[dict[str, Any]]:
        fs.invalidate_cache(folder)
        return fs.ls(folder, detail=True)

    entries = with_retries(listing, url, remote)
    names = [e["name"] for e in entries if e.get("type") != "directory"
             and fnmatch.fnmatchcase(e["name"].rsplit("/", 1)[-1], pattern)]
    return sorted(fs.unstrip_protocol(name) for name in names)
