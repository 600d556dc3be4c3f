"""mame_transfer: transfer learning on artwork images (MAMe and class-per-folder sets), Keras 3 + TensorFlow."""

from mame_transfer.core import __version__

__all__ = ["__version__"]
