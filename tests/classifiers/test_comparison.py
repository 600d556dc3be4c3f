"""classifiers.comparison (+ estimators): classifiers compared on feature stores: every classifier x feature set, outputs, skops round trip."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from file_checks import png_size, read_csv, read_json

from mame_transfer import classify
from mame_transfer.classifiers.comparison import (
    FEATURE_SETS,
    build_inputs,
    compare,
    feature_sets_for,
    heatmap_figure,
    scores,
    source_from_dataset,
    source_from_store,
    write_outputs,
)
from mame_transfer.classifiers.estimators import (
    CLASSIFIERS,
    classifier_pipeline,
    load_pipeline,
)
from mame_transfer.core import plots
from mame_transfer.core.errors import ConfigError, DataError
from mame_transfer.store.store import write_store


def _separable_store(path, splits=("train", "val", "test"), n=(24, 12, 12), dim=8, seed=0):
    """Three classes whose embeddings are shifted Gaussians; metadata carries a weak museum signal."""
    rng = np.random.default_rng(seed)
    classes = ["Ceramic", "Etching", "Woodcut"]
    data = {}
    for split, count in zip(splits, n):
        y = np.arange(count) % 3
        emb = (0.5 * rng.normal(size=(count, dim)) + 4.0 * np.eye(3, dim)[y]).astype(np.float32)
        meta = pd.DataFrame({
            "image": [f"{split}_{i}.jpg" for i in range(count)], "path": "", "label": [classes[k] for k in y],
            "label_index": y, "subset": split, "museum": np.where(y == 0, "Met", "LACMA"),
            "width": rng.integers(100, 400, count), "height": rng.integers(100, 400, count),
        })
        meta["product_size"] = meta.width * meta.height
        meta["aspect_ratio"] = meta.width / meta.height
        data[split] = (emb, meta)
    manifest = {"arch": "synthetic", "alpha": None, "weights": None, "run": None, "layer": "x", "image_size": 0,
                "preprocessing": "none", "classes": classes}
    return write_store(path, manifest=manifest, splits=data)


class _RecordingReducer:
    """Stands in for umap.UMAP (whose numba JIT costs a minute per process): a fixed random projection that
    records which rows it was fitted on."""

    fitted_rows: list = []

    def __init__(self, n, k, seed):
        self.n, self.seed = n, seed

    def fit_transform(self, X):
        _RecordingReducer.fitted_rows.append(len(X))
        self.W = np.random.default_rng(self.seed).normal(size=(X.shape[1], self.n))
        return X @ self.W

    def transform(self, X):
        return X @ self.W


def test_every_classifier_and_feature_set(tmp_path):
    store = _separable_store(tmp_path / "store")
    source = source_from_store(store)
    _RecordingReducer.fitted_rows = []
    result = compare(source, fast=True, umap_components=2, verbose=0, umap_factory=_RecordingReducer)
    assert _RecordingReducer.fitted_rows == [24]  # fitted once, on the 24 train rows only
    t = result.table
    assert len(t) == len(CLASSIFIERS) * len(FEATURE_SETS)
    assert set(t.classifier) == set(CLASSIFIERS) and set(t.feature_set) == set(FEATURE_SETS)
    emb = t[t.feature_set == "embeddings"]
    # well separated: every model learns it (k-NN suffers most from the 5 pure-noise dimensions)
    assert (emb.val_top1 >= 0.8).all() and emb.val_top1.median() == 1.0, emb[["classifier", "val_top1"]]
    assert not any(c.endswith("_top5") for c in t.columns)  # 3 classes: top-5 would be 1.0 by construction
    assert set(result.predictions) == {(fs, c) for fs in FEATURE_SETS for c in CLASSIFIERS}
    for (fs, c), preds in result.predictions.items():  # every pipeline's predictions, consistent with the table
        row = t[(t.feature_set == fs) & (t.classifier == c)].iloc[0]
        assert (preds["val"] == result.y["val"]).mean() == pytest.approx(row.val_top1)
    assert t.loc[t.feature_set == "embeddings+metadata+umap", "dim"].iloc[0] == 8 + 4 + 2 + 2
    best = t.val_top1.max()
    assert result.best_row["val_top1"] == best

    out = write_outputs(result, tmp_path / "out", description="synthetic")
    for name in ("results.csv", "results.md", "accuracy.png", "accuracy_heatmap.png", "confusion_matrix_val.png",
                 "confusion_matrix_test.png", "best_model.skops", "best_model.json"):
        assert (out / name).is_file(), name
    assert len(pd.read_csv(out / "results.csv")) == len(t)
    read_csv(out / "results.csv", ["feature_set", "classifier", "val_n", "val_top1", "val_top1_ci", "val_macro_f1_ci",
                                   "test_top1", "test_top1_ci", "fit_s", "params"], len(t))
    assert (t.val_n == 12).all() and t.val_top1_ci.str.startswith("[").all()
    md = (out / "results.md").read_text().splitlines()
    assert md[0] == "# Classifier comparison" and "synthetic" in md
    assert sum(line.startswith("| ") for line in md) == len(t) + 1  # header + one row per pipeline
    for name in ("accuracy.png", "accuracy_heatmap.png", "confusion_matrix_val.png", "confusion_matrix_test.png"):
        png_size(out / name)
    best_json = read_json(out / "best_model.json", ["classifier", "feature_set", "params", "classes", "val_top1"])
    assert (best_json["classifier"], best_json["feature_set"]) == (result.best_row["classifier"],
                                                                   result.best_row["feature_set"])
    assert best_json["classes"] == ["Ceramic", "Etching", "Woodcut"] and best_json["val_top1"] == pytest.approx(best)
    # skops round trip: the loaded pipeline predicts exactly like the fitted one
    loaded = load_pipeline(out / "best_model.skops")
    inputs = build_inputs(source, result.best_row["feature_set"], umap_components=2,
                          umap_factory=_RecordingReducer)
    np.testing.assert_array_equal(loaded.predict(inputs.X["test"]), result.best.predict(inputs.X["test"]))


def test_store_without_test_split_and_cli(tmp_path, capsys):
    _separable_store(tmp_path / "store", splits=("train", "val"), n=(24, 12))
    code = classify.main([str(tmp_path / "store"), "--with", "metadata", "--classifiers", "linear_svc,logreg",
                          "--fast", "--out", str(tmp_path / "out")])
    assert code == 0
    t = pd.read_csv(tmp_path / "out" / "results.csv")
    assert list(t.feature_set.unique()) == ["embeddings", "embeddings+metadata", "metadata"]
    assert t.test_top1.isna().all() and t.val_top1.notna().all()
    assert "| embeddings | linear_svc |" in (tmp_path / "out" / "results.md").read_text()
    assert not (tmp_path / "out" / "confusion_matrix_test.png").exists()
    err = capsys.readouterr().err
    assert "classifier fits" in err and "6/6" in err  # the progress bar counts the 3 x 2 fits
    assert classify.main([str(tmp_path / "store"), "--with", "", "--classifiers", "logreg", "--fast", "--verbose",
                          "0", "--out", str(tmp_path / "quiet")]) == 0
    assert "classifier fits" not in capsys.readouterr().err


def test_heatmap_is_feature_set_by_classifier(tmp_path):
    table = pd.DataFrame({"feature_set": ["embeddings", "embeddings", "metadata", "metadata"],
                          "classifier": ["logreg", "knn", "logreg", "knn"], "val_top1": [0.9, 0.8, 0.3, np.nan]})
    fig = heatmap_figure(table)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["embeddings", "metadata"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["logreg", "knn"]
    assert sorted(t.get_text() for t in ax.texts) == ["0.300", "0.800", "0.900"]  # NaN cell left blank
    png_size(plots.save(fig, tmp_path / "h.png"))


def test_linear_svc_scores_rank_by_decision_function():
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=90, n_features=6, n_informative=4, n_classes=3, random_state=0)
    pipe = classifier_pipeline("linear_svc").fit(X, y)
    s = scores(pipe, X, 4)  # a 4th class absent from training ranks last
    assert s.shape == (90, 4) and np.isneginf(s[:, 3]).all()
    np.testing.assert_array_equal(s[:, :3].argmax(axis=1), pipe.predict(X))


def test_bad_inputs(tmp_path):
    store = _separable_store(tmp_path / "store", splits=("train", "test"), n=(24, 12))
    with pytest.raises(DataError, match="'val' split, which is missing"):
        compare(source_from_store(store), classifiers=["logreg"], verbose=0)
    with pytest.raises(ConfigError, match="unknown classifier 'svm'"):
        classifier_pipeline("svm")
    with pytest.raises(ConfigError, match="--with umap adds UMAP to embeddings\\+metadata"):
        feature_sets_for("umap")
    assert classify.main(["--out", str(tmp_path / "o"), str(tmp_path / "missing")]) == 2


def test_metadata_only_real_mame(mame_metadata, capsys):
    """Real MAMe CSV, no images: metadata features alone, train on train, score on val and test."""
    from mame_transfer.datasets.layouts import load_dataset

    dataset = load_dataset(mame_metadata, check_files=False)
    source = source_from_dataset(dataset)
    result = compare(source, feature_sets=["metadata"], classifiers=["random_forest"],
                     fast=True, verbose=0)
    t = result.table.set_index("classifier")
    print(t[["val_top1", "test_top1", "test_macro_f1", "fit_s"]].to_string())
    # 29 classes: chance is 1/29; image size and museum alone carry real signal
    assert t.loc["random_forest", "test_top1"] > 0.25
    assert len(result.y["test"]) == 15657


def test_classify_folds_cross_validates_over_train_and_val(tmp_path):
    """classify --folds: the same folds as finetune --folds (by image name), per-fold outputs, mean and interval
    over folds, pooled out-of-fold scores, the fold pipelines' ensemble on test."""
    from mame_transfer.classifiers.crossval import fold_sources
    from mame_transfer.datasets.folds import assign_folds

    store = _separable_store(tmp_path / "store")
    out = tmp_path / "cv"
    assert classify.main([str(store.path), "--with", "", "--classifiers", "linear_svc,logreg", "--fast", "--folds", "3",
                          "--out", str(out)]) == 0
    cv = read_csv(out / "cv_results.csv", ["feature_set", "classifier", "val_top1_mean", "val_top1_ci", "oof_n",
                                          "oof_top1", "test_top1_ensemble"], 2)
    assert (cv["oof_n"] == 36).all() and (cv["test_top1_ensemble"] >= 0.9).all()
    for i in (1, 2, 3):
        assert (out / f"fold-{i}" / "results.csv").is_file() and (out / f"fold-{i}" / "best_model.skops").is_file()
    oof = pd.read_csv(out / "oof_predictions.csv")
    source = source_from_store(store)
    _, pool = fold_sources(source, 3, seed=0)
    assert sorted(oof["image"]) == sorted(pool["image"]) and len(oof) == 36
    folds = assign_folds(pool, 3, seed=0) + 1
    assert dict(zip(pool["image"], folds)) == dict(zip(oof["image"], oof["fold"]))
    row = cv.iloc[0]
    assert row["oof_top1"] == pytest.approx((oof[f"embeddings/{row['classifier']}"] == oof["label"]).mean())
    assert "mean of 3" in (out / "cv_results.md").read_text()
