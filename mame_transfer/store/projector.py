"""TensorBoard Embedding Projector files of one split of a store (``features projector``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mame_transfer.core.fileio import atomic_path, output_folder
from mame_transfer.store.store import EMBEDDINGS, FeatureStore, load_store

KIND = "projector-files"  # the owner kind of an output folder of export_projector


def export_projector(store: FeatureStore | str | os.PathLike, split: str, out: str | os.PathLike, *,
                     feature_set: str = EMBEDDINGS, limit: int | None = None, overwrite: bool = False) -> Path:
    """Write ``vectors.tsv`` + ``metadata.tsv`` (+ ``projector_config.pbtxt``) for the TensorBoard Projector.

    Load both files at https://projector.tensorflow.org, or point TensorBoard at ``out``. ``out`` must be new,
    empty or earlier projector files (replaced only with ``overwrite``); any other folder is refused.
    """
    store = store if isinstance(store, FeatureStore) else load_store(store)
    vectors = np.asarray(store.embeddings(split, feature_set))
    meta = store.metadata(split)
    if limit:
        vectors, meta = vectors[:limit], meta.iloc[:limit]
    cols = [c for c in ("image", "label", "museum", "subset", "width", "height", "aspect_ratio") if c in meta]
    meta = meta[cols].astype(str).apply(lambda s: s.str.replace(r"[\t\n\r]", " ", regex=True))
    with output_folder(out, KIND, overwrite=overwrite, legacy=_is_projector, what="set of projector files",
                       command="features projector") as existed, atomic_path(out, kind=KIND, replace=existed) as tmp:
        tmp.mkdir()
        np.savetxt(tmp / "vectors.tsv", vectors, delimiter="\t", fmt="%.6g")
        meta.to_csv(tmp / "metadata.tsv", sep="\t", index=False)
        (tmp / "projector_config.pbtxt").write_text(
            'embeddings {\n  tensor_name: "%s/%s"\n  tensor_path: "vectors.tsv"\n  metadata_path: "metadata.tsv"\n}\n'
            % (split, feature_set))
    return Path(out)



def _is_projector(path: Path) -> bool:
    """Projector files written before folders carried an owner file."""
    return (path / "projector_config.pbtxt").is_file() and (path / "vectors.tsv").is_file()
