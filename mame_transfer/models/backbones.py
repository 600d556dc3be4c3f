"""Backbone registry: one frozen record per architecture.

Each :class:`BackboneSpec` knows how to build the Keras Applications network, its ``preprocess_input``, its
default image size, its ordered blocks (addressable by name for freezing), the layer whose output is the
spatial feature map fed to the head, and the size of the pooled feature vector. Code elsewhere never branches
on the architecture name: it asks the registry.

ImageNet weights go through Keras's own download cache (``$KERAS_HOME/models``, default ``~/.keras/models``).
When the file is not cached and the download host cannot be reached, :func:`resolve_weights` raises a
:class:`~mame_transfer.core.errors.WeightsError` within seconds, naming the file and the folder to put it in.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence
from urllib.parse import urlparse

from mame_transfer.core.errors import ConfigError, WeightsError
from mame_transfer.models.flatten import flatten_model

_GCS = "https://storage.googleapis.com/tensorflow/keras-applications/"


@dataclass(frozen=True)
class Block:
    """A named group of consecutive backbone layers, matched by a regular expression on layer names."""

    name: str
    pattern: str

    def matches(self, layer_name: str) -> bool:
        return re.match(self.pattern, layer_name) is not None


@dataclass(frozen=True)
class BackboneSpec:
    """Everything the package needs to know about one architecture.

    Attributes:
        name: registry key (``--arch``).
        builder: ``(include_top, weights, input_shape, **kwargs) -> keras.Model`` (Keras Applications signature).
        preprocess: the architecture's ``preprocess_input`` (expects RGB in 0..255).
        default_size: the image size the ImageNet weights were trained at.
        default_freeze: the block ``--freeze-until auto`` resolves to (early, generic blocks frozen).
        blocks: ordered blocks, first to last.
        feature_layer: name of the last spatial feature layer (input of the head's global pooling).
        feature_dim: channels of ``feature_layer`` (depends on ``alpha`` for MobileNet, see :meth:`dim`).
        weights_files: ``(include_top, alpha, size) -> (file name, url)`` of the ImageNet weights, or None.
        top_layers: for ``include_top`` models, the ImageNet classifier's layer names (penultimate first).
        min_size: the smallest input side the network accepts.
    """

    name: str
    builder: Callable[..., object]
    preprocess: Callable
    default_size: int
    blocks: tuple[Block, ...]
    feature_layer: str
    feature_dim: int
    weights_files: Callable[[bool, float, int], tuple[str, str]] | None = None
    top_layers: tuple[str, ...] = ()
    min_size: int = 32
    accepts_alpha: bool = False
    default_freeze: str = "all"
    description: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def block_names(self) -> list[str]:
        return [b.name for b in self.blocks]

    def dim(self, alpha: float = 1.0) -> int:
        """Channels of the feature layer for width multiplier ``alpha``."""
        return int(self.feature_dim * alpha) if self.accepts_alpha else self.feature_dim

    def block_of(self, layer_name: str) -> str | None:
        """The block a layer belongs to, or None (input and stray layers)."""
        for block in self.blocks:
            if block.matches(layer_name):
                return block.name
        return None

    def check_block(self, name: str) -> str:
        if name not in self.block_names:
            raise ConfigError(
                f"{self.name} has no block {name!r}. Valid blocks, first to last: {', '.join(self.block_names)} "
                f"(or 'none' to train every layer, 'all' to freeze the whole backbone)."
            )
        return name

    def resolve_freeze(self, freeze_until: str | None) -> str:
        """The one place ``--freeze-until`` is resolved: ``auto`` -> the registry default, None -> ``none``;
        ``none`` / ``all`` / a valid block name are returned as given (lower-cased keywords)."""
        key = "none" if freeze_until is None else str(freeze_until)
        if key.lower() == "auto":
            return self.default_freeze
        if key.lower() in ("none", "all"):
            return key.lower()
        return self.check_block(key)

    def build(
        self,
        *,
        weights: str | None = None,
        input_shape: Sequence[int | None] = (None, None, 3),
        include_top: bool = False,
        alpha: float = 1.0,
    ):
        """Build the Keras Applications model with weights resolved by :func:`resolve_weights`."""
        size = input_shape[0] if input_shape and input_shape[0] else self.default_size
        kwargs = {"alpha": alpha} if self.accepts_alpha else {}
        resolved = resolve_weights(self, weights, include_top=include_top, alpha=alpha, size=size)
        if include_top:
            input_shape = (self.default_size, self.default_size, 3)
        try:
            return self.builder(include_top=include_top, weights=resolved, input_shape=tuple(input_shape), **kwargs)
        except Exception as exc:  # Keras raises plain Exception on a failed download
            if weights == "imagenet" and resolved == "imagenet":
                fname, url = self.weights_files(include_top, alpha, size)
                raise WeightsError(_offline_message(fname, url, str(exc))) from exc
            if resolved is not None and resolved != "imagenet":  # a file: not HDF5, or another network's weights
                raise WeightsError(_weights_file_message(self, resolved, exc, include_top, alpha, size)) from None
            raise


def _weights_file_message(spec: "BackboneSpec", path: str, exc: Exception, include_top: bool, alpha: float,
                          size: int) -> str:
    what = f"{spec.name}" + (f" alpha {alpha}" if spec.accepts_alpha else "") + \
        (" with its ImageNet classifier" if include_top else " without its classifier (no top)")
    example = ""
    if spec.weights_files is not None:
        with contextlib.suppress(Exception):
            example = f", such as {spec.weights_files(include_top, alpha, size)[0]}"
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (f"weights file {path!r} cannot be loaded into {what}: {reason[:300]}. Expected a Keras Applications HDF5 "
            f"weights file (.h5) for exactly that network{example}; or pass --weights imagenet or none.")


def keras_models_dirs() -> list[Path]:
    """Folders where Keras looks for cached weights, in Keras's order of preference."""
    dirs = []
    if os.environ.get("KERAS_HOME"):
        dirs.append(Path(os.environ["KERAS_HOME"]).expanduser() / "models")
    try:
        from keras.src.backend import config as kconfig

        dirs.append(Path(kconfig.keras_home()).expanduser() / "models")
    except Exception:  # pragma: no cover - private API moved
        pass
    dirs.append(Path("~/.keras/models").expanduser())
    dirs.append(Path("/tmp/.keras/models"))
    seen, out = set(), []
    for d in dirs:
        if d not in seen:
            seen.add(d)
            out.append(d)
    return out


def cached_weights(spec: BackboneSpec, *, include_top: bool = False, alpha: float = 1.0, size: int | None = None):
    """Path of the cached ImageNet weights file for this configuration, or None."""
    if spec.weights_files is None:
        return None
    sizes = [size or spec.default_size]
    if not include_top:
        # Without the classifier the weights do not depend on the input size (MobileNet files differ by name only).
        sizes.append(spec.default_size)
    for s in sizes:
        fname, _ = spec.weights_files(include_top, alpha, s)
        for d in keras_models_dirs():
            if (d / fname).is_file():
                return d / fname
    return None


def _offline_message(fname: str, url: str, reason: str) -> str:
    target = keras_models_dirs()[0]
    return (
        f"ImageNet weights file {fname!r} is not in the Keras cache and could not be downloaded ({reason}).\n"
        f"Fix it one of two ways:\n"
        f"  1. connect to the internet and rerun (Keras downloads {url} into {target}/), or\n"
        f"  2. copy {fname} into a folder <dir>/models/ and set KERAS_HOME=<dir> "
        f"(currently looking in: {', '.join(str(d) for d in keras_models_dirs())}).\n"
        f"Or train from scratch with --weights none."
    )


def _host_reachable(url: str, timeout: float = 4.0) -> bool:
    host = urlparse(url).hostname or ""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_weights(
    spec: BackboneSpec, weights: str | None, *, include_top: bool = False, alpha: float = 1.0, size: int | None = None
):
    """Turn ``--weights`` into what the Keras builder accepts.

    Args:
        spec: the backbone.
        weights: ``"imagenet"``, ``"none"``/None, or the path of a Keras Applications weights file.

    Returns:
        None, a file path (cached or given), or ``"imagenet"`` (Keras will download it).

    Raises:
        WeightsError: the file is missing and cannot be downloaded, or a given path does not exist.
    """
    if weights is None or str(weights).lower() in ("none", "random", ""):
        return None
    if weights == "imagenet":
        if spec.weights_files is None:
            raise WeightsError(f"{spec.name} has no ImageNet weights. Received: weights={weights!r}; use 'none'.")
        cached = cached_weights(spec, include_top=include_top, alpha=alpha, size=size)
        if cached is not None:
            return str(cached)
        fname, url = spec.weights_files(include_top, alpha, size or spec.default_size)
        if not _host_reachable(url):
            raise WeightsError(_offline_message(fname, url, f"{urlparse(url).hostname} is unreachable"))
        return "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"weights file {str(path)!r} does not exist. Received: weights={weights!r}; expected 'imagenet', "
            f"'none' or the path of a {spec.name} Keras Applications weights file (.h5)."
        )
    return str(path)


