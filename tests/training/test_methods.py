"""training.methods (issue #8): per-block learning rates, re-initialisation, double fine-tuning (init from a run).

The other transfer methods of issue #8 are tested where they live: adaptation layers in models/test_build.py,
multi-patch scoring, flip TTA and jittered views in inference/test_tta.py, variable shape in
datasets/test_varshape.py, ensembles in training/test_evaluation.py.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from file_checks import read_csv
from tiny_sets import folder_set, tiny_model

from mame_transfer.core.config import TrainConfig
from mame_transfer.core.errors import ConfigError
from mame_transfer.models import build as model_mod
from mame_transfer.training import methods

# ----------------------------------------------------------------------------------- adaptive layer optimisation


def test_parse_block_lr_ranges_and_errors():
    names = ["block1", "block2", "block3"]
    assert methods.parse_block_lr("block1-block2:1e-2, head:0.5", names) == [(("block1", "block2"), 1e-2),
                                                                             (("head",), 0.5)]
    assert methods.parse_block_lr("block3:1e-4", names) == [(("block3",), 1e-4)]
    with pytest.raises(ConfigError, match=r"unknown block 'block9'.*block1, block2, block3"):
        methods.parse_block_lr("block1-block9:1e-2", names)
    with pytest.raises(ConfigError, match="runs backwards"):
        methods.parse_block_lr("block3-block1:1e-2", names)
    with pytest.raises(ConfigError, match="'block2' is in both"):
        methods.parse_block_lr("block1-block2:1e-2,block2:1e-3", names)
    with pytest.raises(ConfigError, match="'fast' in 'head:fast' is not a number"):
        methods.parse_block_lr("head:fast", names)


def test_block_lr_one_sgd_step_moves_each_group_by_its_lr():
    import tensorflow as tf

    from mame_transfer.training.compile import compile_model

    net = tiny_model()
    config = TrainConfig(demo=True, arch="test_tiny", optimizer="sgd", momentum=0.0, weight_decay=0.0, lr=0.5,
                         block_lr="block1:0.1,block2-block3:0.01,head:1.0", l2=0.0)
    compile_model(net, config, 3)
    import keras

    assert isinstance(net.optimizer, keras.optimizers.MultiOptimizer)
    x = tf.random.stateless_uniform((4, 16, 16, 3), seed=(1, 2))
    y = tf.constant([0, 1, 2, 0])
    variables = net.trainable_variables
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, net(x, training=True)))
    grads = tape.gradient(loss, variables)
    before = [v.numpy().copy() for v in variables]
    net.optimizer.apply(grads, variables)
    expected = {"block1": 0.1, "block2": 0.01, "block3": 0.01, "head": 1.0}
    seen = set()
    for v, g, b in zip(variables, grads, before):
        layer = v.path.split("/")[0]
        group = "head" if model_mod.is_head_layer(layer) else layer.split("_")[0]
        np.testing.assert_allclose(b - v.numpy(), expected[group] * g.numpy(), rtol=1e-4, atol=1e-7,
                                   err_msg=v.path)
        seen.add(group)
    assert seen == set(expected)


def test_plateau_scales_all_groups_together():
    import keras

    net = tiny_model()
    opt = methods.block_optimizer(net, "test_tiny", "block1:1e-1,block2-block3:1e-3", 1e-2,
                                  lambda lr: keras.optimizers.SGD(lr))
    net.compile(optimizer=opt, loss="sparse_categorical_crossentropy")
    net.optimizer.build(net.trainable_variables)
    before = methods.group_learning_rates(net.optimizer)
    cb = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=1, min_lr=1e-9)
    cb.set_model(net)
    cb.on_train_begin()
    cb.on_epoch_end(0, {"val_loss": 1.0})
    cb.on_epoch_end(1, {"val_loss": 2.0})  # no improvement for `patience` epochs -> reduce
    after = methods.group_learning_rates(net.optimizer)
    assert sorted(before) == pytest.approx([1e-3, 1e-2, 1e-1])
    np.testing.assert_allclose(after, np.asarray(before) * 0.5, rtol=1e-6)


def test_reinit_until_changes_low_blocks_only():
    net = tiny_model()
    before = {layer.name: [w.copy() for w in layer.get_weights()] for layer in net.layers if layer.weights}
    done = methods.reinit_until(net, "test_tiny", "block2", seed=3)
    assert set(done) == {"block1_conv1", "block1_bn", "block2_conv1", "block2_bn"}
    for layer in net.layers:
        if not layer.weights:
            continue
        now = layer.get_weights()
        if layer.name.endswith("_conv1") and layer.name in done:
            assert not np.allclose(now[0], before[layer.name][0]), layer.name  # fresh glorot kernel
        elif layer.name not in done:
            for a, b in zip(now, before[layer.name]):
                np.testing.assert_array_equal(a, b)
    # BatchNormalization statistics back to their initial values
    np.testing.assert_array_equal(net.get_layer("block1_bn").moving_variance.numpy(), 1.0)


def test_check_config_rejects_reinit_of_frozen_blocks():
    config = TrainConfig(demo=True, arch="test_tiny", freeze_until="block2", reinit_until="block1")
    with pytest.raises(ConfigError, match="--reinit-until block1 re-initialises blocks that --freeze-until block2"):
        methods.check_config(config)
    methods.check_config(dataclasses.replace(config, freeze_until="none"))  # trainable: accepted


# ----------------------------------------------------------------------------------- end to end through finetune


def test_finetune_variable_shape_flip_then_double_finetune(tmp_path):
    """Run 1 (variable shape, per-block LR, flip TTA); run 2 starts from its backbone with other classes."""
    from mame_transfer import finetune
    from mame_transfer.training.runs import load_run

    src = folder_set(tmp_path / "src", classes=("a", "b", "c"))
    dst = folder_set(tmp_path / "dst", classes=("x", "y"))
    common = ["--arch", "test_tiny", "--weights", "none", "--head", "8", "--epochs", "1", "--batch-size", "4",
              "--verbose", "0", "--early-stopping", "0"]
    assert finetune.main(["--data", str(src), *common, "--shape", "variable", "--pixels", "2048", "--tta", "flip",
                          "--freeze-until", "none", "--block-lr", "block1-block2:1e-3,head:1e-2",
                          "--out", str(tmp_path / "run1")]) == 0
    metrics = json.loads((tmp_path / "run1" / "metrics.json").read_text())
    assert {"val", "val_flip"} <= set(metrics)
    assert (tmp_path / "run1" / "predictions_val_flip.csv").is_file()
    flip = read_csv(tmp_path / "run1" / "predictions_val_flip.csv", ["image", "true", "predicted", "probability"], 9)
    assert set(flip["true"]) == {"a", "b", "c"} and flip["correct"].mean() == pytest.approx(metrics["val_flip"]["top1"])
    assert finetune.main(["--data", str(dst), *common, "--image-size", "32", "--freeze-until", "all",
                          "--init-from", str(tmp_path / "run1"), "--out", str(tmp_path / "run2")]) == 0
    source, _, _ = load_run(tmp_path / "run1")
    target, _, classes = load_run(tmp_path / "run2")
    assert classes == ["x", "y"]
    for layer in (la for la in model_mod.backbone_layers(target) if la.weights):
        for a, b in zip(layer.get_weights(), source.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(a, b, err_msg=layer.name)  # frozen backbone = the source run's
    assert target.get_layer("predictions").get_weights()[0].shape == (8, 2)  # new head for 2 classes


def test_init_from_new_head_and_mismatch_error(tiny_run):
    net = model_mod.build_model("test_tiny", 4, image_size=32, weights=None, head="16")
    copied = methods.init_from_run(net, tiny_run, arch="test_tiny")
    assert "block1_conv1" in copied and not any(model_mod.is_head_layer(n) for n in copied)
    with pytest.raises(ConfigError, match="that run is arch=test_tiny"):
        methods.init_from_run(tiny_model(), tiny_run, arch="mobilenet", alpha=0.25)


# ----------------------------------------------------------------------------------- real ImageNet weights


def test_reinit_mobilenet_imagenet_low_blocks_differ_from_pretrained(keras_home):
    """Real weights: conv1 and block1 (incl. depthwise kernels) are redrawn, block2 keeps its ImageNet values."""
    kw = dict(image_size=32, weights="imagenet", alpha=0.25, head="8", freeze_until="none")
    pretrained = model_mod.build_model("mobilenet", 3, **kw)
    net = model_mod.build_model("mobilenet", 3, **kw)
    done = methods.reinit_until(net, "mobilenet", "block1")
    assert {"conv1", "conv_dw_1", "conv_pw_1", "conv_dw_1_bn"} <= set(done)
    for name in ("conv1", "conv_dw_1", "conv_pw_1"):
        assert not np.allclose(net.get_layer(name).get_weights()[0], pretrained.get_layer(name).get_weights()[0])
    for name in ("conv_dw_2", "conv_pw_2", "conv_pw_13"):
        np.testing.assert_array_equal(net.get_layer(name).get_weights()[0], pretrained.get_layer(name).get_weights()[0])


