"""Small file helpers: outputs are written whole or not at all, into folders a command owns, one writer at a time.

* :func:`atomic_path`: write a file or a folder beside its destination and move it into place only when complete;
  an existing folder is replaced only when the caller says it checked that the folder is its own.
* :func:`check_output`: the one rule every command applies to its ``--out`` folder: absent or empty is fine; a
  folder holding this command's own earlier output is replaced only with ``--overwrite`` (or added to, for
  additive outputs); anything else (another command's output, the user's own files) is refused, whatever the
  flags. Folders a command writes carry an :data:`OWNER_FILE` saying which kind of output they are.
* :func:`locked`: an exclusive lock per output folder (``<parent>/.<name>.lock`` holding pid, host, start time and
  command), so a second process writing the same folder stops at once, naming the holder; a lock left by a
  process that died (``kill -9``) is taken over with a message.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from mame_transfer.core.errors import OutputError

try:  # POSIX: flock locks vanish with their process, so a killed writer never blocks the next one
    import fcntl
except ImportError:  # pragma: no cover  (Windows)
    fcntl = None

log = logging.getLogger("mame_transfer")

# Suffix of a folder being written (a training run, a feature store): renamed away only when complete.
PARTIAL = ".partial"
# In every folder a command writes: which kind of output it is (JSON: kind, package version, time, settings).
OWNER_FILE = ".mame_transfer.json"


def replace_folder(work: str | os.PathLike, final: str | os.PathLike) -> Path:
    """Give the finished folder ``work`` the name ``final``; an existing ``final`` (which the caller checked is its
    own earlier output) is moved aside first and removed only once ``work`` is in place."""
    work, final = Path(work), Path(final)
    if final.exists():
        old = final.with_name(f".{final.name}.replaced")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(work, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(work, final)
    return final


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, kind: str | None = None, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds.

    Works for files and directories: whatever the block writes at the yielded path replaces ``path``
    atomically (``os.replace``), so a crash never leaves a half-written output at ``path``.

    Args:
        kind: for a folder: the kind of output it is, recorded in its :data:`OWNER_FILE`.
        replace: for a folder: the caller checked (:func:`check_output`) that an existing folder at ``path`` is
            its own and may be replaced. Without it an existing folder is never removed.

    Raises:
        OutputError: ``path`` is an existing folder and ``replace`` is not set, or a file/folder mismatch.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if target.is_dir():
            if kind:
                mark(target, kind)
            if path.is_dir() or path.is_symlink():
                empty = path.is_dir() and not path.is_symlink() and \
                    not [p for p in path.iterdir() if p.name != OWNER_FILE]
                if not (replace or empty) or path.is_symlink():
                    raise OutputError(f"{path} already exists and was not checked to be this command's own "
                                      f"output; it was left as it is")
                os.replace(path, tmp / ".replaced")  # the old folder goes away only once the new one is in place
        elif path.is_dir():
            raise OutputError(f"{path} is a folder; expected the path of a file")
        elif target.exists() and path.exists() and not path.is_file():
            raise OutputError(f"{path} is not a regular file; expected the path of a file")
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------- owned outputs


def owner(path: str | os.PathLike) -> dict | None:
    """The :data:`OWNER_FILE` of a folder a command wrote, or None."""
    try:
        info = json.loads((Path(path) / OWNER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and isinstance(info.get("kind"), str) else None


def mark(path: str | os.PathLike, kind: str, **info: Any) -> None:
    """Record in ``path`` that it is a ``kind`` output (``info``: settings worth keeping, e.g. a fingerprint)."""
    from mame_transfer.core import __version__

    write_json(Path(path) / OWNER_FILE, {"kind": kind, "package_version": __version__,
                                         "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **info})


def check_output(path: str | os.PathLike, kind: str, *, overwrite: bool = False, additive: bool = False,
                 legacy: Callable[[Path], bool] | None = None, what: str = "", flag: str = "--out") -> bool:
    """Whether ``path`` may be written as a ``kind`` output; True when it holds an earlier output of that kind.

    Absent or empty: fine. A folder of this kind (its :data:`OWNER_FILE`, or ``legacy(path)`` for folders written
    before owner files existed): replaced only with ``overwrite``; added to when ``additive`` (outputs made of
    independent files, e.g. analyses). Anything else is refused whatever the flags: nothing outside an output
    of this kind is ever removed or overwritten.

    Args:
        what: the output in words for messages (default ``kind``).
        flag: the option that named ``path`` (for messages).

    Raises:
        OutputError: naming the folder, what it holds, and the way out.
    """
    path = Path(path)
    what = what or kind.replace("-", " ")
    if not path.exists() and not path.is_symlink():
        return False
    if not path.is_dir() or path.is_symlink():
        raise OutputError(f"{flag} {path} is {'a link' if path.is_symlink() else 'a file'}, not a folder; "
                          f"choose a new folder for the {what}")
    entries = [p for p in path.iterdir() if p.name != OWNER_FILE]
    mine = owner(path)
    if mine is not None and mine["kind"] == kind or mine is None and entries and legacy is not None and legacy(path):
        if overwrite or additive or not entries:
            return bool(entries)
        raise OutputError(f"{flag} {path} already holds {_a(what)}; pass --overwrite to replace it, or choose "
                          f"another {flag}")
    if not entries:
        return False
    held = f"{_a(mine['kind'].replace('-', ' '))} (written by mame_transfer)" if mine is not None \
        else f"files this command did not write ({', '.join(sorted(p.name for p in entries)[:5])}" \
             f"{', ...' if len(entries) > 5 else ''})"
    raise OutputError(f"{flag} {path} already exists and holds {held}, not {_a(what)}. Nothing was changed; choose a "
                      f"new or empty folder for {flag} (--overwrite only replaces this command's own output)")


def _a(what: str) -> str:
    return f"{'an' if what[:1] in 'aeiou' else 'a'} {what}"


# --------------------------------------------------------------------------------------------- locks


_HELD: dict[str, list] = {}  # lock file -> [fd, depth]: a process may nest locks on one output


def lock_file(path: str | os.PathLike) -> Path:
    """Where the lock of output ``path`` lives: beside it, so replacing the folder keeps the lock."""
    path = Path(os.path.abspath(path))
    return path.parent / f".{path.name}.lock"


def _describe(holder: dict) -> str:
    return (f"pid {holder.get('pid')} on {holder.get('host')}, {holder.get('command') or 'a command'} started "
            f"{holder.get('started')}")


def _read_holder(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        info = json.loads(os.read(fd, 65536).decode("utf-8") or "{}")
    except (ValueError, UnicodeDecodeError):
        return {}
    return info if isinstance(info, dict) else {}


def pid_alive(pid) -> bool:
    """Whether a process of this machine with that pid runs (an unreadable pid or no permission count as alive)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OSError):
        return True
    return True


