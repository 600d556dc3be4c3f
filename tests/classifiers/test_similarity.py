"""classifiers.similarity (task similarity): ImageNet labels per target class and the accuracy on the 1000-d ImageNet output."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mame_transfer import task_similarity
from mame_transfer.classifiers.similarity import (
    arrow_lines,
    imagenet_class_names,
    top_imagenet_labels,
)
from mame_transfer.core.errors import DataError, WeightsError
from mame_transfer.store.store import write_store

NAMES = [f"n{i}" for i in range(1000)]


def test_top_labels_literal():
    probs = np.full((4, 1000), 0.0)
    probs[[0, 1, 2], 7] = [0.8, 0.6, 0.1]  # Ceramic: "n7" ranked first twice
    probs[2, 9] = 0.9
    probs[3, 3] = 1.0
    t = top_imagenet_labels(probs, ["Ceramic"] * 3 + ["Etching"], ["Ceramic", "Etching"], NAMES)
    first = t[(t["class"] == "Ceramic") & (t["rank"] == 1)].iloc[0]
    assert first.imagenet_label == "n7" and first.share == pytest.approx(2 / 3) and first.mean_prob == pytest.approx(0.5)
    assert list(t[t["class"] == "Ceramic"].imagenet_label) == ["n7", "n9"]
    assert arrow_lines(t)[0] == "Ceramic -> n7 0.50 (67%)"
    with pytest.raises(DataError, match=r"expected \(n, 1000\)"):
        top_imagenet_labels(probs[:, :10], ["a"] * 4, ["a"], NAMES)


def test_class_names_from_keras_home(keras_home):
    names = imagenet_class_names()
    assert len(names) == 1000 and names[0] == "tench"


def test_class_names_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr("mame_transfer.models.backbones.keras_models_dirs", lambda: [tmp_path / "models"])
    with pytest.raises(WeightsError, match="imagenet_class_index.json was not found in .*models"):
        imagenet_class_names()


def test_analyse_store(tmp_path, keras_home, capsys):
    """ImageNet output that encodes the class (label k -> ImageNet indices 100k..100k+19) scores as well as the
    embeddings."""
    rng = np.random.default_rng(0)
    classes = ["Ceramic", "Etching", "Woodcut"]
    splits, extra = {}, {}
    for split, n in (("train", 30), ("val", 15)):
        y = np.arange(n) % 3
        logits = rng.normal(size=(n, 1000))
        logits[np.arange(n)[:, None], 100 * y[:, None] + np.arange(20)] += 6.0
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        emb = (rng.normal(size=(n, 8)) + 4.0 * np.eye(3, 8)[y]).astype(np.float32)
        meta = pd.DataFrame({"image": [f"{split}{i}" for i in range(n)], "label": [classes[k] for k in y],
                             "label_index": y, "museum": "m", "width": 1, "height": 1, "product_size": 1,
                             "aspect_ratio": 1.0})
        splits[split], extra[split] = (emb, meta), {"imagenet_probs": probs}
    write_store(tmp_path / "s", manifest={"arch": "synthetic", "layer": "x", "classes": classes},
                splits=splits, extra_sets=extra)
    assert task_similarity.main([str(tmp_path / "s"), "--out", str(tmp_path / "o")]) == 0
    labels = pd.read_csv(tmp_path / "o" / "imagenet_labels.csv")
    first = labels[labels["rank"] == 1].set_index("class").imagenet_label.to_dict()
    names = imagenet_class_names()
    for k, cls in enumerate(classes):
        assert first[cls] in names[100 * k:100 * k + 20]
    scores = pd.read_csv(tmp_path / "o" / "similarity.csv").set_index("features")
    assert scores.loc["imagenet_probs", "val_top1"] >= 0.9 and scores.loc["embeddings", "val_top1"] >= 0.9
    assert "## Accuracy on the ImageNet output" in (tmp_path / "o" / "task_similarity.md").read_text()
    err = capsys.readouterr().err
    assert "logreg fits" in err and "2/2" in err  # a progress bar over the two fits


def test_store_without_probs(tmp_path, keras_home, capsys):
    meta = pd.DataFrame({"image": ["a", "b"], "label": ["x", "y"], "label_index": [0, 1]})
    write_store(tmp_path / "s", manifest={"arch": "synthetic", "classes": ["x", "y"]},
                splits={"train": (np.zeros((2, 3)), meta)})
    assert task_similarity.main([str(tmp_path / "s")]) == 2
    assert "no 'imagenet_probs' feature set; re-export" in capsys.readouterr().err
