"""Run configuration: a dataclass, read from YAML, overridden by CLI flags, written back resolved.

Precedence: dataclass defaults < ``--config FILE.yaml`` < explicit CLI flags. The resolved config is saved as
``config.yaml`` in every run directory, and ``finetune --config <run>/config.yaml`` reproduces the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from mame_transfer.core.errors import ConfigError


def _f(default, help: str, choices: tuple | None = None, **kw):
    return field(default=default, metadata={"help": help, "choices": choices, **kw})


@dataclass
class TrainConfig:
    """Everything that defines a fine-tuning run. Field names are the YAML keys and the CLI flags."""

    # --- data
    data: str | None = _f(None, "dataset: a MAMe folder (CSV + data_256/ or data/) or a class-per-folder set")
    demo: bool = _f(False, "use the built-in demo set (generated on first use)")
    toy: bool = _f(False, "MAMe layout: read MAMe_toy_dataset.csv instead of MAMe_dataset.csv")
    images: str | None = _f(None, "MAMe layout: image folder, when not <data>/data_256 or <data>/data")
    museum: str | None = _f(None, "class-per-folder sets: value of the Museum column (default 'unknown')")
    check_images: bool = _f(True, "check every image header before training and report all bad files")
    val_fraction: float = _f(0.15, "flat class folders (<data>/<class>/*): share of each class held out for validation")
    test_fraction: float = _f(0.15, "flat class folders: share of each class held out for testing (0 = no test split)")
    split_seed: int = _f(0, "flat class folders: seed of the stratified split (recorded in <run>/splits.csv)")
    # --- model
    arch: str = _f("vgg16", "backbone (see --list-archs)")
    alpha: float = _f(1.0, "MobileNet width multiplier (0.25, 0.5, 0.75, 1.0)")
    weights: str = _f("imagenet", "imagenet | none | path of a Keras Applications weights file")
    image_size: int | None = _f(None, "square input side in pixels (default: the backbone's)")
    freeze_until: str = _f("auto", "freeze this block and every earlier one; 'none' trains all, 'all' head only")
    head: str = _f("512,256", "hidden Dense+ReLU widths of the head, comma separated ('none' = linear)")
    dropout: float = _f(0.5, "dropout after each hidden head layer")
    l2: float = _f(1e-4, "L2 penalty on head kernels")
    pooling: str = _f("avg", "global pooling of the backbone features", ("avg", "max"))
    head_solver: str = _f("sgd", "how the head is trained: sgd = epochs of --optimizer; logreg = linear probe: with --freeze-until all --head none --no-augment the softmax layer is fitted by logistic regression on the cached features (C by 3-fold CV on train); with --freeze-until BLOCK --warmup-epochs N the probe replaces the warm-up and the blocks after BLOCK are fine-tuned from it (LP-FT)", ("sgd", "logreg"))
    scales: str | None = _f(None, "multi-scale features: input sides, e.g. '224,320,448'; the backbone sees the image "
                            "at each (shared weights), pooled features concatenated (--image-size: the largest)")
    # --- optimisation
    optimizer: str = _f("adam", "optimizer", ("adam", "adamw", "sgd"))
    lr: float = _f(1e-4, "learning rate")
    weight_decay: float = _f(1e-4, "AdamW/SGD decoupled weight decay")
    momentum: float = _f(0.9, "SGD momentum")
    schedule: str = _f("plateau", "learning-rate schedule", ("constant", "plateau", "cosine"))
    plateau_factor: float = _f(0.2, "ReduceLROnPlateau factor")
    plateau_patience: int = _f(2, "ReduceLROnPlateau patience (epochs)")
    warmup_epochs: int = _f(0, "head-only epochs before unfreezing down to --freeze-until")
    epochs: int = _f(20, "maximum number of epochs (warm-up included)")
    batch_size: int = _f(32, "batch size")
    steps_per_epoch: int | None = _f(None, "limit the batches per epoch (quick experiments)")
    early_stopping: int = _f(5, "stop after this many epochs without val accuracy gain (0 = off)")
    class_weight: str = _f("none", "loss weighting of classes", ("none", "balanced"))
    label_smoothing: float = _f(0.0, "label smoothing of the cross-entropy")
    augment: bool = _f(True, "augment training images with --augmentations (out of the box: random flip, rotation up to 10 degrees)")
    image_cache: bool = _f(False, "keep decoded, resized images in memory after the first epoch (tf.data cache)",
                           alias="cache")
    seed: int = _f(0, "random seed (weights of the head, shuffling, augmentation)")
    strategy: str = _f("default", "tf.distribute strategy: mirrored = data-parallel over all local GPUs; "
                       "multiworker = over several machines (TF_CONFIG or Slurm)", ("default", "mirrored", "multiworker"))
    augmentations: str = _f("flip,rotation:10", "with --augment: Keras preprocessing layers on training batches, comma "
                            "separated: flip, rotation:DEGREES, zoom:FRACTION, randaugment:MAGNITUDE, mixup:ALPHA, "
                            "cutmix:FACTOR (mixup/cutmix train on the full network, not the prefix cache)")
    progressive: str | None = _f(None, "progressive resizing: 'SIZE:EPOCHS[,SIZE:EPOCHS...]' trains the first epochs "
                                 "at these smaller sizes, the rest at --image-size (each size a phase)")
    # --- speed (see mame_transfer.training.prefix_cache)
    prefix_cache: str = _f("auto", "compute the frozen layers once per image and train the rest on the cached "
                           "tensors: auto (memory if it fits, else disk), off, memory, disk",
                           ("auto", "off", "memory", "disk"))
    prefix_cache_dtype: str = _f("float32", "dtype of the prefix cache (float16 halves its size)",
                                 ("float32", "float16"), alias="cache_dtype")
    augment_copies: int = _f(0, "with --augment and the prefix cache: augmented views cached per image "
                             "(0 = train the full network when augmenting)")
    mixed_precision: str = _f("none", "Keras dtype policy (GPU: mixed_float16; TPU/recent CPU: mixed_bfloat16); "
                              "the softmax stays float32", ("none", "mixed_float16", "mixed_bfloat16"))
    jit_compile: bool = _f(False, "compile train/predict steps with XLA")
    # --- transfer methods (see mame_transfer.training.methods, inference.tta, datasets.varshape)
    reinit_until: str = _f("none", "re-initialise this block and every earlier one (Lagunas & Garces 2018)")
    block_lr: str | None = _f(None, "per-block learning rates, e.g. 'block1-block3:1e-2,block4-block5:1e-4,head:1e-2'")
    init_from: str | None = _f(None, "start from the backbone of this finished run, new head (double fine-tuning)")
    keep_top: bool = _f(False, "VGG: keep the ImageNet FC6/FC7 layers (fc1, fc2) under the new head (224 px)")
    shape: str = _f("fixed", "fixed: square resize; variable: aspect kept, --pixels budget", ("fixed", "variable"))
    pixels: int = _f(65536, "--shape variable: pixels per image (65536 = 256^2, 360000 = 600^2)")
    tta: str = _f("none", "test-time augmentation of the final evaluation", ("none", "flip", "patches"))
    patch_scales: str = _f("1.0,0.7,0.5", "--tta patches: patch sides as fractions of the short side")
    patch_power: float = _f(5.0, "--tta patches: k in score(C) = mean over patches of y(C|P)^k")
    # --- evaluation (see mame_transfer.training.crossval and mame_transfer.datasets.folds)
    folds: int = _f(0, "K-fold cross-validation over train+val (test untouched): one run per fold and a summary with "
                    "confidence intervals (0 = off)")
    fold: int = _f(0, "with --folds: train only this fold (1..K), e.g. one per machine; 0 = every fold, then the summary")
    select_on: str = _f("val", "what early stopping, ReduceLROnPlateau and best-epoch selection watch: val, or a "
                        "stratified slice of train (train-holdout, always with --folds) so val stays a clean estimate",
                        ("val", "train-holdout"))
    holdout_fraction: float = _f(0.1, "--select-on train-holdout: share of each class of train held out")
    # --- output
    out: str | None = _f(None, "run directory (default saved_models/<arch>-<timestamp>)")
    runs_dir: str = _f("saved_models", "parent folder of run directories")
    overwrite: bool = _f(False, "replace an existing complete run directory given by --out")
    verbose: int = _f(1, "0 silent, 1 a progress bar per epoch, 2 one line per epoch (and TensorFlow's own log "
                      "lines)", (0, 1, 2))
    tensorboard: bool = _f(False, "write TensorBoard logs (loss, accuracy, learning rate per epoch) to "
                           "<run>/tensorboard; view them with: tensorboard --logdir <run>/tensorboard")

    def validate(self) -> "TrainConfig":
        for f in fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise ConfigError(f"{f.name} must be one of {', '.join(choices)}. Received: {f.name}={value!r}")
        for f in fields(self):  # YAML or dataclass values that never went through _coerce
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{f.name} must be a finite number. Received: {f.name}={value!r}")
        for name in ("lr", "batch_size", "epochs", "alpha", "pixels", "patch_power"):
            if getattr(self, name) is None or getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive. Received: {name}={getattr(self, name)!r}")
        for name in ("image_size", "steps_per_epoch"):  # None means "the default"; 0 would silently mean it too
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer (or left unset). Received: "
                                  f"{name}={getattr(self, name)!r}")
        for name in ("weight_decay", "early_stopping", "plateau_patience", "augment_copies"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0. Received: {name}={getattr(self, name)!r}")
        for name in ("momentum", "label_smoothing"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} must be in [0, 1). Received: {name}={getattr(self, name)!r}")
        if not 0 < self.plateau_factor < 1:
            raise ConfigError(f"plateau_factor must be in (0, 1). Received: plateau_factor={self.plateau_factor!r}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1). Received: dropout={self.dropout}")
        if self.l2 < 0:
            raise ConfigError(f"l2 must be >= 0. Received: l2={self.l2}")
        if self.warmup_epochs < 0 or self.warmup_epochs >= self.epochs and self.warmup_epochs:
            raise ConfigError(f"warmup_epochs must be in [0, epochs). Received: warmup_epochs={self.warmup_epochs}")
        if not 0 < self.val_fraction < 1 or not 0 <= self.test_fraction < 1 or \
                self.val_fraction + self.test_fraction >= 1:
            raise ConfigError(f"val_fraction must be in (0, 1), test_fraction in [0, 1), their sum below 1. "
                              f"Received: val_fraction={self.val_fraction}, test_fraction={self.test_fraction}")
        if self.folds and self.folds < 2 or self.folds < 0:
            raise ConfigError(f"folds must be 0 (off) or at least 2. Received: folds={self.folds}")
        if not 0 <= self.fold <= self.folds:
            raise ConfigError(f"fold must be in 1..folds (0 = all) and needs --folds. Received: fold={self.fold}, "
                              f"folds={self.folds}")
        if self.progressive and self.shape != "fixed":
            raise ConfigError(f"--progressive resizes square inputs (--shape fixed); --shape {self.shape} keeps each "
                              f"image's aspect with a pixel budget (--pixels). Drop one of them.")
        if not 0 < self.holdout_fraction < 1:
            raise ConfigError(f"holdout_fraction must be in (0, 1). Received: holdout_fraction={self.holdout_fraction}")
        if not self.demo and not self.data:
            raise ConfigError("no dataset given: pass --data PATH (MAMe folder or class-per-folder set) or --demo")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _field_type(f: dataclasses.Field, cls) -> type:
    hints = typing.get_type_hints(cls)
    hint = hints[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def _coerce(name: str, value: Any, kind: type) -> Any:
    if value is None or (isinstance(value, str) and value.lower() in ("null", "~")):
        return None
    if kind is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "yes", "1", "on"):
            return True
        if str(value).lower() in ("false", "no", "0", "off"):
            return False
        raise ConfigError(f"{name} must be true or false. Received: {name}={value!r}")
    if kind in (int, float):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be a number. Received: {name}={value!r}") from None
        if not math.isfinite(number):  # nan / inf would train to NaN (lr) or fail deep inside Keras (l2)
            raise ConfigError(f"{name} must be a finite number. Received: {name}={value!r}")
        if kind is int:
            if number != int(number):
                raise ConfigError(f"{name} must be an integer. Received: {name}={value!r}")
            return int(number)
        return number
    if kind is str and isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value) if kind is str else value


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; dashes in keys are accepted for underscores."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option: value, got {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def aliases(cls=TrainConfig) -> dict[str, str]:
    """Former names of renamed options (still read from YAML and accepted as flags) -> current names."""
    return {f.metadata["alias"]: f.name for f in fields(cls) if f.metadata.get("alias")}


def from_dict(cls, values: dict[str, Any], *, source: str = "config"):
    """Build a config dataclass from a mapping; unknown keys are an error that lists the valid ones.

    Keys under a former name (:func:`aliases`), e.g. in the ``config.yaml`` of an older run, are read as the
    current one.
    """
    renamed = aliases(cls)
    values = {renamed.get(k, k): v for k, v in values.items()}
    names = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"{source}: unknown option(s) {', '.join(unknown)}. Valid options: {', '.join(names)}")
    kwargs = {k: _coerce(k, v, _field_type(names[k], cls)) for k, v in values.items()}
    return cls(**kwargs)


def add_arguments(parser: argparse.ArgumentParser, cls=TrainConfig, *, skip: tuple[str, ...] = ()) -> None:
    """One ``--flag`` per dataclass field, with ``default=SUPPRESS`` so only flags given override the YAML.

    The help shows the default once and the choices; a renamed option's former flag still works, hidden from
    the help (:func:`mame_transfer.core.cli.hidden_alias`).
    """
    from mame_transfer.core.cli import hidden_alias

    for f in fields(cls):
        if f.name in skip:
            continue
        kind = _field_type(f, cls)
        help_text = f.metadata.get("help", "")
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        default = f.default if f.default is not dataclasses.MISSING else None
        if kind is bool:
            kw["action"] = argparse.BooleanOptionalAction
            help_text += f" (default: {'on' if default else 'off'})"
        else:
            kw["type"] = str
            if f.metadata.get("choices"):  # argparse then lists them: --optimizer {adam,adamw,sgd}
                kw["choices"] = [str(c) for c in f.metadata["choices"]]
            else:
                kw["metavar"] = f.name.upper()
            if default is not None and "default" not in help_text:
                help_text += f" (default: {default})"
        parser.add_argument("--" + f.name.replace("_", "-"), help=help_text, **kw)
        if f.metadata.get("alias"):
            hidden_alias(parser, "--" + f.metadata["alias"].replace("_", "-"),
                         **{k: v for k, v in kw.items() if k not in ("default", "metavar")})


def resolve(cls, args: argparse.Namespace, *, config_path: str | None = None, base: dict[str, Any] | None = None):
    """Defaults < ``base`` (e.g. a named recipe's options) < YAML file < flags given on the command line."""
    values: dict[str, Any] = dict(base or {})
    if config_path:
        values.update(load_yaml(config_path))
    names = {f.name for f in fields(cls)}
    values.update({k: v for k, v in vars(args).items() if k in names})
    return from_dict(cls, values, source=str(config_path or "command line"))


def dump_yaml(config) -> str:
    """YAML text of a config, keys in field order."""
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)


