"""Benchmark of ``finetune --strategy multiworker`` on one machine (a script, not a test).

Trains the same tiny run (demo set, ``test_tiny`` backbone, 32 px) as one process with Keras ``fit``, as one
multi-worker process (the package's step loop) and as two workers on 127.0.0.1, alternated round by round; each
variant is run with ``--epochs E`` and ``--epochs 2E`` so start-up, model build and tracing cancel:
samples/s = train images x E / (t(2E) - t(E)).

    .venv/bin/python benchmarks/bench_multiworker.py --rounds 3 --epochs 2

Two workers on one 2-core machine share the same cores and add a collective all-reduce per step, so they are not
expected to be faster here; the figure says what the distribution costs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import med  # noqa: E402

TINY = ["--demo", "--arch", "test_tiny", "--weights", "none", "--image-size", "32", "--head", "16", "--verbose", "0",
        "--warmup-epochs", "0", "--early-stopping", "0", "--prefix-cache", "off"]
TRAIN_IMAGES = 240  # the demo set's train split


def _ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def run_once(variant: str, epochs: int, batch: int, work: Path) -> float:
    """Wall seconds of one whole training command (all its processes)."""
    out = work / f"{variant}-{epochs}-{time.monotonic_ns()}"
    args = [*TINY, "--epochs", str(epochs), "--batch-size", str(batch), "--out", str(out)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    workers = {"fit": 0, "multiworker-1": 1, "multiworker-2": 2}[variant]
    t0 = time.perf_counter()
    if not workers:
        procs = [subprocess.Popen([sys.executable, "-m", "mame_transfer.finetune", *args], env=env, cwd=REPO,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)]
    else:
        ports = _ports(workers)
        procs = []
        for index in range(workers):
            tf_config = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                         "task": {"type": "worker", "index": index}}
            procs.append(subprocess.Popen([sys.executable, "-m", "mame_transfer.finetune", *args, "--strategy",
                                           "multiworker"], env=dict(env, TF_CONFIG=json.dumps(tf_config)),
                                          cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    errors = [p.communicate()[1] for p in procs]
    seconds = time.perf_counter() - t0
    for p, err in zip(procs, errors):
        if p.returncode:
            raise SystemExit(f"{variant} --epochs {epochs} failed:\n{err.decode()[-3000:]}")
    shutil.rmtree(out, ignore_errors=True)
    return seconds


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2, help="E: each variant runs E and 2E epochs")
    ap.add_argument("--batch", type=int, default=16, help="global batch size")
    ap.add_argument("--variants", default="fit,multiworker-1,multiworker-2")
    ap.add_argument("--out", default=None, help="write the Markdown report here")
    args = ap.parse_args(argv)
    variants = args.variants.split(",")
    rates: dict[str, list[float]] = {v: [] for v in variants}
    work = Path(tempfile.mkdtemp(prefix="bench_multiworker_"))
    try:
        for r in range(args.rounds):
            for v in (variants if r % 2 == 0 else variants[::-1]):
                short = run_once(v, args.epochs, args.batch, work)
                long = run_once(v, 2 * args.epochs, args.batch, work)
                rate = TRAIN_IMAGES * args.epochs / (long - short)
                rates[v].append(rate)
                print(json.dumps({"round": r, "variant": v, "short_s": short, "long_s": long, "samples_s": rate}),
                      flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = rates[variants[0]]
    lines = [f"Command: `{' '.join(['.venv/bin/python', 'benchmarks/bench_multiworker.py'] + argv)}`", "",
             f"| variant | samples/s (median, min-max) | / {variants[0]} (median, worst round) |", "|---|---|---|"]
    for v in variants:
        ratios = [x / b for x, b in zip(rates[v], base)]
        lines.append(f"| {v} | {med(rates[v]):.0f} ({min(rates[v]):.0f}-{max(rates[v]):.0f}) | "
                     f"{med(ratios):.2f} ({min(ratios):.2f}) |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
