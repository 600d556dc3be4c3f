"""The one runner behind every command's ``main()``: parse the flags, run, map errors to exit codes.

Every ``python -m mame_transfer.<command>`` (and ``mame-<command>``) exits with

* 0 when it succeeded;
* 2 for a user error: a bad flag (argparse's own code) or any :class:`~mame_transfer.core.errors.MameTransferError`
  (bad data, config, weights...), printed as one ``error: ...`` message on stderr, never a traceback;
* 130 on Ctrl-C, with the command's hint on how to continue (e.g. "rerun the same command to resume").

Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

from mame_transfer.core.errors import ConfigError, MameTransferError

EXIT_OK, EXIT_USER_ERROR, EXIT_INTERRUPTED = 0, 2, 130


def parser(command: str, description: str, **kwargs) -> argparse.ArgumentParser:
    """The argument parser of ``python -m mame_transfer.<command>``."""
    return argparse.ArgumentParser(prog=f"python -m mame_transfer.{command}", description=description, **kwargs)


def run(parser_or_args: argparse.ArgumentParser | argparse.Namespace, command: Callable[[argparse.Namespace], int | None],
        argv: Sequence[str] | None = None, *, on_interrupt: str = "") -> int:
    """Parse ``argv`` (unless a Namespace is given), call ``command(args)`` and return the exit status.

    Args:
        parser_or_args: the command's parser, or arguments it already parsed.
        command: does the work and prints the result; returns an exit status or None (= 0).
        argv: the arguments (default ``sys.argv[1:]``).
        on_interrupt: what to tell the user after Ctrl-C (how to continue).
    """
    if isinstance(parser_or_args, argparse.Namespace):
        args = parser_or_args
    else:
        args = parser_or_args.parse_args(argv)
    try:
        code = command(args)
    except MameTransferError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("\ninterrupted" + (f": {on_interrupt}" if on_interrupt else ""), file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK if code is None else int(code)


def finite_float(text: str) -> float:
    """argparse ``type`` of a float flag: a finite number (``nan`` and ``inf`` are refused at parse time)."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_int(text: str) -> int:
    """argparse ``type`` of a count or size flag: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def non_negative_int(text: str) -> int:
    """argparse ``type`` of a flag where 0 means "none" or "all": an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 0")
    return value


def choices_list(text: str | None, allowed: Sequence[str], what: str) -> list[str]:
    """Parse a comma-separated flag value; every item must be one of ``allowed`` (the error lists them)."""
    items = [t.strip() for t in (text or "").split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad:
        raise ConfigError(f"unknown {what} {bad}. Choose from: {', '.join(allowed)}")
    return items


def log_to_stdout(verbose: int = 1) -> logging.Logger:
    """The package logger, printing ``[mame_transfer] ...`` lines on stdout (warnings only when not verbose)."""
    log = logging.getLogger("mame_transfer")
    log.setLevel(logging.INFO)
    if not any(getattr(h, "_mame", False) for h in log.handlers):
        stream = logging.StreamHandler(sys.stdout)
        stream.setFormatter(logging.Formatter("[mame_transfer] %(message)s"))
        stream._mame = True  # type: ignore[attr-defined]
        log.addHandler(stream)
    for h in log.handlers:
        if getattr(h, "_mame", False):
            h.setLevel(logging.INFO if verbose else logging.WARNING)
    return log
