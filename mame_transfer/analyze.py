"""Analyses, one command each: ``python -m mame_transfer.analyze {project,gradcam,cka,maxact,featvis}``.

Examples::

    python -m mame_transfer.analyze project features/vgg16-ft --method umap --dims 3 --per-class 100
    python -m mame_transfer.analyze gradcam saved_models/<run> --images a.jpg b.jpg --split test --n 16
    python -m mame_transfer.analyze cka --a imagenet:vgg16 --b saved_models/<run> --data DATA
    python -m mame_transfer.analyze maxact --a imagenet:vgg16 --b saved_models/<run> --layers block4_conv3 --top 100
    python -m mame_transfer.analyze featvis --a imagenet:vgg16 --b saved_models/<run> --layer block4_conv3

A model is ``imagenet:ARCH[:ALPHA]`` (registry backbone, ImageNet weights), ``random:ARCH[:ALPHA]`` (random
init) or a run directory. Outputs go to ``--out`` (default: ``<run>/analysis/<command>/`` when a run is
involved, the store's ``projections/`` folder for ``project``); ``python -m mame_transfer.report`` links them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from mame_transfer.core.errors import ConfigError, MameTransferError
from mame_transfer.core.fileio import write_json, write_text


def _out_dir(args, *sources) -> Path:
    if args.out:
        return Path(args.out)
    for s in sources:
        if s is not None and s.run_dir is not None:
            return s.run_dir / "analysis" / args.command
    return Path("analysis") / args.command


def _pair(args):
    """Load ``--a`` and ``--b``; a bare backbone is fed at the run's image size."""
    from mame_transfer.analysis.sources import load_source

    size = args.image_size
    first = [s for s in (args.a, args.b) if s and Path(s).expanduser().is_dir()]
    a = b = None
    if first and not size:
        run = load_source(first[0])
        size = run.image_size
        a = run if first[0] == args.a else None
        b = run if first[0] == args.b else None
    a = a or load_source(args.a, image_size=size, seed=args.seed)
    b = b or (load_source(args.b, image_size=size, seed=args.seed + 1) if args.b else None)
    if b is not None and a.image_size != b.image_size:
        raise ConfigError(f"--a is fed at {a.image_size} px and --b at {b.image_size} px; pass --image-size")
    return a, b


def _table(args, a, b):
    from mame_transfer.analysis.sources import load_table, stratified_sample

    run = next((s for s in (b, a) if s is not None and s.config is not None), None)
    table, classes = load_table(data=args.data, source=run, split=args.split, toy=args.toy)
    rows = stratified_sample(table["label"].to_numpy(), args.per_class, seed=args.seed)
    return table.iloc[rows].reset_index(drop=True), classes


def _common_layers(args, a, b) -> list[str]:
    from mame_transfer.analysis.sources import spatial_layers

    layers = spatial_layers(a.model, args.layers, pattern=args.layer_pattern)
    if b is not None:
        names_b = {layer.name for layer in b.model.layers}
        missing = [n for n in layers if n not in names_b]
        if args.layers and missing:
            raise ConfigError(f"{b.label} has no layer(s) {missing}")
        layers = [n for n in layers if n in names_b]
    if not layers:
        raise ConfigError(f"no common spatial layer between {a.label} and {b.label if b else '-'}")
    return layers


# --------------------------------------------------------------------------------------------- project


