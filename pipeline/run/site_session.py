"""The run's site, started when the run first needs its workers.

A run needs workers to scan the input files that the preprocessing cache does not know (in
parallel, on the cluster) and to compute. A rerun whose files are all cached starts its
site only once its graphs are built, so that a configuration error found while planning
starts no cluster; a cold run starts it to preprocess, and computes on the same workers.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from rich.console import Console
from rich.markup import escape

from pipeline.errors import CalibrewError
from pipeline.sites import Session, Site, describe, start_site

T = TypeVar("T")
R = TypeVar("R")
SCAN_PREFIX = "calibrew-scan"


class SiteOnDemand:
    """Start ``site`` on the first call of :meth:`client` (or of a non-empty
    :meth:`scan_map`), once; :meth:`close` closes what was started."""

    def __init__(self, site: Site, name: str, console: Console) -> None:
        self.site = site
        self.name = name
        self.console = console
        self.session: Session | None = None

    def client(self) -> Any:
        """The Dask client of the site, started now if it is not yet."""
        if self.session is None:
            self.console.print(f"site {escape(self.name)} ({self.site.type}): "
                               f"{escape(describe(self.site))}")
            self.session = start_site(self.site, warn=lambda message: self.console.print(
                f"[yellow]warning:[/] {escape(message)}", highlight=False))
            link = self.session.dashboard_link
            self.console.print(f"Dask dashboard: [link={link}]{link}[/]")
        return self.session.client

    def scan_map(self, function: Callable[[T], R], items: list[T]) -> list[R]:
        """``[function(item) for item in items]`` on the site's workers (a
        :data:`~pipeline.inputs.scanning.ScanMap`); nothing is started for no items."""
        if not items:
            return []
        client = self.client()
        token = uuid.uuid4().hex[:8]
        futures = client.map(function, items, pure=False,
                             key=[f"{SCAN_PREFIX}-{token}-{i}" for i in range(len(items))])
        return list(client.gather(futures))

    def close(self) -> None:
        """Close the site's client and cluster, if started; a failure is printed as a
        warning, not raised.

        Called once the outputs are written (or the run has failed for its own reason):
        what the cluster does while it shuts down cannot change or lose them.
        """
        if self.session is None:
            return
        try:
            self.session.close()
        except CalibrewError as err:  # the site's own account (what, why, what is left)
            self.console.print(f"[yellow]warning:[/] {escape(str(err))}; the run's outputs "
                               "were written before", highlight=False)
        except Exception as err:  # TimeoutError of a nanny join, a lost scheduler, ...
            detail = f"{type(err).__name__}: {err}".strip().rstrip(":")
            self.console.print(f"[yellow]warning:[/] the Dask cluster did not close cleanly "
                               f"({escape(detail)}); the run's outputs were written before, "
                               "its worker processes may still be ending", highlight=False)