# ----------------------------------------------------------------------------------------------- registry


def _vgg_files(name: str):
    def files(include_top: bool, alpha: float, size: int):
        fname = f"{name}_weights_tf_dim_ordering_tf_kernels{'' if include_top else '_notop'}.h5"
        return fname, f"{_GCS}{name}/{fname}"

    return files


def _resnet_files(include_top: bool, alpha: float, size: int):
    fname = f"resnet50_weights_tf_dim_ordering_tf_kernels{'' if include_top else '_notop'}.h5"
    return fname, f"{_GCS}resnet/{fname}"


def _efficientnet_files(name: str):
    def files(include_top: bool, alpha: float, size: int):
        fname = f"{name}{'' if include_top else '_notop'}.h5"
        return fname, f"https://storage.googleapis.com/keras-applications/{fname}"

    return files


_MOBILENET_ALPHAS = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}


def _mobilenet_files(include_top: bool, alpha: float, size: int):
    if alpha not in _MOBILENET_ALPHAS:
        raise ConfigError(f"mobilenet ImageNet weights exist for alpha in {sorted(_MOBILENET_ALPHAS)}. Received: alpha={alpha}")
    # Keras picks the file by input size; with a free input size (None) it loads the 224 file.
    rows = size if size in (128, 160, 192, 224) else 224
    fname = f"mobilenet_{_MOBILENET_ALPHAS[alpha]}_{rows}_tf{'' if include_top else '_no_top'}.h5"
    return fname, f"{_GCS}mobilenet/{fname}"


