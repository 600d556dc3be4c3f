"""What the benchmark scripts share: synthetic MAMe-layout image sets, medians, the machine description."""

from __future__ import annotations

import os
import platform
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from mame_transfer.datasets.tables import COLUMNS

CLASSES = ("Oil on canvas", "Etching", "Ceramic")


GRAIN = 24  # amplitude of the per-pixel grain (more grain = larger files, costlier entropy decoding)


def _texture(rng, h, w):
    """A photo-like image: smooth colour fields plus fine grain (so JPEG decoding costs what real images do)."""
    from PIL import Image

    low = rng.uniform(0, 255, (max(2, h // 64), max(2, w // 64), 3)).astype(np.uint8)
    base = np.asarray(Image.fromarray(low).resize((w, h), Image.Resampling.BICUBIC), np.int16)
    grain = rng.integers(-GRAIN, GRAIN + 1, (h, w, 1), dtype=np.int16)
    return np.clip(base + grain, 0, 255).astype(np.uint8)


def set_grain(value: int) -> None:
    global GRAIN
    GRAIN = int(value)


def _write_one(args):
    from PIL import Image

    global GRAIN
    path, h, w, seed, GRAIN = args
    rng = np.random.default_rng(seed)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_texture(rng, h, w)).save(path, quality=90)
    return path


def make_mame(root: Path, n: int, *, sizes=(256, 256), seed: int = 0, workers: int = 2) -> Path:
    """A MAMe layout of ``n`` train images (+ 3 val) whose image folder is also class-per-folder.

    ``data_256/<class>/<file>.jpg`` serves both ``load_dataset`` (via the CSV) and
    ``image_dataset_from_directory`` (via the class folders).
    """
    import pandas as pd

    rng = np.random.default_rng(seed)
    rows, jobs = [], []
    for i in range(n + len(CLASSES)):
        label = CLASSES[i % len(CLASSES)]
        h, w = (int(rng.integers(sizes[0], sizes[1] + 1)) for _ in range(2))
        name = f"{label.replace(' ', '_')}/img{i:05d}.jpg"
        jobs.append((str(root / "data_256" / name), h, w, seed * 100000 + i, GRAIN))
        subset = "train" if i < n else "val"
        rows.append([name, label, "Metropolitan Museum of Art", f"B.{i}", subset, w, h, w * h, round(w / h, 4)])
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_write_one, jobs, chunksize=8))
    (root / "MAMe_metadata").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=COLUMNS).to_csv(root / "MAMe_metadata" / "MAMe_dataset.csv", index=False)
    return root


def image_folder_train(root: Path, n: int) -> Path:
    """Class folders holding only the train images (symlinks), for ``image_dataset_from_directory``."""
    import pandas as pd

    table = pd.read_csv(root / "MAMe_metadata" / "MAMe_dataset.csv")
    folder = root / "folders_train"
    for name in table[table["Subset"] == "train"]["Image file"]:
        dst = folder / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():
            os.symlink(root / "data_256" / name, dst)
    return folder


# --------------------------------------------------------------------------------------------- helpers


def med(values):
    return statistics.median(values)



def machine() -> dict:
    import keras
    import PIL
    import tensorflow as tf

    cpu = platform.processor()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return dict(nproc=os.cpu_count(), cpu=cpu, python=platform.python_version(), tensorflow=tf.__version__,
                keras=keras.__version__, pillow=PIL.__version__, numpy=np.__version__,
                gpus=len(tf.config.list_physical_devices("GPU")))


# --------------------------------------------------------------------------------------------- synthetic vectors


def clustered_vectors(n: int, dim: int = 1280, *, clusters: int = 1000, latent: int = 128, seed: int = 0,
                      start: int = 0, stop: int | None = None):
    """Rows ``start:stop`` of a synthetic set of ``n`` CNN-like embeddings with cluster structure, and their clusters.

    Latent vectors (``latent`` dims, standard deviations falling as 1/sqrt(j) like the spectrum of pooled CNN
    features) around ``clusters`` centres of Zipf-like sizes, mapped to ``dim`` dims by a fixed random matrix, plus a
    little isotropic noise, then ReLU (pooled features are non-negative). Any slice is reproducible on its own, so a
    million rows can be written chunk by chunk.
    """
    stop = n if stop is None else stop
    base = np.random.default_rng(seed)
    scale = (np.arange(1, latent + 1) ** -0.5).astype(np.float32)
    centres = (base.normal(size=(clusters, latent)) * scale * 2).astype(np.float32)
    mix = (base.normal(size=(latent, dim)) / np.sqrt(latent)).astype(np.float32)
    p = 1.0 / np.arange(1, clusters + 1) ** 0.8
    labels = base.choice(clusters, size=n, p=p / p.sum())[start:stop]
    rng = np.random.default_rng([seed, start])
    z = centres[labels] + rng.normal(size=(stop - start, latent)).astype(np.float32) * scale
    x = z @ mix + 0.05 * rng.normal(size=(stop - start, dim)).astype(np.float32)
    return np.maximum(x, 0), labels


def write_vector_store(path: Path, n: int, dim: int = 1280, *, chunk: int = 50000, seed: int = 0) -> Path:
    """A feature store of :func:`clustered_vectors` (one ``train`` split, no images), written chunk by chunk."""
    import json

    import pandas as pd

    from mame_transfer.store.store import FORMAT

    if (path / "manifest.json").is_file():
        return path
    (path / "train").mkdir(parents=True, exist_ok=True)
    emb = np.lib.format.open_memmap(path / "train" / "embeddings.npy", mode="w+", dtype=np.float32, shape=(n, dim))
    labels = np.empty(n, np.int64)
    for a in range(0, n, chunk):
        emb[a:a + chunk], labels[a:a + chunk] = clustered_vectors(n, dim, seed=seed, start=a, stop=min(n, a + chunk))
    emb.flush()
    del emb
    classes = [f"cluster{c:04d}" for c in range(int(labels.max()) + 1)]
    pd.DataFrame({"image": [f"item{i:07d}.jpg" for i in range(n)], "path": "", "label": [classes[c] for c in labels],
                  "label_index": labels, "subset": "train", "museum": "synthetic"}).to_csv(
        path / "train" / "metadata.csv", index=False)
    manifest = {"format": FORMAT, "arch": "synthetic", "alpha": None, "weights": None, "run": None, "layer": "x",
                "image_size": 0, "preprocessing": "none", "classes": classes, "feature_sets": ["embeddings"],
                "splits": {"train": {"n": n, "dim": dim}}}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path