def cmd_project(args) -> int:
    from mame_transfer.analysis import projections as pj
    from mame_transfer.core import plots
    from mame_transfer.store.store import load_store

    store = load_store(args.store)
    split = args.split or ("train" if "train" in store.splits else store.splits[0])
    apply = [s for s in (args.apply_split or []) if s != split]
    emb = {s: store.embeddings(s) for s in [split, *apply]}
    meta = {s: store.metadata(s) for s in [split, *apply]}
    res = pj.project(emb, meta, method=args.method, dims=args.dims, fit_split=split, apply_splits=apply,
                     per_class=args.per_class, seed=args.seed, standardize=args.standardize)
    out = Path(args.out) if args.out else Path(args.store) / "projections"
    stem = f"{args.method}_{args.dims}d_{split}" + "".join(f"+{s}" for s in apply)
    coords = np.concatenate([res.coords[s] for s in res.coords])
    labels = np.concatenate([res.meta[s]["label"].to_numpy() for s in res.meta])
    names = np.concatenate([res.meta[s]["image"].astype(str).to_numpy() for s in res.meta])
    split_of = np.concatenate([[s] * len(res.meta[s]) for s in res.meta]) if apply else None
    title = (f"{args.method.upper()} of {Path(args.store).name} ({store.manifest.get('layer', 'embeddings')}), "
             f"fitted on {split}, {args.per_class or 'all'} per class")
    written = []
    if args.dims == 2:
        fig = pj.scatter_figure(coords, labels, store.classes, title=title, marker_of=split_of)
        written.append(plots.save(fig, out / f"{stem}.png"))
    else:
        page = pj.scatter3d_html(coords, labels, names, store.classes, title=title, split_of=split_of)
        written.append(write_text(out / f"{stem}.html", page))
    summary = {"store": str(args.store), "method": args.method, "dims": args.dims, "fit_split": split,
               "apply_splits": apply, "per_class": args.per_class,
               "points": {s: int(len(res.meta[s])) for s in res.meta}}
    if res.explained_variance_ratio is not None:
        summary["explained_variance_ratio"] = res.explained_variance_ratio
        summary["explained_variance_total"] = float(sum(res.explained_variance_ratio))
        written.append(plots.save(pj.explained_variance_figure(res.explained_variance_ratio),
                                  out / f"{stem}_variance.png"))
        print("PCA explained variance ratio: " + ", ".join(f"{v:.4f}" for v in res.explained_variance_ratio)
              + f" (total {summary['explained_variance_total']:.4f})")
    write_json(out / f"{stem}.json", summary)
    for p in written:
        print(p)
    return 0


# --------------------------------------------------------------------------------------------- gradcam


def cmd_gradcam(args) -> int:
    import pandas as pd

    from mame_transfer.analysis import gradcam as gc
    from mame_transfer.analysis.sources import load_images, load_source, load_table
    from mame_transfer.core import plots

    src = load_source(args.run)
    if src.classes is None:
        raise ConfigError(f"gradcam needs a run directory (a classifier). Received: {args.run}")
    rows = []
    for p in args.images or []:
        rows.append({"path": str(p), "image": Path(p).name, "label": None})
    if args.split:
        table, classes = load_table(data=args.data, source=src, split=args.split, toy=args.toy)
        if list(classes) != list(src.classes):
            from mame_transfer.inference.metrics import align_to_classes

            table = align_to_classes(table, src.classes, str(args.data))
        n = min(args.n, len(table))
        pick = np.random.default_rng(args.seed).choice(len(table), n, replace=False) if n else []
        for i in sorted(pick):
            rows.append({"path": table["path"].iloc[i], "image": table["image"].iloc[i],
                         "label": table["label"].iloc[i]})
    if not rows:
        raise ConfigError("no images: pass --images FILE ... and/or --split SPLIT --n N")
    frame = pd.DataFrame(rows)
    images = load_images(frame["path"].tolist(), src.image_size)
    index = {c: i for i, c in enumerate(src.classes)}
    if args.target == "true":
        if frame["label"].isna().any():
            raise ConfigError("--target true needs images with known classes (from --split), not --images")
        targets = [index[c] for c in frame["label"]]
    else:
        targets = "predicted"
    layer = args.layer
    cams, proba = [], []
    for start in range(0, len(images), args.batch_size):
        t = targets if isinstance(targets, str) else targets[start:start + args.batch_size]
        c, p = gc.gradcam(src.model, images[start:start + args.batch_size], layer=layer, targets=t,
                          preprocess=src.preprocess)
        cams.append(c)
        proba.append(p)
    cams, proba = np.concatenate(cams), np.concatenate(proba)
    from mame_transfer.analysis.sources import last_spatial_layer

    layer = layer or last_spatial_layer(src.model)
    pred = proba.argmax(1)
    overlays, titles = [], []
    for k in range(len(frame)):
        tgt = src.classes[targets[k]] if not isinstance(targets, str) else None
        overlays.append(gc.overlay(images[k], cams[k]))
        titles.append(f"{frame['image'].iloc[k][-28:]}\n" + gc.caption(frame["label"].iloc[k], src.classes[pred[k]],
                                                                       float(proba[k, pred[k]]), tgt))
    out = _out_dir(args, src)
    fig = gc.gradcam_grid_figure(overlays, titles, cols=args.cols,
                                 title=f"Grad-CAM of {src.label} at {layer} (target: {args.target} class)")
    path = plots.save(fig, out / f"gradcam_{args.split or 'images'}_{layer}.png")
    frame["predicted"] = [src.classes[i] for i in pred]
    frame["probability"] = proba[np.arange(len(pred)), pred]
    write_text(out / f"gradcam_{args.split or 'images'}_{layer}.csv", frame.to_csv(index=False))
    print(path)
    return 0


