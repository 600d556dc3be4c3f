"""Speed benchmark of the frozen-prefix cache, feature export and the prepare step (a script, not a test).

Every comparison runs its variants side by side in one process, alternating them round by round, and reports
the median of the rounds and the RATIO, so the noise of a shared machine hits both sides alike.

    .venv/bin/python benchmarks/bench_speed.py                       # all sections, writes benchmarks/RESULTS.md
    .venv/bin/python benchmarks/bench_speed.py --sections prepare --prepare-n 400 --out /tmp/r.md

Sections:
  train    epoch time of fine-tuning on the prefix cache vs the plain Keras way (same model with frozen layers,
           ``model.fit`` on ``keras.utils.image_dataset_from_directory``): vgg16 block4, vgg16 block5,
           efficientnetb0 block6 at 224 px, weights=None; plus the one-time cache fill and the break-even epochs.
  export   JPEG files -> features on disk: ``features.export`` against image_dataset_from_directory +
           model.predict + np.save, each in a fresh process (seconds and peak RSS), alternated round by round.
  rss      peak RSS of ``features.export`` for N and 4N images (fresh subprocesses).
  prepare  ``mame_transfer.prepare`` with and without DCT-domain downscaling on large (2000-3000 px) JPEGs, and
           the tf.data decode with and without ``dct_ratio``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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

import common  # noqa: E402  (benchmarks/common.py, beside this script)
from common import CLASSES, image_folder_train, machine, make_mame, med  # noqa: E402


class EpochTimer:
    def __init__(self):
        import keras

        outer = self

        class _CB(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                outer.t0 = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                outer.times.append(time.perf_counter() - outer.t0)

        self.times: list[float] = []
        self.callback = _CB()


# --------------------------------------------------------------------------------------------- train


def bench_train(root: Path, n: int, batch: int, rounds: int, cases) -> list[dict]:
    import keras
    import tensorflow as tf

    from mame_transfer.datasets.layouts import load_dataset
    from mame_transfer.datasets.pipeline import make_pipeline
    from mame_transfer.models import backbones
    from mame_transfer.models import build as model_mod
    from mame_transfer.training import prefix_cache as cache

    dataset = load_dataset(root, require=("train",))
    table = dataset.split("train")
    folders = image_folder_train(root, n)
    results = []
    for arch, freeze in cases:
        spec = backbones.get(arch)
        size = 224
        keras.utils.set_random_seed(0)

        def build():
            net = model_mod.build_model(arch, len(dataset.classes), image_size=size, weights=None, head="512,256",
                                        freeze_until=freeze)
            net.compile(keras.optimizers.Adam(1e-4), keras.losses.SparseCategoricalCrossentropy(),
                        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
            return net

        # Plain Keras: frozen layers, JPEGs decoded every epoch by image_dataset_from_directory.
        plain = build()
        plain_ds = keras.utils.image_dataset_from_directory(
            folders, image_size=(size, size), batch_size=batch, shuffle=True, seed=0, label_mode="int", verbose=False)
        plain_ds = plain_ds.map(lambda x, y: (spec.preprocess(x), y), num_parallel_calls=tf.data.AUTOTUNE)
        plain_ds = plain_ds.prefetch(tf.data.AUTOTUNE)

        # Cached: the same architecture, cut at the frozen boundary; the suffix is fitted on cached tensors.
        net = build()
        boundary = model_mod.frozen_boundary(net, arch, freeze)
        cut, why = cache.find_cut(net, boundary)
        if cut is None:
            raise SystemExit(f"{arch} {freeze}: no cut ({why})")
        store = cache.FeatureCache(len(table), cut.feature_shape, "float32")
        fn = cache.prefix_function(cut)
        images = make_pipeline(table, image_size=size, preprocess=spec.preprocess, batch_size=batch,
                               training=False, shuffle=False, with_labels=False)
        t0 = time.perf_counter()
        store.fill(fn, images)
        fill_first = time.perf_counter() - t0  # includes tracing the prefix function
        t0 = time.perf_counter()
        store.fill(fn, images)  # steady-state fill (traced), the cost on a real data set of many batches
        fill = time.perf_counter() - t0
        cached_ds = cache.cached_pipeline(store, table["label_index"].to_numpy(), batch_size=batch, shuffle=True)
        suffix = cut.suffix
        suffix.compile(keras.optimizers.Adam(1e-4), keras.losses.SparseCategoricalCrossentropy(),
                       metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])

        t_plain, t_cached = EpochTimer(), EpochTimer()
        for r in range(rounds + 1):  # round 0 traces the train functions and is discarded
            order = [("plain", plain, plain_ds, t_plain), ("cached", suffix, cached_ds, t_cached)]
            for _, m, ds, timer in (order if r % 2 == 0 else order[::-1]):
                m.fit(ds, epochs=1, verbose=0, callbacks=[timer.callback])
        p, c = med(t_plain.times[1:]), med(t_cached.times[1:])
        gain = p - c
        res = dict(arch=arch, freeze=freeze, cut=cut.layer_name, feature_shape=list(cut.feature_shape), n=len(table),
                   batch=batch, rounds=rounds, plain_epoch_s=p, cached_epoch_s=c, speedup=p / c,
                   fill_s=fill, fill_first_s=fill_first, fill_over_plain_epoch=fill / p,
                   break_even_epochs=(fill / gain) if gain > 0 else None,
                   plain_all=t_plain.times[1:], cached_all=t_cached.times[1:])
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()}), flush=True)
        results.append(res)
        del plain, net, suffix, store
        keras.backend.clear_session()
    return results


# --------------------------------------------------------------------------------------------- export


def export_child(root: str, n: int, arch: str, way: str, out: str) -> None:
    """One export of the first n train images in this fresh process: seconds (model build included) and peak RSS.

    ``package``: ``store.export.export`` (streamed into a resumable store). ``plain``: the same Keras Applications
    backbone with average pooling, ``image_dataset_from_directory`` + ``model.predict`` + ``np.save``.
    """
    import keras
    import tensorflow as tf

    from mame_transfer.datasets.layouts import load_dataset
    from mame_transfer.datasets.tables import Dataset
    from mame_transfer.models import backbones
    from mame_transfer.store.export import export

    spec = backbones.get(arch)
    dataset = load_dataset(root, require=("train",), check_files=False)
    sub = Dataset(dataset.table[dataset.table["subset"] == "train"].iloc[:n].reset_index(drop=True),
                  dataset.classes, root=dataset.root, image_root=dataset.image_root, source=dataset.source)
    t0 = time.perf_counter()
    if way == "package":
        export(Path(out) / "store", sub, arch=arch, weights=None, image_size=224, batch_size=32, verbose=0,
               splits=["train"])
    else:
        model = spec.build(weights=None, input_shape=(224, 224, 3))
        model = keras.Model(model.inputs, keras.layers.GlobalAveragePooling2D()(model.outputs[0]))
        ds = keras.utils.image_dataset_from_directory(Path(root) / "folders_train", image_size=(224, 224),
                                                      batch_size=32, shuffle=False, label_mode=None, verbose=False)
        ds = ds.map(spec.preprocess, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
        np.save(Path(out) / "plain.npy", model.predict(ds, verbose=0))
    seconds = time.perf_counter() - t0
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(json.dumps({"way": way, "n": n, "seconds": seconds, "rss_mib": hwm / 1024}))


def bench_export(root: Path, n: int, rounds: int, arch: str) -> dict:
    """The package's export against the plain Keras way, side by side: fresh processes, alternated, same images."""
    image_folder_train(root, n)
    times = {"package": [], "plain": []}
    rss = {"package": [], "plain": []}
    for r in range(rounds + 1):  # round 0 warms the file cache and is discarded
        for way in (("package", "plain") if r % 2 == 0 else ("plain", "package")):
            out = Path(tempfile.mkdtemp(prefix="bench_export_"))
            try:
                done = subprocess.run([sys.executable, __file__, "--export-child", way, "--root", str(root),
                                       "--export-n", str(n), "--export-arch", arch, "--out-dir", str(out)],
                                      capture_output=True, text=True, check=True)
            finally:
                shutil.rmtree(out, ignore_errors=True)
            res = json.loads(done.stdout.strip().splitlines()[-1])
            if r:
                times[way].append(res["seconds"])
                rss[way].append(res["rss_mib"])
            print(json.dumps(dict(res, round=r)), flush=True)
    ratios = [p / q for p, q in zip(times["plain"], times["package"])]  # > 1: the package is faster
    res = dict(arch=arch, n=n, rounds=rounds, times=times, rss=rss, ratios=ratios,
               package_img_s=n / med(times["package"]), plain_img_s=n / med(times["plain"]))
    print(json.dumps(res), flush=True)
    return res


