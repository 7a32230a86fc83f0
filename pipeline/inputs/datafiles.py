"""Find the real CMS sample files and correction payloads the demo and tests use.

Files are never committed to the project. A name such as ``"nano_tt_v12.root"`` or
``"pog/2022_Summer22/JME_jet_jerc.json.gz"`` is resolved, in this order, in:

1. the analysis config's own folder (for the files of a dataset);
2. the working directory;
3. the directory named by the ``CALIBREW_DATA`` environment variable;
4. ``../shared/data/`` beside the project checkout;
5. the user cache directory (``$XDG_CACHE_HOME/calibrew/data`` or ``~/.cache/calibrew/data``);
6. a download into that cache, only for a name known to be in a public source: the NanoAOD
   samples and JME payloads of the ``coffea==2026.9.0`` source distribution on PyPI (its
   ``tests/samples/``, :data:`COFFEA_SAMPLES`), and ``pog/<period>/<POG>_<file>`` payloads
   of the CMS jsonpog-integration repository (``POG/<POG>/<period>/<file>`` there) for the
   POGs of :data:`POGS` and the periods of :data:`JSONPOG_PERIODS`.

Any other name that is found nowhere raises at once (no download) an error naming the
file, every place looked and close names. ``CALIBREW_OFFLINE=1`` turns downloads off.
"""

from __future__ import annotations

import difflib
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
#: The files of the coffea sdist's ``tests/samples/`` calibrew downloads: the NanoAOD
#: samples and the Summer22 JME payloads (the names listed in the sdist of 2026.9.0).
COFFEA_SAMPLES = frozenset({
    "nano_tt_v12.root", "nano_tt_v15.root", "nano_dy.root", "nano_dy.parquet",
    "nano_dy_SpecialTree.root", "nano_dy_empty.root", "nano_dimuon.root",
    "nano_dimuon.parquet", "nano_tree.root", "pfnano.root", "scouting_nano.root",
    "jet_jerc_Summer22_V3.json.gz",
    "Summer22_22Sep2023_V3_MC_L1FastJet_AK4PFPuppi.jec.txt.gz",
    "Summer22_22Sep2023_V3_MC_L2Relative_AK4PFPuppi.jec.txt.gz",
    "Summer22_22Sep2023_V3_MC_L3Absolute_AK4PFPuppi.jec.txt.gz",
    "Summer22_22Sep2023_V3_MC_L2L3Residual_AK4PFPuppi.jec.txt.gz",
    "Summer22_22Sep2023_V3_MC_UncertaintySources_AK4PFPuppi.junc.txt.gz",
    "RegroupedV2_Summer22_22Sep2023_V3_MC_UncertaintySources_AK4PFPuppi.junc.txt.gz",
    "Summer22_22Sep2023_JRV1_MC_PtResolution_AK4PFPuppi.jr.txt.gz",
    "Summer22_22Sep2023_JRV1_MC_SF_AK4PFPuppi.jersf.txt.gz",
})
#: A local ``pog/<period>/<POG>_<file>`` is ``POG/<POG>/<period>/<file>`` upstream.
JSONPOG_URL = "https://gitlab.cern.ch/cms-nanoAOD/jsonpog-integration/-/raw/master/POG/{pog}/{period}/{name}"
POGS = {"JME", "EGM", "MUO", "LUM", "BTV", "TAU"}
#: The jsonpog-integration period folders calibrew downloads from (Run 2 UL and Run 3).
JSONPOG_PERIODS = frozenset({
    "2016preVFP_UL", "2016postVFP_UL", "2017_UL", "2018_UL", "2022_Summer22",
    "2022_Summer22EE", "2023_Summer23", "2023_Summer23BPix", "2024_Summer24",
})

PROJECT_ROOT = Path(__file__).resolve().parents[2]


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


def public_source(name: str | os.PathLike[str]) -> str | None:
    """Where a data-file name can be downloaded from, or None if no public source is known.

    Examples
    --------
    >>> public_source("nano_tt_v12.root")
    'PyPI sdist coffea==2026.9.0, tests/samples/nano_tt_v12.root'
    >>> public_source("pog/2022_Summer22/LUM_puWeights.json.gz").split("/POG/")[1]
    'LUM/2022_Summer22/puWeights.json.gz'
    >>> public_source("nano_tt_v21.root") is None
    True
    """
    parts = Path(name).parts
    if len(parts) == 1 and parts[0] in COFFEA_SAMPLES:
        return f"PyPI sdist {COFFEA_SDIST}, tests/samples/{parts[0]}"
    if len(parts) == 3 and parts[0] == "pog" and parts[1] in JSONPOG_PERIODS:
        pog, _, fname = parts[2].partition("_")
        if pog in POGS and fname:
            return JSONPOG_URL.format(pog=pog, period=parts[1], name=fname)
    return None