# --------------------------------------------------------------------------------------------- cka


def cmd_cka(args) -> int:
    import pandas as pd

    from mame_transfer.analysis import cka
    from mame_transfer.analysis.sources import image_batches
    from mame_transfer.core import plots

    a, b = _pair(args)
    table, _ = _table(args, a, b)
    out = _out_dir(args, b, a)
    if args.matrix:
        from mame_transfer.analysis.sources import spatial_layers

        la = spatial_layers(a.model, args.layers, pattern=args.layer_pattern)
        lb = spatial_layers(b.model, args.layers, pattern=args.layer_pattern)
    else:
        la = lb = _common_layers(args, a, b)
    acc = cka.compare_models(a, b, la, lb, image_batches(table, a.image_size, batch_size=args.batch_size),
                             pairs="all" if args.matrix else "matching")
    result = {"a": a.label, "b": b.label, "split": args.split, "images": int(len(table)),
              "batch_size": args.batch_size, "batches": acc.batches_, "estimator": "minibatch unbiased HSIC "
              "(Nguyen et al. 2021) on per-channel spatial means"}
    title = f"{a.label} vs {b.label}"
    if args.matrix:
        m = acc.matrix()
        result.update({"layers_a": la, "layers_b": lb, "matrix": m.tolist()})
        plots.save(cka.cka_heatmap_figure(m, la, lb, label_a=a.label, label_b=b.label, title=f"Linear CKA: {title}"),
                   out / "cka_matrix.png")
        common = [n for n in la if n in lb]
        values = [float(m[la.index(n), lb.index(n)]) for n in common]
    else:
        common, values = la, [float(v) for v in acc.matching()]
    result["matching"] = dict(zip(common, values))
    if common:
        plots.save(cka.cka_curve_figure(common, values, label=title, title="Linear CKA of matching layers"),
                   out / "cka_curve.png")
        write_text(out / "cka.csv", pd.DataFrame({"layer": common, "cka": values}).to_csv(index=False))
    rows = cka.kernel_distances(a.model, b.model)
    result["kernel_distance"] = {"overall_mean_l2": cka.overall_distance(rows), "layers": rows}
    if rows:
        write_text(out / "kernel_distance.csv", pd.DataFrame(rows).to_csv(index=False))
        plots.save(cka.kernel_distance_figure(rows, title=f"Mean l2 distance of conv filters: {title}"),
                   out / "kernel_distance.png")
    write_json(out / "cka.json", result)
    for n, v in zip(common, values):
        print(f"{n:<28} CKA {v:.4f}")
    print(f"overall mean l2 distance of conv filters: {result['kernel_distance']['overall_mean_l2']:.5f}")
    print(out)
    return 0


# --------------------------------------------------------------------------------------------- maxact