def rss_child(root: str, n: int, arch: str) -> None:
    """Run one export of the first n train images in this (fresh) process and print the peak RSS."""
    from mame_transfer.datasets.layouts import load_dataset
    from mame_transfer.datasets.tables import Dataset
    from mame_transfer.store.export import export

    dataset = load_dataset(root, require=("train",))
    sub = Dataset(dataset.table[dataset.table["subset"] == "train"].iloc[:n].reset_index(drop=True),
                  dataset.classes, root=dataset.root, image_root=dataset.image_root, source=dataset.source)
    out = Path(tempfile.mkdtemp(prefix="bench_rss_")) / "store"
    export(out, sub, arch=arch, weights=None, image_size=224, batch_size=32, verbose=0)
    shutil.rmtree(out.parent, ignore_errors=True)
    # VmHWM is the peak RSS of this process image; ru_maxrss is not usable here: Linux carries the parent's
    # peak over fork + exec, so every child would report at least the benchmark process's own RSS.
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(json.dumps({"n": n, "maxrss_mib": hwm / 1024,
                      "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def bench_rss(root: Path, n: int, rounds: int, arch: str) -> dict:
    peaks = {n: [], 4 * n: []}
    for r in range(rounds):
        for k in ((n, 4 * n) if r % 2 == 0 else (4 * n, n)):
            out = subprocess.run([sys.executable, __file__, "--rss-child", str(k), "--root", str(root),
                                  "--export-arch", arch], capture_output=True, text=True, check=True)
            peaks[k].append(json.loads(out.stdout.strip().splitlines()[-1])["maxrss_mib"])
    res = dict(arch=arch, n=n, rss_n_mib=med(peaks[n]), rss_4n_mib=med(peaks[4 * n]),
               ratio=med(peaks[4 * n]) / med(peaks[n]), all={str(k): v for k, v in peaks.items()})
    print(json.dumps(res), flush=True)
    return res


# --------------------------------------------------------------------------------------------- prepare


def bench_prepare(n: int, rounds: int, workers: int, tfdata_n: int) -> dict:

    from mame_transfer.datasets.layouts import load_dataset
    from mame_transfer.datasets.pipeline import make_pipeline
    from mame_transfer.datasets.prepare import prepare

    tmp = Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    src = tmp / "src"
    t0 = time.perf_counter()
    make_mame(src, n, sizes=(2000, 3000), workers=workers)
    gen = time.perf_counter() - t0
    sizes = [p.stat().st_size for p in (src / "data_256").rglob("*.jpg")]
    print(f"generated {n + len(CLASSES)} JPEGs of 2000-3000 px (grain {common.GRAIN}, median file "
          f"{np.median(sizes) / 2**20:.2f} MiB) in {gen:.0f} s (not measured)", flush=True)
    times = {"draft": [], "full": []}
    for r in range(rounds):
        for key in (("draft", "full") if r % 2 == 0 else ("full", "draft")):
            out = tmp / f"out_{key}"
            shutil.rmtree(out, ignore_errors=True)
            res = prepare(src, out, 256, draft=key == "draft", workers=workers, progress=False)
            times[key].append(res["seconds"])
            shutil.rmtree(out, ignore_errors=True)
    count = n + len(CLASSES)
    # tf.data decode + resize to 224 of the large JPEGs, with and without DCT-domain ratio decoding.
    table = load_dataset(src, require=("train",)).split("train").iloc[:tfdata_n].reset_index(drop=True)
    tf_times = {"ratio": [], "plain": []}
    for key in ("ratio", "plain"):  # untimed warm-up: the first pipeline pays TensorFlow's one-time costs
        for _ in make_pipeline(table.iloc[:8], image_size=224, preprocess=None, batch_size=32, shuffle=False,
                               with_labels=False, dct_ratio=key == "ratio"):
            pass
    for r in range(rounds):
        for key in (("ratio", "plain") if r % 2 == 0 else ("plain", "ratio")):
            pipe = make_pipeline(table, image_size=224, preprocess=None, batch_size=32, shuffle=False,
                                 with_labels=False, dct_ratio=key == "ratio")
            t0 = time.perf_counter()
            for _ in pipe:
                pass
            tf_times[key].append(time.perf_counter() - t0)
    shutil.rmtree(tmp, ignore_errors=True)
    res = dict(images=count, workers=workers, rounds=rounds, draft_img_s=count / med(times["draft"]),
               full_img_s=count / med(times["full"]), speedup=med(times["full"]) / med(times["draft"]),
               tfdata_images=len(table), tfdata_ratio_img_s=len(table) / med(tf_times["ratio"]),
               tfdata_plain_img_s=len(table) / med(tf_times["plain"]),
               tfdata_speedup=med(tf_times["plain"]) / med(tf_times["ratio"]), generation_s=gen, grain=common.GRAIN,
               median_file_mib=float(np.median(sizes) / 2**20),
               times=times, tf_times=tf_times)
    print(json.dumps(res), flush=True)
    return res


# --------------------------------------------------------------------------------------------- report


def report(res: dict, argv: list[str]) -> str:
    m = res["machine"]
    lines = [f"Command: `{' '.join(['.venv/bin/python', 'benchmarks/bench_speed.py'] + argv)}`  ",
             f"Machine: {m['nproc']} cores ({m['cpu']}), GPUs: {m['gpus']}; Python {m['python']}, TensorFlow "
             f"{m['tensorflow']}, Keras {m['keras']}, Pillow {m['pillow']}, NumPy {m['numpy']}. Shared with other "
             f"jobs: absolute times are noisy, the ratios come from variants alternated within one run "
             f"(median of rounds).", ""]
    if "train" in res:
        lines += ["### Fine-tuning epoch time: prefix cache vs plain Keras (224 px, weights=None)", "",
                  "| arch | freeze until | cut (cached tensor) | N | plain epoch s | cached epoch s | speed-up | "
                  "cache fill s (x plain epoch) | break-even epochs |", "|---|---|---|---|---|---|---|---|---|"]
        for r in res["train"]:
            be = f"{r['break_even_epochs']:.2f}" if r["break_even_epochs"] is not None else "never"
            lines.append(f"| {r['arch']} | {r['freeze']} | {r['cut']} {tuple(r['feature_shape'])} | {r['n']} | "
                         f"{r['plain_epoch_s']:.2f} | {r['cached_epoch_s']:.3f} | **{r['speedup']:.1f}x** | "
                         f"{r['fill_s']:.2f} ({r['fill_over_plain_epoch']:.2f}) | {be} |")
        lines.append("")
    if "export" in res:
        e = res["export"]
        r = e["ratios"]
        lines += [f"### Feature export: the package against the plain Keras way, {e['arch']} @224, {e['n']} JPEGs "
                  f"(256 px), {e['rounds']} rounds", "",
                  "Each export runs in a fresh process (model build included, imports excluded), the two ways "
                  "alternated round by round after one discarded warm-up round.", "",
                  "| way | img/s (median) | seconds per round | peak RSS MiB (max) |", "|---|---|---|---|",
                  f"| `features.export` (the package) | {e['package_img_s']:.1f} | "
                  f"{', '.join(f'{t:.1f}' for t in e['times']['package'])} | {max(e['rss']['package']):.0f} |",
                  f"| `image_dataset_from_directory` + `model.predict` + `np.save` | {e['plain_img_s']:.1f} | "
                  f"{', '.join(f'{t:.1f}' for t in e['times']['plain'])} | {max(e['rss']['plain']):.0f} |", "",
                  f"Speed of the package / plain way per round: {', '.join(f'{x:.3f}' for x in r)} (median "
                  f"**{med(r):.3f}**, worst **{min(r):.3f}**); peak RSS package / plain: "
                  f"{max(e['rss']['package']) / max(e['rss']['plain']):.3f}.", ""]
    if "rss" in res:
        r = res["rss"]
        lines += [f"### Peak RSS of `features.export` ({r['arch']}, fresh process each)", "",
                  "| N | peak RSS MiB |", "|---|---|", f"| {r['n']} | {r['rss_n_mib']:.0f} |",
                  f"| {4 * r['n']} | {r['rss_4n_mib']:.0f} |", "",
                  f"Ratio 4N / N: **{r['ratio']:.3f}**", ""]
    if "prepare" in res:
        p = res["prepare"]
        lines += [f"### prepare: {p['images']} JPEGs of 2000-3000 px (grain {p['grain']}, median file "
                  f"{p['median_file_mib']:.2f} MiB) -> 256 px, {p['workers']} workers", "",
                  "| decode | img/s |", "|---|---|",
                  f"| full-resolution decode (`--no-draft`) | {p['full_img_s']:.1f} |",
                  f"| DCT-domain downscaling (`Image.draft`) | {p['draft_img_s']:.1f} |", "",
                  f"Speed-up: **{p['speedup']:.2f}x**", "",
                  f"tf.data decode + resize to 224 of {p['tfdata_images']} of these JPEGs: plain "
                  f"{p['tfdata_plain_img_s']:.1f} img/s, `dct_ratio=True` {p['tfdata_ratio_img_s']:.1f} img/s "
                  f"(**{p['tfdata_speedup']:.2f}x**).", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sections", default="train,export,rss,prepare")
    ap.add_argument("--n", type=int, default=64, help="train images for the epoch-time comparison")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--export-n", type=int, default=256)
    ap.add_argument("--export-arch", default="efficientnetb0")
    ap.add_argument("--rss-n", type=int, default=64)
    ap.add_argument("--prepare-n", type=int, default=2000)
    ap.add_argument("--tfdata-n", type=int, default=128)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--grain", type=int, default=common.GRAIN, help="grain amplitude of the generated JPEGs")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "RESULTS.md"))
    ap.add_argument("--json", default=None, help="also write the raw results here")
    ap.add_argument("--rss-child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--export-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out-dir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--root", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    common.set_grain(args.grain)
    if args.rss_child is not None:
        rss_child(args.root, args.rss_child, args.export_arch)
        return 0
    if args.export_child is not None:
        export_child(args.root, args.export_n, args.export_arch, args.export_child, args.out_dir)
        return 0
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    res = {"machine": machine()}
    print(json.dumps(res["machine"]), flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench_speed_"))
    try:
        if {"train", "export", "rss"} & set(sections):
            n_images = max(args.n, args.export_n, 4 * args.rss_n)
            root = make_mame(work / "mame", n_images, workers=args.workers)
        if "train" in sections:
            sub = work / "mame_train"
            _subset(root, sub, args.n)
            cases = [("vgg16", "block4"), ("vgg16", "block5"), ("efficientnetb0", "block6")]
            res["train"] = bench_train(sub, args.n, args.batch, args.rounds, cases)
        if "export" in sections:
            sub = work / "mame_export"
            _subset(root, sub, args.export_n)
            res["export"] = bench_export(sub, args.export_n, args.rounds, args.export_arch)
        if "rss" in sections:
            res["rss"] = bench_rss(root, args.rss_n, max(2, args.rounds - 1), args.export_arch)
        if "prepare" in sections:
            res["prepare"] = bench_prepare(args.prepare_n, max(2, args.rounds - 1), args.workers, args.tfdata_n)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = report(res, argv)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))
    return 0


def _subset(root: Path, out: Path, n: int) -> None:
    """A MAMe layout holding the first n train images of root (shared image folder)."""
    import pandas as pd

    table = pd.read_csv(root / "MAMe_metadata" / "MAMe_dataset.csv")
    train = table[table["Subset"] == "train"].iloc[:n]
    (out / "MAMe_metadata").mkdir(parents=True, exist_ok=True)
    pd.concat([train, table[table["Subset"] == "val"]]).to_csv(out / "MAMe_metadata" / "MAMe_dataset.csv", index=False)
    if not (out / "data_256").exists():
        os.symlink(root / "data_256", out / "data_256")


if __name__ == "__main__":
    sys.exit(main())
