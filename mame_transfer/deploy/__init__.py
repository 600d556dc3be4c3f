"""Using a finished run: label new images, and export a model that runs without this package.

* :mod:`.inputs`: what ``predict`` reads: image files, folders (recursive), CSV / text lists of paths.
* :mod:`.classifier`: :func:`load_classifier` and :class:`Classifier` (raw images in, a DataFrame of labels out).
* :mod:`.labels`: predictions streamed into a CSV, resumable, renamed into place only when complete.
* :mod:`.export`: SavedModel (encoded image bytes in), ``.keras`` and TFLite (uint8 pixels in) exports, each
  verified against the run's own model.
"""

from mame_transfer.deploy.classifier import Classifier, load_classifier

__all__ = ["Classifier", "load_classifier"]
