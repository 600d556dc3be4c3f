"""training.prefix_cache (frozen-prefix cache): the cut, the store, and equivalence with training the full network."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mame_transfer.datasets.pipeline import make_pipeline
from mame_transfer.models import backbones
from mame_transfer.models import build as model_mod
from mame_transfer.training import prefix_cache as cache


@pytest.fixture
def images(tmp_path):
    """12 small JPEGs of 3 classes (a table with path and label_index)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        label = i % 3
        pixels = rng.integers(0, 60, (40, 48, 3)) + 60 * label
        path = tmp_path / f"img{i}.jpg"
        Image.fromarray(pixels.astype(np.uint8)).save(path, quality=90)
        rows.append((str(path), label))
    return pd.DataFrame(rows, columns=["path", "label_index"])


def _fit_losses(arch, images, freeze, size, *, cached: bool, epochs: int = 2):
    import keras

    keras.utils.set_random_seed(0)
    net = model_mod.build_model(arch, 3, image_size=size, weights=None, head="8", dropout=0.0, freeze_until=freeze)
    boundary = model_mod.frozen_boundary(net, arch, freeze)
    spec = backbones.get(arch)
    pipe = dict(image_size=size, preprocess=spec.preprocess, batch_size=4, training=False, shuffle=False)
    if cached:
        cut, why = cache.find_cut(net, boundary)
        assert cut is not None, why
        store = cache.FeatureCache(len(images), cut.feature_shape, "float32")
        store.fill(cache.prefix_function(cut), make_pipeline(images, with_labels=False, **pipe))
        ds = cache.cached_pipeline(store, images["label_index"].to_numpy(), batch_size=4)
        fit_model = cut.suffix
    else:
        ds = make_pipeline(images, **pipe)
        fit_model = net
    fit_model.compile(optimizer=keras.optimizers.SGD(0.05), loss="sparse_categorical_crossentropy")
    history = fit_model.fit(ds, epochs=epochs, verbose=0, shuffle=False)
    # Predictions of the *full* model after training: the suffix shares its layers, so both must match.
    full_pred = net.predict(make_pipeline(images, with_labels=False, **pipe), verbose=0)
    return np.array(history.history["loss"]), full_pred


@pytest.mark.parametrize("arch,freeze,size", [("test_tiny", "block2", 32), ("resnet50", "conv3", 32)])
def test_cached_training_matches_full_network(images, arch, freeze, size):
    full_loss, full_pred = _fit_losses(arch, images, freeze, size, cached=False)
    cached_loss, cached_pred = _fit_losses(arch, images, freeze, size, cached=True)
    assert full_loss[0] != full_loss[-1]  # training moved the weights
    np.testing.assert_allclose(cached_loss, full_loss, rtol=2e-3, atol=1e-4)
    np.testing.assert_allclose(cached_pred, full_pred, atol=2e-4)


def test_suffix_of_prefix_equals_full_model_and_shares_layers():
    net = model_mod.build_model("test_tiny", 3, image_size=32, weights=None, head="8", freeze_until="block1")
    cut, _ = cache.find_cut(net, model_mod.frozen_boundary(net, "test_tiny", "block1"))
    assert cut.layer_name == "block1_pool" and cut.feature_shape == (16, 16, 8)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(cut.suffix(cut.prefix(x))), np.asarray(net(x)), atol=1e-6)
    suffix_layers = {id(layer) for layer in cut.suffix.layers}
    assert id(net.get_layer("block2_conv1")) in suffix_layers
    assert {id(w) for w in cut.suffix.trainable_weights} == {id(w) for w in net.trainable_weights}


def test_head_only_cut_moves_past_weightless_pooling():
    net = model_mod.build_model("test_tiny", 3, image_size=32, weights=None, head="8", freeze_until="all")
    cut, _ = cache.find_cut(net, model_mod.frozen_boundary(net, "test_tiny", "all"))
    assert cut.layer_name == "global_pool" and cut.feature_shape == (32,)


def test_cut_inside_a_residual_block_is_refused_with_reason():
    net = model_mod.build_model("resnet50", 3, image_size=32, weights=None, head="8", freeze_until="conv2")
    inside = [i for i, layer in enumerate(net.layers) if layer.name == "conv3_block2_2_relu"][0]
    cut, why = cache.find_cut(net, inside)
    assert cut is None and "2 tensors cross the cut" in why and "conv3_block1_out" in why
    block_end = model_mod.frozen_boundary(net, "resnet50", "conv2")
    assert len(cache.crossing_tensors(net, block_end)) == 1