def _keras_apps():
    import keras

    return keras.applications


def _lazy(path: str):
    """A callable resolving ``keras.applications.<path>`` on first use (keeps ``import`` of this module cheap)."""

    def call(*args, **kwargs):
        obj = _keras_apps()
        for part in path.split("."):
            obj = getattr(obj, part)
        return obj(*args, **kwargs)

    call.__name__ = path
    call.__qualname__ = path
    return call


def _vgg_blocks() -> tuple[Block, ...]:
    return tuple(Block(f"block{i}", rf"block{i}_") for i in range(1, 6))


def _efficientnet_blocks(n: int = 7) -> tuple[Block, ...]:
    return (
        (Block("stem", r"(rescaling|normalization|stem_)"),)
        + tuple(Block(f"block{i}", rf"block{i}[a-z]_") for i in range(1, n + 1))
        + (Block("top", r"top_"),)
    )


def _efficientnet_v2_files(variant: str):
    def files(include_top: bool, alpha: float, size: int):
        fname = f"efficientnetv2-{variant}{'' if include_top else '_notop'}.h5"
        return fname, f"{_GCS}efficientnet_v2/{fname}"

    return files


def _convnext_files(size: str):
    def files(include_top: bool, alpha: float, size_px: int):
        fname = f"convnext_{size}{'' if include_top else '_notop'}.h5"
        return fname, f"{_GCS}convnext/{fname}"

    return files


def _convnext_blocks(prefix: str) -> tuple[Block, ...]:
    """Stem, the four stages (each stage's downsampling layers belong to it) and the final LayerNormalization."""
    stages = [Block("stage0", rf"{prefix}_stage_0_")]
    stages += [Block(f"stage{i}", rf"{prefix}_(stage_{i}_|downsampling_(layernorm|conv)_{i - 1}$)") for i in range(1, 4)]
    return (Block("stem", rf"{prefix}_(prestem|stem)_"), *stages, Block("top", rf"{prefix}_top_layernorm$"))


def _convnext_builder(fn: str, prefix: str):
    """A Keras Applications-style builder of a flat ConvNeXt (stem and downsampling ``Sequential`` inlined)."""

    def build(include_top=False, weights=None, input_shape=(None, None, 3), **kwargs):
        model = _lazy(fn)(include_top=include_top, weights=weights, input_shape=input_shape, **kwargs)
        last = model.outputs[0]._keras_history[0].name
        return flatten_model(model, rename={} if include_top else {last: f"{prefix}_top_layernorm"})

    build.__name__ = fn
    return build


def _tiny_builder(include_top=False, weights=None, input_shape=(None, None, 3), **kwargs):
    """A 3-block CNN named like Keras Applications, for fast tests (registered as ``test_tiny``)."""
    import keras
    from keras import layers

    if weights not in (None,):
        raise WeightsError(f"test_tiny has no pretrained weights. Received: weights={weights!r}")
    inputs = keras.Input(shape=input_shape)
    x = inputs
    for i, width in enumerate((8, 16, 32), start=1):
        x = layers.Conv2D(width, 3, padding="same", name=f"block{i}_conv1")(x)
        x = layers.BatchNormalization(name=f"block{i}_bn")(x)
        x = layers.Activation("relu", name=f"block{i}_relu")(x)
        x = layers.MaxPooling2D(2, name=f"block{i}_pool")(x)
    return keras.Model(inputs, x, name="test_tiny")


