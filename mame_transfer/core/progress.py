"""Progress bars for the long steps of a command: count, elapsed time and ETA on stderr (tqdm).

Every step that can take more than a few seconds (classifier fits, images through a network, projections) shows
one, so a user can tell a slow step from a stuck one. ``verbose=0`` turns them off; stdout stays for results.
"""

from __future__ import annotations

import sys
from typing import Iterable, TypeVar

T = TypeVar("T")


def bar(total: int | None = None, desc: str = "", *, unit: str = "it", verbose: int = 1, initial: int = 0):
    """A tqdm bar on stderr (``with bar(n, "fits") as b: ... b.update()``), silent when ``verbose`` is 0."""
    from tqdm import tqdm  # the text bar (tqdm.auto wants ipywidgets in a notebook)

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not verbose, leave=verbose > 0,
                file=sys.stderr, dynamic_ncols=True, mininterval=0.5)


def track(items: Iterable[T], total: int | None = None, desc: str = "", *, unit: str = "it",
          verbose: int = 1) -> Iterable[T]:
    """Iterate over ``items`` with a bar (``total`` defaults to ``len(items)`` when it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with bar(total, desc, unit=unit, verbose=verbose) as b:
        for item in items:
            yield item
            b.update()
