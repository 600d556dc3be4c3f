"""A model applied to a table of images: probabilities (plain or with test-time augmentation) and their scores.

No run directory here (that is :mod:`mame_transfer.training.runs`): these functions take a model and a table.
"""

from mame_transfer.inference.metrics import compute_metrics
from mame_transfer.inference.predict import predict_proba

__all__ = ["compute_metrics", "predict_proba"]
