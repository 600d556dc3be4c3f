"""training.probe: the softmax layer fitted by logistic regression equals scikit-learn's model; config refusals;
end to end through finetune on the demo set."""

from __future__ import annotations

import numpy as np
import pytest
from file_checks import read_json

from mame_transfer import finetune
from mame_transfer.core.config import TrainConfig
from mame_transfer.core.errors import ConfigError
from mame_transfer.training.probe import PROBE_JSON, check_probe_config, fit_probe
from mame_transfer.training.runs import load_run


def _suffix(dim, classes, extra=False):
    import keras

    inp = keras.Input((dim,))
    x = keras.layers.Dense(4, name="hidden")(inp) if extra else inp
    return keras.Model(inp, keras.layers.Dense(classes, activation="softmax", name="predictions")(x))


def _data(n, dim, classes, seed=0, shift=3.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.normal(size=(n, dim)).astype(np.float32) * rng.uniform(0.1, 20, dim).astype(np.float32) + 5.0
    x[:, :classes] += shift * np.eye(classes, dtype=np.float32)[y] * 4
    return x, y


def _ds(x, y, batch=32):
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((x, y.astype(np.int32))).shuffle(len(y), seed=1).batch(batch)


@pytest.mark.parametrize("classes", [2, 4])
def test_probe_softmax_equals_sklearn_logistic_regression(tmp_path, classes):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = _data(300, 12, classes)
    xt, _ = _data(100, 12, classes, seed=1)
    model = _suffix(12, classes)
    info = fit_probe(model, _ds(x, y), classes, seed=0, class_weight="none", work=tmp_path)
    assert read_json(tmp_path / PROBE_JSON)["c"] == info["c"] and set(info["cv_accuracy"]) == {"0.01", "0.03", "0.1",
                                                                                              "0.3", "1.0"}
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=info["c"], max_iter=5000)).fit(x, y)
    got = model.predict(xt, verbose=0)
    np.testing.assert_allclose(got, ref.predict_proba(xt), atol=1e-4)
    assert (got.argmax(1) == ref.predict(xt)).all()


def test_probe_class_without_training_rows_is_never_predicted(tmp_path):
    x, y = _data(240, 8, 3)
    y[y == 1] = 2  # class 1 has no training row
    model = _suffix(8, 3)
    info = fit_probe(model, _ds(x, y), 3, seed=0, class_weight="balanced", work=tmp_path)
    assert info["classes_trained"] == [0, 2]
    proba = model.predict(_data(50, 8, 3, seed=3)[0], verbose=0)
    assert proba[:, 1].max() < 1e-9 and np.allclose(proba.sum(1), 1, atol=1e-5)


def test_probe_refuses_untrained_layers_and_wrong_configs(tmp_path):
    x, y = _data(60, 6, 2)
    with pytest.raises(ConfigError, match="hidden"):
        fit_probe(_suffix(6, 2, extra=True), _ds(x, y), 2, seed=0, class_weight="none", work=tmp_path)
    base = dict(demo=True, freeze_until="all", head="none", augment=False, head_solver="logreg")
    check_probe_config(TrainConfig(**base))  # accepted
    with pytest.raises(ConfigError, match=r"--freeze-until all.*--head none"):
        check_probe_config(TrainConfig(**dict(base, freeze_until="block3", head="16")))
    with pytest.raises(ConfigError, match=r"--head none.*--no-augment"):
        check_probe_config(TrainConfig(**dict(base, head="16", augment=True)))
    with pytest.raises(ConfigError, match="--prefix-cache"):
        check_probe_config(TrainConfig(**dict(base, prefix_cache="off")))
    # LP-FT: a frozen-block fine-tune is accepted when the probe replaces its warm-up (augmentation allowed then)
    check_probe_config(TrainConfig(**dict(base, freeze_until="block3", warmup_epochs=1, augment=True)))
    with pytest.raises(ConfigError, match="--warmup-epochs N: the probe, then fine-tuning"):
        check_probe_config(TrainConfig(**dict(base, freeze_until="block3")))
    with pytest.raises(ConfigError, match="no --warmup-epochs"):
        check_probe_config(TrainConfig(**dict(base, warmup_epochs=1)))


def test_finetune_head_solver_logreg_end_to_end(tmp_path, demo_root):
    out = tmp_path / "probe"
    argv = ["--demo", "--arch", "test_tiny", "--weights", "none", "--image-size", "32", "--freeze-until", "all",
            "--head", "none", "--no-augment", "--head-solver", "logreg", "--verbose", "0", "--out", str(out)]
    assert finetune.main(argv) == 0
    info = read_json(out / PROBE_JSON)
    assert info["n"] == 240 and info["c"] in info["c_grid"]
    assert load_run(out)[1].head_solver == "logreg"
    metrics = read_json(out / "metrics.json")
    assert metrics["val"]["n"] == 60 and 0 <= metrics["val"]["top1"] <= 1
    assert not (out / "history.csv").exists()  # no epochs ran
    assert finetune.main(argv[:-2] + ["--head", "16", "--out", str(tmp_path / "bad")]) == 2
    # nothing is selected on a train slice: with --select-on train-holdout the probe still fits every training image
    held = tmp_path / "held"
    assert finetune.main(argv[:-2] + ["--select-on", "train-holdout", "--out", str(held)]) == 0
    assert read_json(held / PROBE_JSON)["n"] == 240 and "holdout" not in read_json(held / "metrics.json")


def test_lp_ft_fine_tunes_from_the_probe(tmp_path, demo_root):
    """--warmup-epochs with --head-solver logreg: the probe is the warm-up, then the top block trains from it. With a
    vanishing learning rate the fine-tuning epoch changes nothing, so the run scores exactly as the probe alone."""
    common = ["--demo", "--arch", "test_tiny", "--weights", "none", "--image-size", "32", "--head", "none",
              "--no-augment", "--head-solver", "logreg", "--verbose", "0"]
    assert finetune.main(common + ["--freeze-until", "all", "--out", str(tmp_path / "lp")]) == 0
    lpft = tmp_path / "lpft"
    argv = common + ["--freeze-until", "block2", "--warmup-epochs", "1", "--epochs", "2", "--lr", "1e-20",
                     "--out", str(lpft)]
    assert finetune.main(argv) == 0
    assert read_json(lpft / PROBE_JSON)["n"] == 240  # the probe saw every training image
    import pandas as pd

    history = pd.read_csv(lpft / "history.csv")
    assert history["epoch"].tolist() == [1]  # Keras counts from 0: the one fine-tuning epoch is the run's second
    lp, ft = read_json(tmp_path / "lp" / "metrics.json")["val"], read_json(lpft / "metrics.json")["val"]
    assert lp["top1"] == ft["top1"] and lp["macro_f1"] == ft["macro_f1"]
    # a real learning rate moves the fine-tuned block away from the probe's starting point; with augmentation on,
    # the probe still fits each image once from the cache (its one-epoch phase must not fall back to the full network)
    moved = tmp_path / "moved"
    assert finetune.main(argv[:-4] + ["--augment", "--lr", "1e-2", "--out", str(moved)]) == 0
    assert read_json(moved / PROBE_JSON)["n"] == 240
    assert pd.read_csv(moved / "history.csv")["loss"].iloc[0] != history["loss"].iloc[0]
