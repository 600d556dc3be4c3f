"""Exceptions raised by mame_transfer.

Every error message names the file, row or value that is wrong and says what would be right.
"""


class MameTransferError(Exception):
    """Base class of the package's errors."""


class DataError(MameTransferError, ValueError):
    """The dataset (CSV, folders, images) is malformed."""


class ConfigError(MameTransferError, ValueError):
    """A configuration value or CLI flag is invalid."""


class WeightsError(MameTransferError, RuntimeError):
    """Pretrained weights cannot be found or loaded."""
