"""Find the real CMS sample files and correction payloads the demo and tests use.

Files are never committed to the project. A name such as ``"nano_tt_v12.root"`` or
``"pog/2022_Summer22/JME_jet_jerc.json.gz"`` is resolved, in this order, in:

1. the directory named by the ``CALIBREW_DATA`` environment variable;
2. ``../shared/data/`` beside the project checkout;
3. the user cache directory (``$XDG_CACHE_HOME/calibrew/data`` or ``~/.cache/calibrew/data``);
4. a download from the file's public source into that cache: the ``coffea==2026.9.0``
   source distribution on PyPI (its ``tests/samples/``) for the NanoAOD samples and the
   JME test payloads, the CMS jsonpog-integration repository for ``pog/...`` payloads.

Offline and not found, :func:`find_data_file` raises an error naming the file and every
place looked. ``CALIBREW_OFFLINE=1`` turns downloads off.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from pipeline.errors import InputFileError

COFFEA_SDIST = "coffea==2026.9.0"
JSONPOG_URL = "https://gitlab.cern.ch/cms-nanoAOD/jsonpog-integration/-/raw/master/POG/{pog}/{period}/{name}"
POGS = {"JME", "EGM", "MUO", "LUM", "BTV"}

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """The user cache directory calibrew writes downloaded files and preprocessing to.

    Examples
    --------
    >>> cache_dir().name
    'calibrew'
    """
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "calibrew"


def search_dirs() -> list[Path]:
    """The directories looked in, in order, before any download."""
    dirs = []
    if os.environ.get("CALIBREW_DATA"):
        dirs.append(Path(os.environ["CALIBREW_DATA"]))
    dirs.append(PROJECT_ROOT.parent / "shared" / "data")
    dirs.append(cache_dir() / "data")
    return dirs


def find_data_file(name: str | os.PathLike[str], download: bool = True) -> Path:
    """Return the path of a sample file or payload, downloading it once if needed.

    Parameters
    ----------
    name
        A file name relative to the data directory (``"nano_tt_v12.root"``,
        ``"pog/2022_Summer22/LUM_puWeights.json.gz"``), or an existing path, returned as is.
    download
        Fetch the file from its public source when it is found nowhere locally.

    Examples
    --------
    >>> find_data_file("nano_tt_v12.root").name
    'nano_tt_v12.root'
    """
    path = Path(name).expanduser()
    if path.is_absolute() or path.exists():
        if path.exists():
            return path
        raise InputFileError(f"file not found: {path}")
    looked = []
    for directory in search_dirs():
        candidate = directory / path
        looked.append(str(candidate))
        if candidate.exists():
            return candidate
    if download and not os.environ.get("CALIBREW_OFFLINE"):
        target = cache_dir() / "data" / path
        try:
            _download(path, target)
        except Exception as err:  # network errors come in many types
            looked.append(f"download ({err})")
        else:
            if target.exists():
                return target
            looked.append(f"download: {path} is not in its public source")
    raise InputFileError(
        f"data file {str(path)!r} not found; looked in: " + "; ".join(looked)
    )


def _download(path: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    parts = path.parts
    if len(parts) == 3 and parts[0] == "pog":
        period, fname = parts[1], parts[2]
        pog = fname.split("_", 1)[0]
        if pog not in POGS:
            raise InputFileError(f"no public source known for {path}")
        url = JSONPOG_URL.format(pog=pog, period=period, name=fname)
        tmp = target.with_suffix(target.suffix + ".part")
        with urllib.request.urlopen(url, timeout=30) as response, open(tmp, "wb") as out:
            shutil.copyfileobj(response, out)
        tmp.replace(target)
        return
    _unpack_coffea_samples(target.parent if len(parts) == 1 else cache_dir() / "data")


def _coffea_sdist() -> Path:
    """The coffea source archive, downloaded once into the cache."""
    folder = cache_dir() / "downloads"
    archives = sorted(folder.glob("coffea-*.tar.gz"))
    if archives:
        return archives[0]
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             "--dest", tmp, COFFEA_SDIST],
            check=True, capture_output=True, timeout=600,
        )
        found = list(Path(tmp).glob("coffea-*.tar.gz"))
        if not found:
            raise InputFileError(f"pip download of {COFFEA_SDIST} gave no source archive")
        return Path(shutil.move(str(found[0]), folder / found[0].name))


def _unpack_coffea_samples(dest: Path) -> None:
    """Copy the files of the coffea sdist's ``tests/samples/`` into ``dest``."""
    marker = "/tests/samples/"
    with tarfile.open(_coffea_sdist()) as tar:
        for member in tar.getmembers():
            if marker not in member.name or not member.isfile():
                continue
            rel = member.name.split(marker, 1)[1]
            out = dest / rel
            if "/" in rel or out.exists():
                continue
            src = tar.extractfile(member)
            if src is None:
                continue
            dest.mkdir(parents=True, exist_ok=True)
            with src, open(out, "wb") as fh:
                shutil.copyfileobj(src, fh)