def _close_names(path: Path, dirs: list[Path]) -> list[str]:
    """Known names close to ``path``: downloadable ones and files in the folders looked."""
    known = set(COFFEA_SAMPLES)
    for directory in dirs:
        folder = directory / path.parent
        try:
            known.update(str(Path(path.parent) / p.name) for p in folder.iterdir())
        except OSError:
            continue
    known.update(f"pog/{period}/{path.name}" for period in JSONPOG_PERIODS
                 if path.parts[:1] == ("pog",))
    return difflib.get_close_matches(str(path), sorted(known), n=3, cutoff=0.8)


def find_data_file(name: str | os.PathLike[str], download: bool = True,
                   config_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the path of a sample file or payload, downloading it once if needed.

    Parameters
    ----------
    name
        A file name relative to the data directory (``"nano_tt_v12.root"``,
        ``"pog/2022_Summer22/LUM_puWeights.json.gz"``), or an existing path, returned as is.
    download
        Fetch the file from its public source when it is found nowhere locally (only
        names with a known public source, :func:`public_source`, are ever downloaded).
    config_dir
        The folder of the analysis config that names the file: looked in first.

    Raises
    ------
    InputFileError
        Naming the file, every place looked, and close names if any.

    Examples
    --------
    >>> find_data_file("nano_tt_v12.root").name
    'nano_tt_v12.root'
    """
    path = Path(name).expanduser()
    if path.is_absolute():
        if path.exists():
            return path
        raise InputFileError(f"file not found: {path}")
    dirs = [Path(config_dir)] if config_dir is not None else []
    labels = ["the config's folder"] if config_dir is not None else []
    dirs.append(Path.cwd())
    labels.append("the working directory")
    env = os.environ.get("CALIBREW_DATA")
    for directory in search_dirs():
        dirs.append(directory)
        labels.append("$CALIBREW_DATA" if env and directory == Path(env) else "")
    looked: list[str] = []
    seen: dict[Path, int] = {}
    for directory, label in zip(dirs, labels):
        candidate = directory / path
        if candidate.exists():
            return candidate
        key = candidate.resolve()
        if key in seen:  # the same folder under two names: said once, with both
            if label:
                i = seen[key]
                looked[i] = (looked[i][:-1] + f", {label})" if looked[i].endswith(")")
                             else f"{looked[i]} ({label})")
            continue
        seen[key] = len(looked)
        looked.append(f"{candidate} ({label})" if label else str(candidate))
    source = public_source(path)
    if source is None:
        looked.append(f"no download: no public source is known for {str(path)!r} (calibrew "
                      "downloads the NanoAOD samples and JME payloads of the "
                      f"{COFFEA_SDIST} sdist, and pog/<period>/<POG>_<file> payloads of "
                      "jsonpog-integration; put other files in $CALIBREW_DATA)")
    elif not download or os.environ.get("CALIBREW_OFFLINE"):
        looked.append(f"no download (offline): its public source is {source}")
    else:
        target = cache_dir() / "data" / path
        try:
            _download(path, target)
        except Exception as err:  # network errors come in many types
            looked.append(f"download from {source} failed ({type(err).__name__}: {err})")
        else:
            if target.exists():
                return target
            looked.append(f"download: {path} is not in its public source {source}")
    close = _close_names(path, dirs)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise InputFileError(
        f"data file {str(path)!r} not found; looked in: " + "; ".join(looked) + hint
    )


def _download(path: Path, target: Path) -> None:
    """Fetch ``path``, a name with a known public source, into ``target``."""
    parts = path.parts
    source = public_source(path)
    if source is None:
        raise InputFileError(f"no public source known for {path}")
    target.parent.mkdir(parents=True, exist_ok=True)
    if parts[0] == "pog":
        tmp = target.with_suffix(target.suffix + ".part")
        with urllib.request.urlopen(source, timeout=30) as response, open(tmp, "wb") as out:
            shutil.copyfileobj(response, out)
        tmp.replace(target)
        return
    _unpack_coffea_samples(target.parent)


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
    """Copy the files of :data:`COFFEA_SAMPLES` from the coffea sdist into ``dest``."""
    marker = "/tests/samples/"
    with tarfile.open(_coffea_sdist()) as tar:
        for member in tar.getmembers():
            if marker not in member.name or not member.isfile():
                continue
            rel = member.name.split(marker, 1)[1]
            out = dest / rel
            if rel not in COFFEA_SAMPLES or out.exists():
                continue
            src = tar.extractfile(member)
            if src is None:
                continue
            dest.mkdir(parents=True, exist_ok=True)
            with src, open(out, "wb") as fh:
                shutil.copyfileobj(src, fh)
