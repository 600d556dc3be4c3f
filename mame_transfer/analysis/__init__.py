"""Analyses of backbones and fine-tuned runs: projections, Grad-CAM, CKA, maximal activations, feature vis.

Each module holds the computation and Figure-returning plot functions; ``python -m mame_transfer.analyze``
is the command line over them.
"""

from mame_transfer.analysis.sources import ModelSource, load_source

__all__ = ["ModelSource", "load_source"]