def cmd_maxact(args) -> int:
    import pandas as pd

    from mame_transfer.analysis import maxact as mx
    from mame_transfer.analysis.sources import image_batches, thumbnail
    from mame_transfer.core import plots

    a, b = _pair(args)
    table, classes = _table(args, a, b)
    if len(table) < args.top:
        raise ConfigError(f"--top {args.top} needs at least that many images; the {args.split} split "
                          f"(after --per-class) has {len(table)}")
    layers = _common_layers(args, a, b)
    out = _out_dir(args, b, a)
    tops = {}
    for src in (a, b) if b is not None else (a,):
        tops[src.label] = mx.collect_topk(src, layers, image_batches(table, a.image_size, batch_size=args.batch_size),
                                          args.top, reduce=args.reduce)
    labels = table["label_index"].to_numpy()
    summary = {"a": a.label, "b": b.label if b else None, "split": args.split, "images": int(len(table)),
               "top": args.top, "reduce": args.reduce, "layers": {}}
    entropy = {name: [] for name in tops}
    overlap = []
    for layer in layers:
        info = {}
        for name, t in tops.items():
            e = mx.class_entropy(t[layer].indices_, labels, len(classes))
            entropy[name].append(e)
            info[f"entropy_{name}"] = {"mean": float(e.mean()), "median": float(np.median(e))}
        if b is not None:
            o = mx.overlap_ratio(tops[a.label][layer].indices_, tops[b.label][layer].indices_)
            overlap.append(o)
            info["overlap"] = {"mean": float(o.mean()), "median": float(np.median(o))}
        info["channels"] = int(tops[a.label][layer].channels)
        summary["layers"][layer] = info
        # Grids: the first --show images of a few channels, A row above B row.
        chans = args.channels or list(range(min(args.grid_channels, tops[a.label][layer].channels)))
        thumbs, row_labels, captions = [], [], []
        for c in chans:
            for name, t in tops.items():
                idx = t[layer].indices_[: args.show, c]
                thumbs.append([thumbnail(table["path"].iloc[i], 96) for i in idx if i >= 0])
                captions.append([str(table["label"].iloc[i])[:14] for i in idx if i >= 0])
                row_labels.append(f"ch {c}\n{name[:22]}")
        plots.save(mx.topk_grid_figure(thumbs, row_labels, captions=captions,
                                       title=f"{layer}: top-{args.show} of top-{args.top} images per channel"),
                   out / f"maxact_{layer}.png")
    if len(layers) > 0:
        plots.save(mx.depth_boxplot_figure({k: v for k, v in entropy.items()}, layers,
                                           ylabel="class entropy / log(classes)",
                                           title=f"Class entropy of the top-{args.top} images per channel"),
                   out / "maxact_entropy.png")
        if overlap:
            plots.save(mx.depth_boxplot_figure({"overlap": overlap}, layers, ylabel="overlap ratio",
                                               title=f"Overlap of the top-{args.top} images, {a.label} vs {b.label}"),
                       out / "maxact_overlap.png")
    rows = [{"layer": layer, **{f"{k}_{kk}": vv for k, v in info.items() if isinstance(v, dict)
                                for kk, vv in v.items()}, "channels": info["channels"]}
            for layer, info in summary["layers"].items()]
    write_text(out / "maxact.csv", pd.DataFrame(rows).to_csv(index=False))
    write_json(out / "maxact.json", summary)
    for r in rows:
        print(", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
    print(out)
    return 0


# --------------------------------------------------------------------------------------------- featvis


def cmd_featvis(args) -> int:
    from mame_transfer.analysis import featvis as fv
    from mame_transfer.core import plots

    a, b = _pair(args)
    layer = args.layer or _common_layers(args, a, b)[-1]
    out = _out_dir(args, b, a)
    images, rows, result = [], [], {"layer": layer, "steps": args.steps, "channels": args.channels, "models": {}}
    for src in (a, b) if b is not None else (a,):
        sub = fv.channel_objective_model(src.model, layer)
        row, info = [], []
        for c in args.channels:
            r = fv.visualize_channel(src.model, layer, c, size=src.image_size, steps=args.steps, lr=args.lr,
                                     jitter=args.jitter, preprocess=src.preprocess, seed=args.seed, submodel=sub)
            row.append(r["image"])
            info.append({"channel": c, "start": r["start"], "end": r["end"]})
            print(f"{src.label} {layer}[{c}]: mean activation {r['start']:.4f} -> {r['end']:.4f}")
        images.append(row)
        rows.append(src.label)
        result["models"][src.label] = info
    fig = fv.featvis_figure(images, rows, [f"{layer}[{c}]" for c in args.channels],
                            title=f"Activation maximisation ({args.steps} steps, Fourier + decorrelated colour)")
    path = plots.save(fig, out / f"featvis_{layer}.png")
    write_json(out / f"featvis_{layer}.json", result)
    print(path)
    return 0


# --------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mame_transfer.analyze", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("project", help="PCA / t-SNE / UMAP of a feature store (2-D PNG, 3-D HTML)")
    p.add_argument("store", help="feature store folder (python -m mame_transfer.features)")
    p.add_argument("--method", choices=("pca", "tsne", "umap"), default="umap")
    p.add_argument("--dims", type=int, choices=(2, 3), default=2)
    p.add_argument("--per-class", type=int, default=100, help="stratified sample size per class (0 = all)")
    p.add_argument("--split", help="split to fit on (default train, else the first)")
    p.add_argument("--apply-split", nargs="*", help="splits to transform with the fitted projection (not t-SNE)")
    p.add_argument("--standardize", action="store_true", help="z-score features before projecting")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output folder (default <store>/projections)")

    def data_args(q, split="train"):
        q.add_argument("--data", help="dataset folder (default: the run's own dataset)")
        q.add_argument("--toy", action="store_true", help="MAMe layout: the toy CSV")
        q.add_argument("--split", default=split, help=f"split of the dataset (default {split})")
        q.add_argument("--per-class", type=int, default=0, help="stratified sample per class (0 = all images)")
        q.add_argument("--batch-size", type=int, default=32)
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--out", help="output folder (default <run>/analysis/<command>)")

    def pair_args(q):
        q.add_argument("--a", required=True, help="imagenet:ARCH[:ALPHA], random:ARCH[:ALPHA] or a run directory")
        q.add_argument("--b", help="second model, same forms (usually the fine-tuned run)")
        q.add_argument("--image-size", type=int, help="input side of bare backbones (default: the run's)")
        q.add_argument("--layers", nargs="*", help="layer names (default: every non-linearity output)")
        q.add_argument("--layer-pattern", help="regular expression selecting layers instead")

    p = sub.add_parser("gradcam", help="Grad-CAM grids of a run")
    p.add_argument("run", help="run directory")
    p.add_argument("--images", nargs="*", help="image files")
    p.add_argument("--n", type=int, default=16, help="images sampled from --split")
    p.add_argument("--layer", help="conv layer (default: the last spatial one)")
    p.add_argument("--target", choices=("predicted", "true"), default="predicted")
    p.add_argument("--cols", type=int, default=4)
    data_args(p, split=None)
    p.set_defaults(batch_size=16)

    p = sub.add_parser("cka", help="linear CKA per layer and conv kernel distances between two models")
    pair_args(p)
    data_args(p)
    p.add_argument("--matrix", action="store_true", help="every layer of A x every layer of B")

    p = sub.add_parser("maxact", help="top-k images per channel, overlap and class entropy")
    pair_args(p)
    data_args(p)
    p.add_argument("--top", type=int, default=100)
    p.add_argument("--reduce", choices=("mean", "max"), default="mean", help="spatial reduction of a channel")
    p.add_argument("--channels", type=int, nargs="*", help="channels shown in the grids (default the first ones)")
    p.add_argument("--grid-channels", type=int, default=4)
    p.add_argument("--show", type=int, default=8, help="images per channel in the grids")

    p = sub.add_parser("featvis", help="activation maximisation of channels, before / after fine-tuning")
    pair_args(p)
    p.add_argument("--layer", help="layer (default: the deepest common one)")
    p.add_argument("--channels", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--steps", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--jitter", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out")
    return parser


COMMANDS = {"project": cmd_project, "gradcam": cmd_gradcam, "cka": cmd_cka, "maxact": cmd_maxact,
            "featvis": cmd_featvis}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "featvis":
        args.layers, args.layer_pattern = ([args.layer] if args.layer else args.layers), args.layer_pattern
    try:
        return COMMANDS[args.command](args)
    except MameTransferError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
