"""The ground floor, used by every other package: configuration, errors, file I/O, plots, the command runner.

Nothing here imports another package of mame_transfer.
"""
