"""A search YAML: ``base`` (fixed TrainConfig options), ``tuner`` (algorithm, objective, budget) and ``space``.

Every searched option's default is the untuned ``TrainConfig`` default (so a search's first trial is the plain
run); :func:`declare` states the space on a KerasTuner ``HyperParameters`` and :func:`trial_config` turns the values
a trial drew into the TrainConfig it trains with.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mame_transfer.core import config as cfg
from mame_transfer.core.config import TrainConfig
from mame_transfer.core.errors import ConfigError, MameTransferError

ALGORITHMS = ("random", "hyperband", "bayesian")
OBJECTIVES = ("val_accuracy", "val_macro_f1")
SEARCHABLE = ("lr", "l2", "dropout", "head", "freeze_until", "optimizer", "batch_size", "image_size")
INTEGER_CHOICES = ("batch_size", "image_size")
REQUIRED_SPACE = ("lr", "l2", "dropout")


class TuneError(MameTransferError, RuntimeError):
    """The search could not produce a trustworthy result (failed trials, nothing completed)."""


@dataclass
class TunerSettings:
    """The ``tuner:`` section of a search YAML."""

    algorithm: str = "hyperband"
    objective: str = "val_accuracy"
    max_trials: int = 20
    max_epochs: int | None = None  # hyperband; default: base epochs
    factor: int = 3
    hyperband_iterations: int = 1
    num_initial_points: int | None = None  # bayesian
    executions_per_trial: int = 1
    max_consecutive_failed_trials: int = 3
    seed: int = 0
    features: str = "auto"  # auto | on | off: cached backbone features when the backbone is frozen whole

    def validate(self, source: str) -> "TunerSettings":
        for name, choices in (("algorithm", ALGORITHMS), ("objective", OBJECTIVES), ("features", ("auto", "on", "off"))):
            if getattr(self, name) not in choices:
                raise ConfigError(f"{source}: tuner.{name} must be one of {', '.join(choices)}. "
                                  f"Received: {name}={getattr(self, name)!r}")
        for name in ("max_trials", "factor", "executions_per_trial", "max_consecutive_failed_trials"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{source}: tuner.{name} must be >= 1. Received: {name}={getattr(self, name)!r}")
        return self


@dataclass
class SearchSpec:
    """A whole search: name, fixed TrainConfig options, tuner settings and the searched space."""

    name: str
    base: dict[str, Any]
    tuner: TunerSettings
    space: dict[str, dict[str, Any]]
    source: str = "search config"

    def base_config(self, **overrides) -> TrainConfig:
        values = {**self.base, **{k: v for k, v in overrides.items() if v is not None}}
        return cfg.from_dict(TrainConfig, values, source=self.source)

    def to_dict(self) -> dict:
        return {"name": self.name, "base": dict(self.base), "tuner": dataclasses.asdict(self.tuner),
                "space": copy.deepcopy(self.space)}


def load_spec(path: str | Path) -> SearchSpec:
    """Read and check a search YAML (``name``, ``base``, ``tuner``, ``space``)."""
    path = Path(path)
    raw = cfg.load_yaml(path)
    unknown = sorted(set(raw) - {"name", "base", "tuner", "space"})
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(unknown)}; expected name, base, tuner, space")
    return spec_from_dict(raw, source=str(path), default_name=path.stem)


def spec_from_dict(raw: dict, *, source: str = "search config", default_name: str = "search") -> SearchSpec:
    base = {str(k).replace("-", "_"): v for k, v in (raw.get("base") or {}).items()}
    cfg.from_dict(TrainConfig, base, source=f"{source} base")  # unknown keys / bad values fail here
    tuner_raw = {str(k).replace("-", "_"): v for k, v in (raw.get("tuner") or {}).items()}
    names = {f.name for f in dataclasses.fields(TunerSettings)}
    bad = sorted(set(tuner_raw) - names)
    if bad:
        raise ConfigError(f"{source}: unknown tuner option(s) {', '.join(bad)}. Valid: {', '.join(sorted(names))}")
    tuner = TunerSettings(**tuner_raw).validate(source)
    space = {str(k).replace("-", "_"): dict(v or {}) for k, v in (raw.get("space") or {}).items()}
    missing = [k for k in REQUIRED_SPACE if k not in space]
    if missing:
        raise ConfigError(f"{source}: space must search {', '.join(REQUIRED_SPACE)}; missing {', '.join(missing)}")
    for key, entry in space.items():
        if key not in SEARCHABLE:
            raise ConfigError(f"{source}: space.{key} cannot be searched. Searchable: {', '.join(SEARCHABLE)}")
        if key in base:
            raise ConfigError(f"{source}: {key} is both fixed in base and searched in space; keep one")
        _check_entry(key, entry, source)
    return SearchSpec(str(raw.get("name") or default_name), base, tuner, space, source)


def default_of(key: str, base: dict | None = None) -> Any:
    """The untuned default of a searched option: the TrainConfig default (``freeze_until`` auto and ``image_size``
    -> the registry's values for the base arch)."""
    value = {f.name: f.default for f in dataclasses.fields(TrainConfig)}[key]
    if key in ("freeze_until", "image_size") and base is not None:
        from mame_transfer.models import backbones

        spec = backbones.get(base.get("arch", TrainConfig.arch))
        value = spec.resolve_freeze(value) if key == "freeze_until" else spec.default_size
    return value


def _check_entry(key: str, entry: dict, source: str) -> None:
    allowed = {"min", "max", "sampling", "step", "values"}
    bad = sorted(set(entry) - allowed)
    if bad:
        raise ConfigError(f"{source}: space.{key} has unknown field(s) {', '.join(bad)}; use min/max/sampling/step "
                          f"or values")
    if "values" in entry:
        if not entry["values"]:
            raise ConfigError(f"{source}: space.{key}.values is empty")
        return
    if key not in ("lr", "l2", "dropout"):
        raise ConfigError(f"{source}: space.{key} needs a list of values. Received: {entry}")
    try:
        lo, hi = float(entry["min"]), float(entry["max"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"{source}: space.{key} needs numeric min and max (or values). Received: {entry}") from None
    if not lo < hi:
        raise ConfigError(f"{source}: space.{key}: min must be < max. Received: min={lo}, max={hi}")
    sampling = entry.get("sampling", "linear")
    if sampling not in ("linear", "log"):
        raise ConfigError(f"{source}: space.{key}.sampling must be linear or log. Received: {sampling!r}")
    if sampling == "log" and lo <= 0:
        raise ConfigError(f"{source}: space.{key}: log sampling needs min > 0. Received: min={lo}")


def declare(hp, spec: SearchSpec) -> dict[str, Any]:
    """Declare the space on ``hp`` (defaults = untuned TrainConfig defaults); returns the chosen values."""
    values = {}
    for key, entry in spec.space.items():
        default = default_of(key, spec.base)
        if "values" in entry:
            choices = [str(v) if key in ("head", "freeze_until", "optimizer") else v for v in entry["values"]]
            if key in INTEGER_CHOICES:
                choices = [int(v) for v in choices]
            if default not in choices:
                raise ConfigError(f"{spec.source}: space.{key}.values {choices} must contain the untuned default "
                                  f"{default!r}")
            values[key] = hp.Choice(key, choices, default=default, ordered=key in INTEGER_CHOICES)
        else:
            lo, hi = float(entry["min"]), float(entry["max"])
            if not lo <= default <= hi:
                raise ConfigError(f"{spec.source}: space.{key} [{lo}, {hi}] must contain the untuned default {default}")
            step = entry.get("step")
            values[key] = hp.Float(key, lo, hi, step=float(step) if step else None,
                                   sampling=entry.get("sampling", "linear"), default=default)
    return values


def trial_config(spec: SearchSpec, values: dict, **overrides) -> TrainConfig:
    """The TrainConfig a trial trains with (base + searched values + overrides such as data)."""
    from mame_transfer.training.runs import resolved_config

    clean = {k: v for k, v in values.items() if k in SEARCHABLE}
    config = spec.base_config(**overrides)
    config = dataclasses.replace(config, **{k: (float(v) if k in ("lr", "l2", "dropout") else v)
                                            for k, v in clean.items()})
    return resolved_config(config)