def _tiny_preprocess(x, **kwargs):
    return x / 127.5 - 1.0


def _pre(module: str):
    def preprocess(x, **kwargs):
        return getattr(_keras_apps(), module).preprocess_input(x, **kwargs)

    preprocess.__name__ = f"{module}.preprocess_input"
    return preprocess


REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    """Add a backbone to the registry (also usable for user-defined architectures)."""
    REGISTRY[spec.name] = spec
    return spec


register(BackboneSpec(
    "vgg16", _lazy("VGG16"), _pre("vgg16"), 224, _vgg_blocks(), "block5_pool", 512,
    _vgg_files("vgg16"), top_layers=("fc2", "fc1", "predictions"), default_freeze="block3", description="VGG16 (Simonyan & Zisserman 2015)",
))
register(BackboneSpec(
    "vgg19", _lazy("VGG19"), _pre("vgg19"), 224, _vgg_blocks(), "block5_pool", 512,
    _vgg_files("vgg19"), top_layers=("fc2", "fc1", "predictions"), default_freeze="block3", description="VGG19",
))
register(BackboneSpec(
    "resnet50", _lazy("ResNet50"), _pre("resnet50"), 224,
    (Block("conv1", r"(conv1_|pool1_)"),) + tuple(Block(f"conv{i}", rf"conv{i}_") for i in range(2, 6)),
    "conv5_block3_out", 2048, _resnet_files, top_layers=("avg_pool", "predictions"), default_freeze="conv3", description="ResNet50 (He et al.)",
))
register(BackboneSpec(
    "efficientnetb0", _lazy("EfficientNetB0"), _pre("efficientnet"), 224, _efficientnet_blocks(), "top_activation",
    1280, _efficientnet_files("efficientnetb0"), top_layers=("avg_pool", "predictions"), default_freeze="block5", description="EfficientNet-B0",
))
register(BackboneSpec(
    "efficientnetb3", _lazy("EfficientNetB3"), _pre("efficientnet"), 300, _efficientnet_blocks(), "top_activation",
    1536, _efficientnet_files("efficientnetb3"), top_layers=("avg_pool", "predictions"), default_freeze="block5", description="EfficientNet-B3",
))
register(BackboneSpec(
    "mobilenet", _lazy("MobileNet"), _pre("mobilenet"), 224,
    (Block("conv1", r"conv1(_|$)"),) + tuple(Block(f"block{i}", rf"conv_(dw|pw|pad)_{i}(_|$)") for i in range(1, 14)),
    "conv_pw_13_relu", 1024, _mobilenet_files, top_layers=("global_average_pooling2d", "predictions"),
    accepts_alpha=True, default_freeze="block5", description="MobileNet v1 (alpha = width multiplier)",
))
for _variant, _size, _dim in (("b0", 224, 1280), ("b3", 300, 1536), ("s", 384, 1280)):
    register(BackboneSpec(
        f"efficientnetv2{_variant}", _lazy(f"EfficientNetV2{_variant.upper()}"), _pre("efficientnet_v2"), _size,
        _efficientnet_blocks(6), "top_activation", _dim, _efficientnet_v2_files(_variant),
        top_layers=("avg_pool", "predictions"), default_freeze="block4",
        description=f"EfficientNetV2-{_variant.upper()} (Tan & Le 2021; rescaling inside the model)",
    ))
for _variant in ("tiny", "small"):
    register(BackboneSpec(
        f"convnext_{_variant}", _convnext_builder(f"ConvNeXt{_variant.title()}", f"convnext_{_variant}"),
        _pre("convnext"), 224, _convnext_blocks(f"convnext_{_variant}"), f"convnext_{_variant}_top_layernorm", 768,
        _convnext_files(_variant), top_layers=(f"convnext_{_variant}_head_dense",), default_freeze="stage1",
        description=f"ConvNeXt-{_variant.title()} (Liu et al. 2022; normalisation inside the model)",
    ))
register(BackboneSpec(
    "test_tiny", _tiny_builder, _tiny_preprocess, 32,
    tuple(Block(f"block{i}", rf"block{i}_") for i in range(1, 4)), "block3_pool", 32, None, min_size=8, default_freeze="block1",
    description="3-block CNN for tests (no pretrained weights)",
))

PRODUCT_ARCHS = ("vgg16", "vgg19", "resnet50", "efficientnetb0", "efficientnetb3", "efficientnetv2b0", "efficientnetv2b3",
                 "efficientnetv2s", "convnext_tiny", "convnext_small", "mobilenet")


def get(name: str) -> BackboneSpec:
    """Look up an architecture; the error lists the registered ones."""
    key = str(name).lower()
    if key not in REGISTRY:
        raise ConfigError(f"unknown architecture {name!r}. Registered: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[key]
