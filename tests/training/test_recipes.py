"""training.recipes and finetune --recipe / --list-recipes: the shipped recipes load, flags and --config override
them, every recipe says how it was chosen and what it measured."""

from __future__ import annotations

import pytest

from mame_transfer import finetune
from mame_transfer.core import config as cfg
from mame_transfer.core.config import TrainConfig
from mame_transfer.core.errors import ConfigError
from mame_transfer.models import backbones
from mame_transfer.training import recipes

MAME_ARCHS = ("vgg16", "resnet50", "efficientnetb0", "efficientnetb3", "efficientnetv2b0", "efficientnetv2b3",
              "efficientnetv2s", "convnext_tiny", "convnext_small")


def test_every_shipped_recipe_loads_and_names_a_registered_backbone():
    shipped = recipes.all_recipes()
    assert "best-cpu" in shipped
    for arch in MAME_ARCHS:
        name = f"mame-{arch.replace('_', '-')}"
        fs, vs = shipped[f"{name}-fs256"], shipped[f"{name}-vs360k"]
        assert shipped[name].config == fs.config and shipped[name].alias_of == f"{name}-fs256"
        assert fs.config["arch"] == arch and fs.config["shape"] == "fixed" and fs.config["image_size"] == 256
        assert vs.config["shape"] == "variable" and vs.config["pixels"] == 360000
        assert not fs.measured and "not yet measured" in vs.result
    for recipe in shipped.values():
        config = cfg.from_dict(TrainConfig, {**recipe.config, "demo": True}).validate()
        backbones.get(config.arch)
        assert recipe.chosen_by and recipe.result
    for arch, baseline in (("vgg16", "0.812"), ("resnet50", "0.843"), ("efficientnetb3", "0.851")):
        assert baseline in shipped[f"mame-{arch}"].expected


def test_recipe_then_config_then_flags(tmp_path, monkeypatch):
    (tmp_path / "fast.yaml").write_text("name: fast\nsummary: s\nchosen_by: c\nresult: r\n"
                                        "config: {arch: test_tiny, weights: none, lr: 0.01, epochs: 3, head: '16'}\n")
    monkeypatch.setattr(recipes, "RECIPES_DIR", tmp_path)
    run_yaml = tmp_path.parent / f"{tmp_path.name}-run.yaml"  # not in the recipes folder
    run_yaml.write_text("epochs: 2\n")
    args = finetune.build_parser().parse_args(["--recipe", "fast", "--config", str(run_yaml), "--lr", "0.5",
                                               "--demo"])
    config = cfg.resolve(TrainConfig, args, config_path=args.config, base=recipes.get_recipe("fast", tmp_path).config)
    assert (config.arch, config.head, config.epochs, config.lr) == ("test_tiny", "16", 2, 0.5)
    with pytest.raises(ConfigError, match=r"unknown recipe 'nope'.*fast"):
        recipes.get_recipe("nope", tmp_path)


def test_recipe_files_are_checked(tmp_path):
    (tmp_path / "bad.yaml").write_text("summary: s\nchosen_by: c\nresult: r\nconfig: {arch: vgg16, lr_max: 1}\n")
    with pytest.raises(ConfigError, match="unknown option.*lr_max"):
        recipes.all_recipes(tmp_path)
    (tmp_path / "bad.yaml").write_text("summary: s\nresult: r\nconfig: {arch: vgg16}\n")
    with pytest.raises(ConfigError, match="chosen_by missing"):
        recipes.all_recipes(tmp_path)
    (tmp_path / "bad.yaml").write_text("summary: s\nchosen_by: c\nresult: r\nconfig: {arch: vgg16, data: /x}\n")
    with pytest.raises(ConfigError, match="may not set 'data'"):
        recipes.all_recipes(tmp_path)


def test_list_recipes_prints_results_and_how_chosen(capsys):
    assert finetune.main(["--list-recipes"]) == 0
    out = capsys.readouterr().out
    assert "best-cpu:" in out and "mame-vgg16-fs256 (or mame-vgg16):" in out and "mame-convnext-tiny-vs360k:" in out
    assert out.count("chosen by:") == out.count("result:") == len(
        [r for r in recipes.all_recipes().values() if not r.alias_of])
    assert "0.812" in out and "--shape variable --pixels 360000" in out
