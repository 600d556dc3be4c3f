"""inference.tta: multi-patch scoring (Oquab et al.), flip averaging and jittered views (Razavian et al.)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from tiny_sets import folder_set, tiny_model

from mame_transfer.core.errors import ConfigError
from mame_transfer.inference import tta


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

    root = folder_set(tmp_path / "set")
    table = pd.DataFrame({"path": [str(root / "val" / "a" / "0.jpg"), str(root / "val" / "b" / "1.jpg")]})
    net = tiny_model()
    pre = lambda x: x / 127.5 - 1.0  # noqa: E731
    got = tta.predict_patches(net, table, preprocess=pre, image_size=16, scales=(1.0, 0.5), power=3)
    assert got.shape == (2, 3)
    np.testing.assert_allclose(got.sum(1), 1.0, rtol=1e-5)
    image = tta._decode(table["path"][1], 32)  # 20x100 image: short side 20 stays
    patches = tta.image_patches(image, 16, (1.0, 0.5))
    assert patches.shape[0] == len(tta.patch_boxes(100, 20, (1.0, 0.5)))
    manual = tta.aggregate_patch_scores(np.asarray(net(pre(patches), training=False)), 3)
    np.testing.assert_allclose(got[1], manual, rtol=1e-4)
    # flip TTA is the mean of the image and its mirror image
    batches = tf.data.Dataset.from_tensor_slices(pre(patches)).batch(4)
    flipped = tta.flip_average(net, batches)
    expected = (np.asarray(net(pre(patches))) + np.asarray(net(pre(patches)[:, :, ::-1]))) / 2
    np.testing.assert_allclose(flipped, expected, rtol=1e-4, atol=1e-6)


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
