"""Exceptions raised by mame_transfer.

Every error message names the file, row or value that is wrong and says what would be right.
"""
from typing import Sequence


class MameTransferError(Exception):
    """Base class of the package's errors."""


class DataError(MameTransferError, ValueError):
    """The dataset (CSV, folders, images) is malformed."""


class ConfigError(MameTransferError, ValueError):
    """A configuration value or CLI flag is invalid."""


class WeightsError(MameTransferError, RuntimeError):
    """Pretrained weights cannot be found or loaded."""


class OutputError(ConfigError):
    """An output folder cannot be written: not this command's own, a replace without --overwrite, or locked."""


LIST_LIMIT = 10  # how many offending rows/files an error message lists before summarising


def shorten_list(items: Sequence, limit: int = LIST_LIMIT) -> str:
    """First ``limit`` items, then how many more."""
    items = [str(i) for i in items]
    shown = ", ".join(items[:limit])
    return shown + (f" ... and {len(items) - limit} more ({len(items)} in total)" if len(items) > limit else "")
