"""core.config: defaults < YAML < flags; unknown keys and bad values are named."""

from __future__ import annotations

import argparse

import pytest

from mame_transfer.core import config as cfg
from mame_transfer.core.config import TrainConfig
from mame_transfer.core.errors import ConfigError
from mame_transfer.finetune import build_parser


def _resolve(argv, path=None):
    args = build_parser().parse_args(argv)
    return cfg.resolve(TrainConfig, args, config_path=path or args.config)


def test_yaml_then_flags_override(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("arch: resnet50\nlr: 3.0e-4\nhead: [512, 256]\nfreeze-until: conv3\naugment: false\n")
    c = _resolve(["--config", str(path), "--lr", "1e-5", "--demo"])
    assert c.arch == "resnet50" and c.lr == 1e-5 and c.head == "512,256" and c.freeze_until == "conv3"
    assert c.augment is False and c.demo is True
    assert c.epochs == TrainConfig().epochs


def test_dump_and_reload_round_trip(tmp_path):
    c = TrainConfig(arch="mobilenet", alpha=0.75, data="x", lr=5e-5, image_size=96)
    path = tmp_path / "config.yaml"
    path.write_text(cfg.dump_yaml(c))
    assert cfg.from_dict(TrainConfig, cfg.load_yaml(path)) == c


def test_unknown_key_and_bad_values_are_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown option\(s\) learning_rate.*Valid options: data"):
        _resolve(["--config", str(path)])
    with pytest.raises(ConfigError, match=r"lr must be a number. Received: lr='fast'"):
        _resolve(["--lr", "fast"])
    with pytest.raises(ConfigError, match="dropout must be in"):
        TrainConfig(demo=True, dropout=1.5).validate()
    with pytest.raises(ConfigError, match="no dataset given"):
        TrainConfig().validate()
    with pytest.raises(ConfigError, match="does not exist"):
        cfg.load_yaml(tmp_path / "missing.yaml")
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        cfg.load_yaml(path)


def test_choices_are_enforced_by_parser():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--optimizer", "lion"])
    args = argparse.Namespace(optimizer="lion")
    with pytest.raises(ConfigError, match="optimizer must be one of adam, adamw, sgd"):
        cfg.resolve(TrainConfig, args).validate()


def test_options_table_matches_the_code():
    """docs/options.md lists every option with its default (`python -m mame_transfer.core.config docs/options.md`)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    assert cfg.options_markdown() in (root / "docs" / "options.md").read_text(encoding="utf-8")
    assert "docs/options.md" in (root / "README.md").read_text(encoding="utf-8")  # the README links it
