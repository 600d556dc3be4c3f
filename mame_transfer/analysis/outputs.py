"""Where each analysis writes, and what its ``run_<analysis>`` function returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

ANALYSIS_DIR = "analysis"  # <run>/analysis/<command>/: where analyses of a run go, and the report looks


@dataclass
class AnalysisResult:
    """What one ``run_<analysis>`` wrote and found.

    Attributes:
        out: the output folder.
        figures: pictures and pages written, in the order written (what to open).
        data: JSON and CSV files written.
        summary: the numbers (what the analysis's JSON file holds, when it writes one).
        table: the rows of its CSV file, or of its per-channel log (featvis); None when there are none.
    """

    out: Path
    figures: list[Path] = field(default_factory=list)
    data: list[Path] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    table: pd.DataFrame | None = None


def output_dir(command: str, out: str | Path | None, *sources) -> Path:
    """The output folder: ``out``, else ``<run>/analysis/<command>`` of the first run, else ``analysis/<command>``.

    Args:
        command: the analysis name (``gradcam``, ``cka``...).
        out: the folder asked for (None: the default).
        sources: :class:`~mame_transfer.analysis.sources.ModelSource` objects (or None), in order of preference.
    """
    if out:
        return Path(out)
    for s in sources:
        if s is not None and s.run_dir is not None:
            return s.run_dir / ANALYSIS_DIR / command
    return Path(ANALYSIS_DIR) / command
