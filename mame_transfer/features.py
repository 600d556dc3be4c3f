"""Feature store: embeddings + metadata per split, with a manifest; ``python -m mame_transfer.features``.

Layout of a store (read by ``classify``, ``analysis`` and ``explore``)::

    <store>/manifest.json              format, arch, alpha, weights, run, layer, image_size, preprocessing, ...
    <store>/<split>/embeddings.npy     float32 [n, dim]
    <store>/<split>/metadata.csv       image, path, label, label_index, subset, museum, width, height,
                                       product_size, aspect_ratio (row i <-> embeddings row i)
    <store>/<split>/imagenet_probs.npy float32 [n, 1000] (optional feature set)

Examples::

    python -m mame_transfer.features --arch mobilenet --alpha 0.75 --weights imagenet --data DATA --out STORE
    python -m mame_transfer.features --model saved_models/<run> --layer head_dense_1 --data DATA --out STORE
    python -m mame_transfer.features projector STORE --split val --out DIR

Export streams batch by batch into preallocated ``.npy`` memory maps inside ``<out>.partial/``; a progress file
is rewritten after every flushed batch, so rerunning an interrupted command resumes at the first missing row.
The finished store is renamed to ``<out>`` only when complete. Augmentation is always off.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .errors import ConfigError, DataError, MameTransferError
from .fileio import atomic_path, write_json, write_text

FORMAT = "mame_transfer.features/1"
MANIFEST = "manifest.json"
PROGRESS = "progress.json"
PARTIAL = ".partial"
EMBEDDINGS = "embeddings"
IMAGENET_PROBS = "imagenet_probs"
METADATA_COLUMNS = ["image", "path", "label", "label_index", "subset", "museum", "width", "height",
                    "product_size", "aspect_ratio"]
SPLITS = ("train", "val", "test")


# ------------------------------------------------------------------------------------------------- reading


@dataclass
class FeatureStore:
    """A feature store on disk, validated on load.

    Attributes:
        path: the store folder.
        manifest: the parsed ``manifest.json``.
    """

    path: Path
    manifest: dict
    _meta_cache: dict = field(default_factory=dict, repr=False)

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def splits(self) -> list[str]:
        """Splits present, in train/val/test order."""
        present = list(self.manifest["splits"])
        return [s for s in SPLITS if s in present] + [s for s in present if s not in SPLITS]

    @property
    def feature_sets(self) -> list[str]:
        return list(self.manifest.get("feature_sets", [EMBEDDINGS]))

    def _check_split(self, split: str) -> None:
        if split not in self.manifest["splits"]:
            raise DataError(f"{self.path / MANIFEST}: the store has no {split!r} split "
                            f"(present: {', '.join(self.splits) or 'none'}).")

    def file(self, split: str, feature_set: str = EMBEDDINGS) -> Path:
        """Path of one feature array."""
        self._check_split(split)
        if feature_set not in self.feature_sets:
            raise DataError(f"{self.path / MANIFEST}: no feature set {feature_set!r} "
                            f"(present: {', '.join(self.feature_sets)}). Export it (e.g. --imagenet-probs).")
        return self.path / split / f"{feature_set}.npy"

    def embeddings(self, split: str, feature_set: str = EMBEDDINGS) -> np.ndarray:
        """The ``[n, dim]`` float32 array of one split, memory-mapped (read-only)."""
        return np.load(self.file(split, feature_set), mmap_mode="r")

    def metadata(self, split: str) -> pd.DataFrame:
        """The metadata table of one split (row i describes embeddings row i)."""
        self._check_split(split)
        if split not in self._meta_cache:
            self._meta_cache[split] = _read_metadata(self.path / split / "metadata.csv")
        return self._meta_cache[split].copy()

    @property
    def dim(self) -> int:
        return int(next(iter(self.manifest["splits"].values()))["dim"])

    def validate(self) -> "FeatureStore":
        """Check every file against the manifest; errors name the file and the mismatch."""
        man = self.path / MANIFEST
        splits = self.manifest["splits"]
        if not splits:
            raise DataError(f"{man}: 'splits' is empty; the store holds no data.")
        dims = {s: int(v["dim"]) for s, v in splits.items()}
        if len(set(dims.values())) > 1:
            raise DataError(f"{man}: splits disagree on the embedding size: {dims}.")
        expected = _expected_dim(self.manifest)
        for split, info in splits.items():
            n, dim = int(info["n"]), int(info["dim"])
            meta_path = self.path / split / "metadata.csv"
            if not meta_path.is_file():
                raise DataError(f"{meta_path} is missing (the manifest {man} lists split {split!r}).")
            for fs in self.feature_sets:
                path = self.path / split / f"{fs}.npy"
                if not path.is_file():
                    raise DataError(f"{path} is missing (the manifest {man} lists feature set {fs!r}).")
                try:
                    arr = np.load(path, mmap_mode="r")
                except (ValueError, OSError) as exc:
                    raise DataError(f"{path} is not a readable .npy file: {exc}") from exc
                want = dim if fs == EMBEDDINGS else (1000 if fs == IMAGENET_PROBS else arr.shape[-1])
                if arr.ndim != 2 or arr.shape != (n, want):
                    raise DataError(f"{path} has shape {arr.shape}; the manifest {man} says ({n}, {want}) for "
                                    f"split {split!r}.")
            if expected is not None and dim != expected:
                raise DataError(
                    f"{self.path / split / 'embeddings.npy'} holds {dim}-d vectors, but {self.manifest['arch']} "
                    f"(alpha {self.manifest.get('alpha')}) at layer {self.manifest.get('layer')!r} gives {expected}-d "
                    f"features: the store was written by another architecture than {man} says.")
            rows = len(self.metadata(split))
            if rows != n:
                raise DataError(f"{meta_path} has {rows} rows but {self.path / split / 'embeddings.npy'} has {n}: "
                                f"rows must correspond one to one.")
        return self


def _expected_dim(manifest: dict) -> int | None:
    """Embedding size implied by arch/alpha/layer for registry backbones at their pooled feature layer."""
    from . import backbones

    if manifest.get("run"):
        return None
    try:
        spec = backbones.get(manifest.get("arch"))
    except ConfigError:
        return None
    if manifest.get("layer") in (spec.feature_layer, None):
        return spec.dim(float(manifest.get("alpha") or 1.0))
    return None


def _read_metadata(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path} is missing.")
    df = pd.read_csv(path, keep_default_na=False, na_values=[""])
    missing = [c for c in ("image", "label", "label_index") if c not in df.columns]
    if missing:
        raise DataError(f"{path} lacks the column(s) {missing}; expected {METADATA_COLUMNS}.")
    return df


def load_store(path: str | os.PathLike, *, validate: bool = True) -> FeatureStore:
    """Open a feature store.

    Raises:
        DataError: the folder or its manifest is missing or malformed, or files disagree with the manifest.
    """
    path = Path(path)
    man = path / MANIFEST
    if not man.is_file():
        hint = ""
        if path.with_name(path.name + PARTIAL).is_dir():
            hint = f" ({path.name}{PARTIAL} exists: the export was interrupted; rerun it to resume)"
        raise DataError(f"{man} does not exist: {path} is not a feature store{hint}.")
    try:
        manifest = json.loads(man.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise DataError(f"{man} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise DataError(f"{man}: format {got!r} is not {FORMAT!r}.")
    for key in ("classes", "splits"):
        if key not in manifest:
            raise DataError(f"{man} lacks the key {key!r}.")
    store = FeatureStore(path, manifest)
    return store.validate() if validate else store


# ------------------------------------------------------------------------------------------------- writing


def metadata_frame(table: pd.DataFrame) -> pd.DataFrame:
    """The metadata columns of a dataset table, in store order (missing columns filled with NaN)."""
    out = pd.DataFrame({c: table[c].to_numpy() if c in table.columns else np.nan for c in METADATA_COLUMNS})
    return out.reset_index(drop=True)


def _finish_manifest(manifest: Mapping, splits: Mapping[str, tuple[np.ndarray, pd.DataFrame]],
                     extra_sets: Mapping[str, Mapping[str, np.ndarray]] | None) -> dict:
    man = {"format": FORMAT, "augment": False, "jitter": False}
    man.update(dict(manifest))
    man["format"] = FORMAT
    sets = [EMBEDDINGS] + sorted({fs for per in (extra_sets or {}).values() for fs in per})
    man["feature_sets"] = sets
    man["splits"] = {s: {"n": int(np.shape(e)[0]), "dim": int(np.shape(e)[1])} for s, (e, _) in splits.items()}
    man.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    man.setdefault("package_version", _version())
    return man


def write_store(out: str | os.PathLike, *, manifest: Mapping, splits: Mapping[str, tuple[np.ndarray, pd.DataFrame]],
                extra_sets: Mapping[str, Mapping[str, np.ndarray]] | None = None) -> FeatureStore:
    """Write a complete store atomically (in-memory arrays; :func:`export` streams instead).

    Args:
        out: store folder (replaced whole if it exists).
        manifest: manifest fields (``arch``, ``layer``, ``classes``...); ``format``, ``splits`` and
            ``feature_sets`` are filled in.
        splits: ``{split: (embeddings [n, dim], metadata DataFrame with n rows)}``.
        extra_sets: ``{split: {feature_set: array [n, d]}}``, e.g. ``imagenet_probs``.
    """
    for split, (emb, meta) in splits.items():
        emb = np.asarray(emb)
        if emb.ndim != 2 or emb.shape[0] != len(meta):
            raise DataError(f"write_store: split {split!r} has embeddings of shape {emb.shape} and {len(meta)} "
                            f"metadata rows; they must match row for row.")
        for fs, arr in (extra_sets or {}).get(split, {}).items():
            if np.shape(arr)[0] != len(meta):
                raise DataError(f"write_store: {split}/{fs} has {np.shape(arr)[0]} rows, metadata {len(meta)}.")
    if "classes" not in manifest:
        raise ConfigError("write_store: the manifest needs 'classes'.")
    man = _finish_manifest(manifest, splits, extra_sets)
    sets = man["feature_sets"]
    expected = _expected_dim(man)
    for split, info in man["splits"].items():
        if expected is not None and info["dim"] != expected:
            raise DataError(f"write_store: split {split!r} has {info['dim']}-d embeddings, but {man.get('arch')} at "
                            f"layer {man.get('layer')!r} gives {expected}-d features; fix the manifest's arch/layer.")
    for split in splits:
        have = set((extra_sets or {}).get(split, {}))
        if have != set(sets[1:]):
            raise DataError(f"write_store: split {split!r} has feature sets {sorted(have)}, others {sets[1:]}.")
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for split, (emb, meta) in splits.items():
            (tmp / split).mkdir()
            np.save(tmp / split / f"{EMBEDDINGS}.npy", np.asarray(emb, dtype=np.float32))
            metadata_frame(meta).to_csv(tmp / split / "metadata.csv", index=False)
            for fs, arr in (extra_sets or {}).get(split, {}).items():
                np.save(tmp / split / f"{fs}.npy", np.asarray(arr, dtype=np.float32))
        (tmp / MANIFEST).write_text(json.dumps(man, indent=2) + "\n", encoding="utf-8")
    return load_store(out)


def _version() -> str:
    from . import __version__

    return __version__


# ------------------------------------------------------------------------------------------------- export


def input_hash(table: pd.DataFrame) -> str:
    """sha256 over the sorted (image, size, mtime) of every file: a changed input set forbids resuming."""
    h = hashlib.sha256()
    for image, path in sorted(zip(table["image"].astype(str), table["path"].astype(str))):
        try:
            st = os.stat(path)
            h.update(f"{image}\t{st.st_size}\t{int(st.st_mtime)}\n".encode())
        except OSError:
            h.update(f"{image}\t-\t-\n".encode())
    return h.hexdigest()


def embedding_model(*, arch: str | None = None, alpha: float = 1.0, weights: str | None = "imagenet",
                    image_size: int | None = None, run: str | os.PathLike | None = None, layer: str | None = None,
                    seed: int = 0):
    """A model mapping preprocessed images to 2-d features, and what it is.

    From a registry backbone (``arch``) or a finished run directory (``run``); ``layer`` defaults to the
    backbone's last spatial layer (registry) or the run's embedding layer (last hidden head layer). Spatial
    outputs are global-average pooled.

    Random weights (``weights=None``) are drawn with ``seed``, so an export of an untrained backbone is
    reproducible and a resumed export continues with the very same network.

    Returns:
        ``(keras.Model, info)`` where info holds arch, alpha, weights, run, layer, image_size, seed and the spec.
    """
    import keras

    from . import backbones, model as model_mod

    if run is not None:
        from .evaluate import load_run

        net, config, classes = load_run(run)
        spec = backbones.get(config.arch)
        alpha, weights = config.alpha, config.weights
        image_size = config.image_size or spec.default_size
        layer = layer or model_mod.embedding_layer_name(net)
    else:
        if not arch:
            raise ConfigError("pass --arch NAME (a registry backbone) or --model RUN_DIR")
        spec = backbones.get(arch)
        image_size = image_size or spec.default_size
        if image_size < spec.min_size:
            raise ConfigError(f"{spec.name} needs images of at least {spec.min_size} px. Received: image_size={image_size}")
        keras.utils.set_random_seed(seed)
        net = spec.build(weights=weights, input_shape=(image_size, image_size, 3), alpha=alpha)
        layer = layer or spec.feature_layer
    out = model_mod.layer_output(net, layer)
    if len(out.shape) == 4:
        out = keras.layers.GlobalAveragePooling2D(name="export_pool")(out)
    elif len(out.shape) != 2:
        raise ConfigError(f"layer {layer!r} has output shape {tuple(out.shape)}; expected (batch, h, w, c) or (batch, d)")
    feat = keras.Model(net.inputs, out, name="feature_extractor")
    info = {"arch": spec.name, "alpha": float(alpha) if spec.accepts_alpha else None,
            "weights": None if weights is None or str(weights).lower() == "none" else str(weights),
            "run": str(Path(run).resolve()) if run is not None else None, "layer": layer,
            "image_size": int(image_size), "seed": int(seed), "preprocessing": getattr(spec.preprocess, "__name__", str(spec.preprocess)),
            "spec": spec}
    return feat, info


def imagenet_top_model(arch: str, alpha: float = 1.0):
    """The backbone with its ImageNet classifier (1000-way softmax) at the default size."""
    from . import backbones

    spec = backbones.get(arch)
    return spec.build(weights="imagenet", include_top=True, alpha=alpha), spec.default_size


def _stream(model, table: pd.DataFrame, array: np.ndarray, start: int, *, image_size: int, preprocess,
            batch_size: int, on_batch, desc: str, verbose: int, jitter: bool = False) -> None:
    """Fill ``array[start:]`` batch by batch; ``on_batch(rows_done)`` runs after each flushed batch.

    With ``jitter`` each row is the mean over 12 views (whole, 4 corner and centre crops, all mirrored too).
    """
    from . import data, tta

    if start >= len(table):
        return
    rest = table.iloc[start:].reset_index(drop=True)
    pipe = data.make_pipeline(rest, image_size=image_size, preprocess=preprocess, batch_size=batch_size,
                              training=False, augment=False, shuffle=False, with_labels=False)
    import tensorflow as tf

    # One graph, traced once for any batch size (an eager call runs layer by layer; an unconstrained
    # tf.function retraces for new batch shapes, ~1 s each for EfficientNet).
    graph = tf.function(lambda x: model(x, training=False),
                        input_signature=[tf.TensorSpec((None, image_size, image_size, 3), tf.float32)])

    def forward(x, training=False):
        return graph(x)

    bar = _progress(len(table), start, desc, verbose)
    row = start
    for batch in pipe:
        out = tta.jitter_average(forward, batch) if jitter else np.asarray(forward(batch), dtype=np.float32)
        array[row:row + len(out)] = out
        row += len(out)
        array.flush()
        on_batch(row)
        bar.update(len(out))
    bar.close()
    if row != len(table):
        raise DataError(f"export of {desc} produced {row} rows for {len(table)} images")


def _progress(total: int, initial: int, desc: str, verbose: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="img", disable=not verbose, leave=verbose > 0,
                file=sys.stderr)


def export(out: str | os.PathLike, dataset, *, arch: str | None = None, alpha: float = 1.0,
           weights: str | None = "imagenet", image_size: int | None = None, run: str | os.PathLike | None = None,
           layer: str | None = None, splits: Sequence[str] | None = None, batch_size: int = 32,
           imagenet_probs: bool = False, overwrite: bool = False, verbose: int = 1,
           jitter: bool = False, seed: int = 0) -> FeatureStore:
    """Export embeddings (and optionally ImageNet probabilities) of every image of ``splits`` to a store.

    Writes into ``<out>.partial`` (resumable: rows done per split and feature set are recorded after every
    batch) and renames it to ``out`` when complete.

    Args:
        out: store folder.
        dataset: a :class:`mame_transfer.data.Dataset`.
        arch, alpha, weights, image_size: registry backbone (ignored with ``run``).
        run: finished run directory whose model to use.
        layer: layer to export (pooled when spatial); default see :func:`embedding_model`.
        splits: subsets to export (default: all present).
        imagenet_probs: also store the 1000 ImageNet probabilities of the backbone with its ImageNet head.
        seed: seed of random initial weights (``weights=None``).
        overwrite: replace an existing complete store at ``out``.
        jitter: average each image's features over flips and crops (Razavian et al. 2014, :func:`tta.jitter_views`).
    """
    out = Path(out)
    if (out / MANIFEST).is_file() and not overwrite:
        raise ConfigError(f"feature store {out} already exists; pass --overwrite to replace it or choose another --out")
    splits = list(splits or dataset.subsets)
    for s in splits:
        if s not in dataset.subsets:
            raise DataError(f"{dataset.source or dataset.root}: no {s!r} split to export "
                            f"(present: {', '.join(dataset.subsets)}).")
    tables = {s: dataset.split(s) for s in splits}
    feat, info = embedding_model(arch=arch, alpha=alpha, weights=weights, image_size=image_size, run=run, layer=layer,
                                 seed=seed)
    spec = info.pop("spec")
    if imagenet_probs and info["weights"] != "imagenet":
        raise ConfigError(f"--imagenet-probs needs a backbone with ImageNet weights; this one has "
                          f"weights={info['weights']!r}")
    dim = int(feat.output.shape[-1])
    manifest = dict(info, format=FORMAT, augment=False, jitter=bool(jitter), package_version=_version(),
                    input_hash=input_hash(pd.concat(tables.values())), classes=list(dataset.classes),
                    dataset=str(dataset.source or dataset.root),
                    feature_sets=[EMBEDDINGS] + ([IMAGENET_PROBS] if imagenet_probs else []),
                    splits={s: {"n": len(t), "dim": dim} for s, t in tables.items()})
    work = out.with_name(out.name + PARTIAL)
    progress = _open_progress(work, manifest)
    jobs = [(EMBEDDINGS, feat, info["image_size"], dim)]
    if imagenet_probs:
        top, top_size = imagenet_top_model(info["arch"], info["alpha"] or 1.0)
        jobs.append((IMAGENET_PROBS, top, top_size, 1000))
    for split, table in tables.items():
        (work / split).mkdir(parents=True, exist_ok=True)
        if not (work / split / "metadata.csv").is_file():
            write_text(work / split / "metadata.csv", metadata_frame(table).to_csv(index=False))
        for name, model, size, width in jobs:
            path = work / split / f"{name}.npy"
            key = f"{split}/{name}"
            done = int(progress["done"].get(key, 0)) if path.is_file() else 0
            if done >= len(table):
                continue
            if done:
                array = np.lib.format.open_memmap(path, mode="r+")
            else:
                array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(len(table), width))

            def mark(rows, key=key):
                progress["done"][key] = rows
                write_json(work / PROGRESS, progress)

            _stream(model, table, array, done, image_size=size, preprocess=spec.preprocess, batch_size=batch_size,
                    on_batch=mark, desc=key, verbose=verbose, jitter=jitter)
            del array
    manifest["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_json(work / MANIFEST, manifest)
    (work / PROGRESS).unlink()
    if out.exists():
        shutil.rmtree(out)
    os.replace(work, out)
    return load_store(out)


def _open_progress(work: Path, manifest: dict) -> dict:
    """Progress of an interrupted export of the same inputs and settings, or a fresh one."""
    keys = ("arch", "alpha", "weights", "run", "layer", "image_size", "seed", "jitter", "input_hash", "splits",
            "feature_sets")
    want = {k: manifest[k] for k in keys}
    path = work / PROGRESS
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except ValueError:
            saved = {}
        if saved.get("settings") == json.loads(json.dumps(want)):
            return saved
        print(f"[features] {work} holds an export with other settings or inputs; starting over", file=sys.stderr)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    progress = {"settings": want, "done": {}}
    write_json(path, progress)
    return progress


# ------------------------------------------------------------------------------------------------- projector


def export_projector(store: FeatureStore | str | os.PathLike, split: str, out: str | os.PathLike, *,
                     feature_set: str = EMBEDDINGS, limit: int | None = None) -> Path:
    """Write ``vectors.tsv`` + ``metadata.tsv`` (+ ``projector_config.pbtxt``) for the TensorBoard Projector.

    Load both files at https://projector.tensorflow.org, or point TensorBoard at ``out``.
    """
    store = store if isinstance(store, FeatureStore) else load_store(store)
    vectors = np.asarray(store.embeddings(split, feature_set))
    meta = store.metadata(split)
    if limit:
        vectors, meta = vectors[:limit], meta.iloc[:limit]
    cols = [c for c in ("image", "label", "museum", "subset", "width", "height", "aspect_ratio") if c in meta]
    meta = meta[cols].astype(str).apply(lambda s: s.str.replace(r"[\t\n\r]", " ", regex=True))
    with atomic_path(out) as tmp:
        tmp.mkdir()
        np.savetxt(tmp / "vectors.tsv", vectors, delimiter="\t", fmt="%.6g")
        meta.to_csv(tmp / "metadata.tsv", sep="\t", index=False)
        (tmp / "projector_config.pbtxt").write_text(
            'embeddings {\n  tensor_name: "%s/%s"\n  tensor_path: "vectors.tsv"\n  metadata_path: "metadata.tsv"\n}\n'
            % (split, feature_set))
    return Path(out)


# ------------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mame_transfer.features",
                                description="Export embeddings + metadata of a dataset to a feature store "
                                            "(or: 'projector STORE --split val --out DIR').")
    src = p.add_argument_group("model")
    src.add_argument("--arch", help="registry backbone (e.g. mobilenet, vgg16)")
    src.add_argument("--alpha", type=float, default=1.0, help="MobileNet width multiplier")
    src.add_argument("--weights", default="imagenet", help="imagenet | none | weights file")
    src.add_argument("--image-size", type=int, help="square input side (default: the backbone's)")
    src.add_argument("--model", help="finished run directory (saved_models/<run>) instead of --arch")
    src.add_argument("--layer", help="layer to export (default: last spatial layer / the run's embedding layer)")
    src.add_argument("--imagenet-probs", action="store_true", help="also store the 1000 ImageNet probabilities")
    src.add_argument("--jitter", action="store_true",
                     help="average features over flips and corner/centre crops (Razavian et al. 2014)")
    d = p.add_argument_group("data")
    d.add_argument("--data", help="MAMe folder or class-per-folder set")
    d.add_argument("--demo", action="store_true", help="the built-in demo set")
    d.add_argument("--toy", action="store_true", help="MAMe layout: the toy CSV")
    d.add_argument("--images", help="MAMe layout: image folder")
    d.add_argument("--splits", help="comma-separated subsets (default: all present)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0, help="seed of random weights (--weights none)")
    p.add_argument("--out", required=True, help="store folder")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--verbose", type=int, default=1)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "projector":
            p = argparse.ArgumentParser(prog="python -m mame_transfer.features projector",
                                        description="TensorBoard Embedding Projector TSV files of one split")
            p.add_argument("store")
            p.add_argument("--split", default="val")
            p.add_argument("--feature-set", default=EMBEDDINGS)
            p.add_argument("--limit", type=int, help="first N rows only")
            p.add_argument("--out", required=True)
            a = p.parse_args(argv[1:])
            print(export_projector(a.store, a.split, a.out, feature_set=a.feature_set, limit=a.limit))
            return 0
        if argv and argv[0] == "export":
            argv = argv[1:]
        a = build_parser().parse_args(argv)
        from . import data, demo

        if not a.data and not a.demo:
            raise ConfigError("no dataset given: pass --data PATH or --demo")
        splits = [s.strip() for s in a.splits.split(",")] if a.splits else None
        dataset = data.load_dataset(demo.ensure_demo() if a.demo else a.data, toy=a.toy, images=a.images,
                                    require=tuple(splits or ()))
        store = export(a.out, dataset, arch=a.arch, alpha=a.alpha, weights=a.weights, image_size=a.image_size,
                       run=a.model, layer=a.layer, splits=splits, batch_size=a.batch_size,
                       imagenet_probs=a.imagenet_probs, overwrite=a.overwrite, verbose=a.verbose,
                       jitter=a.jitter, seed=a.seed)
    except MameTransferError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: rerun the same command to resume the export", file=sys.stderr)
        return 130
    dims = ", ".join(f"{s} {v['n']}x{v['dim']}" for s, v in store.manifest["splits"].items())
    print(f"{store.path}: {dims} ({', '.join(store.feature_sets)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
