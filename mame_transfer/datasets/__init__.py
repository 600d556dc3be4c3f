"""Image sets as one validated table, and the ``tf.data`` pipelines that feed them.

* :mod:`.tables`: the :class:`Dataset` every set becomes (one row per image) and the column names.
* :mod:`.mame` (CSV + image folder, validated row by row; ``write_mame``) and :mod:`.folders` (class-per-folder):
  the two layouts; :mod:`.layouts` detects which one a path holds (:func:`load_dataset`).
* :mod:`.images`: fast checks that image files are readable (header + end marker), image sizes.
* :mod:`.pipeline`: decode, fixed-shape resize, cache, augment, preprocess once, batch.
* :mod:`.varshape`: the variable-shape pipeline (aspect kept, pixel budget, batches bucketed by aspect).
* :mod:`.prepare`: a resized copy of a MAMe set, written once. :mod:`.demo`: the built-in demo set.
"""

from mame_transfer.datasets.layouts import detect_layout, load_dataset
from mame_transfer.datasets.tables import Dataset

__all__ = ["Dataset", "detect_layout", "load_dataset"]