def options_markdown(cls=TrainConfig) -> str:
    """The options table of ``docs/options.md``, generated from the dataclass so it cannot drift from the code."""
    rows = ["| flag / YAML key | default | meaning |", "|---|---|---|"]
    for f in fields(cls):
        choices = f.metadata.get("choices")
        text = f.metadata.get("help", "").replace("|", "\\|")
        if choices:
            text += f" ({' / '.join(str(c) for c in choices)})"
        if f.metadata.get("alias"):
            text += f"; former name `--{f.metadata['alias'].replace('_', '-')}` still accepted"
        rows.append(f"| `--{f.name.replace('_', '-')}` / `{f.name}` | `{f.default}` | {text} |")
    return "\n".join(rows) + "\n"


def update_readme(path: str | Path, cls=TrainConfig) -> bool:
    """Rewrite the options table between the markers of a Markdown file; returns True when it changed."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    start, end = "<!-- options-table:start -->\n", "<!-- options-table:end -->"
    i, j = text.index(start) + len(start), text.index(end)
    new = text[:i] + options_markdown(cls) + text[j:]
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


if __name__ == "__main__":  # python -m mame_transfer.core.config [docs/options.md]: print or refresh the options table
    import sys

    if len(sys.argv) > 1:
        print("updated" if update_readme(sys.argv[1]) else "up to date")
    else:
        print(options_markdown(), end="")