@contextlib.contextmanager
def locked(path: str | os.PathLike, command: str = "") -> Iterator[Path]:
    """Hold the exclusive lock of output ``path`` while the block runs; yields the lock file.

    Raises:
        OutputError: another live process holds it (named: pid, host, command, start time).
    """
    lock = lock_file(path)
    key = str(lock)
    if key in _HELD:  # nested in the same process (e.g. export -> write of the store)
        _HELD[key][1] += 1
        try:
            yield lock
        finally:
            _HELD[key][1] -= 1
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(lock, Path(path), command)
    _HELD[key] = [fd, 1]
    try:
        yield lock
    finally:
        del _HELD[key]
        with contextlib.suppress(OSError):
            lock.unlink()
        os.close(fd)


def _acquire(lock: Path, path: Path, command: str) -> int:
    me = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
          "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    busy = (f"{path} is being written by another process ({{holder}}). Wait for it to finish, or choose another "
            f"--out. If that process is gone, delete {lock}.")
    while True:
        if fcntl is None:  # pragma: no cover  (no flock: exclusive creation, stale only when the file is removed)
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                with open(lock, "rb") as fh:
                    holder = json.loads(fh.read() or b"{}")
                raise OutputError(busy.format(holder=_describe(holder))) from None
        else:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise OutputError(busy.format(holder=_describe(holder))) from None
            try:  # the previous holder may have removed the file between our open and flock: lock the new one
                same = os.path.samestat(os.fstat(fd), os.stat(lock))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
        previous = _read_holder(fd)
        if previous.get("pid") is not None:
            alive = previous.get("host") == me["host"] and pid_alive(previous["pid"])
            log.warning("%s: taking over the lock left by %s (%s)", path, _describe(previous),
                        "its process holds no lock any more" if alive else "no longer running")
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(me).encode("utf-8"))
        return fd


@contextlib.contextmanager
def output_folder(path: str | os.PathLike, kind: str, *, overwrite: bool = False, additive: bool = False,
                  legacy: Callable[[Path], bool] | None = None, what: str = "", flag: str = "--out",
                  command: str = "") -> Iterator[bool]:
    """Lock ``path`` for the block and check it (:func:`check_output`); yields whether an own output is there."""
    with locked(path, command or kind):
        yield check_output(path, kind, overwrite=overwrite, additive=additive, legacy=legacy, what=what, flag=flag)


def claim(path: str | os.PathLike, kind: str, **kwargs) -> Path:
    """Check ``path`` (:func:`check_output`, briefly locked), create it and mark it as a ``kind`` output."""
    path = Path(path)
    with output_folder(path, kind, **kwargs):
        path.mkdir(parents=True, exist_ok=True)
        if (owner(path) or {}).get("kind") != kind:
            mark(path, kind)
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def markdown_table(frame, *, float_format: str = "{:.4f}", nan: str = "–",
                   column_formats: dict[str, str] | None = None) -> str:
    """A DataFrame as a GitHub Markdown table.

    Args:
        float_format: format of float cells.
        nan: text of NaN / None cells.
        column_formats: float format per column-name suffix (e.g. ``{"_s": "{:.2f}"}`` for seconds).
    """
    import math

    import numpy as np

    cols = [str(c) for c in frame.columns]
    formats = [next((f for suffix, f in (column_formats or {}).items() if c.endswith(suffix)), float_format)
               for c in cols]

    def cell(value, fmt: str) -> str:
        if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)):
            return nan
        if isinstance(value, (float, np.floating)):
            return fmt.format(value)
        return str(value).replace("|", "/")

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(v, f) for v, f in zip(row, formats)) + " |"
              for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"
