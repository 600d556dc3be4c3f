"""TensorBoard Embedding Projector files of one split of a store (``features projector``).

Besides the vectors and their metadata the export writes a *sprite*: one image holding a thumbnail of every
artwork in row order, so the Projector shows the paintings themselves instead of anonymous dots. The Projector
reads sprites up to 8192 px a side; beyond ``(8192 / thumb size)^2`` images the thumbnails shrink to fit.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from mame_transfer.core.errors import ConfigError
from mame_transfer.core.fileio import atomic_path, output_folder
from mame_transfer.store.store import EMBEDDINGS, FeatureStore, load_store

SPRITE_FILE = "sprite.jpg"
SPRITE_THUMB = 64  # default side of a thumbnail in the sprite
SPRITE_MAX = 8192  # the largest sprite side the Projector loads
MIN_THUMB = 8
KIND = "projector-files"  # the owner kind of an output folder of export_projector


def sprite_layout(n: int, thumb_size: int = SPRITE_THUMB) -> tuple[int, int]:
    """``(columns, thumbnail side)`` of a square sprite of ``n`` images no wider than :data:`SPRITE_MAX`."""
    cols = max(1, math.ceil(math.sqrt(n)))
    side = min(int(thumb_size), SPRITE_MAX // cols)
    if side < MIN_THUMB:
        raise ConfigError(f"{n} images do not fit a {SPRITE_MAX} px sprite with thumbnails of at least {MIN_THUMB} px; "
                          f"export fewer rows (--limit {(SPRITE_MAX // MIN_THUMB) ** 2}) or pass --no-sprite")
    return cols, side


def sprite_image(paths: Sequence[str], thumb_size: int = SPRITE_THUMB, *, verbose: int = 0):
    """The sprite of ``paths`` (a PIL image) and its thumbnail side.

    Each image is fitted, aspect kept, into a white square; an unreadable file becomes a grey square and a
    warning names how many (and the first) were missing.
    """
    from PIL import Image, ImageOps

    from mame_transfer.core.progress import track

    cols, side = sprite_layout(len(paths), thumb_size)
    rows = max(1, math.ceil(len(paths) / cols))
    sheet = Image.new("RGB", (cols * side, rows * side), "white")
    missing: list[str] = []
    for i, path in enumerate(track(paths, desc="sprite", unit="img", verbose=verbose)):
        try:
            with Image.open(path) as im:
                thumb = ImageOps.pad(im.convert("RGB"), (side, side), color="white")
        except (OSError, ValueError):
            missing.append(str(path))
            thumb = Image.new("RGB", (side, side), (190, 190, 190))
        sheet.paste(thumb, ((i % cols) * side, (i // cols) * side))
    if missing:
        warnings.warn(f"{len(missing)} of {len(paths)} images could not be read for the sprite (grey squares), "
                      f"e.g. {missing[0]}", stacklevel=2)
    return sheet, side


def export_projector(store: FeatureStore | str | os.PathLike, split: str, out: str | os.PathLike, *,
                     feature_set: str = EMBEDDINGS, limit: int | None = None, sprite: bool = True,
                     thumb_size: int = SPRITE_THUMB, verbose: int = 0, overwrite: bool = False) -> Path:
    """Write ``vectors.tsv``, ``metadata.tsv``, ``sprite.jpg`` and ``projector_config.pbtxt`` for the Projector.

    Point TensorBoard at ``out`` (``tensorboard --logdir out``, Projector tab), or load the two TSV files at
    https://projector.tensorflow.org. The folder is written whole or not at all; ``out`` must be new, empty or
    earlier projector files (replaced only with ``overwrite``); any other folder is refused.

    Args:
        sprite: write the thumbnail sprite (from the store's ``path`` column).
        thumb_size: thumbnail side in pixels, reduced when the sprite would exceed :data:`SPRITE_MAX`.
    """
    store = store if isinstance(store, FeatureStore) else load_store(store)
    vectors = np.asarray(store.embeddings(split, feature_set))
    meta = store.metadata(split)
    if limit:
        vectors, meta = vectors[:limit], meta.iloc[:limit]
    if sprite:
        sprite_layout(len(meta), thumb_size)  # fail before any work when it cannot fit
    cols = [c for c in ("image", "label", "museum", "subset", "width", "height", "aspect_ratio") if c in meta]
    table = meta[cols].astype(str).apply(lambda s: s.str.replace(r"[\t\n\r]", " ", regex=True))
    config = ('embeddings {\n  tensor_name: "%s/%s"\n  tensor_path: "vectors.tsv"\n  metadata_path: "metadata.tsv"\n'
              % (split, feature_set))
    with output_folder(out, KIND, overwrite=overwrite, legacy=_is_projector, what="set of projector files",
                       command="features projector") as existed, atomic_path(out, kind=KIND, replace=existed) as tmp:
        tmp.mkdir()
        np.savetxt(tmp / "vectors.tsv", vectors, delimiter="\t", fmt="%.6g")
        table.to_csv(tmp / "metadata.tsv", sep="\t", index=False)
        if sprite:
            sheet, side = sprite_image(meta["path"].astype(str).tolist(), thumb_size, verbose=verbose)
            sheet.save(tmp / SPRITE_FILE, quality=90)
            config += (f'  sprite {{\n    image_path: "{SPRITE_FILE}"\n    single_image_dim: {side}\n'
                       f"    single_image_dim: {side}\n  }}\n")
        (tmp / "projector_config.pbtxt").write_text(config + "}\n")
    return Path(out)


def _is_projector(path: Path) -> bool:
    """Projector files written before folders carried an owner file."""
    return (path / "projector_config.pbtxt").is_file() and (path / "vectors.tsv").is_file()
