"""The ground floor, used by every other package: configuration, errors, file I/O, plots, progress bars, the
command runner and the process it runs in (TensorFlow logs, CPU threads).

Nothing here imports another package of mame_transfer.
"""

__version__ = "0.1.0"  # the package version (setup.cfg reads it here; mame_transfer.__version__ re-exports it)