def test_efficientnet_block6_cut_is_single_tensor_and_reports_drop_connect():
    net = model_mod.build_model("efficientnetb0", 3, image_size=32, weights=None, head="8", freeze_until="block6")
    cut, why = cache.find_cut(net, model_mod.frozen_boundary(net, "efficientnetb0", "block6"))
    assert cut is not None, why
    assert cut.layer_name == "block6d_add" and cut.feature_shape == (1, 1, 192)
    assert any(name.endswith("_drop") for name in cut.stochastic_prefix_layers)


def test_disk_float16_cache_and_augmented_copies(tmp_path):
    store = cache.FeatureCache(6, (2,), "float16", tmp_path / "c.npy")
    batches = [np.arange(6, dtype=np.float32).reshape(3, 2), np.arange(6, 12, dtype=np.float32).reshape(3, 2)]
    assert store.fill(lambda b: b, batches) == 6
    again = cache.FeatureCache.open(tmp_path / "c.npy")
    assert again.dtype == np.float16 and again.array.shape == (6, 2)
    # 3 images x 2 views: every epoch draws one view per image, both views appear across epochs.
    ds = cache.cached_pipeline(again, np.array([0, 1, 2]), batch_size=3, copies=2)
    seen = set()
    for _ in range(8):
        for x, y in ds:
            assert x.dtype.name == "float32" and list(y.numpy()) == [0, 1, 2]
            seen.update(int(v) for v in x.numpy()[:, 0])
    assert seen == {0, 2, 4, 6, 8, 10}


def test_augmented_copies_are_filled_with_different_views(images):
    net = model_mod.build_model("test_tiny", 3, image_size=32, weights=None, head="8", freeze_until="block1")
    b = model_mod.frozen_boundary(net, "test_tiny", "block1")
    plan = cache.plan_phase(net, b, mode="memory", augment=True, augment_copies=2, n_train=12, n_val=12, epochs=3)
    phase = cache.build_phase(plan, train_table=images, val_table=images, image_size=32,
                              preprocess=backbones.get("test_tiny").preprocess, batch_size=4, seed=0, augment=True)
    train, val = phase.caches
    assert train.rows == 24 and val.rows == 12
    assert not np.allclose(train.array[:12], train.array[12:])  # two random views per image
    x, y = next(iter(phase.train_ds))
    assert x.shape == (4, 16, 16, 8) and y.shape == (4,)


def test_plan_phase_routes_and_reasons(tmp_path):
    net = model_mod.build_model("test_tiny", 3, image_size=32, weights=None, head="8", freeze_until="block2")
    b = model_mod.frozen_boundary(net, "test_tiny", "block2")
    common = dict(n_train=10, n_val=4, epochs=5, disk_dir=tmp_path)
    plan = cache.plan_phase(net, b, mode="auto", augment=False, augment_copies=0, **common)
    assert plan.route == "cached-memory" and "block2_pool" in plan.reason
    assert cache.plan_phase(net, b, mode="disk", augment=False, augment_copies=0, **common).route == "cached-disk"
    plan = cache.plan_phase(net, b, mode="auto", augment=True, augment_copies=0, **common)
    assert plan.route == "full" and "--augment-copies is 0" in plan.reason
    plan = cache.plan_phase(net, b, mode="auto", augment=True, augment_copies=5, **common)
    assert plan.route == "full" and ">= 5 epoch" in plan.reason
    plan = cache.plan_phase(net, b, mode="memory", augment=True, augment_copies=2, **common)
    assert plan.route == "cached-memory" and plan.copies == 2
    assert cache.plan_phase(net, -1, mode="auto", augment=False, augment_copies=0, **common).route == "full"
    assert cache.plan_phase(net, b, mode="off", augment=False, augment_copies=0, **common).reason == "--prefix-cache off"


def test_finetune_logs_the_path_and_trains_on_the_cache(demo_root, tmp_path):
    import json

    from mame_transfer import evaluate, finetune

    args = ["--demo", "--arch", "test_tiny", "--weights", "none", "--image-size", "32", "--head", "16",
            "--batch-size", "16", "--lr", "3e-3", "--verbose", "0", "--freeze-until", "block2"]
    out = tmp_path / "cached"
    assert finetune.main(args + ["--no-augment", "--epochs", "2", "--warmup-epochs", "1", "--prefix-cache", "disk",
                                 "--cache-dtype", "float16", "--out", str(out)]) == 0
    log = (out / "run.log").read_text()
    assert "freeze until all" in log and "route: cached-disk prefix cache (layers up to 'global_pool'" in log
    assert "freeze until block2" in log and "route: cached-disk prefix cache (layers up to 'block2_pool'" in log
    assert not (out / "prefix_cache").exists()
    # The saved full model reproduces the metrics computed during the run.
    saved = json.loads((out / "metrics.json").read_text())["val"]
    assert evaluate.main([str(out), "--split", "val", "--out", str(tmp_path / "ev"), "--verbose", "0"]) == 0
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["val"]["top1"] == pytest.approx(saved["top1"])
