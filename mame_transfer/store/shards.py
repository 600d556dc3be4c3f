"""A feature store exported in shares (``features --shard I/N``): their folders, their locks, what is missing.

N processes (machines sharing a filesystem, or several processes on one GPU host) export one store together.
Share I takes a contiguous block of rows of every split (:func:`share_rows`), so the assembled store holds the
same rows in the same order as an unsharded export. Inside ``<out>.partial/``::

    shards/plan.json           the export settings and N: every share must agree with them
    shards/<I>-of-<N>/         share I's rows: <split>/<feature set>.npy and progress.json (resumable)
    shards/<I>-of-<N>/done.json   written when share I is complete
    shards/<I>-of-<N>.lock     held by the process exporting share I (pid, host, start time inside)
    shards/assemble.lock       held while a finished share checks whether all are done and assembles the store

Locks are ``flock`` locks, released by the kernel when their process dies, so a killed share is simply run again.
Where the filesystem refuses ``flock`` (some Lustre or FUSE mounts) a lock is an exclusively created ``.pid``
file instead; a stale one left by a dead process of the same host is taken over, one from another host must be
deleted by hand (the error names it).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from mame_transfer.core.errors import ConfigError
from mame_transfer.core.fileio import pid_alive

SHARDS = "shards"
PLAN = "plan.json"
DONE = "done.json"
ASSEMBLE_LOCK = "assemble.lock"


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"I/N"`` (1 <= I <= N) -> ``(I, N)``; None or ``"1/1"`` -> None (an unsharded export)."""
    if text is None:
        return None
    try:
        i, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise ConfigError(f"--shard must be I/N with whole numbers, e.g. 2/4. Received: --shard {text}") from None
    if n < 1 or not 1 <= i <= n:
        raise ConfigError(f"--shard I/N needs 1 <= I <= N (shares are numbered from 1). Received: --shard {text}")
    return None if n == 1 else (i, n)


def share_rows(n_rows: int, i: int, n: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of share ``i`` of ``n`` (1-based) among ``n_rows``: contiguous, sizes differ by <= 1."""
    return (i - 1) * n_rows // n, i * n_rows // n


def share_name(i: int, n: int) -> str:
    return f"{i}-of-{n}"


def share_dir(work: Path, i: int, n: int) -> Path:
    return Path(work) / SHARDS / share_name(i, n)


def status(work: str | os.PathLike) -> dict | None:
    """``{"n", "done", "missing", "running"}`` of a sharded export in ``work`` (None when it is not one).

    ``running`` lists the missing shares whose lock is held right now, with their holder (``pid@host``).
    """
    folder = Path(work) / SHARDS
    try:
        n = int(json.loads((folder / PLAN).read_text())["shares"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    done = [i for i in range(1, n + 1) if (folder / share_name(i, n) / DONE).is_file()]
    missing = [i for i in range(1, n + 1) if i not in done]
    running = {}
    for i in missing:
        holder = Lock(folder / f"{share_name(i, n)}.lock").holder()
        if holder:
            running[i] = holder
    return {"n": n, "done": done, "missing": missing, "running": running}


def describe_missing(work: Path) -> str | None:
    """One sentence naming the shares an incomplete sharded export still needs (None if not sharded)."""
    st = status(work)
    if st is None:
        return None
    n = st["n"]
    parts = [f"{len(st['done'])} of {n} shares are done; missing: " +
             ", ".join(f"{i}/{n}" + (f" (running: {st['running'][i]})" if i in st["running"] else "")
                       for i in st["missing"])]
    parts.append(f"run `python -m mame_transfer.features ... --shard I/{n}` for each missing share (a killed share "
                 "resumes); the last share to finish assembles the store")
    return "; ".join(parts)


class Lock:
    """An exclusive lock on ``path`` holding ``pid@host`` (see the module docstring for the two mechanisms).

    Args:
        path: the lock file.
        what: what it protects, for the error message (e.g. ``share 2/4 of /data/store``).
    """

    def __init__(self, path: str | os.PathLike, what: str = ""):
        self.path, self.what = Path(path), what
        self._fd: int | None = None
        self._pidfile: Path | None = None

    def _me(self) -> str:
        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    def acquire(self, blocking: bool = False, timeout: float = 3600.0, create: bool = True) -> "Lock":
        """Take the lock; raises ConfigError naming the holder when it is taken (and ``blocking`` is False).

        With ``create=False`` a missing lock file raises FileNotFoundError (its folder is gone: work finished).
        """
        import fcntl

        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            raise self._taken(self.holder() or "another process") from None
        except OSError:  # no flock on this filesystem
            os.close(fd)
            return self._acquire_pidfile(blocking, timeout)
        os.ftruncate(fd, 0)
        os.pwrite(fd, self._me().encode(), 0)
        self._fd = fd
        return self

    def _acquire_pidfile(self, blocking: bool, timeout: float) -> "Lock":
        pidfile = self.path.with_name(self.path.name + ".pid")
        deadline = time.monotonic() + timeout
        while True:
            try:
                fd = os.open(pidfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = _read_holder(pidfile)
                if holder and holder.get("host") == socket.gethostname() and not pid_alive(int(holder["pid"])):
                    pidfile.unlink(missing_ok=True)  # left by a killed process of this host
                    continue
                if not blocking or time.monotonic() > deadline:
                    raise self._taken(_holder_text(holder) + f"; if it is gone, delete {pidfile}") from None
                time.sleep(0.5)
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(self._me())
            self._pidfile = pidfile
            return self

    def _taken(self, holder: str) -> ConfigError:
        return ConfigError(f"{self.what or self.path} is already being exported by {holder} (lock {self.path}); "
                           "a share runs in one process at a time")

    def holder(self) -> str | None:
        """``pid@host (since ...)`` of the process holding the lock now, else None."""
        import fcntl

        pidfile = self.path.with_name(self.path.name + ".pid")
        if pidfile.is_file():
            return _holder_text(_read_holder(pidfile))
        if not self.path.is_file():
            return None
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None  # nobody holds it
        except BlockingIOError:
            return _holder_text(_read_holder(self.path))
        except OSError:
            return None
        finally:
            os.close(fd)

    def release(self) -> None:
        import fcntl

        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._pidfile is not None:
            self._pidfile.unlink(missing_ok=True)
            self._pidfile = None

    def __enter__(self) -> "Lock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _holder_text(holder: dict) -> str:
    if not holder:
        return "another process"
    return f"pid {holder.get('pid')} on {holder.get('host')} (since {holder.get('started')})"

