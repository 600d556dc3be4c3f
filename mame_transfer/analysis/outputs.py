"""Where each analysis writes, and what its ``run_<analysis>`` function returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

ANALYSIS_DIR = "analysis"  # <run>/analysis/<command>/: where analyses of a run go, and the report looks
KIND = "analysis"  # the owner kind of a folder of analysis outputs (mame_transfer.core.fileio.check_output)


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
    """The output folder, created and claimed: ``out``, else ``<run>/analysis/<command>`` of the first run, else
    ``analysis/<command>``.

    Args:
        command: the analysis name (``gradcam``, ``cka``...).
        out: the folder asked for (None: the default).
        sources: :class:`~mame_transfer.analysis.sources.ModelSource` objects (or None), in order of preference.

    Raises:
        OutputError: ``out`` holds files that are not analysis outputs (see :func:`claim_output`).
    """
    if out:
        return claim_output(out, command)
    for s in sources:
        if s is not None and s.run_dir is not None:
            return claim_output(s.run_dir / ANALYSIS_DIR / command, command)
    return claim_output(Path(ANALYSIS_DIR) / command, command)


def claim_output(path: str | Path, command: str) -> Path:
    """Create ``path`` as a folder of analysis outputs; any folder holding other files is refused.

    Analysis outputs are independent files, each written atomically, so a folder of them is added to (a rerun
    replaces that analysis's own files) and never emptied.
    """
    from mame_transfer.core.fileio import claim

    return claim(path, KIND, additive=True, what="folder of analysis outputs", command=f"analyze {command}",
                 legacy=lambda p: p.parent.name == ANALYSIS_DIR or p.name == PROJECTIONS_DIR)


PROJECTIONS_DIR = "projections"  # <store>/projections/: where projections of a store go by default
