"""models.build: the flat model with a named head (options, adaptation layers, kept VGG top), frozen by block."""

from __future__ import annotations

import numpy as np
import pytest

from mame_transfer.core.errors import ConfigError
from mame_transfer.models import build as model_mod
from mame_transfer.models.build import build_model, embedding_layer_name


def test_forward_pass_shapes_on_batch():
    model = build_model("test_tiny", 3, image_size=32, weights=None, head="8")
    out = model.predict(np.random.rand(2, 32, 32, 3).astype("float32") * 255, verbose=0)
    assert out.shape == (2, 3)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


def test_head_options():
    model = build_model("test_tiny", 3, image_size=32, weights=None, head="none", pooling="max", l2=0.1)
    assert embedding_layer_name(model) == "global_pool"
    assert model.get_layer("predictions").kernel_regularizer is not None
    with pytest.raises(ConfigError, match="comma-separated"):
        build_model("test_tiny", 3, image_size=32, weights=None, head="big")


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


def test_multiscale_features_share_one_backbone_and_cache_whole():
    """--scales 16,24,32: the 32 px input resized to each side, the same layers (and weights) run on each, pooled
    features concatenated into global_pool; with the backbone frozen the prefix cache cuts after global_pool."""
    import keras

    from mame_transfer.training.prefix_cache import find_cut

    net = build_model("test_tiny", 3, image_size=32, weights=None, head="none", scales="16,24,32", freeze_until="all")
    names = [layer.name for layer in net.layers]
    assert names.count("block1_conv1") == 1 and {"scale_16", "scale_24", "global_pool_16", "global_pool_32"} <= set(names)
    assert net.get_layer("global_pool").output.shape == (None, 3 * 32)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    trunk = keras.Model(net.inputs, net.get_layer("global_pool").output)
    single = build_model("test_tiny", 3, image_size=16, weights="none", head="none", freeze_until="all")
    single.set_weights(net.get_weights()[:len(single.get_weights()) - 2] + single.get_weights()[-2:])
    small = keras.layers.Resizing(16, 16, antialias=True)(x)
    expected = keras.Model(single.inputs, single.get_layer("global_pool").output)(small)
    np.testing.assert_allclose(np.asarray(trunk(x))[:, :32], np.asarray(expected), rtol=1e-4, atol=1e-5)
    cut, why = find_cut(net, model_mod.frozen_boundary(net, "test_tiny", "all"))
    assert cut is not None and cut.layer_name == "global_pool" and cut.feature_shape == (96,), why
    with pytest.raises(ConfigError, match="--scales must be distinct sides from 8 to --image-size 32"):
        build_model("test_tiny", 3, image_size=32, weights=None, scales="16,48")
