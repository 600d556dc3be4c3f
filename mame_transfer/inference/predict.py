"""Class probabilities of a model on a table of images, fed as in training (size, shape, preprocessing, TTA)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mame_transfer.core.errors import ConfigError


def prediction_options(config) -> dict:
    """The input-shape options of a run's config that prediction must reproduce (``shape``, ``pixels``)."""
    return {"shape": config.shape, "pixels": config.pixels}


def predict_proba(model, table: pd.DataFrame, *, arch: str, image_size: int, batch_size: int = 32,
                  verbose: int = 0, shape: str = "fixed", pixels: int = 65536, tta: str = "none",
                  patch_scales: str = "1.0,0.7,0.5", patch_power: float = 5.0) -> np.ndarray:
    """Class probabilities for every row of ``table`` (no augmentation, registry preprocessing).

    Args:
        shape: ``fixed`` (square ``image_size`` resize) or ``variable`` (aspect kept, about ``pixels`` pixels).
        tta: ``none``; ``flip`` averages each image with its mirror image; ``patches`` is Oquab et al.'s
            multi-patch scoring (:mod:`mame_transfer.inference.tta`) at ``patch_scales`` with power ``patch_power``.
    """
    from mame_transfer.datasets import varshape
    from mame_transfer.datasets.pipeline import make_pipeline
    from mame_transfer.inference import tta as tta_mod
    from mame_transfer.models import backbones

    preprocess = backbones.get(arch).preprocess
    if tta not in tta_mod.MODES:
        raise ConfigError(f"tta must be one of {', '.join(tta_mod.MODES)}. Received: tta={tta!r}")
    if tta == "patches":
        return tta_mod.predict_patches(model, table, preprocess=preprocess, image_size=image_size,
                                       scales=patch_scales, power=patch_power, batch_size=batch_size, verbose=verbose)
    if shape == "variable":
        return varshape.predict_proba(model, table, pixels=pixels, preprocess=preprocess, flip=tta == "flip")
    pipeline = make_pipeline(table, image_size=image_size, preprocess=preprocess, batch_size=batch_size,
                             training=False, augment=False, with_labels=False)
    if tta == "flip":
        return tta_mod.flip_average(model, pipeline)
    return np.asarray(model.predict(pipeline, verbose=verbose))

