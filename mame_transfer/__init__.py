"""mame_transfer: transfer learning on artwork images (MAMe and class-per-folder sets), Keras 3 + TensorFlow."""

from mame_transfer.core import __version__

__all__ = ["__version__", "load_classifier"]


def load_classifier(run_dir):
    """The classifier of a finished run: ``load_classifier("saved_models/media").predict(["scans/"], top_k=3)``.

    See :class:`mame_transfer.deploy.Classifier`; imported here on first use, so ``import mame_transfer`` stays
    cheap (no TensorFlow).
    """
    from mame_transfer.deploy.classifier import load_classifier as load

    return load(run_dir)
