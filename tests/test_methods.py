"""Transfer methods (issue #8): per-block learning rates, re-initialisation, adaptation layers, multi-patch
scoring, flip TTA, variable shape, double fine-tuning, ensembles."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mame_transfer import ensemble
from mame_transfer.core.config import TrainConfig
from mame_transfer.core.errors import ConfigError
from mame_transfer.datasets import varshape
from mame_transfer.inference import tta
from mame_transfer.models import build as model_mod
from mame_transfer.training import methods
from mame_transfer.training.evaluation import average, check_same_classes


def _folder_set(root, classes=("a", "b", "c"), n=3, sizes=((48, 48), (20, 100), (100, 20))):
    """A class-per-folder set of tiny JPEGs, including aspect ratios 0.2 and 5 (width / height)."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for ci, c in enumerate(classes):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = sizes[i % len(sizes)]
                pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
                pixels[..., ci % 3] = 220  # a colour cue per class
                Image.fromarray(pixels).save(root / split / c / f"{i}.jpg", quality=90)
    return root


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


def _tiny(num_classes=3, **kw):
    return model_mod.build_model("test_tiny", num_classes, image_size=16, weights=None, head="8", dropout=0.0,
                                 freeze_until="none", **kw)


def test_block_lr_one_sgd_step_moves_each_group_by_its_lr():
    import tensorflow as tf

    from mame_transfer.training.compile import compile_model

    net = _tiny()
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

    net = _tiny()
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
    net = _tiny()
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


# ----------------------------------------------------------------------------------- adaptation layers (Oquab)


def test_oquab_head_is_fca_2048_then_fcb():
    net = model_mod.build_model("test_tiny", 5, image_size=16, weights=None, head="oquab", dropout=0.5,
                                freeze_until="all")
    names = [layer.name for layer in net.layers if model_mod.is_head_layer(layer.name)]
    assert names == ["global_pool", "head_dense_1", "head_dropout_1", "predictions"]
    assert net.get_layer("head_dense_1").units == 2048
    assert net.get_layer("head_dense_1").get_config()["activation"] == "relu"
    assert not any(layer.trainable for layer in model_mod.backbone_layers(net) if layer.weights)


def test_keep_top_vgg16_keeps_fc6_fc7_under_the_head():
    net = model_mod.build_model("vgg16", 7, weights=None, head="oquab", keep_top=True, freeze_until="all")
    assert net.input_shape == (None, 224, 224, 3)
    assert net.get_layer("fc1").units == 4096 and net.get_layer("fc2").units == 4096
    assert net.get_layer("head_dense_1").input.shape == (None, 4096)
    assert net.output_shape == (None, 7)
    assert not net.get_layer("fc2").trainable  # frozen like the rest of the backbone with freeze_until=all
    with pytest.raises(ConfigError, match="fixed 224 px input"):
        model_mod.build_model("vgg16", 7, weights=None, image_size=128, keep_top=True)
    with pytest.raises(ConfigError, match="test_tiny has none"):
        model_mod.build_model("test_tiny", 7, weights=None, keep_top=True)


# ----------------------------------------------------------------------------------- multi-patch scoring, flips


