"""models.backbones: every registry entry builds flat, freezes by block name, keeps BatchNormalization frozen;
block and freeze names; the offline weights check (named file and folder) and real ImageNet weights."""

from __future__ import annotations

import time

import numpy as np
import pytest

from mame_transfer import finetune
from mame_transfer.core.errors import ConfigError, WeightsError
from mame_transfer.models import backbones
from mame_transfer.models.build import (
    build_model,
    embedding_layer_name,
    is_head_layer,
    set_trainable,
)

ARCHS = list(backbones.PRODUCT_ARCHS) + ["test_tiny"]


@pytest.mark.parametrize("arch", ARCHS)
def test_registry_entry_builds_flat_model_and_freezes_by_block(arch):
    import keras

    spec = backbones.get(arch)
    alpha = 0.25 if spec.accepts_alpha else 1.0
    model = build_model(arch, 4, image_size=32, weights=None, head="16,8", alpha=alpha, freeze_until="none")
    assert model.output_shape == (None, 4)
    # Flat: no nested keras.Model among the layers, every block reachable by name.
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)
    assert model.get_layer(spec.feature_layer).output.shape[-1] == spec.dim(alpha)
    assert [layer.name for layer in model.layers if is_head_layer(layer.name)] == [
        "global_pool", "head_dense_1", "head_dropout_1", "head_dense_2", "head_dropout_2", "predictions"]
    assert embedding_layer_name(model) == "head_dense_2"
    names = [layer.name for layer in model.layers]
    for block in spec.blocks:
        assert any(block.matches(n) for n in names), f"{arch}: block {block.name} matches no layer"

    bn = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for b, block in enumerate(spec.block_names):
        set_trainable(model, arch, block)
        for layer in model.layers:
            owner = spec.block_of(layer.name)
            if isinstance(layer, keras.layers.BatchNormalization):
                assert not layer.trainable
            elif is_head_layer(layer.name):
                assert layer.trainable, f"{arch} freeze {block}: head layer {layer.name} frozen"
            elif owner is not None:
                expected = spec.block_names.index(owner) > b
                assert layer.trainable == expected, f"{arch} freeze {block}: {layer.name} trainable={layer.trainable}"
    set_trainable(model, arch, "all")
    assert all(not l.trainable for l in model.layers if not is_head_layer(l.name))
    set_trainable(model, arch, "none")
    assert all(l.trainable for l in model.layers if l.weights and l not in bn
               and not isinstance(l, keras.layers.Normalization))
    assert all(not l.trainable for l in bn)


def test_unknown_block_and_arch_are_named():
    with pytest.raises(ConfigError, match=r"vgg16 has no block 'block9'.*block1, block2"):
        build_model("vgg16", 3, image_size=32, weights=None, freeze_until="block9")
    with pytest.raises(ConfigError, match=r"unknown architecture 'vgg17'.*vgg16"):
        backbones.get("vgg17")


def test_auto_freeze_uses_registry_default():
    model = build_model("test_tiny", 3, image_size=32, weights=None, freeze_until="auto")
    assert not model.get_layer("block1_conv1").trainable
    assert model.get_layer("block2_conv1").trainable


def test_offline_imagenet_error_names_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(backbones, "keras_models_dirs", lambda: [tmp_path / "models"])
    monkeypatch.setattr(backbones, "_host_reachable", lambda url, timeout=4.0: False)
    with pytest.raises(WeightsError) as err:
        build_model("vgg16", 3, image_size=32, weights="imagenet")
    msg = str(err.value)
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in msg
    assert str(tmp_path / "models") in msg and "KERAS_HOME" in msg and "--weights none" in msg


def test_offline_demo_stops_fast_naming_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(backbones, "keras_models_dirs", lambda: [tmp_path / "models"])
    monkeypatch.setattr(backbones, "_host_reachable", lambda url, timeout=4.0: False)
    start = time.time()
    code = finetune.main(["--demo", "--arch", "mobilenet", "--alpha", "0.25", "--image-size", "64", "--epochs", "1",
                          "--out", str(tmp_path / "run"), "--verbose", "0"])
    err = capsys.readouterr().err
    assert code == 2 and time.time() - start < 30
    assert "mobilenet_2_5_224_tf_no_top.h5" in err
    assert "KERAS_HOME" in err and "--weights none" in err


def test_missing_weights_path_is_named(tmp_path):
    with pytest.raises(WeightsError, match="nowhere.h5"):
        build_model("test_tiny", 3, image_size=32, weights=str(tmp_path / "nowhere.h5"))


