"""The built-in demo set: small procedurally generated "artworks" in the exact MAMe layout.

Six medium-like classes, each drawn from its own style cue (colour fields and brush strokes, bold woodcut lines,
fine cross-hatching, sepia photographs with grain, vessel silhouettes, woven textures). Random palettes, noise,
JPEG quality and a blend of another class's texture into some images make the cues overlap, so a small CNN
learns it well above chance but not perfectly.

The set is generated once into a cache folder (``$MAME_TRANSFER_CACHE/demo-v1`` or
``~/.cache/mame_transfer/demo-v1``); a marker file written last tells a complete set from an interrupted one.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from mame_transfer.core.fileio import atomic_path
from mame_transfer.datasets.tables import COLUMNS, DATASET_CSV, LABELS_CSV, TOY_CSV

VERSION = 1
MARKER = ".complete.json"
CLASSES = ["Albumen photograph", "Ceramic", "Etching", "Oil on canvas", "Woodcut", "Woven fabric"]
# Spelled with a trailing space in the dataset CSV, exactly like the real MAMe release (the labels file has none).
CSV_SPELLING = {"Woven fabric": "Woven fabric "}
MUSEUMS = {  # real MAMe museums, weighted by their share of the real set
    "Metropolitan Museum of Art": 24911,
    "The Cleveland Museum of Art": 6965,
    "Los Angeles County Museum of Art": 5531,
}
DEFAULT_SIZES = (40, 10, 15)  # train / val / test images per class
MIN_SIDE, MAX_SIDE = 96, 320
BLEND_PROBABILITY = 0.3  # share of images that carry a faint second style (overlapping cues)


def default_cache_dir() -> Path:
    """``$MAME_TRANSFER_CACHE`` or ``~/.cache/mame_transfer``."""
    env = os.environ.get("MAME_TRANSFER_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mame_transfer"


def ensure_demo(
    cache_dir: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    sizes: Sequence[int] = DEFAULT_SIZES,
) -> Path:
    """Return the demo set's root folder, generating it first if no complete copy exists.

    Args:
        cache_dir: folder holding the demo set (default :func:`default_cache_dir`); the set itself is the
            sub-folder ``demo-v1`` (``demo-v1-seed<seed>-<train>-<val>-<test>`` for non-default arguments).
        seed: random seed of the generation.
        sizes: images per class for train, val, test.

    Returns:
        The root of a MAMe layout: ``MAMe_metadata/{MAMe_dataset,MAMe_toy_dataset,MAMe_labels}.csv`` and
        ``data_256/*.jpg``.
    """
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) != 3 or min(sizes) < 1:
        raise ValueError(f"sizes must be three positive counts (train, val, test). Received: sizes={sizes}")
    name = f"demo-v{VERSION}"
    if seed != 0 or sizes != DEFAULT_SIZES:
        name += f"-seed{seed}-{'-'.join(map(str, sizes))}"
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    root = root.resolve() / name
    if _is_complete(root):
        return root
    try:
        # Generated in a temporary folder and moved into place whole: an interrupted run leaves no root. The folder
        # is the package's own cache entry, so an older or incomplete one is replaced.
        with atomic_path(root, kind="demo-set", replace=True) as tmp:
            generate(tmp, seed=seed, sizes=sizes)
    except OSError:
        if _is_complete(root):  # another process finished first
            return root
        raise
    return root


def _is_complete(root: Path) -> bool:
    try:
        return json.loads((root / MARKER).read_text())["version"] == VERSION
    except (OSError, ValueError, KeyError, TypeError):
        return False


def generate(root: str | os.PathLike, *, seed: int = 0, sizes: Sequence[int] = DEFAULT_SIZES) -> Path:
    """Write a demo set into ``root`` (not atomic; :func:`ensure_demo` wraps it). Returns ``root``."""
    root = Path(root)
    meta, images = root / "MAMe_metadata", root / "data_256"
    meta.mkdir(parents=True, exist_ok=True)
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    museums, weights = list(MUSEUMS), np.array(list(MUSEUMS.values()), float)
    rows, toy = [], []
    toy_sizes = [max(1, -(-n // 4)) for n in sizes]
    number = 0
    for subset, per_class, per_class_toy in zip(("train", "val", "test"), sizes, toy_sizes):
        for label_index, label in enumerate(CLASSES):
            for k in range(per_class):
                number += 1
                museum = museums[rng.choice(len(museums), p=weights / weights.sum())]
                # Cleveland files are .jpeg in the real release; keep both extensions in play.
                ext = ".jpeg" if museum == "The Cleveland Museum of Art" else ".jpg"
                filename = f"demo_{number:05d}{ext}"
                width, height = _draw_size(rng)
                pixels = render(label_index, height, width, rng)
                _save_jpeg(pixels, images / filename, quality=int(rng.integers(60, 95)))
                row = [
                    filename,
                    CSV_SPELLING.get(label, label),
                    museum,
                    f"DEMO.{label_index}.{number}",
                    subset,
                    float(width),
                    float(height),
                    float(width * height),
                    round(width / height, 4),
                ]
                rows.append(row)
                if k < per_class_toy:
                    toy.append(row)
    pd.DataFrame(rows, columns=COLUMNS).to_csv(meta / DATASET_CSV, index=False)
    pd.DataFrame(toy, columns=COLUMNS).to_csv(meta / TOY_CSV, index=False)
    pd.DataFrame({"index": range(len(CLASSES)), "name": CLASSES}).to_csv(meta / LABELS_CSV, index=False, header=False)
    marker = {"version": VERSION, "seed": seed, "sizes": list(sizes), "images": len(rows), "classes": CLASSES}
    (root / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return root


def _draw_size(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height): aspect ratio 0.5..2 (log-uniform), every side within MIN_SIDE..MAX_SIDE."""
    ratio = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    stretch = max(ratio, 1 / ratio)
    long_side = rng.uniform(MIN_SIDE * stretch, MAX_SIDE)
    short_side = long_side / stretch
    width, height = (long_side, short_side) if ratio >= 1 else (short_side, long_side)
    return int(round(width)), int(round(height))


def _save_jpeg(pixels: np.ndarray, path: Path, quality: int) -> None:
    image = Image.fromarray(np.clip(pixels * 255.0 + 0.5, 0, 255).astype(np.uint8), "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    path.write_bytes(buffer.getvalue())


# --------------------------------------------------------------------------------------------------------------
# Rendering: each style returns float32 (H, W, 3) in about 0..1.


def render(label_index: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """One image of class ``CLASSES[label_index]`` with random palette, noise, and sometimes a second style."""
    image = _STYLES[label_index](height, width, rng)
    if rng.random() < BLEND_PROBABILITY:
        other = int(rng.choice([i for i in range(len(_STYLES)) if i != label_index]))
        alpha = rng.uniform(0.2, 0.45)
        image = (1 - alpha) * image + alpha * _STYLES[other](height, width, rng)
    # Global photometric jitter: the class must be read from structure, not from brightness alone.
    contrast, brightness = rng.uniform(0.7, 1.2), rng.uniform(-0.12, 0.12)
    tint = rng.uniform(0.9, 1.1, size=3).astype(np.float32)
    image = (image - 0.5) * contrast + 0.5 + brightness
    image = image * tint + rng.normal(0, rng.uniform(0.01, 0.05), size=image.shape).astype(np.float32)
    return np.clip(image, 0, 1).astype(np.float32)


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:height, 0:width]
    return yy.astype(np.float32), xx.astype(np.float32)


def _smooth(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Low-frequency noise in 0..1: a random ``cells``-sized grid upsampled bicubically."""
    small = rng.random((cells, max(2, int(round(cells * width / height))))).astype(np.float32)
    field = np.asarray(Image.fromarray(small, "F").resize((width, height), Image.BICUBIC), dtype=np.float32)
    lo, hi = field.min(), field.max()
    return (field - lo) / (hi - lo + 1e-6)


def _waves(yy, xx, rng, period: float, angle: float | None = None, warp=None) -> np.ndarray:
    """Parallel sine bands of ``period`` px at ``angle``, optionally warped by a phase field."""
    angle = rng.uniform(0, np.pi) if angle is None else angle
    phase = 2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period
    return np.sin(phase if warp is None else phase + warp)


def _paper(rng, height, width) -> np.ndarray:
    paper = np.array([0.93, 0.9, 0.8], np.float32) + rng.uniform(-0.06, 0.05, 3).astype(np.float32)
    stain = _smooth(rng, height, width, 4)[..., None] * rng.uniform(0, 0.12)
    return np.broadcast_to(paper, (height, width, 3)) - stain * np.array([0.3, 0.5, 0.9], np.float32)


def _oil(height, width, rng):
    yy, xx = _grid(height, width)
    palette = rng.uniform(0.05, 0.95, size=(4, 3)).astype(np.float32)
    weights = np.stack([_smooth(rng, height, width, int(rng.integers(2, 5))) for _ in range(4)], -1) ** 2
    weights /= weights.sum(-1, keepdims=True) + 1e-6
    base = weights @ palette
    strokes = _waves(yy, xx, rng, rng.uniform(4, 12), warp=6 * _smooth(rng, height, width, 6))
    strokes *= _smooth(rng, height, width, 8)  # strokes come and go across the canvas
    canvas = 0.03 * np.sin(xx * np.pi / 1.5) * np.sin(yy * np.pi / 1.5)
    return base * (1 + 0.22 * strokes[..., None]) + canvas[..., None]


def _woodcut(height, width, rng):
    yy, xx = _grid(height, width)
    paper = _paper(rng, height, width)
    ink = rng.uniform(0.0, 0.18, 3).astype(np.float32) * np.array([1, 0.9, 0.8], np.float32)
    shapes = _smooth(rng, height, width, int(rng.integers(2, 5)))
    lines = _waves(yy, xx, rng, rng.uniform(7, 16), warp=4 * _smooth(rng, height, width, 4))
    mask = (0.9 * shapes + 0.35 * lines) > rng.uniform(0.55, 0.75)
    return np.where(mask[..., None], ink, paper)


def _etching(height, width, rng):
    yy, xx = _grid(height, width)
    paper = _paper(rng, height, width)
    ink = np.array([0.12, 0.08, 0.05], np.float32) * rng.uniform(0.3, 1.5)
    tone = _smooth(rng, height, width, int(rng.integers(3, 7)))
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(3, 5.5)
    first = _waves(yy, xx, rng, period, angle, warp=1.5 * _smooth(rng, height, width, 5))
    second = _waves(yy, xx, rng, period * rng.uniform(0.8, 1.2), angle + np.pi / 2 + rng.uniform(-0.4, 0.4))
    # Darker tone -> thicker lines, and a second (cross) hatch only in the dark passages.
    lines = (first > 1 - 1.4 * tone) | ((second > 1.6 - 1.4 * tone) & (tone > 0.45))
    return np.where(lines[..., None], ink, paper)


def _albumen(height, width, rng):
    yy, xx = _grid(height, width)
    light = 0.25 + 0.6 * _smooth(rng, height, width, int(rng.integers(2, 5)))
    cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
    sy, sx = rng.uniform(0.12, 0.3) * height, rng.uniform(0.12, 0.3) * width
    subject = np.exp(-(((yy - cy) / sy) ** 2 + ((xx - cx) / sx) ** 2))
    light = light * (1 - rng.uniform(0.3, 0.7) * subject)
    radius = ((yy / height - 0.5) ** 2 + (xx / width - 0.5) ** 2) / 0.5
    light = light * (1 - rng.uniform(0.2, 0.6) * radius)  # vignetting
    light = light + rng.normal(0, rng.uniform(0.03, 0.07), size=light.shape)  # silver grain
    sepia = np.array([1.0, 0.8, 0.55], np.float32) * rng.uniform(0.9, 1.1, 3).astype(np.float32)
    return 0.08 + light[..., None] * sepia


def _ceramic(height, width, rng):
    yy, xx = _grid(height, width)
    background = rng.uniform(0.35, 0.9) * np.ones(3, np.float32) + rng.uniform(-0.05, 0.05, 3).astype(np.float32)
    background = background + 0.15 * (yy / height)[..., None] - 0.07  # studio light falloff
    top, bottom = rng.uniform(0.05, 0.3) * height, rng.uniform(0.8, 0.97) * height
    t = np.clip((yy - top) / (bottom - top), 0, 1)
    if rng.random() < 0.5:  # vase: belly and neck
        profile = 0.25 + 0.18 * np.sin(np.pi * t * rng.uniform(0.8, 1.6) + rng.uniform(-0.5, 0.5)) ** 2
    else:  # bowl: wide rim narrowing to a foot
        profile = 0.42 * np.sqrt(np.clip(1 - t, 0.02, 1)) + 0.06
    half = profile * width * rng.uniform(0.7, 1.0)
    offset = (xx - width * rng.uniform(0.4, 0.6)) / half
    inside = (np.abs(offset) < 1) & (yy >= top) & (yy <= bottom)
    glaze = rng.uniform(0.05, 0.95, 3).astype(np.float32)
    shading = 0.55 + 0.45 * np.sqrt(np.clip(1 - offset**2, 0, 1))
    highlight = np.exp(-(((offset + 0.4) / 0.12) ** 2)) * rng.uniform(0.1, 0.5)
    bands = 1 - 0.25 * (np.sin(2 * np.pi * t * rng.integers(2, 7)) > 0.7)
    body = glaze * (shading * bands)[..., None] + highlight[..., None]
    return np.where(inside[..., None], body, background)


def _woven(height, width, rng):
    yy, xx = _grid(height, width)
    colours = rng.uniform(0.1, 0.9, size=(3, 3)).astype(np.float32)
    period = rng.uniform(3, 7)
    over = ((np.floor(xx / period) + np.floor(yy / period)) % 2).astype(bool)
    warp = np.abs(np.sin(np.pi * xx / period))
    weft = np.abs(np.sin(np.pi * yy / period))
    motif_period = rng.uniform(20, 70)
    motif = _waves(yy, xx, rng, motif_period, angle=rng.choice([0, np.pi / 4, np.pi / 2, 3 * np.pi / 4])) > 0
    first = np.where(motif[..., None], colours[0], colours[2])
    second = colours[1] * (0.6 + 0.4 * weft)[..., None]
    thread = np.where(over[..., None], first * (0.6 + 0.4 * warp)[..., None], second)
    fading = 1 - 0.3 * _smooth(rng, height, width, 3)
    return thread * fading[..., None]


_STYLES: list[Callable[[int, int, np.random.Generator], np.ndarray]] = [
    _albumen,
    _ceramic,
    _etching,
    _oil,
    _woodcut,
    _woven,
]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mame_transfer.datasets.demo [--out DIR] [--seed N] [--sizes T V T]``: generate or reuse, print it."""
    parser = argparse.ArgumentParser(prog="python -m mame_transfer.datasets.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=None, help=f"cache folder (default {default_cache_dir()})")
    parser.add_argument("--seed", type=int, default=0, help="generation seed")
    parser.add_argument("--sizes", type=int, nargs=3, default=list(DEFAULT_SIZES), metavar=("TRAIN", "VAL", "TEST"),
                        help="images per class in each split (default %(default)s)")
    args = parser.parse_args(argv)
    print(ensure_demo(args.out, seed=args.seed, sizes=args.sizes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
