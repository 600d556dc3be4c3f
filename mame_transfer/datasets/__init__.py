"""Image sets as one validated table, and the ``tf.data`` pipelines that feed them.

* :mod:`.tables`: the MAMe layout (CSV + image folder) and class-per-folder sets read into a :class:`Dataset`;
  validation with errors naming the CSV line or file; ``write_mame`` (the ``data import`` command).
* :mod:`.images`: fast checks that image files are readable (header + end marker), image sizes.
* :mod:`.pipeline`: decode, fixed-shape resize, cache, augment, preprocess once, batch.
* :mod:`.varshape`: the variable-shape pipeline (aspect kept, pixel budget, batches bucketed by aspect).
* :mod:`.prepare`: a resized copy of a MAMe set, written once. :mod:`.demo`: the built-in demo set.
"""

from mame_transfer.datasets.tables import Dataset, detect_layout, load_dataset

__all__ = ["Dataset", "detect_layout", "load_dataset"]