def test_aggregate_patch_scores_formula():
    p = np.array([[0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    # k = 1 is plain averaging: class 1 wins (0.433 vs 0.567)
    np.testing.assert_allclose(tta.aggregate_patch_scores(p, 1), [1.7 / 3, 1.3 / 3])
    # k = 5: one confident patch dominates: 0.9^5 + 2 * 0.4^5 = 0.61097 vs 0.1^5 + 2 * 0.6^5 = 0.15553
    s = np.array([0.9 ** 5 + 2 * 0.4 ** 5, 0.1 ** 5 + 2 * 0.6 ** 5]) / 3
    np.testing.assert_allclose(tta.aggregate_patch_scores(p, 5), s / s.sum())
    assert tta.aggregate_patch_scores(p, 5).argmax() == 0


def test_patch_boxes_geometry():
    boxes = tta.patch_boxes(500, 500, (1.0, 0.7, 0.5))
    assert len(boxes) == 1 + 4 + 9  # 50 % overlap: 1, 2x2 and 3x3 patches
    sides = boxes[:, 2] - boxes[:, 0]
    assert (sides == boxes[:, 3] - boxes[:, 1]).all()  # square
    assert sorted(set(sides)) == [250, 350, 500]
    assert (boxes >= 0).all() and (boxes[:, 2] <= 500).all() and (boxes[:, 3] <= 500).all()
    half = boxes[sides == 250]
    assert sorted(set(half[:, 0])) == [0, 125, 250]  # stride = half a side, last patch on the far edge
    wide = tta.patch_boxes(100, 300, (1.0,))
    assert wide.tolist() == [[0, 0, 100, 100], [0, 50, 100, 150], [0, 100, 100, 200], [0, 150, 100, 250],
                             [0, 200, 100, 300]]
    with pytest.raises(ConfigError, match=r"--patch-scales must be in \(0, 1\]"):
        tta.parse_scales("1.0,1.5")


def test_predict_patches_matches_manual_computation(tmp_path):
    import tensorflow as tf

    root = _folder_set(tmp_path / "set")
    table = pd.DataFrame({"path": [str(root / "val" / "a" / "0.jpg"), str(root / "val" / "b" / "1.jpg")]})
    net = _tiny()
    pre = lambda x: x / 127.5 - 1.0  # noqa: E731
    got = tta.predict_patches(net, table, preprocess=pre, image_size=16, scales=(1.0, 0.5), power=3)
    assert got.shape == (2, 3)
    np.testing.assert_allclose(got.sum(1), 1.0, rtol=1e-5)
    image = tta._decode(table["path"][1], max_short_side=32)  # 20x100 image: short side 20 stays
    patches = tta.image_patches(image, 16, (1.0, 0.5))
    assert patches.shape[0] == len(tta.patch_boxes(100, 20, (1.0, 0.5)))
    manual = tta.aggregate_patch_scores(np.asarray(net(pre(patches), training=False)), 3)
    np.testing.assert_allclose(got[1], manual, rtol=1e-4)
    # flip TTA is the mean of the image and its mirror image
    batches = tf.data.Dataset.from_tensor_slices(pre(patches)).batch(4)
    flipped = tta.flip_average(net, batches)
    expected = (np.asarray(net(pre(patches))) + np.asarray(net(pre(patches)[:, :, ::-1]))) / 2
    np.testing.assert_allclose(flipped, expected, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------------- variable shape


def test_budget_hw_keeps_aspect():
    assert varshape.budget_hw(1000, 1000, 65536) == (256, 256)
    h, w = varshape.budget_hw(500, 2500, 65536)  # aspect 5
    assert (h, w) == (128, 576)  # multiples of 32 closest to 114.5 x 572.4
    assert varshape.budget_hw(2500, 500, 360000) == (1344, 256)
    with pytest.raises(ConfigError, match="--pixels must be at least 1024"):
        varshape.budget_hw(10, 10, 100)


def test_variable_shape_pipeline_and_model_take_aspect_0_2_and_5(tmp_path):
    from mame_transfer.datasets.layouts import load_dataset

    root = _folder_set(tmp_path / "set")
    table = load_dataset(root).split("train")
    net = _tiny(variable_shape=True)
    assert net.input_shape == (None, None, None, 3)
    ds = varshape.make_pipeline(table, pixels=2048, preprocess=lambda x: x / 127.5 - 1, batch_size=2, training=True)
    shapes = set()
    n = 0
    for x, y in ds:
        shapes.add(tuple(x.shape[1:3]))
        n += int(x.shape[0])
        assert net(x).shape == (x.shape[0], 3)
    assert n == len(table)
    assert shapes == {(32, 32), (96, 32), (32, 96)}  # 48x48, and aspect 0.2 and 5 kept (sides rounded to 32)
    proba = varshape.predict_proba(net, table, pixels=2048, preprocess=lambda x: x / 127.5 - 1)
    assert proba.shape == (len(table), 3)


# ----------------------------------------------------------------------------------- end to end through finetune


def test_finetune_variable_shape_flip_then_double_finetune(tmp_path):
    """Run 1 (variable shape, per-block LR, flip TTA); run 2 starts from its backbone with other classes."""
    from mame_transfer import finetune
    from mame_transfer.training.runs import load_run

    src = _folder_set(tmp_path / "src", classes=("a", "b", "c"))
    dst = _folder_set(tmp_path / "dst", classes=("x", "y"))
    common = ["--arch", "test_tiny", "--weights", "none", "--head", "8", "--epochs", "1", "--batch-size", "4",
              "--verbose", "0", "--early-stopping", "0"]
    assert finetune.main(["--data", str(src), *common, "--shape", "variable", "--pixels", "2048", "--tta", "flip",
                          "--freeze-until", "none", "--block-lr", "block1-block2:1e-3,head:1e-2",
                          "--out", str(tmp_path / "run1")]) == 0
    metrics = json.loads((tmp_path / "run1" / "metrics.json").read_text())
    assert {"val", "val_flip"} <= set(metrics)
    assert (tmp_path / "run1" / "predictions_val_flip.csv").is_file()
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
        methods.init_from_run(_tiny(), tiny_run, arch="mobilenet", alpha=0.25)


# ----------------------------------------------------------------------------------- ensembles


def test_average_weights():
    a, b = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])
    np.testing.assert_allclose(average([a, b]), [[0.5, 0.5]])
    np.testing.assert_allclose(average([a, b], [3, 1]), [[0.75, 0.25]])
    with pytest.raises(ValueError, match="non-negative"):
        average([a, b], [1, -1])


def test_ensemble_cli_and_class_mismatch(tiny_run, tmp_path, capsys):
    out = tmp_path / "ens"
    assert ensemble.main([str(tiny_run), str(tiny_run), "--split", "val", "--weighted", "--out", str(out)]) == 0
    table = pd.read_csv(out / "ensemble_val.csv")
    assert list(table["model"]) == ["tiny", str(tiny_run), "ensemble"]
    member = json.loads((tiny_run / "metrics.json").read_text())["val"]["top1"]
    assert table["top1"].tolist() == pytest.approx([member] * 3, abs=1e-6)  # two copies = the member itself
    assert table["weight"].tolist()[:2] == pytest.approx([0.5, 0.5])
    assert "| ensemble |" in (out / "ensemble_val.md").read_text()
    result = json.loads((out / "metrics.json").read_text())
    assert result["ensemble"]["top1"] == pytest.approx(member) and result["split"] == "val"
    assert "ensemble" in capsys.readouterr().out
    other = tmp_path / "other"
    shutil.copytree(tiny_run, other)
    index = json.loads((other / "class_index.json").read_text())
    index["Paint"] = index.pop(next(iter(index)))
    (other / "class_index.json").write_text(json.dumps(index))
    assert ensemble.main([str(tiny_run), str(other), "--out", str(tmp_path / "bad")]) == 2
    assert "must share classes" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"only in .*other: \['Paint'\]"):
        check_same_classes([tiny_run, other])


# ----------------------------------------------------------------------------------- jittered features


def test_jitter_views_and_average():
    import tensorflow as tf

    images = tf.reshape(tf.range(2 * 10 * 10 * 3, dtype=tf.float32), (2, 10, 10, 3))
    views = tta.jitter_views(images, crop=0.5)
    assert len(views) == 12 and all(v.shape == images.shape for v in views)
    np.testing.assert_array_equal(views[0], images)
    np.testing.assert_array_equal(views[6], images[:, :, ::-1])  # mirrored whole image
    # top-left corner crop of side 5 px, resized back to 10 px: its pixel (0, 0) is the image's pixel (0, 0)
    np.testing.assert_allclose(views[1][:, 0, 0], images[:, 0, 0], rtol=1e-5)
    np.testing.assert_allclose(views[4][:, -1, -1], images[:, -1, -1], rtol=1e-5)  # bottom-right crop
    feats = tta.jitter_average(lambda x, training=False: tf.reduce_mean(x, axis=(1, 2)), images, crop=0.5)
    expected = np.mean([np.asarray(tf.reduce_mean(v, axis=(1, 2))) for v in views], axis=0)
    np.testing.assert_allclose(feats, expected, rtol=1e-5)
    with pytest.raises(ConfigError, match="jitter crop must be in"):
        tta.jitter_views(images, crop=1.5)


def test_block_lr_optimizer_state_survives_resume(tmp_path):
    """The per-epoch resume state saves and restores every inner optimizer's variables."""
    from mame_transfer.training.compile import compile_model
    from mame_transfer.training.runs import ResumeState

    config = TrainConfig(demo=True, arch="test_tiny", optimizer="adam", lr=1e-2, block_lr="block1:1e-3,head:1e-1")
    x = np.random.default_rng(0).uniform(0, 1, (4, 16, 16, 3)).astype("float32")
    y = np.array([0, 1, 2, 0])
    net = compile_model(_tiny(), config, 3)
    net.fit(x, y, epochs=1, verbose=0)
    resume = ResumeState(tmp_path)
    resume.save(net, 1, 0, {}, {})
    again = compile_model(_tiny(), config, 3)
    assert resume.restore_optimizer(again, resume.load())
    for a, b in zip(net.optimizer.variables, again.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert sorted(methods.group_learning_rates(again.optimizer)) == pytest.approx([1e-3, 1e-2, 1e-1])


def test_evaluate_cli_tta_writes_beside_plain_scores(tiny_run, tmp_path, capsys):
    from mame_transfer import evaluate

    out = tmp_path / "eval"
    assert evaluate.main([str(tiny_run), "--split", "val", "--tta", "patches", "--patch-scales", "1.0,0.5",
                          "--patch-power", "2", "--out", str(out), "--verbose", "0"]) == 0
    assert "val_patches: n=60" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"val_patches"} and (out / "predictions_val_patches.csv").is_file()
    assert evaluate.main([str(tiny_run), "--split", "val", "--tta", "flip", "--out", str(out), "--verbose", "0"]) == 0
    assert set(json.loads((out / "metrics.json").read_text())) == {"val_patches", "val_flip"}


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


def test_feature_export_with_jitter(tmp_path):
    from mame_transfer.datasets.layouts import load_dataset
    from mame_transfer.datasets.pipeline import make_pipeline
    from mame_transfer.models import backbones
    from mame_transfer.store.export import embedding_model, export

    root = _folder_set(tmp_path / "set", n=2)
    dataset = load_dataset(root)
    kw = dict(arch="test_tiny", weights=None, image_size=16, splits=["val"], verbose=0)
    plain = export(tmp_path / "plain", dataset, seed=5, **kw)
    jit = export(tmp_path / "jit", dataset, jitter=True, seed=5, **kw)
    assert jit.manifest["jitter"] is True and plain.manifest["jitter"] is False
    feat, _ = embedding_model(arch="test_tiny", weights=None, image_size=16, seed=5)  # same random weights
    batch = next(iter(make_pipeline(dataset.split("val"), image_size=16, batch_size=64, with_labels=False,
                                    preprocess=backbones.get("test_tiny").preprocess)))
    np.testing.assert_allclose(jit.embeddings("val"), tta.jitter_average(feat, batch), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(plain.embeddings("val"), np.asarray(feat(batch)), rtol=1e-4, atol=1e-6)
    assert not np.allclose(jit.embeddings("val"), plain.embeddings("val"))
