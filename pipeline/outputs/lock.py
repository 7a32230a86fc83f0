"""One run at a time per output directory: the lock ``<output>/.calibrew.lock``.

Two runs writing into one directory would remove each other's checkpoints and overwrite each
other's outputs. A run holds an exclusive ``flock`` on the lock file for as long as it runs;
the file names the holder (pid, host, start time, job) so that a second run is refused with
who holds it. The kernel drops the lock when its process ends, however it ends (a killed run
leaves a stale file that the next run takes over). Where the file system has no ``flock``
(some parallel file systems), the file's content is the lock: a stale one (its process dead,
on this host) is taken over, one of another host is refused (its process cannot be checked).

Examples
--------
>>> import tempfile
>>> folder = Path(tempfile.mkdtemp())
>>> with OutputLock(folder, "job.yaml") as lock:
...     holder = lock.holder()
>>> holder["pid"] == os.getpid() and holder["job"] == "job.yaml"
True
>>> (folder / LOCK_FILE).exists()  # removed once the run ends
False
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from pipeline.errors import OutputError, OutputLockedError
from pipeline.outputs.atomic import describe_os_error

LOCK_FILE = ".calibrew.lock"
#: errors of a file system that does not implement ``flock``
_NO_FLOCK = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}


def _flock(fd: int) -> None:
    """An exclusive, non-blocking ``flock`` on ``fd``; ``OSError(ENOSYS)`` where the
    platform has none."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system
        raise OSError(errno.ENOSYS, "flock is not available") from None
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _process_alive(pid: int, since: float | None) -> bool:
    """Whether process ``pid`` of this host runs and started no later than ``since`` (a pid
    reused by a newer process is not the lock's holder)."""
    import psutil

    try:
        process = psutil.Process(pid)
        return since is None or process.create_time() <= since + 1.0
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.Error:  # exists, not ours to inspect
        return True


def describe_holder(holder: dict[str, Any]) -> str:
    """``pid 123 on host h, job j.yaml, started <UTC time>`` from a lock's content."""
    started = holder.get("started")
    when = (time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started))
            if isinstance(started, (int, float)) else "at an unknown time")
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, job "
            f"{holder.get('job', '?')}, started {when}")


class OutputLock:
    """The exclusive lock of a run on its output directory ``folder``.

    Parameters
    ----------
    folder
        The output directory (created if missing).
    job
        What the holder runs, written into the lock for a refused run to show.

    Raises
    ------
    OutputLockedError
        From :meth:`acquire`, when another live run holds the directory: names its pid,
        host, job and start time.
    OutputError
        When the directory cannot be created or written (a file is in its place, it is
        read-only, the disk is full).
    """

    def __init__(self, folder: Path, job: str = "") -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.job = job
        self._fd: int | None = None
        self._created_folder = False

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def holder(self) -> dict[str, Any]:
        """The content of the lock file (empty if none or unreadable)."""
        try:
            content = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return content if isinstance(content, dict) else {}

    def _content(self) -> bytes:
        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "started": time.time(), "job": self.job}).encode()

    def _make_folder(self) -> None:
        if self.folder.exists() and not self.folder.is_dir():
            raise OutputError(f"output directory {self.folder} is a file, not a directory: "
                              "choose another --output (or remove the file)")
        try:
            self._created_folder = not self.folder.exists()
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(f"cannot create output directory {self.folder}: "
                              f"{describe_os_error(err)}") from None

    def acquire(self) -> None:
        """Take the lock (see the class); write this run's pid, host and job into it."""
        self._make_folder()
        for _ in range(20):  # the file may be replaced between opening and locking it
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise OutputError(f"cannot write into output directory {self.folder}: "
                                  f"{describe_os_error(err)}") from None
            try:
                _flock(fd)
            except BlockingIOError:
                os.close(fd)
                self._refuse(self.holder())
            except OSError as err:
                if err.errno not in _NO_FLOCK:
                    os.close(fd)
                    raise OutputError(f"cannot lock output directory {self.folder}: "
                                      f"{describe_os_error(err)}") from None
                try:
                    self._check_content()  # no flock here: the content is the lock
                except OutputLockedError:
                    os.close(fd)
                    raise
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the previous holder removed it as we opened it: again
                os.close(fd)
                continue
            try:
                os.ftruncate(fd, 0)
                os.write(fd, self._content())
                os.fsync(fd)
            except OSError as err:
                os.close(fd)
                raise OutputError(f"cannot write into output directory {self.folder}: "
                                  f"{describe_os_error(err)}") from None
            self._fd = fd
            return
        raise OutputError(f"cannot lock output directory {self.folder}: its lock file "
                          f"{LOCK_FILE} keeps being replaced")

    def _check_content(self) -> None:
        """Without ``flock``: refuse if the lock names a live run (or one of another host)."""
        holder = self.holder()
        if not holder or holder.get("pid") == os.getpid():
            return
        if holder.get("host") != socket.gethostname():
            self._refuse(holder, other_host=True)
        pid, started = holder.get("pid"), holder.get("started")
        if isinstance(pid, int) and _process_alive(
                pid, started if isinstance(started, (int, float)) else None):
            self._refuse(holder)
        # a stale lock of a dead process on this host: taken over

    def _refuse(self, holder: dict[str, Any], other_host: bool = False) -> None:
        who = describe_holder(holder) if holder else "a run that has not yet written its name"
        hint = (f"; if that run is no longer running, remove {self.path}" if other_host
                else "; wait for it to end or choose another --output")
        raise OutputLockedError(f"output directory {self.folder} is in use by another "
                                f"calibrew run ({who}){hint}")

    def release(self) -> None:
        """Remove the lock file and drop the lock; remove the output directory if this run
        created it and left it empty."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass  # the lock itself is dropped below; a stale file is taken over next time
        finally:
            os.close(self._fd)
            self._fd = None
        if self._created_folder:
            try:
                self.folder.rmdir()  # only if empty: a run that wrote nothing leaves nothing
            except OSError:
                pass
