"""The phases of a run: head-only warm-up, progressive image sizes, then the rest at ``--image-size``.

Progressive resizing (``--progressive 160:3,224:3`` with ``--image-size 320``: epochs 1-3 at 160 px, 4-6 at
224 px, 7 onwards at 320 px; Howard & Gugger's fastai "progressive resizing") trains the early epochs on small,
cheap images. Every registry backbone is fully convolutional and pools globally before the head, so the weights
carry over from one size to the next unchanged; each size is its own phase (a fresh optimizer and schedule, as
after the warm-up). Best-epoch selection only considers epochs at the final size, the one the run is scored at.
"""

from __future__ import annotations

from dataclasses import dataclass

from mame_transfer.core.config import TrainConfig
from mame_transfer.core.errors import ConfigError


@dataclass(frozen=True)
class Phase:
    """Epochs ``start`` (inclusive) to ``end`` (exclusive), frozen up to ``freeze``, at ``size`` px."""

    start: int
    end: int
    freeze: str
    size: int


def parse_progressive(text: str | None, final_size: int, epochs: int) -> list[tuple[int, int]]:
    """``"160:3,224:3"`` -> ``[(160, 3), (224, 3)]``: sizes below ``final_size``, increasing, epochs > 0.

    Raises:
        ConfigError: a bad item, sizes not increasing or not below ``--image-size``, or no epoch left for it.
    """
    if not text or str(text).strip().lower() == "none":
        return []
    stages = []
    for item in str(text).split(","):
        size, sep, count = item.strip().partition(":")
        try:
            stage = (int(size), int(count))
        except ValueError:
            stage = None
        if not sep or stage is None or stage[0] < 8 or stage[1] < 1:
            raise ConfigError(f"--progressive items look like SIZE:EPOCHS, e.g. '160:3,224:3'. Received: {item!r}")
        stages.append(stage)
    sizes = [s for s, _ in stages] + [final_size]
    if any(a >= b for a, b in zip(sizes, sizes[1:])):
        raise ConfigError(f"--progressive sizes must increase and stay below --image-size {final_size}. "
                          f"Received: progressive={text!r}")
    if sum(n for _, n in stages) >= epochs:
        raise ConfigError(f"--progressive uses {sum(n for _, n in stages)} epoch(s) of {epochs}: leave at least one "
                          f"epoch at --image-size {final_size}")
    return stages


def plan_phases(config: TrainConfig) -> list[Phase]:
    """The phases of a resolved config, in order (a warm-up or size change starts a new phase)."""
    stages = parse_progressive(config.progressive, config.image_size, config.epochs)
    if stages and (config.shape != "fixed" or config.keep_top or config.scales):
        raise ConfigError("--progressive needs --shape fixed, no --keep-top and no --scales (the input size changes)")
    size_ends, end = [], 0
    for size, count in stages:
        end += count
        size_ends.append((end, size))
    cuts = sorted({0, config.warmup_epochs, config.epochs, *(e for e, _ in size_ends)})
    phases = []
    for a, b in zip(cuts, cuts[1:]):
        size = next((s for e, s in size_ends if a < e), config.image_size)
        freeze = "all" if b <= config.warmup_epochs else config.freeze_until
        phases.append(Phase(a, b, freeze, size))
    return phases


def augment_spec(config: TrainConfig) -> str | bool:
    """What the training pipeline augments with: the ``--augmentations`` spec, or False (``--no-augment``)."""
    return config.augmentations if config.augment else False
