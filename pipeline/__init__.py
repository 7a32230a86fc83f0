"""calibrew: calibrated, systematically varied outputs from CMS NanoAOD on Dask.

The import package is ``pipeline``; the command line is ``calibrew``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("calibrew")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
