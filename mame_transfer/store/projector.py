"""TensorBoard Embedding Projector files of one split of a store (``features projector``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mame_transfer.core.fileio import atomic_path
from mame_transfer.store.store import EMBEDDINGS, FeatureStore, load_store


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

