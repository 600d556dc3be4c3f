"""tuning.space: the search YAML and its declared hyperparameters (defaults = the untuned finetune defaults)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mame_transfer.core.config import TrainConfig
from mame_transfer.core.errors import ConfigError
from mame_transfer.tuning.space import declare, load_spec, trial_config

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["vgg16", "vgg19", "resnet50", "efficientnetb0", "efficientnetb3", "mobilenet",
                                  "efficientnetv2b0", "efficientnetv2b3", "efficientnetv2s", "convnext_tiny",
                                  "convnext_small"])
def test_space_defaults_are_the_untuned_finetune_defaults(name):
    import keras_tuner as kt

    spec = load_spec(REPO / "tuner_configs" / f"{name}.yaml")
    assert spec.base["arch"] == name
    hp = kt.HyperParameters()
    values = declare(hp, spec)  # a fresh hp returns each default
    defaults = TrainConfig()
    for key in ("lr", "l2", "dropout", "head", "optimizer", "batch_size"):
        if key in values:
            assert values[key] == getattr(defaults, key), key
    assert {"lr", "l2", "dropout"} <= set(values)
    from mame_transfer.models import backbones

    if "freeze_until" in values:
        assert values["freeze_until"] == backbones.get(name).default_freeze
    # the input size is searched too, its default the backbone's own size
    assert values["image_size"] == backbones.get(name).default_size
    assert len(hp._hps["image_size"][0].values) >= 3 and "image_size" not in spec.base
    # Every trial config is a valid TrainConfig.
    trial_config(spec, values, data="x").validate()


def test_vgg16_space_covers_the_hand_tuned_values():
    import keras_tuner as kt

    spec = load_spec(REPO / "tuner_configs" / "vgg16.yaml")
    hp = kt.HyperParameters()
    declare(hp, spec)
    lr, l2, dropout = hp._hps["lr"][0], hp._hps["l2"][0], hp._hps["dropout"][0]
    assert lr.sampling == "log" and lr.min_value <= 2.5e-6 and lr.max_value >= 1e-4
    for value in (1e-4, 5e-5, 3e-6, 2.5e-6):
        assert lr.min_value <= value <= lr.max_value
    assert l2.min_value <= 0.1 and l2.max_value >= 0.5
    assert dropout.min_value <= 0.5 <= dropout.max_value
    assert any(abs(v - 0.5) < 1e-9 for v in np.arange(dropout.min_value, dropout.max_value + 1e-9, dropout.step))


def test_spec_errors_name_the_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: {arch: vgg16, lr: 0.1}\nspace: {lr: {min: 1e-6, max: 1e-3}, l2: {min: 0, max: 1}, "
                   "dropout: {min: 0, max: 0.6}}\n")
    with pytest.raises(ConfigError, match="lr is both fixed in base and searched"):
        load_spec(bad)
    bad.write_text("space: {lr: {min: 1e-6, max: 1e-3}}\n")
    with pytest.raises(ConfigError, match="missing l2, dropout"):
        load_spec(bad)
    bad.write_text("space: {lr: {min: 1e-3, max: 1e-2, sampling: log}, l2: {min: 0, max: 1}, "
                   "dropout: {min: 0, max: 0.6}}\n")
    import keras_tuner as kt

    with pytest.raises(ConfigError, match="must contain the untuned default 0.0001"):
        declare(kt.HyperParameters(), load_spec(bad))
