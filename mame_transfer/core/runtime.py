"""The process a command runs in: TensorFlow's start-up log lines hidden, CPU cores limited (``--jobs``).

TensorFlow writes its start-up lines (``oneDNN custom operations are on...``, ``This TensorFlow binary is
optimized...``, absl's ``All log messages before absl::InitializeLog()...``) straight to file descriptor 2 while it
is imported, before ``TF_CPP_MIN_LOG_LEVEL`` is read by its logger; only filtering that descriptor during the import
hides them. :func:`configure` installs an import hook that does so the first time anything imports ``tensorflow``
(commands import it lazily, so the hook is in place before), replays every other line, sets the thread limits of
``--jobs`` right after the import and lists the devices inside the filter too: the GPU build of TensorFlow (the
``tensorflow`` wheel on Linux) probes CUDA then and logs ``failed call to cuInit`` on a machine without a GPU. Users see the lines again with ``--verbose 2``, ``MAME_TRANSFER_TF_LOGS=1``
or their own ``TF_CPP_MIN_LOG_LEVEL`` below 2.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile
from typing import Iterator

SHOW_LOGS_ENV = "MAME_TRANSFER_TF_LOGS"
# Start-up chatter of TensorFlow / XLA / absl (info and warning lines, and the CUDA probing errors of a GPU build
# on a machine without a GPU); a line matching none of these is replayed.
NOISE = re.compile(
    r"^(?:[IW]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ "  # absl / glog info and warning lines
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|To enable the following instructions: "  # second line of the cpu_feature_guard message
    r"|E\d{4} .*(?:Unable to register cu[A-Za-z]+ factory|failed call to cuInit|TF-TRT))")


def wants_tensorflow_logs(verbose: int = 1) -> bool:
    """True when the user asked for TensorFlow's own log lines (``--verbose 2``, the env var, or their own level)."""
    level = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
    return (verbose or 0) >= 2 or os.environ.get(SHOW_LOGS_ENV, "") not in ("", "0") or \
        (level is not None and level.strip() in ("0", "1"))


@contextlib.contextmanager
def filtered_stderr(noise: re.Pattern = NOISE) -> Iterator[None]:
    """Capture file descriptor 2 (C++ and Python writes alike), then replay the lines that are not ``noise``."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real descriptor 2 (embedded interpreter): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [line for line in tmp.read().decode("utf-8", "replace").splitlines(keepends=True)
                    if not noise.search(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def _limit_tensorflow_threads(tf, jobs: int | None) -> None:
    if not jobs:
        return
    with contextlib.suppress(RuntimeError):  # TensorFlow already initialised in this process: keep its threads
        tf.config.threading.set_intra_op_parallelism_threads(jobs)
        tf.config.threading.set_inter_op_parallelism_threads(jobs)


class _TensorFlowImport(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` through the other finders and wraps its loading (quiet import, thread limits)."""

    def __init__(self, quiet: bool, jobs: int | None):
        self.quiet, self.jobs = quiet, jobs

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        remove_hook()
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module, quiet, jobs = spec.loader.exec_module, self.quiet, self.jobs

        def exec_quietly(module):
            with filtered_stderr() if quiet else contextlib.nullcontext():
                exec_module(module)
                _limit_tensorflow_threads(module, jobs)  # before the runtime starts
                if quiet:  # a GPU build probes CUDA when it first lists devices (cuInit errors without a GPU)
                    with contextlib.suppress(Exception):
                        module.config.list_physical_devices()

        spec.loader.exec_module = exec_quietly  # this spec's loader object only
        return spec


def remove_hook() -> None:
    """Undo :func:`configure`'s import hook (it removes itself once TensorFlow is imported)."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _TensorFlowImport)]


THREAD_VARS = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")


def configure(verbose: int = 1, jobs: int | None = None) -> None:
    """Prepare the process for a command: quiet TensorFlow import unless asked, at most ``jobs`` CPU threads.

    Call before anything imports TensorFlow; when it is already imported, only the thread limits are tried.
    """
    quiet = not wants_tensorflow_logs(verbose)
    if quiet:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # the lines TensorFlow logs after its import
    if jobs:
        # Read by TensorFlow's runtime when it starts, and by OpenMP (oneDNN) and BLAS libraries loaded later.
        for var in THREAD_VARS:
            os.environ[var] = str(jobs)
    remove_hook()
    if "tensorflow" in sys.modules:
        _limit_tensorflow_threads(sys.modules["tensorflow"], jobs)
    elif quiet or jobs:
        sys.meta_path.insert(0, _TensorFlowImport(quiet, jobs))


@contextlib.contextmanager
def command_process(verbose: int = 1, jobs: int | None = None) -> Iterator[None]:
    """:func:`configure` for the duration of a command, BLAS / OpenMP pools limited to ``jobs`` threads as well.

    The environment and the import hook are restored afterwards (a command run inside another program, or a
    test, leaves nothing behind).
    """
    saved = {v: os.environ.get(v) for v in ("TF_CPP_MIN_LOG_LEVEL", *THREAD_VARS)}
    configure(verbose, jobs)
    try:
        if jobs:
            from threadpoolctl import threadpool_limits

            with threadpool_limits(limits=jobs):
                yield
        else:
            yield
    finally:
        remove_hook()
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
