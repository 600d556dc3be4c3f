"""training.phases: warm-up and progressive-resizing phases of a run."""

from __future__ import annotations

import dataclasses

import pytest

from mame_transfer.core.config import TrainConfig
from mame_transfer.core.errors import ConfigError
from mame_transfer.training.phases import Phase, augment_spec, parse_progressive, plan_phases


def _config(**kw):
    return dataclasses.replace(TrainConfig(demo=True, arch="test_tiny", image_size=64, freeze_until="block1"), **kw)


def test_progressive_parse_and_errors():
    assert parse_progressive("16:2,32:1", 64, 10) == [(16, 2), (32, 1)]
    assert parse_progressive(None, 64, 10) == [] and parse_progressive("none", 64, 10) == []
    with pytest.raises(ConfigError, match="SIZE:EPOCHS"):
        parse_progressive("16", 64, 10)
    with pytest.raises(ConfigError, match="must increase and stay below --image-size 64"):
        parse_progressive("32:1,16:1", 64, 10)
    with pytest.raises(ConfigError, match="must increase"):
        parse_progressive("64:1", 64, 10)
    with pytest.raises(ConfigError, match="leave at least one epoch"):
        parse_progressive("16:5,32:5", 64, 10)


def test_phases_cut_at_warmup_and_size_changes():
    assert plan_phases(_config(epochs=4)) == [Phase(0, 4, "block1", 64)]
    assert plan_phases(_config(epochs=6, warmup_epochs=1, progressive="16:2,32:1")) == [
        Phase(0, 1, "all", 16), Phase(1, 2, "block1", 16), Phase(2, 3, "block1", 32), Phase(3, 6, "block1", 64)]
    with pytest.raises(ConfigError, match="--shape fixed"):
        plan_phases(_config(epochs=6, progressive="16:2", shape="variable"))


def test_augment_spec_follows_the_switch():
    assert augment_spec(_config()) == "flip,rotation:10"
    assert augment_spec(_config(augment=False)) is False
