"""mame_transfer: transfer learning on artwork images (MAMe and class-per-folder sets), Keras 3 + TensorFlow."""

__version__ = "0.1.0"
