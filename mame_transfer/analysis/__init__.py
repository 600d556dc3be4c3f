"""Analyses of backbones and fine-tuned runs: projections, Grad-CAM, CKA, maximal activations, feature vis, report.

Each module holds the computation, Figure-returning plot functions and one ``run_<analysis>`` (``run_project``,
``run_gradcam``, ``run_cka``, ``run_maxact``, ``run_featvis``) that writes the analysis's files and returns an
:class:`~mame_transfer.analysis.outputs.AnalysisResult`; ``python -m mame_transfer.analyze`` is the command line
over them. :mod:`.report` builds the HTML page of a run (``python -m mame_transfer.report``).
"""

from mame_transfer.analysis.sources import ModelSource, load_source

__all__ = ["ModelSource", "load_source"]