def test_real_imagenet_weights_from_keras_home(keras_home):
    """Genuine MobileNet(0.25) ImageNet weights: the cached file is found at call time and classifies."""
    import keras

    spec = backbones.get("mobilenet")
    path = backbones.cached_weights(spec, alpha=0.25, size=224)
    assert path is not None and path.parent == keras_home / "models"
    model = build_model("mobilenet", 3, image_size=64, weights="imagenet", alpha=0.25, freeze_until="all")
    reference = keras.applications.MobileNet(include_top=False, weights=None, alpha=0.25, input_shape=(64, 64, 3))
    reference.load_weights(path)
    got = model.get_layer("conv1").kernel.numpy()
    np.testing.assert_array_equal(got, reference.get_layer("conv1").kernel.numpy())
    assert np.abs(got).sum() > 0
    # With the top, the ImageNet classifier must recognise a plain image as *something* consistently:
    top = spec.build(weights="imagenet", include_top=True, alpha=0.25)
    x = spec.preprocess(np.full((1, 224, 224, 3), 127.0, dtype="float32"))
    probs = top.predict(x, verbose=0)
    assert probs.shape == (1, 1000) and abs(float(probs.sum()) - 1) < 1e-3


@pytest.mark.parametrize("arch", ["efficientnetv2b0", "efficientnetv2s", "convnext_tiny"])
def test_models_with_their_own_preprocessing_get_it_exactly_once(arch):
    """EfficientNetV2 and ConvNeXt rescale/normalise inside the network: the pipeline's preprocess is the identity
    and the model holds one input normalisation, so 0..255 images are normalised once, not twice or never."""
    import keras

    spec = backbones.get(arch)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(np.asarray(spec.preprocess(x)), x)
    model = build_model(arch, 3, image_size=32, weights=None, head="none")
    scaling = [layer for layer in model.layers if isinstance(layer, (keras.layers.Rescaling, keras.layers.Normalization))]
    assert 1 <= len(scaling) <= 2 and all(spec.block_of(layer.name) == "stem" for layer in scaling)
    first = model.layers[1]
    assert isinstance(first, (keras.layers.Rescaling, keras.layers.Normalization))
    out = keras.Model(model.inputs, scaling[-1].output)(x)
    assert float(np.abs(np.asarray(out)).max()) < 10  # normalised, not left at 0..255


def test_convnext_is_flattened_with_the_same_function():
    """Keras builds ConvNeXt with nested Sequential stem/downsampling blocks; the registry inlines them, with the
    same weights (same outputs) and a named last layer."""
    import keras

    from mame_transfer.models.flatten import flatten_model

    keras.utils.set_random_seed(0)
    nested = keras.applications.ConvNeXtTiny(include_top=False, weights=None, input_shape=(32, 32, 3))
    assert any(isinstance(layer, keras.Model) for layer in nested.layers)
    flat = flatten_model(nested, rename={nested.layers[-1].name: "convnext_tiny_top_layernorm"})
    assert not any(isinstance(layer, keras.Model) for layer in flat.layers)
    x = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(flat(x)), np.asarray(nested(x)), rtol=1e-5, atol=1e-5)
    assert flat.layers[-1].name == "convnext_tiny_top_layernorm"
    assert "convnext_tiny_downsampling_conv_2" in [layer.name for layer in flat.layers]


@pytest.mark.parametrize("arch, fname", [
    ("efficientnetv2b0", "efficientnetv2-b0_notop.h5"), ("efficientnetv2b3", "efficientnetv2-b3_notop.h5"),
    ("efficientnetv2s", "efficientnetv2-s_notop.h5"), ("convnext_tiny", "convnext_tiny_notop.h5"),
    ("convnext_small", "convnext_small_notop.h5"),
])
def test_new_backbones_name_their_weights_file_offline(arch, fname, tmp_path, monkeypatch):
    monkeypatch.setattr(backbones, "keras_models_dirs", lambda: [tmp_path / "models"])
    monkeypatch.setattr(backbones, "_host_reachable", lambda url, timeout=4.0: False)
    with pytest.raises(WeightsError) as err:
        build_model(arch, 3, image_size=32, weights="imagenet")
    assert fname in str(err.value) and f"keras-applications/{'convnext' if 'convnext' in arch else 'efficientnet_v2'}/" \
        in str(err.value)


@pytest.mark.parametrize("arch, block", [("efficientnetv2b0", "block4"), ("convnext_tiny", "stage1")])
def test_new_backbones_cut_at_their_blocks_for_the_prefix_cache(arch, block):
    from mame_transfer.models.build import frozen_boundary
    from mame_transfer.training.prefix_cache import find_cut

    model = build_model(arch, 3, image_size=64, weights=None, head="8")
    assert backbones.get(arch).resolve_freeze("auto") == block
    cut, why = find_cut(model, frozen_boundary(model, arch, block))
    assert cut is not None, why
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(cut.suffix(cut.prefix(x))), np.asarray(model(x)), rtol=1e-4, atol=1e-5)
    again, _ = find_cut(model, frozen_boundary(model, arch, block))  # a second cut of the same model still works
    assert again is not None
