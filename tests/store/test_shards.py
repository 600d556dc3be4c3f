"""store.shards and sharded export (``features --shard I/N``): the assembled store equals an unsharded export, an
interrupted share resumes, an incomplete store is refused naming the missing shares, a share runs once at a time."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mame_transfer import features
from mame_transfer.core.errors import ConfigError, DataError, OutputError
from mame_transfer.store import export as export_mod
from mame_transfer.store import shards
from mame_transfer.store.export import export
from mame_transfer.store.store import PROGRESS, load_store

REPO = Path(__file__).resolve().parents[2]
KW = dict(arch="test_tiny", weights=None, image_size=32, batch_size=16, verbose=0)


@pytest.fixture(scope="module")
def demo(demo_root):
    from mame_transfer.datasets.layouts import load_dataset

    return load_dataset(demo_root)


def test_parse_and_rows():
    assert shards.parse_shard("2/4") == (2, 4) and shards.parse_shard("1/1") is None and shards.parse_shard(None) is None
    for bad in ("0/4", "5/4", "2-4", "a/b", "1/0"):
        with pytest.raises(ConfigError, match="--shard"):
            shards.parse_shard(bad)
    for n_rows, n in ((10, 3), (2, 5), (90, 4)):
        ranges = [shards.share_rows(n_rows, i, n) for i in range(1, n + 1)]
        assert ranges[0][0] == 0 and ranges[-1][1] == n_rows
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))  # contiguous, in order
        assert max(b - a for a, b in ranges) - min(b - a for a, b in ranges) <= 1


def test_three_shares_equal_an_unsharded_export(tmp_path, demo, monkeypatch):
    ref = export(tmp_path / "ref", demo, **KW)
    out = tmp_path / "store"
    assert export(out, demo, shard=(2, 3), **KW) is None
    with pytest.raises(DataError, match=r"incomplete: 1 of 3 shares are done; missing: 1/3, 3/3; run `python -m "
                                        r"mame_transfer.features \.\.\. --shard I/3`"):
        load_store(out)

    # share 1 is interrupted after its second flushed batch of train, then resumes there (row 32, not 0)
    real_write, calls = export_mod.write_json, []

    def dying_write(path, obj):
        real_write(path, obj)
        if path.name == PROGRESS and obj.get("done"):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt

    monkeypatch.setattr(export_mod, "write_json", dying_write)
    with pytest.raises(KeyboardInterrupt):
        export(out, demo, shard=(1, 3), **KW)
    monkeypatch.setattr(export_mod, "write_json", real_write)
    with pytest.raises(DataError, match="missing: 1/3, 3/3"):
        load_store(out)
    starts = []
    real_stream = export_mod._stream
    monkeypatch.setattr(export_mod, "_stream", lambda model, table, array, start, **k: (
        starts.append((k["desc"], start)), real_stream(model, table, array, start, **k))[1])
    assert export(out, demo, shard=(1, 3), **KW) is None
    assert starts[0] == ("share 1/3 train/embeddings", 32)

    store = export(out, demo, shard=(3, 3), **KW)  # the last share assembles the store
    assert store is not None and store.path == out and not out.with_name("store.partial").exists()
    assert store.manifest["shards"] == 3 and store.manifest["splits"] == ref.manifest["splits"]
    same = {k: v for k, v in ref.manifest.items() if k not in ("created", "shards")}
    assert {k: store.manifest[k] for k in same} == same
    for split in ref.splits:  # the same rows in the same order
        assert (out / split / "metadata.csv").read_bytes() == (tmp_path / "ref" / split / "metadata.csv").read_bytes()
        np.testing.assert_allclose(store.embeddings(split), ref.embeddings(split), rtol=1e-5, atol=1e-6)
    with pytest.raises(OutputError, match="already holds a feature store; pass --overwrite"):
        export(out, demo, shard=(1, 3), **KW)  # a finished store is not reopened by a late share


def test_a_share_runs_once_and_shares_must_agree(tmp_path, demo):
    out = tmp_path / "store"
    work = out.with_name("store.partial")
    held = shards.Lock(shards.share_dir(work, 2, 2).with_name("2-of-2.lock")).acquire()
    try:
        with pytest.raises(ConfigError, match=rf"share 2/2 of {out} is already being exported by pid {os.getpid()} "
                                              r"on .* \(since .*\) \(lock .*2-of-2\.lock\)"):
            export(out, demo, shard=(2, 2), **KW)
        st = shards.status(work)
        assert st["missing"] == [1, 2] and st["running"] == {2: st["running"][2]} and str(os.getpid()) in \
            st["running"][2]
        with pytest.raises(DataError, match=r"missing: 1/2, 2/2 \(running: pid"):
            load_store(out)
    finally:
        held.release()
    with pytest.raises(ConfigError, match="is being exported in 2 shares; this is a share of 3"):
        export(out, demo, shard=(1, 3), **KW)
    with pytest.raises(ConfigError, match=r"other settings or inputs \(image_size differ\)"):
        export(out, demo, shard=(1, 2), **dict(KW, image_size=48))
    with pytest.raises(ConfigError, match="holds a sharded export in progress"):
        export(out, demo, **KW)


def test_a_killed_holder_releases_its_lock(tmp_path):
    path = tmp_path / "share.lock"
    code = (f"import sys, time; sys.path.insert(0, {str(REPO)!r}); from mame_transfer.store.shards import Lock; "
            f"Lock({str(path)!r}).acquire(); print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=f"pid {proc.pid}"):
            shards.Lock(path).acquire()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    shards.Lock(path).acquire().release()  # free again: the kernel dropped the dead holder's lock


def test_pid_file_locks_where_flock_is_refused(tmp_path, monkeypatch):
    import fcntl

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    path = tmp_path / "share.lock"
    first = shards.Lock(path, what="share 1/2").acquire()
    assert path.with_name("share.lock.pid").is_file()
    with pytest.raises(ConfigError, match=r"share 1/2 is already being exported by pid \d+ .*if it is gone, delete"):
        shards.Lock(path, what="share 1/2").acquire()
    first.release()
    assert not path.with_name("share.lock.pid").exists()
    # a pid file left by a dead process of this host is taken over
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path.with_name("share.lock.pid").write_text(f'{{"pid": {dead.stdout.strip()}, "host": "{os.uname().nodename}"}}')
    shards.Lock(path).acquire().release()


def test_cli_shards(tmp_path, capsys, demo_root):
    out = tmp_path / "cli"
    base = ["--demo", "--arch", "test_tiny", "--weights", "none", "--image-size", "32", "--splits", "val",
            "--out", str(out), "--verbose", "0"]
    assert features.main(base + ["--shard", "2/2"]) == 0
    printed = capsys.readouterr().out
    assert "share 2/2 of" in printed and "is done; 1 of 2 shares are done; missing: 1/2" in printed
    assert features.main(base + ["--shard", "1/2"]) == 0
    assert "val 60x32" in capsys.readouterr().out
    assert features.main(base + ["--shard", "3/2"]) == 2
    assert "1 <= I <= N" in capsys.readouterr().err
