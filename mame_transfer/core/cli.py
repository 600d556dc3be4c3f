"""The one runner behind every command's ``main()``: parse the flags, run, map errors to exit codes.

Every ``python -m mame_transfer.<command>`` (and ``mame-<command>``) exits with

* 0 when it succeeded;
* 2 for a user error: a bad flag (argparse's own code) or any :class:`~mame_transfer.core.errors.MameTransferError`
  (bad data, config, weights...), printed as one ``error: ...`` message on stderr, never a traceback;
* 130 on Ctrl-C, with the command's hint on how to continue (e.g. "rerun the same command to resume").

Anything else is a bug and keeps its traceback.

It is also the one place every command builds its parser (:func:`parser`), so the conventions of all commands live
here and a flag added anywhere inherits them: the program is named as the user started it (``mame-finetune`` or
``python -m mame_transfer.finetune``); the help prints each default once and the choices; ``--verbose {0,1,2}``
(:func:`add_verbose`) and ``--jobs N`` (:func:`add_jobs`) mean the same everywhere; list flags take commas or
spaces (:class:`ListAction`); positionals read in capitals (``RUN``, ``STORE``); a renamed flag keeps its former
spelling, hidden (:func:`hidden_alias`).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from typing import Callable, Sequence

from mame_transfer.core import runtime
from mame_transfer.core.errors import ConfigError, MameTransferError

EXIT_OK, EXIT_USER_ERROR, EXIT_INTERRUPTED = 0, 2, 130


SCRIPT_PREFIX = "mame-"  # console scripts: mame-<command> (setup.cfg), underscores as dashes


def program_name(command: str) -> str:
    """How the user started ``command``: ``mame-<command>`` from its console script, else ``python -m ...``.

    ``command`` may carry a sub-command (``"features projector"``); it follows the program name.
    """
    head, _, rest = command.partition(" ")
    script = re.split(r"[\\/]", sys.argv[0])[-1] if sys.argv and sys.argv[0] else ""  # POSIX or Windows path
    script = script[:-4] if script.lower().endswith(".exe") else script
    if script == SCRIPT_PREFIX + head.replace("_", "-"):
        return f"{script} {rest}".strip()
    return f"python -m mame_transfer.{command}"


class HelpFormatter(argparse.HelpFormatter):
    """Every flag's help ends with its default, printed once, and its choices when the metavar hides them."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.choices and action.metavar is not None and not isinstance(action, argparse._SubParsersAction):
            names = ", ".join(str(c) for c in action.choices)
            if names not in text:
                text += f" (choices: {names})"
        if "default" not in text and _shows_default(action):
            if isinstance(action.default, (list, tuple)):  # a list flag's default as it is typed: 0,1,2,3
                text += " (default: " + ",".join(str(v) for v in action.default).replace("%", "%%") + ")"
            else:
                text += " (default: %(default)s)"
        return text


def _shows_default(action: argparse.Action) -> bool:
    if action.option_strings == [] and action.nargs in ("?", "*") and action.default is None:
        return False
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction,
                           argparse._HelpAction, argparse._VersionAction, argparse._AppendConstAction)):
        return False
    return action.default not in (None, argparse.SUPPRESS) and action.default != [] and action.default is not False


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with :class:`HelpFormatter`; its sub-command parsers are of this class too."""

    def __init__(self, *args, formatter_class=HelpFormatter, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)

    def add_argument(self, *args, **kwargs) -> argparse.Action:
        """As argparse's, with positionals shown in capitals (``RUN``, ``STORE``) like every other placeholder."""
        if (len(args) == 1 and not args[0].startswith(self.prefix_chars) and "metavar" not in kwargs
                and "choices" not in kwargs):
            kwargs["metavar"] = args[0].upper()
        return super().add_argument(*args, **kwargs)


def parser(command: str, description: str, **kwargs) -> Parser:
    """The argument parser of a command, named as the user started it (:func:`program_name`).

    A description taken from a module docstring loses its reST markup and its ``python -m ...`` example (the
    usage line says how the command was started).
    """
    text = re.sub(r"[:;,]?\s*``python -m mame_transfer\.[^`]*``\.?", "", description).replace("``", "").strip()
    if text and text[-1] not in ".?!)":
        text += "."
    return Parser(prog=program_name(command), description=text, **kwargs)


VERBOSE_HELP = "0 quiet, 1 progress bars, 2 detailed (and TensorFlow's own start-up log lines)"


def add_verbose(parser: argparse.ArgumentParser, default: int = 1) -> None:
    """``--verbose {0,1,2}``, the same on every command."""
    parser.add_argument("--verbose", type=int, choices=(0, 1, 2), default=default, help=VERBOSE_HELP)


def add_jobs(parser: argparse.ArgumentParser, help: str = "CPU cores to use (default: all)") -> None:
    """``--jobs N``: how many CPU cores the command may use (threads, processes or parallel fits)."""
    parser.add_argument("--jobs", type=positive_int, default=None, metavar="N", help=help)


class ListAction(argparse.Action):
    """A list flag that takes commas, spaces or both: ``--layers a,b c`` is ``[a, b, c]``.

    ``item_type`` converts each item; with ``keep_paths`` an item naming an existing file is never split (file
    names may hold commas). Repeating the flag extends the list.
    """

    def __init__(self, option_strings, dest, nargs="+", item_type=str, keep_paths: bool = False, **kwargs):
        self.item_type, self.keep_paths = item_type, keep_paths
        super().__init__(option_strings, dest, nargs=nargs, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        items = []
        for value in [values] if isinstance(values, str) else values:
            parts = [value] if self.keep_paths and os.path.exists(value) else value.split(",")
            for part in (p.strip() for p in parts):
                if not part:
                    continue
                try:
                    items.append(self.item_type(part))
                except (TypeError, ValueError):
                    parser.error(f"{option_string or self.dest}: {part!r} is not a valid "
                                 f"{getattr(self.item_type, '__name__', 'value')}")
        previous = getattr(namespace, self.dest, None)
        if previous is self.default or not isinstance(previous, list):  # the first use replaces the default
            previous = []
        setattr(namespace, self.dest, list(previous) + items)


def hidden_alias(parser: argparse.ArgumentParser, old: str, dest: str, *, alias_of: str | None = None,
                 **kwargs) -> argparse.Action:
    """Keep a renamed flag's former spelling working without showing it in ``--help``.

    Args:
        alias_of: the ``dest`` of the flag or positional it stands for, when it cannot share it (``dest``).
    """
    action = parser.add_argument(old, dest=dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)
    action.alias_of = alias_of or dest  # type: ignore[attr-defined]
    return action


def run(parser_or_args: argparse.ArgumentParser | argparse.Namespace, command: Callable[[argparse.Namespace], int | None],
        argv: Sequence[str] | None = None, *, on_interrupt: str = "") -> int:
    """Parse ``argv`` (unless a Namespace is given), call ``command(args)`` and return the exit status.

    TensorFlow's start-up log lines are hidden unless ``args.verbose`` is 2, and ``args.jobs`` (when the command
    has ``--jobs``) limits the CPU threads (:mod:`mame_transfer.core.runtime`).

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
        verbose = int(getattr(args, "verbose", 1))  # finetune's flags are strings until its config is resolved
    except (TypeError, ValueError):
        verbose = 1
    try:
        with runtime.command_process(verbose, getattr(args, "jobs", None)):
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


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least {minimum}")
    return value


def positive_int(text: str) -> int:
    """argparse ``type`` of a count or size flag: an integer >= 1."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse ``type`` of a flag where 0 means "none" or "all": an integer >= 0."""
    return _int_at_least(text, 0)


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
