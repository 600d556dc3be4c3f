"""Feature store: embeddings + metadata per split, with a manifest; ``python -m mame_transfer.features``.

Layout of a store (read by ``classify``, ``analysis`` and ``explore``)::

    <store>/manifest.json              format, arch, alpha, weights, run, layer, image_size, preprocessing, ...
    <store>/<split>/embeddings.npy     float32 [n, dim]
    <store>/<split>/metadata.csv       image, path, label, label_index, subset, museum, width, height,
                                       product_size, aspect_ratio (row i <-> embeddings row i)
    <store>/<split>/imagenet_probs.npy float32 [n, 1000] (optional feature set)

Examples::

    python -m mame_transfer.features --arch mobilenet --alpha 0.75 --weights imagenet --data DATA --out STORE
    python -m mame_transfer.features saved_models/<run> --layer head_dense_1 --data DATA --out STORE
    python -m mame_transfer.features projector STORE --split val --out DIR
    python -m mame_transfer.features --arch mobilenet --data DATA --out STORE --shard 2/4   # share 2 of 4 processes

Export streams batch by batch into preallocated ``.npy`` memory maps inside ``<out>.partial/``; a progress file
is rewritten after every flushed batch, so rerunning an interrupted command resumes at the first missing row.
The finished store is renamed to ``<out>`` only when complete. Augmentation is always off. With ``--shard I/N``,
N processes (on machines sharing the folder, or on one host) each export a contiguous block of every split; the last
one to finish assembles the store, identical in rows and order to an unsharded export (``store.shards``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from mame_transfer.core import cli
from mame_transfer.core.errors import ConfigError
from mame_transfer.core.fileio import PARTIAL
from mame_transfer.store.projector import SPRITE_MAX, SPRITE_THUMB
from mame_transfer.store.shards import describe_missing, parse_shard
from mame_transfer.store.store import EMBEDDINGS

RESUME_HINT = "rerun the same command to resume the export"


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("features", "Export embeddings + metadata of a dataset to a feature store "
                               "(or: 'projector STORE --split val --out DIR').",
                   usage="%(prog)s [RUN | --arch ARCH] (--data DIR | --demo) --out STORE [options]")
    p.add_argument("run", nargs="?", metavar="RUN",
                   help="finished run directory (saved_models/<run>) whose features to export; or --arch")
    src = p.add_argument_group("model")
    src.add_argument("--arch", help="registry backbone instead of a run (e.g. mobilenet, vgg16)")
    src.add_argument("--alpha", type=cli.finite_float, default=1.0, help="MobileNet width multiplier")
    src.add_argument("--weights", default="imagenet", help="imagenet | none | weights file")
    src.add_argument("--image-size", type=cli.positive_int, help="square input side (default: the backbone's)")
    cli.hidden_alias(src, "--model", dest="model", alias_of="run")  # the run, before it became the positional RUN
    src.add_argument("--layer", help="layer to export (default: last spatial layer / the run's embedding layer)")
    src.add_argument("--imagenet-probs", action="store_true", help="also store the 1000 ImageNet probabilities")
    src.add_argument("--jitter", action="store_true",
                     help="average features over flips and corner/centre crops (Razavian et al. 2014)")
    d = p.add_argument_group("data")
    d.add_argument("--data", help="MAMe folder or class-per-folder set")
    d.add_argument("--demo", action="store_true", help="the built-in demo set")
    d.add_argument("--toy", action="store_true", help="MAMe layout: the toy CSV")
    d.add_argument("--images", help="MAMe layout: image folder")
    d.add_argument("--splits", action=cli.ListAction, metavar="SPLIT", help="subsets to export (default: all present)")
    p.add_argument("--batch-size", type=cli.positive_int, default=32, help="images per batch")
    p.add_argument("--seed", type=int, default=0, help="seed of random weights (--weights none)")
    p.add_argument("--out", required=True, help="store folder")
    p.add_argument("--shard", metavar="I/N", help="export share I of N (1 <= I <= N) into --out; run all N (any "
                   "machines sharing the folder): the last to finish assembles the store")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
    cli.add_jobs(p)
    cli.add_verbose(p)
    return p


def build_projector_parser() -> argparse.ArgumentParser:
    p = cli.parser("features projector", "TensorBoard Embedding Projector files of one split: vectors, metadata "
                                         "and a sprite of thumbnails")
    p.add_argument("store", help="feature store folder")
    p.add_argument("--split", default="val", help="split to export")
    p.add_argument("--feature-set", default=EMBEDDINGS, help="store array to export (e.g. imagenet_probs)")
    p.add_argument("--limit", type=cli.positive_int, help="first N rows only")
    p.add_argument("--thumb-size", type=cli.positive_int, default=SPRITE_THUMB,
                   help="side of each sprite thumbnail in pixels (smaller when the sprite would exceed "
                        f"{SPRITE_MAX} px)")
    p.add_argument("--no-sprite", action="store_true", help="no sprite image (no thumbnails in the Projector)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace earlier projector files at --out")
    cli.add_verbose(p)
    return p


def _export(a) -> None:
    from mame_transfer.datasets import demo
    from mame_transfer.datasets.layouts import load_dataset
    from mame_transfer.store.export import export

    if not a.data and not a.demo:
        raise ConfigError("no dataset given: pass --data PATH or --demo")
    model = getattr(a, "model", None)
    if a.run and model and a.run != model:
        raise ConfigError(f"two runs given: {a.run} and --model {model}; pass one")
    run = a.run or model
    shard = parse_shard(a.shard)
    splits = a.splits or None
    dataset = load_dataset(demo.ensure_demo() if a.demo else a.data, toy=a.toy, images=a.images,
                           require=tuple(splits or ()))
    store = export(a.out, dataset, arch=a.arch, alpha=a.alpha, weights=a.weights, image_size=a.image_size,
                   run=run, layer=a.layer, splits=splits, batch_size=a.batch_size,
                   imagenet_probs=a.imagenet_probs, overwrite=a.overwrite, verbose=a.verbose, jitter=a.jitter,
                   seed=a.seed, shard=shard)
    if store is None:
        out = Path(a.out)
        print(f"share {a.shard} of {out} is done; {describe_missing(out.with_name(out.name + PARTIAL))}")
        return
    dims = ", ".join(f"{s} {v['n']}x{v['dim']}" for s, v in store.manifest["splits"].items())
    print(f"{store.path}: {dims} ({', '.join(store.feature_sets)})")


def _projector(a) -> None:
    from mame_transfer.store.projector import export_projector

    print(export_projector(a.store, a.split, a.out, feature_set=a.feature_set, limit=a.limit,
                           sprite=not a.no_sprite, thumb_size=a.thumb_size, verbose=a.verbose,
                           overwrite=a.overwrite))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "projector":
        return cli.run(build_projector_parser(), _projector, argv[1:])
    if argv and argv[0] == "export":
        argv = argv[1:]
    return cli.run(build_parser(), _export, argv, on_interrupt=RESUME_HINT)


if __name__ == "__main__":
    sys.exit(main())
