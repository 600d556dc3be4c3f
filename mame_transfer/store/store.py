"""The feature store format, read by ``classify``, ``analyze`` and ``explore``::

    <store>/manifest.json              format, arch, alpha, weights, run, layer, image_size, preprocessing, ...
    <store>/<split>/embeddings.npy     float32 [n, dim]
    <store>/<split>/metadata.csv       image, path, label, label_index, subset, museum, width, height,
                                       product_size, aspect_ratio (row i <-> embeddings row i)
    <store>/<split>/imagenet_probs.npy float32 [n, 1000] (optional feature set)

:func:`load_store` validates every file against the manifest; :func:`write_store` writes a complete store from
arrays in memory (:mod:`.export` streams instead).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from mame_transfer.core import __version__
from mame_transfer.core.errors import ConfigError, DataError
from mame_transfer.core.fileio import PARTIAL, atomic_path, output_folder
from mame_transfer.store.shards import describe_missing

FORMAT = "mame_transfer.features/1"
MANIFEST = "manifest.json"
PROGRESS = "progress.json"
EMBEDDINGS = "embeddings"
IMAGENET_PROBS = "imagenet_probs"

METADATA_COLUMNS = ["image", "path", "label", "label_index", "subset", "museum", "width", "height",
                    "product_size", "aspect_ratio"]

SPLITS = ("train", "val", "test")
STORE_KIND = "feature-store"  # the owner kind of a store folder (mame_transfer.core.fileio.check_output)


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
            recorded = info.get("metadata_sha256")
            if recorded and file_sha256(meta_path) != recorded:
                raise DataError(f"{meta_path} is not the metadata this store was exported with (its sha256 differs from "
                                f"the one in {man}): split {split!r} was copied in from another export or edited. "
                                f"Re-export the store.")
        return self


def _expected_dim(manifest: dict) -> int | None:
    """Embedding size implied by arch/alpha/layer for registry backbones at their pooled feature layer."""
    from mame_transfer.models import backbones

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


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes (recorded per split for ``metadata.csv``: splits cannot be swapped between stores)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_one_dataset(store: "FeatureStore") -> None:
    """Refuse a store whose splits record different source data sets (a store put together from several exports).

    Raises:
        DataError: naming the splits and where each came from.
    """
    sources = {s: info.get("dataset") for s, info in store.manifest["splits"].items() if info.get("dataset")}
    if len(set(sources.values())) > 1:
        raise DataError(f"{store.path / MANIFEST}: its splits come from different data sets ("
                        f"{'; '.join(f'{s}: {d}' for s, d in sources.items())}); scores across them would compare "
                        f"unlike data. Export every split from one data set into one store.")


def is_store(path: Path) -> bool:
    """A store written before folders carried an owner file: its manifest names this format."""
    try:
        return json.loads((Path(path) / MANIFEST).read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def load_store(path: str | os.PathLike, *, validate: bool = True) -> FeatureStore:
    """Open a feature store.

    Raises:
        DataError: the folder or its manifest is missing or malformed, or files disagree with the manifest.
    """
    path = Path(path)
    man = path / MANIFEST
    if not man.is_file():
        hint = ""
        work = path.with_name(path.name + PARTIAL)
        if work.is_dir():
            sharded = describe_missing(work)
            if sharded:
                raise DataError(f"{man} does not exist: the sharded export into {work} is incomplete: {sharded}.")
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
    man.setdefault("package_version", __version__)
    return man


def write_store(out: str | os.PathLike, *, manifest: Mapping, splits: Mapping[str, tuple[np.ndarray, pd.DataFrame]],
                extra_sets: Mapping[str, Mapping[str, np.ndarray]] | None = None,
                overwrite: bool = False) -> FeatureStore:
    """Write a complete store atomically (in-memory arrays; :func:`export` streams instead).

    Args:
        out: store folder: new, empty, or (with ``overwrite``) an earlier store, replaced whole. Any other
            folder is refused.
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
    with output_folder(out, STORE_KIND, overwrite=overwrite, legacy=is_store, what="feature store",
                       command="write_store") as existed, atomic_path(out, kind=STORE_KIND, replace=existed) as tmp:
        tmp.mkdir()
        for split, (emb, meta) in splits.items():
            (tmp / split).mkdir()
            np.save(tmp / split / f"{EMBEDDINGS}.npy", np.asarray(emb, dtype=np.float32))
            metadata_frame(meta).to_csv(tmp / split / "metadata.csv", index=False)
            man["splits"][split]["metadata_sha256"] = file_sha256(tmp / split / "metadata.csv")
            for fs, arr in (extra_sets or {}).get(split, {}).items():
                np.save(tmp / split / f"{fs}.npy", np.asarray(arr, dtype=np.float32))
        (tmp / MANIFEST).write_text(json.dumps(man, indent=2) + "\n", encoding="utf-8")
    return load_store(out)


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

