"""Benchmark of using a trained run: predict throughput, SavedModel latency, predict memory (a script, not a test).

Every comparison runs its variants side by side in one process, round after round, and reports each round's ratio
(the noise of a shared machine hits both sides of a round alike); a target is met only when the worst round meets
it.

    .venv/bin/python benchmarks/bench_deploy.py                 # all sections; updates its part of RESULTS.md
    .venv/bin/python benchmarks/bench_deploy.py --sections latency --rounds 5 --out /tmp/r.md

Sections:
  throughput  ``deploy.labels.write_predictions`` (what ``mame-predict`` runs: JPEG files in a folder -> CSV) with a
              loaded classifier, as a fraction of the model-only forward on decoded, preprocessed in-memory tensors
              (same traced function, same batch size; measured just before and just after the predict calls of the
              round, averaged); whole call for N images, and marginal (N vs N/4, the fixed costs of a call cancel).
  latency     the exported SavedModel's ``serving_default`` on encoded JPEG bytes, batch 1 and batch 32.
  rss         peak RSS (VmHWM) of ``python -m mame_transfer.predict`` on N and 4N images, fresh subprocesses.

The run is built here (random weights, the registry backbone at its default size, a 512,256 head): speed and
memory do not depend on what the weights learned.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, make_mame, med  # noqa: E402  (benchmarks/common.py, beside this script)

START, END = "<!-- bench_deploy:start -->", "<!-- bench_deploy:end -->"


def make_run(data: Path, out: Path, arch: str, batch: int) -> Path:
    """A complete run directory (random weights) on the MAMe layout at ``data``."""
    from mame_transfer.core.config import TrainConfig
    from mame_transfer.core.fileio import write_json
    from mame_transfer.datasets.layouts import load_dataset
    from mame_transfer.models.build import build_model
    from mame_transfer.training import runs

    config = runs.resolved_config(TrainConfig(data=str(data), arch=arch, weights="none", batch_size=batch))
    dataset = load_dataset(data, require=("train",))
    runs.start(out, config, dataset)
    build_model(arch, dataset.num_classes, image_size=config.image_size, weights=None).save(out / runs.MODEL)
    write_json(out / runs.METRICS, {})
    return out


def images_of(root: Path) -> list[str]:
    from mame_transfer.deploy.inputs import images_in_folder

    return images_in_folder(root / "data_256")


# --------------------------------------------------------------------------------------------- throughput


def bench_throughput(run: Path, paths: list[str], batch: int, rounds: int) -> dict:
    import tensorflow as tf

    from mame_transfer.deploy.classifier import load_classifier
    from mame_transfer.deploy.labels import write_predictions

    clf = load_classifier(run)
    size = clf.image_size
    n, n4 = len(paths), len(paths) // 4
    x = tf.constant(clf.preprocess(np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype("float32")))
    steps = int(np.ceil(n / batch))
    tmp = Path(tempfile.mkdtemp(prefix="bench_predict_"))
    clf.forward(x, False)  # trace once (predict shares this traced function)
    write_predictions(clf, paths[:batch], tmp / "warm.csv", batch_size=batch, verbose=0, overwrite=True)
    def limit_throughput():
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            clf.forward(x, False)
        return steps * batch / (time.perf_counter() - t0), steps * batch / (time.process_time() - c0)

    rows = []
    for r in range(rounds):
        before = limit_throughput()  # the limit is measured before and after predict: load drifts on a shared box
        times, cpu = {}, {}
        for key, subset in (("n", paths), ("n4", paths[:n4])) if r % 2 == 0 else (("n4", paths[:n4]), ("n", paths)):
            t0, c0 = time.perf_counter(), time.process_time()
            summary = write_predictions(clf, subset, tmp / f"{key}.csv", batch_size=batch, verbose=0, overwrite=True)
            times[key], cpu[key] = time.perf_counter() - t0, time.process_time() - c0
            assert summary["labelled"] == len(subset), summary
        after = limit_throughput()
        limit, limit_cpu = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2
        # The input side alone (read, decode, resize, preprocess; no model): on a CPU it shares the cores with the
        # model, so predict can reach at most 1 / (1 + limit / pipeline) of the model-only rate.
        t0 = time.perf_counter()
        decoded = sum(int(index.shape[0]) for index, _ in clf.image_batches(paths, batch))
        pipeline = decoded / (time.perf_counter() - t0)
        whole, marginal = n / times["n"], (n - n4) / (times["n"] - times["n4"])
        # CPU seconds of this process per image: the work predict adds to the model's, whatever other processes
        # take from the shared cores (wall-clock ratios swing with their load).
        cpu_ratio = (n / cpu["n"]) / limit_cpu
        rows.append(dict(limit_img_s=limit, predict_img_s=whole, marginal_img_s=marginal,
                         ratio=whole / limit, marginal_ratio=marginal / limit, pipeline_img_s=pipeline,
                         ceiling=1 / (1 + limit / pipeline), cpu_ratio=cpu_ratio, seconds_n=times["n"],
                         seconds_n4=times["n4"]))
        print(json.dumps({k: round(v, 4) for k, v in rows[-1].items()}), flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    return dict(arch=clf.config.arch, image_size=size, n=n, batch=batch, rounds=rows)


# --------------------------------------------------------------------------------------------- latency


def bench_latency(run: Path, paths: list[str], rounds: int, calls: int) -> dict:
    import tensorflow as tf

    from mame_transfer.deploy.export import export_run

    out = Path(tempfile.mkdtemp(prefix="bench_savedmodel_")) / "sm"
    t0 = time.perf_counter()
    export_run(run, out)
    export_s = time.perf_counter() - t0
    serve = tf.saved_model.load(str(out)).signatures["serving_default"]
    blobs = [Path(p).read_bytes() for p in paths[:32]]
    one, many = tf.constant(blobs[:1]), tf.constant(blobs)
    serve(images=one)
    serve(images=many)  # warm-up
    rows = []
    for _ in range(rounds):
        row = {}
        for key, batch, n_calls in (("batch1", one, calls), ("batch32", many, max(3, calls // 8))):
            times = []
            for _ in range(n_calls):
                t0 = time.perf_counter()
                serve(images=batch)["probabilities"].numpy()
                times.append(time.perf_counter() - t0)
            row[f"{key}_ms"] = 1000 * med(times)
        row["batch32_ms_per_image"] = row["batch32_ms"] / 32
        rows.append(row)
        print(json.dumps({k: round(v, 2) for k, v in row.items()}), flush=True)
    shutil.rmtree(out.parent, ignore_errors=True)
    return dict(export_s=export_s, calls=calls, rounds=rows)


# --------------------------------------------------------------------------------------------- rss


def rss_child(run: str, folder: str, n: int) -> None:
    """Predict the first n images of ``folder`` (through a path list) in this fresh process; print the peak RSS."""
    from mame_transfer import predict
    from mame_transfer.deploy.inputs import images_in_folder

    tmp = Path(tempfile.mkdtemp(prefix="bench_rss_"))
    (tmp / "list.txt").write_text("\n".join(images_in_folder(folder)[:n]) + "\n")
    code = predict.main([run, str(tmp / "list.txt"), "--out", str(tmp / "labels.csv"), "--verbose", "0"])
    shutil.rmtree(tmp, ignore_errors=True)
    assert code == 0
    # VmHWM: this process's own peak (ru_maxrss would carry the parent's peak over fork + exec).
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(json.dumps({"n": n, "maxrss_mib": hwm / 1024}))


def bench_rss(run: Path, folder: Path, n: int, rounds: int) -> dict:
    peaks = {n: [], 4 * n: []}
    for r in range(rounds):
        for k in ((n, 4 * n) if r % 2 == 0 else (4 * n, n)):
            out = subprocess.run([sys.executable, __file__, "--rss-child", str(k), "--run", str(run),
                                  "--folder", str(folder)], capture_output=True, text=True, check=True)
            peaks[k].append(json.loads(out.stdout.strip().splitlines()[-1])["maxrss_mib"])
        print(json.dumps({"round": r + 1, str(n): peaks[n][-1], str(4 * n): peaks[4 * n][-1]}), flush=True)
    ratios = [b / a for a, b in zip(peaks[n], peaks[4 * n])]
    return dict(n=n, peaks={str(k): v for k, v in peaks.items()}, ratios=ratios)


# --------------------------------------------------------------------------------------------- report


def _spread(values) -> str:
    return f"{med(values):.3f} (rounds: {', '.join(f'{v:.3f}' for v in values)}; worst {min(values):.3f})"


def report(res: dict, argv: list[str]) -> str:
    m = res["machine"]
    lines = [START, "## Using a trained run: predict throughput, SavedModel latency, predict memory (issue 13)", "",
             f"Produced by `.venv/bin/python benchmarks/bench_deploy.py {' '.join(argv)}`".rstrip() + ", on a "
             "machine shared with four other engineers running tests and trainings: absolute times are noisy; each "
             "ratio is taken within one round, and the worst round decides a target.", "",
             f"Machine: {m['nproc']} cores ({m['cpu']}), no GPU used ({m['gpus']} visible). Python {m['python']}, "
             f"TensorFlow {m['tensorflow']}, Keras {m['keras']}, Pillow {m['pillow']}, NumPy {m['numpy']}.", ""]
    for t in res.get("throughput", []):
        rows = t["rounds"]
        lines += [f"### predict throughput ({t['arch']} @{t['image_size']}, random weights, {t['n']} JPEGs of "
                  f"256-320 px in class folders, batch {t['batch']})", "",
                  "| round | model-only forward img/s | predict img/s (whole call, N) | ratio | marginal img/s "
                  "(N vs N/4) | marginal ratio | input pipeline alone img/s | CPU ceiling | CPU-time ratio |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for i, r in enumerate(rows, 1):
            lines.append(f"| {i} | {r['limit_img_s']:.1f} | {r['predict_img_s']:.1f} | {r['ratio']:.3f} | "
                         f"{r['marginal_img_s']:.1f} | {r['marginal_ratio']:.3f} | {r['pipeline_img_s']:.0f} | "
                         f"{r['ceiling']:.3f} | {r['cpu_ratio']:.3f} |")
        whole, marginal = [r["ratio"] for r in rows], [r["marginal_ratio"] for r in rows]
        lines += ["", f"Ratio, whole call: median {_spread(whole)}. Marginal: median {_spread(marginal)}. "
                  f"CPU ceiling (1 / (1 + forward rate / input-pipeline rate), the best any pipeline sharing these "
                  f"cores with the model can do): median {med([r['ceiling'] for r in rows]):.3f}. CPU-time ratio "
                  f"(images per CPU second of this process, predict / model-only; insensitive to other processes' "
                  f"load): median {_spread([r['cpu_ratio'] for r in rows])}.",
                  f"Target 0.9: **{'met' if min(whole) >= 0.9 else 'not met'}** on the whole call, "
                  f"**{'met' if min(marginal) >= 0.9 else 'not met'}** at the margin (worst round).", ""]
    if "latency" in res:
        lat = res["latency"]
        b1 = [r["batch1_ms"] for r in lat["rounds"]]
        b32 = [r["batch32_ms"] for r in lat["rounds"]]
        lines += ["### Exported SavedModel latency (`serving_default` on encoded JPEG bytes, decode + resize + "
                  "preprocess + model in the graph)", "",
                  "| round | batch 1 ms | batch 32 ms | batch 32 ms per image |", "|---|---|---|---|"]
        for i, r in enumerate(lat["rounds"], 1):
            lines.append(f"| {i} | {r['batch1_ms']:.1f} | {r['batch32_ms']:.1f} | {r['batch32_ms_per_image']:.1f} |")
        lines += ["", f"Median of {lat['calls']} calls (batch 1) and {max(3, lat['calls'] // 8)} calls (batch 32) per "
                  f"round after a warm-up; median over rounds: batch 1 {med(b1):.1f} ms, batch 32 {med(b32):.1f} ms. "
                  f"The export itself (with its verification) took {lat['export_s']:.0f} s.", ""]
    if "rss" in res:
        r = res["rss"]
        n = r["n"]
        lines += ["### Peak RSS of `python -m mame_transfer.predict` (fresh subprocesses, VmHWM)", "",
                  f"| round | N = {n} MiB | 4N = {4 * n} MiB | 4N / N |", "|---|---|---|---|"]
        for i, (a, b) in enumerate(zip(r["peaks"][str(n)], r["peaks"][str(4 * n)]), 1):
            lines.append(f"| {i} | {a:.0f} | {b:.0f} | {b / a:.3f} |")
        worst = max(r["ratios"])
        lines += ["", f"Target: within 10 %: **{'met' if worst <= 1.10 else 'not met'}** (worst round "
                  f"{worst:.3f}).", ""]
    lines.append(END)
    return "\n".join(lines)


def write_section(path: Path, text: str) -> None:
    """Replace this benchmark's section of RESULTS.md (between its markers), or append it; other sections stay."""
    old = path.read_text() if path.is_file() else ""
    if START in old and END in old:
        new = old[: old.index(START)] + text + old[old.index(END) + len(END):]
    else:
        new = old.rstrip("\n") + ("\n\n" if old else "") + text + "\n"
    path.write_text(new)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sections", default="throughput,latency,rss", help="comma-separated: throughput,latency,rss")
    ap.add_argument("--arch", default="efficientnetb0",
                    help="registry backbone(s) of the benchmark runs, comma-separated (the first one also serves "
                         "the latency and rss sections)")
    ap.add_argument("--n", type=int, default=256, help="images of the throughput comparison")
    ap.add_argument("--batch", type=int, default=32, help="batch size of predict and of the model-only forward")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of every comparison (at least 3)")
    ap.add_argument("--calls", type=int, default=24, help="SavedModel calls per round at batch 1")
    ap.add_argument("--rss-n", type=int, default=128, help="N of the peak-RSS comparison (N vs 4N)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "RESULTS.md"), help="Markdown file to update")
    ap.add_argument("--json", default=None, help="also write the raw results here")
    ap.add_argument("--rss-child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--run", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rss_child is not None:
        rss_child(args.run, args.folder, args.rss_child)
        return 0
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    res = {"machine": machine()}
    print(json.dumps(res["machine"]), flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench_deploy_"))
    try:
        n_images = max(args.n, 4 * args.rss_n if "rss" in sections else 0, 32)
        root = make_mame(work / "mame", n_images, sizes=(256, 320))
        archs = [a.strip() for a in args.arch.split(",") if a.strip()]
        run = make_run(root, work / "run", archs[0], args.batch)
        paths = images_of(root)
        if "throughput" in sections:
            res["throughput"] = [bench_throughput(make_run(root, work / f"run_{arch}", arch, args.batch),
                                                  paths[: args.n], args.batch, args.rounds) for arch in archs]
        if "latency" in sections:
            res["latency"] = bench_latency(run, paths, args.rounds, args.calls)
        if "rss" in sections:
            res["rss"] = bench_rss(run, root / "data_256", args.rss_n, args.rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = report(res, argv)
    print(text)
    if args.out:
        write_section(Path(args.out), text)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
