"""Models and images for the analyses: ``imagenet:ARCH[:alpha]``, ``random:ARCH[:alpha]`` or a run directory.

A run directory gives its fine-tuned flat model (backbone layer names unchanged), so its layers line up by name
with the registry backbone built from ImageNet or random weights.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd

from mame_transfer.core.errors import ConfigError

SPEC_HELP = "expected 'imagenet:ARCH[:ALPHA]', 'random:ARCH[:ALPHA]' or a finished run directory"


@dataclass
class ModelSource:
    """A model to analyse and how to feed it.

    Attributes:
        label: short name for legends (``imagenet:mobilenet``, the run folder name...).
        model: the flat ``keras.Model``.
        arch: registry architecture.
        alpha: MobileNet width multiplier.
        image_size: square input side the model is fed at.
        preprocess: the registry ``preprocess_input`` (expects 0..255 RGB).
        classes: class names of a run, None for a bare backbone.
        run_dir: the run directory, None for a bare backbone.
        config: the run's resolved ``TrainConfig``, None for a bare backbone.
    """

    label: str
    model: object
    arch: str
    alpha: float = 1.0
    image_size: int = 224
    preprocess: Callable | None = None
    classes: list[str] | None = None
    run_dir: Path | None = None
    config: object = field(default=None, repr=False)


def load_source(spec: str, *, image_size: int | None = None, seed: int = 0) -> ModelSource:
    """Build or load the model named by ``spec``.

    Args:
        spec: ``imagenet:ARCH[:ALPHA]`` (registry backbone, ImageNet weights), ``random:ARCH[:ALPHA]`` (random
            init, seeded) or the path of a finished run directory.
        image_size: input side for bare backbones (default: the registry's); ignored for runs.
        seed: seed of the random initialisation.
    """
    from mame_transfer.models import backbones
    from mame_transfer.training.runs import load_run

    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        model, config, classes = load_run(path)
        size = int(config.image_size or model.input_shape[1])
        return ModelSource(path.name, model, config.arch, float(config.alpha), size,
                           backbones.get(config.arch).preprocess, classes, path, config)
    parts = text.split(":")
    if parts[0] not in ("imagenet", "random") or len(parts) not in (2, 3):
        raise ConfigError(f"cannot read model {text!r}: no such run directory, and {SPEC_HELP}.")
    arch = backbones.get(parts[1])
    try:
        alpha = float(parts[2]) if len(parts) == 3 else 1.0
    except ValueError:
        raise ConfigError(f"alpha in {text!r} must be a number, e.g. imagenet:mobilenet:0.25") from None
    if len(parts) == 3 and not arch.accepts_alpha:
        raise ConfigError(f"{arch.name} takes no width multiplier. Received: {text!r}")
    size = int(image_size or arch.default_size)
    if parts[0] == "random":
        import keras

        keras.utils.set_random_seed(seed)
    model = arch.build(weights="imagenet" if parts[0] == "imagenet" else None, input_shape=(size, size, 3),
                       alpha=alpha)
    return ModelSource(text, model, arch.name, alpha, size, arch.preprocess)


def load_pair(a: str | ModelSource, b: str | ModelSource | None = None, *, image_size: int | None = None,
              seed: int = 0) -> tuple[ModelSource, ModelSource | None]:
    """The two models an analysis compares (``b`` optional), fed at the same image size.

    A bare backbone spec is built at ``image_size``, else at the size of the first run directory among ``a``,
    ``b`` (a run is loaded once when both name it), else at the size of a model given already loaded.

    Args:
        a: a spec for :func:`load_source`, or a loaded :class:`ModelSource` (used as is).
        b: the same forms, or None.
        image_size: input side of bare backbones.
        seed: seed of ``a``'s random initialisation; ``b`` gets ``seed + 1`` so two random inits differ.

    Raises:
        ConfigError: the two are fed at different sizes (named ``--a``/``--b``, as the ``analyze`` flags).
    """
    size = image_size
    loaded = {}
    if not size:
        run_spec = next((s for s in (a, b) if s and not isinstance(s, ModelSource) and Path(s).expanduser().is_dir()),
                        None)
        if run_spec is not None:
            loaded[run_spec] = load_source(run_spec)
            size = loaded[run_spec].image_size
        else:
            size = next((s.image_size for s in (a, b) if isinstance(s, ModelSource)), None)

    def get(spec, seed):
        if isinstance(spec, ModelSource):
            return spec
        return loaded[spec] if spec in loaded else load_source(spec, image_size=size, seed=seed)

    src_a = get(a, seed)
    src_b = get(b, seed + 1) if b else None
    if src_b is not None and src_a.image_size != src_b.image_size:
        raise ConfigError(f"--a is fed at {src_a.image_size} px and --b at {src_b.image_size} px; pass --image-size")
    if src_b is not None and src_b.label == src_a.label and src_b is not src_a:
        # Results are keyed by label: two different models named alike (two random inits) must not collide.
        src_a, src_b = (dataclasses.replace(src_a, label=f"{src_a.label} (a)"),
                        dataclasses.replace(src_b, label=f"{src_b.label} (b)"))
    return src_a, src_b


def common_layers(a: ModelSource, b: ModelSource | None, names: Sequence[str] | None = None, *,
                  pattern: str | None = None) -> list[str]:
    """:func:`spatial_layers` of ``a`` that ``b`` has too (same names), in depth order.

    Named layers that ``b`` lacks are an error; layers chosen by default or by ``pattern`` are silently dropped.
    """
    layers = spatial_layers(a.model, names, pattern=pattern)
    if b is not None:
        names_b = {layer.name for layer in b.model.layers}
        missing = [n for n in layers if n not in names_b]
        if names and missing:
            raise ConfigError(f"{b.label} has no layer(s) {missing}")
        layers = [n for n in layers if n in names_b]
    if not layers:
        raise ConfigError(f"no common spatial layer between {a.label} and {b.label if b else '-'}")
    return layers


def load_table(*, data: str | None = None, source: ModelSource | None = None, split: str = "val",
               toy: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """Rows of ``split`` of ``data`` (a dataset path) or, when ``data`` is None, of the run's own dataset.

    Returns:
        The split table (``image``, ``path``, ``label``, ``label_index``...) and the class names.
    """
    from mame_transfer.datasets.layouts import load_dataset
    from mame_transfer.training.runs import dataset_for

    if data:
        dataset = load_dataset(data, toy=toy, require=(split,), check_files=False)
    elif source is not None and source.config is not None:
        config = source.config
        config.check_images = False
        dataset = dataset_for(config, require=(split,), run_dir=source.run_dir)
    else:
        raise ConfigError("no images to analyse: pass --data PATH (a dataset folder) or a run directory model")
    return dataset.split(split), list(dataset.classes)


def stratified_sample(labels: Sequence, per_class: int | None, *, seed: int = 0) -> np.ndarray:
    """Sorted row indices holding at most ``per_class`` rows of every label (all rows when None)."""
    labels = np.asarray(labels)
    if per_class is None or per_class <= 0:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    keep = []
    for value in pd.unique(labels):
        rows = np.flatnonzero(labels == value)
        keep.append(rows if len(rows) <= per_class else rng.choice(rows, per_class, replace=False))
    return np.sort(np.concatenate(keep)) if keep else np.arange(0)


def sample_table(a: ModelSource, b: ModelSource | None = None, *, data: str | None = None, split: str = "val",
                 toy: bool = False, per_class: int | None = 0, seed: int = 0) -> tuple[pd.DataFrame, list[str]]:
    """At most ``per_class`` rows per class of ``split`` of ``data``, else of the dataset of run ``b`` or ``a``.

    Returns:
        The sampled split table and the class names.
    """
    run = next((s for s in (b, a) if s is not None and s.config is not None), None)
    table, classes = load_table(data=data, source=run, split=split, toy=toy)
    rows = stratified_sample(table["label"].to_numpy(), per_class, seed=seed)
    return table.iloc[rows].reset_index(drop=True), classes


def image_batches(table: pd.DataFrame, image_size: int, *, batch_size: int = 32) -> Iterator[np.ndarray]:
    """Decoded, resized, un-preprocessed float32 batches (0..255) of the table's images, in row order."""
    from mame_transfer.datasets.pipeline import make_pipeline

    pipeline = make_pipeline(table, image_size=image_size, preprocess=None, batch_size=batch_size,
                             training=False, augment=False, with_labels=False)
    for batch in pipeline:
        yield np.asarray(batch)


def load_images(paths: Sequence[str], image_size: int) -> np.ndarray:
    """Decode and resize image files to ``[n, size, size, 3]`` float32 in 0..255."""
    from mame_transfer.datasets.pipeline import decode_and_resize

    out = []
    for p in paths:
        if not Path(p).is_file():
            raise ConfigError(f"image file {p!r} does not exist")
        out.append(np.asarray(decode_and_resize(str(p), image_size)))
    return np.stack(out) if out else np.zeros((0, image_size, image_size, 3), np.float32)


def thumbnail(path: str, size: int = 96) -> np.ndarray:
    """A square RGB uint8 thumbnail of an image file (centre-padded), for grids and the report."""
    from PIL import Image

    from mame_transfer.datasets.images import to_rgb8

    with Image.open(path) as im:
        im = to_rgb8(im)
        im.thumbnail((size, size))
        canvas = Image.new("RGB", (size, size), (255, 255, 255))
        canvas.paste(im, ((size - im.width) // 2, (size - im.height) // 2))
        return np.asarray(canvas)


def spatial_layers(model, names: Sequence[str] | None = None, *, pattern: str | None = None) -> list[str]:
    """Layers with a 4-D (spatial) output, in depth order.

    Default choice: the outputs of non-linearities (ReLU/Activation layers, and convolutions that carry their own
    activation, as in VGG), i.e. the feature maps the papers analyse. ``pattern`` is a regular expression on
    layer names that replaces that rule; ``names`` are checked and returned as given.
    """
    import re

    from keras import layers as kl

    by_name = {layer.name: layer for layer in model.layers}
    if names:
        missing = [n for n in names if n not in by_name]
        if missing:
            spatial = [lay.name for lay in model.layers if _rank(lay) == 4]
            raise ConfigError(f"model {model.name!r} has no layer(s) {missing}. Spatial layers: "
                              f"{', '.join(spatial[:12])}{' ...' if len(spatial) > 12 else ''}")
        return list(names)
    out = []
    for layer in model.layers:
        if _rank(layer) != 4 or isinstance(layer, kl.InputLayer):
            continue
        if pattern is not None:
            if re.search(pattern, layer.name):
                out.append(layer.name)
            continue
        act = getattr(layer, "activation", None)
        act_name = getattr(act, "__name__", "linear")
        if isinstance(layer, (kl.ReLU, kl.Activation)) or (isinstance(layer, kl.Conv2D) and act_name != "linear"):
            out.append(layer.name)
    return out


def _rank(layer) -> int:
    try:
        return len(layer.output.shape)
    except (AttributeError, ValueError):
        return 0


def last_spatial_layer(model) -> str:
    """The deepest layer with a 4-D output (the Grad-CAM default)."""
    names = [layer.name for layer in model.layers if _rank(layer) == 4]
    if not names:
        raise ConfigError(f"model {model.name!r} has no layer with a spatial (4-D) output")
    return names[-1]


def pooled_model(model, layer_names: Sequence[str], reduce: str = "mean"):
    """A model mapping images to the per-channel spatial mean (or max) of each named layer."""
    import keras

    pool = {"mean": keras.layers.GlobalAveragePooling2D, "max": keras.layers.GlobalMaxPooling2D}[reduce]
    outputs = [pool(name=f"_pool_{i}")(model.get_layer(n).output) for i, n in enumerate(layer_names)]
    return keras.Model(model.inputs[0], outputs, name=f"{model.name}_pooled")


def pooled_features(source: ModelSource, layer_names: Sequence[str], images: np.ndarray,
                    reduce: str = "mean", _cache: dict | None = None) -> list[np.ndarray]:
    """``[n, channels]`` pooled activations of each layer for a batch of 0..255 images."""
    key = (tuple(layer_names), reduce)
    if _cache is not None and key in _cache:
        sub = _cache[key]
    else:
        sub = pooled_model(source.model, layer_names, reduce)
        if _cache is not None:
            _cache[key] = sub
    x = source.preprocess(np.array(images, dtype=np.float32)) if source.preprocess else images
    outs = sub(x, training=False)
    if not isinstance(outs, (list, tuple)):
        outs = [outs]
    return [np.asarray(o, dtype=np.float64) for o in outs]
