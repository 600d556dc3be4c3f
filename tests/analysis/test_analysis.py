"""Analyses: CKA maths, running top-k, entropy/overlap, projections, Grad-CAM, feature vis, analyze CLI."""

from __future__ import annotations

import json

import keras
import numpy as np
import pandas as pd
import pytest
from file_checks import png_size
from matplotlib.figure import Figure

from mame_transfer.analysis import cka, featvis, gradcam, maxact, projections
from mame_transfer.core.errors import ConfigError
from mame_transfer.models import backbones

# ----------------------------------------------------------------------------------------------- CKA maths


def test_cka_identity_orthogonal_and_scaling_invariance():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 20))
    q, _ = np.linalg.qr(rng.normal(size=(20, 20)))
    assert cka.linear_cka(x, x) == pytest.approx(1.0)
    assert cka.linear_cka(x, x @ q) == pytest.approx(1.0)
    assert cka.linear_cka(x, 7.5 * x) == pytest.approx(1.0)
    y = rng.normal(size=(64, 20))
    assert cka.linear_cka(x, y) < 0.5
    # Not invariant to arbitrary invertible linear maps (that is what distinguishes CKA from CCA).
    a = rng.normal(size=(20, 20)) * np.linspace(0.1, 5, 20)
    assert cka.linear_cka(x, x @ a) < 0.99


def test_minibatch_cka_matches_known_cases():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(256, 16))
    q, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    noise = rng.normal(size=(256, 16))
    acc = cka.MinibatchCKA(3, 3, "matching")
    for s in range(0, 256, 32):
        b = slice(s, s + 32)
        acc.update([x[b], x[b], x[b]], [x[b], 3.0 * x[b] @ q, noise[b]])
    values = acc.matching()
    assert values[0] == pytest.approx(1.0)
    assert values[1] == pytest.approx(1.0)
    assert abs(values[2]) < 0.1
    full = cka.MinibatchCKA(2, 2, "all")
    y = x[:, :8] + 0.5 * noise[:, :8]
    for s in range(0, 256, 64):
        b = slice(s, s + 64)
        full.update([x[b], y[b]], [x[b], y[b]])
    m = full.matrix()
    assert m.shape == (2, 2) and np.allclose(np.diag(m), 1.0)
    assert m[0, 1] == pytest.approx(m[1, 0])
    assert 0.2 < m[0, 1] < 0.95
    with pytest.raises(ConfigError, match="at least 4"):
        cka.unbiased_hsic(np.eye(3), np.eye(3))


def test_kernel_distances_zero_for_same_model_and_positive_after_change():
    model = backbones.get("test_tiny").build(input_shape=(32, 32, 3))
    other = backbones.get("test_tiny").build(input_shape=(32, 32, 3))
    other.set_weights(model.get_weights())
    rows = cka.kernel_distances(model, other)
    assert [r["layer"] for r in rows] == ["block1_conv1", "block2_conv1", "block3_conv1"]
    assert cka.overall_distance(rows) == 0.0
    w = other.get_layer("block3_conv1").get_weights()
    other.get_layer("block3_conv1").set_weights([w[0] + 0.1, w[1]])
    rows = cka.kernel_distances(model, other)
    assert rows[0]["mean_l2"] == 0.0
    # every filter of block3 has 3*3*16 weights moved by 0.1: l2 norm 0.1*sqrt(144) = 1.2
    assert rows[2]["mean_l2"] == pytest.approx(1.2, rel=1e-5)
    assert isinstance(cka.kernel_distance_figure(rows), Figure)
    assert isinstance(cka.cka_curve_figure(["a", "b"], [1.0, 0.7]), Figure)
    assert isinstance(cka.cka_heatmap_figure(np.eye(2), ["a", "b"], ["c", "d"]), Figure)


# ----------------------------------------------------------------------------------------------- max activations


def test_running_topk_equals_full_sort_and_memory_is_bounded():
    rng = np.random.default_rng(2)
    data = rng.normal(size=(500, 6))
    top = maxact.RunningTopK(10, 6)
    for s in range(0, 500, 37):
        top.update(data[s:s + 37])
    expected = np.argsort(-data, axis=0, kind="stable")[:10]
    assert np.array_equal(top.indices_, expected)
    assert top.values_.shape == (10, 6) and top.seen_ == 500


def test_overlap_and_entropy():
    a = np.array([[0, 1], [1, 2], [2, 3]])
    b = np.array([[2, 7], [0, 8], [9, 9]])
    assert np.allclose(maxact.overlap_ratio(a, b), [2 / 3, 0.0])
    labels = np.array([0, 0, 0, 1, 2, 3, 0, 0, 0, 0])
    ent = maxact.class_entropy(np.array([[0, 2, 3], [1, 3, 4], [2, 4, 5]]).T.T, labels, 4)
    # channel 0: rows 0,1,2 all class 0 -> 0 ; channel 2: rows 3,4,5 -> classes 1,2,3 -> log3/log4
    assert ent[0] == pytest.approx(0.0)
    assert ent[2] == pytest.approx(np.log(3) / np.log(4))
    fig = maxact.depth_boxplot_figure({"a": [[0.1, 0.2], [0.5]], "b": [[0.3], [0.9, 1.0]]}, ["l1", "l2"], ylabel="x")
    assert isinstance(fig, Figure)


# ----------------------------------------------------------------------------------------------- projections


def _store_like(n_per=12, classes=("A", "B", "C"), dim=8, seed=0):
    rng = np.random.default_rng(seed)
    emb, meta = {}, {}
    for split, shift in (("train", 0.0), ("val", 0.1)):
        rows, feats = [], []
        for i, c in enumerate(classes):
            for k in range(n_per):
                feats.append(rng.normal(size=dim) + 4 * np.eye(dim)[i] + shift)
                rows.append({"image": f"{split}_{c}_{k}.jpg", "label": c, "label_index": i})
        emb[split], meta[split] = np.array(feats, np.float32), pd.DataFrame(rows)
    return emb, meta


def test_projections_pca_tsne_and_sampling():
    emb, meta = _store_like()
    res = projections.project(emb, meta, method="pca", dims=3, fit_split="train", apply_splits=["val"], per_class=5)
    assert res.coords["train"].shape == (15, 3) and res.coords["val"].shape == (15, 3)
    assert (res.meta["train"]["label"].value_counts() == 5).all()
    assert len(res.explained_variance_ratio) == 3 and 0 < sum(res.explained_variance_ratio) <= 1
    with pytest.raises(ConfigError, match="t-SNE has no transform"):
        projections.project(emb, meta, method="tsne", dims=2, fit_split="train", apply_splits=["val"])
    ts = projections.project(emb, meta, method="tsne", dims=2, fit_split="train", per_class=None)
    assert ts.coords["train"].shape == (36, 2)
    # UMAP (numba compilation takes minutes on 2 cores) is exercised by the CLI run in the report, not here.
    fig = projections.scatter_figure(ts.coords["train"], ts.meta["train"]["label"], ["A", "B", "C"])
    assert isinstance(fig, Figure) and len(fig.axes[0].get_legend().get_texts()) == 3
    page = projections.scatter3d_html(res.coords["train"], res.meta["train"]["label"], ["</script>x.jpg"] * 15,
                                      ["A", "B", "C"])
    assert "<script src" not in page and "</script>x.jpg" not in page and page.count("</script>") == 2  # data, code
    assert "\\u003c/script\\u003ex.jpg" in page  # the name, escaped inside the JSON data


# ----------------------------------------------------------------------------------------------- Grad-CAM / featvis


def test_gradcam_on_test_tiny_localises_and_targets():
    from mame_transfer.models.build import build_model

    model = build_model("test_tiny", 3, image_size=32, weights=None, head="8")
    images = np.random.default_rng(0).uniform(0, 255, size=(4, 32, 32, 3)).astype(np.float32)
    before = images.copy()
    cams, proba = gradcam.gradcam(model, images, preprocess=backbones.get("test_tiny").preprocess)
    assert np.array_equal(images, before), "preprocess must not modify the caller's images"
    assert cams.shape == (4, 4, 4) and proba.shape == (4, 3)
    assert np.allclose(proba.sum(1), 1, atol=1e-5) and cams.min() >= 0 and cams.max() <= 1
    ref = model.predict(backbones.get("test_tiny").preprocess(images.copy()), verbose=0)
    assert np.allclose(proba, ref, atol=1e-5)
    cams2, _ = gradcam.gradcam(model, images, layer="block2_relu", targets=[0, 1, 2, 0],
                               preprocess=backbones.get("test_tiny").preprocess)
    assert cams2.shape == (4, 16, 16)  # block2_relu comes before block2_pool
    with pytest.raises(ConfigError, match="no layer"):
        gradcam.gradcam(model, images, layer="nope")
    ov = gradcam.overlay(images[0], cams[0])
    assert ov.shape == (32, 32, 3) and ov.dtype == np.uint8
    assert isinstance(gradcam.gradcam_grid_figure([ov, ov], ["a", "b"]), Figure)


@pytest.mark.parametrize("arch", ["vgg16", "resnet50", "efficientnetb0", "efficientnetv2b0", "convnext_tiny", "mobilenet"])
def test_gradcam_builds_on_every_registry_backbone(arch):
    """Build-only smoke test: the default layer and the gradient model exist, one architecture per family (every
    registry entry is built, block by block, in tests/models/test_backbones.py)."""
    import keras

    from mame_transfer.analysis.sources import last_spatial_layer
    from mame_transfer.models.build import build_model

    model = build_model(arch, 3, image_size=32, weights=None, head="none", alpha=0.25 if arch == "mobilenet" else 1.0)
    layer = last_spatial_layer(model)
    assert layer == backbones.get(arch).feature_layer or model.get_layer(layer).output.shape[1:3] == \
        model.get_layer(backbones.get(arch).feature_layer).output.shape[1:3]
    head = model.get_layer("predictions")
    grad_model = keras.Model(model.inputs[0], [model.get_layer(layer).output, head.input])
    assert len(grad_model.outputs[0].shape) == 4


def test_featvis_increases_channel_activation():
    model = backbones.get("test_tiny").build(input_shape=(32, 32, 3))
    r = featvis.visualize_channel(model, "block2_relu", 3, size=32, steps=24, lr=0.1, jitter=2,
                                  preprocess=backbones.get("test_tiny").preprocess)
    assert r["image"].shape == (32, 32, 3) and r["image"].dtype == np.uint8
    assert r["end"] > r["start"] + 1e-3
    assert isinstance(featvis.featvis_figure([[r["image"]]], ["m"], ["c3"]), Figure)


def test_featvis_dead_relu_channel_is_optimised_before_the_relu():
    """A channel that is zero after its ReLU on every image still gets a gradient (pre-activation objective)."""
    spec = backbones.get("test_tiny")
    model = spec.build(input_shape=(32, 32, 3))
    conv = model.get_layer("block2_conv1")
    kernel, bias = conv.get_weights()
    bias[3] = -50.0
    conv.set_weights([kernel, bias])
    x = spec.preprocess(np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32"))
    relu_out = keras.Model(model.inputs[0], model.get_layer("block2_relu").output)(x)
    assert float(np.max(np.asarray(relu_out)[..., 3])) == 0.0  # dead after the ReLU
    r = featvis.visualize_channel(model, "block2_relu", 3, size=32, steps=16, lr=0.1, jitter=0,
                                  preprocess=spec.preprocess)
    assert r["end"] > r["start"] + 1e-3


# ----------------------------------------------------------------------------------------------- run_* and CLI


def _store(tmp_path):
    from mame_transfer.store.store import write_store

    emb, meta = _store_like()
    store = tmp_path / "store"
    write_store(store, manifest={"classes": ["A", "B", "C"], "arch": "test_tiny", "layer": "global_pool"},
                splits={s: (emb[s], meta[s].assign(path=meta[s]["image"], subset=s)) for s in emb})
    return store


TINY_LAYERS = ["block1_relu", "block2_relu", "block3_relu"]


def test_run_cka_of_a_model_with_itself_is_one(demo_root, tmp_path):
    """Known case: one model fed as both A and B gives linear CKA 1 at every layer, kernel distance 0."""
    from mame_transfer.analysis.sources import load_source

    src = load_source("random:test_tiny", image_size=32, seed=3)
    res = cka.run_cka(a=src, b=src, data=str(demo_root), split="val", batch_size=20, matrix=True, out=tmp_path)
    assert res.out == tmp_path and res.summary["batches"] == 3 and res.summary["images"] == 60
    assert list(res.summary["matching"]) == TINY_LAYERS
    assert np.allclose(list(res.summary["matching"].values()), 1.0, rtol=0, atol=1e-6)
    assert np.allclose(np.diag(np.array(res.summary["matrix"])), 1.0, rtol=0, atol=1e-6)
    assert res.summary["kernel_distance"]["overall_mean_l2"] == 0.0
    saved = json.loads((tmp_path / "cka.json").read_text())
    assert saved["matching"] == pytest.approx(dict.fromkeys(TINY_LAYERS, 1.0), abs=1e-6)
    table = pd.read_csv(tmp_path / "cka.csv")
    assert list(table.columns) == ["layer", "cka"] and table["layer"].tolist() == TINY_LAYERS
    assert np.allclose(table["cka"], 1.0, rtol=0, atol=1e-6)
    kd = pd.read_csv(tmp_path / "kernel_distance.csv")
    assert kd["layer"].tolist() == ["block1_conv1", "block2_conv1", "block3_conv1"] and (kd["mean_l2"] == 0).all()
    assert [p.name for p in res.figures] == ["cka_matrix.png", "cka_curve.png", "kernel_distance.png"]
    for p in res.figures:
        png_size(p)
    with pytest.raises(ConfigError, match="pass --b"):
        cka.run_cka(a=src, b=None, data=str(demo_root), out=tmp_path)


def test_run_maxact_single_model(demo_root, tmp_path):
    res = maxact.run_maxact(a="random:test_tiny", data=str(demo_root), split="val", image_size=32, top=6, show=2,
                            grid_channels=1, layers=["block2_relu", "block3_relu"], out=tmp_path)
    label = "entropy_random:test_tiny"
    assert list(res.table.columns) == ["layer", f"{label}_mean", f"{label}_median", "channels"]
    assert res.table["layer"].tolist() == ["block2_relu", "block3_relu"]
    assert res.table["channels"].tolist() == [16, 32]
    assert res.table[f"{label}_mean"].between(0, 1).all()
    assert pd.read_csv(tmp_path / "maxact.csv").shape == (2, 4)
    assert json.loads((tmp_path / "maxact.json").read_text())["b"] is None
    assert [p.name for p in res.figures] == ["maxact_block2_relu.png", "maxact_block3_relu.png", "maxact_entropy.png"]
    for p in res.figures:
        png_size(p)
    with pytest.raises(ConfigError, match="--top 61 needs at least that many images"):
        maxact.run_maxact(a="random:test_tiny", data=str(demo_root), split="val", image_size=32, top=61)


def test_two_models_with_the_same_name_do_not_collide(demo_root, tmp_path):
    """Two random inits are both 'random:test_tiny': results keyed by name must keep both (overlap was 1.0)."""
    res = maxact.run_maxact(a="random:test_tiny", b="random:test_tiny", data=str(demo_root), split="val",
                            image_size=32, top=6, show=2, grid_channels=1, layers=["block3_relu"], out=tmp_path)
    saved = json.loads((tmp_path / "maxact.json").read_text())
    assert (saved["a"], saved["b"]) == ("random:test_tiny (a)", "random:test_tiny (b)")
    info = saved["layers"]["block3_relu"]
    assert {"entropy_random:test_tiny (a)", "entropy_random:test_tiny (b)"} <= set(info)
    assert info["overlap"]["mean"] < 1.0  # different weights rank different images first
    assert res.table.shape[0] == 1


def test_run_featvis_logs_each_channel(tmp_path):
    from mame_transfer.analysis.sources import load_source

    src = load_source("random:test_tiny", image_size=32)
    lines = []
    res = featvis.run_featvis(a=src, channels=[0, 5], steps=4, jitter=0, out=tmp_path, log=lines.append)
    assert res.summary["layer"] == "block3_relu"  # the deepest default layer
    assert res.table[["model", "channel"]].values.tolist() == [["random:test_tiny", 0], ["random:test_tiny", 5]]
    assert lines[1].startswith("random:test_tiny block3_relu[5]: mean activation ")
    saved = json.loads((tmp_path / "featvis_block3_relu.json").read_text())
    assert saved["channels"] == [0, 5] and [c["channel"] for c in saved["models"]["random:test_tiny"]] == [0, 5]
    assert res.figures == [tmp_path / "featvis_block3_relu.png"]
    png_size(res.figures[0], min_side=40)


def test_run_gradcam_on_a_run(tiny_run, tmp_path):
    from mame_transfer.training.runs import read_classes

    classes = read_classes(tiny_run)
    res = gradcam.run_gradcam(tiny_run, split="val", n=5, target="true", batch_size=2, out=tmp_path)
    layer = res.summary["layer"]
    assert res.figures == [tmp_path / f"gradcam_val_{layer}.png"] and res.summary["images"] == 5
    png_size(res.figures[0], min_side=100)
    table = pd.read_csv(tmp_path / f"gradcam_val_{layer}.csv")
    assert list(table.columns) == ["path", "image", "label", "predicted", "probability"] and len(table) == 5
    assert set(table["label"]) <= set(classes) and set(table["predicted"]) <= set(classes)
    assert table["probability"].between(1 / len(classes), 1).all()
    one = table["path"].iloc[0]
    res = gradcam.run_gradcam(tiny_run, images=[one], out=tmp_path)
    assert res.figures[0].name == f"gradcam_images_{layer}.png" and res.table["label"].isna().all()
    with pytest.raises(ConfigError, match="--target true needs images with known classes"):
        gradcam.run_gradcam(tiny_run, images=[one], target="true", out=tmp_path)
    with pytest.raises(ConfigError, match="no images"):
        gradcam.run_gradcam(tiny_run, out=tmp_path)


def test_run_project_pca_2d(tmp_path):
    store = _store(tmp_path)
    res = projections.run_project(store, method="pca", dims=2, per_class=5, out=tmp_path / "out")
    assert [p.name for p in res.figures] == ["pca_2d_train.png", "pca_2d_train_variance.png"]
    for p in res.figures:
        png_size(p)
    saved = json.loads((tmp_path / "out" / "pca_2d_train.json").read_text())
    assert saved["points"] == {"train": 15} and saved["fit_split"] == "train"
    assert len(saved["explained_variance_ratio"]) == 2
    assert saved["explained_variance_total"] == pytest.approx(sum(saved["explained_variance_ratio"]))


def test_analyze_cli_cka_of_a_run_with_itself(tiny_run, tmp_path, capsys):
    """The same run directory as --a and --b: loaded once, CKA 1 at every layer in the JSON, CSV and output."""
    from mame_transfer import analyze

    out = tmp_path / "self"
    assert analyze.main(["cka", "--a", str(tiny_run), "--b", str(tiny_run), "--split", "val", "--batch-size", "20",
                         "--out", str(out)]) == 0
    res = json.loads((out / "cka.json").read_text())
    assert res["a"] == res["b"] == tiny_run.name and res["batches"] == 3
    assert list(res["matching"]) == TINY_LAYERS
    assert all(abs(v - 1.0) <= 1e-6 for v in res["matching"].values()), res["matching"]
    table = pd.read_csv(out / "cka.csv")
    assert table["layer"].tolist() == TINY_LAYERS and np.allclose(table["cka"], 1.0, rtol=0, atol=1e-6)
    assert res["kernel_distance"]["overall_mean_l2"] == 0.0
    printed = capsys.readouterr().out.splitlines()
    assert printed[:3] == [f"{n:<28} CKA 1.0000" for n in TINY_LAYERS]
    assert printed[3:] == ["overall mean l2 distance of conv filters: 0.00000", str(out)]


def test_analyze_cli_cka_maxact_featvis_project(demo_root, tiny_run, tmp_path, capsys):
    from mame_transfer import analyze

    out = tmp_path / "cka"
    assert analyze.main(["cka", "--a", "random:test_tiny", "--b", "random:test_tiny", "--data", str(demo_root),
                         "--split", "val", "--image-size", "32", "--batch-size", "20", "--matrix",
                         "--out", str(out)]) == 0
    res = json.loads((out / "cka.json").read_text())
    assert list(res["matching"]) == TINY_LAYERS and len(res["matrix"]) == 3
    assert res["batches"] == 3 and res["kernel_distance"]["overall_mean_l2"] > 0
    random_pair = np.array(list(res["matching"].values()))
    assert random_pair.min() < 0.999  # two different random inits are not identical everywhere
    assert pd.read_csv(out / "cka.csv")["cka"].tolist() == pytest.approx(random_pair.tolist())
    kd = pd.read_csv(out / "kernel_distance.csv")
    assert list(kd.columns) == ["layer", "filters", "mean_l2", "mean_norm_a", "relative"] and len(kd) == 3
    for name in ("cka_matrix.png", "cka_curve.png", "kernel_distance.png"):
        png_size(out / name)
    captured = capsys.readouterr()
    printed = captured.out.splitlines()
    assert printed[0].startswith("block1_relu") and " CKA 0." in printed[0] and printed[-1] == str(out)
    assert "CKA: 100%" in captured.err and "60/60" in captured.err  # the progress bar counts images

    # A bare backbone against a run: fed at the run's image size, its dataset by default, outputs under the run.
    out = tmp_path / "maxact"
    assert analyze.main(["maxact", "--a", "random:test_tiny", "--b", str(tiny_run), "--split", "val", "--top", "10",
                         "--show", "3", "--grid-channels", "2", "--out", str(out)]) == 0
    summary = json.loads((out / "maxact.json").read_text())
    assert summary["b"] == tiny_run.name and summary["images"] == 60
    assert set(summary["layers"]) == set(TINY_LAYERS)
    for info in summary["layers"].values():
        assert 0 <= info["overlap"]["mean"] <= 1
    table = pd.read_csv(out / "maxact.csv")
    assert list(table.columns) == ["layer", "entropy_random:test_tiny_mean", "entropy_random:test_tiny_median",
                                   f"entropy_{tiny_run.name}_mean", f"entropy_{tiny_run.name}_median",
                                   "overlap_mean", "overlap_median", "channels"]
    assert table["layer"].tolist() == TINY_LAYERS
    assert table["overlap_mean"].tolist() == pytest.approx([v["overlap"]["mean"] for v in summary["layers"].values()])
    for name in ("maxact_overlap.png", "maxact_entropy.png", "maxact_block2_relu.png"):
        png_size(out / name)
    captured = capsys.readouterr()
    printed = captured.out.splitlines()
    assert printed[0].startswith("layer=block1_relu, entropy_random:test_tiny_mean=") and printed[-1] == str(out)
    for model in ("random:test_tiny", tiny_run.name):  # one bar per model, counting the 60 images
        assert f"top-10 of {model}: 100%" in captured.err and "60/60" in captured.err

    out = tmp_path / "fv"
    assert analyze.main(["featvis", "--a", "random:test_tiny", "--image-size", "32", "--layer", "block2_relu",
                         "--channels", "0,1", "--steps", "8", "--jitter-px", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    for c in (0, 1):
        assert printed[c].startswith(f"random:test_tiny block2_relu[{c}]: mean activation "), printed
    assert printed[2] == str(out / "featvis_block2_relu.png")
    png_size(out / "featvis_block2_relu.png", min_side=40)

    store = _store(tmp_path)
    assert analyze.main(["project", str(store), "--method", "pca", "--dims", "3", "--per-class", "5",
                         "--apply-split", "val"]) == 0
    captured = capsys.readouterr()
    printed = captured.out.splitlines()
    assert printed[0].startswith("PCA explained variance ratio: ")
    assert "PCA 3-D: 100%" in captured.err and "3/3" in captured.err  # fit, apply to val, write
    points = pd.read_csv(store / "projections" / "pca_3d_train+val.csv")
    assert list(points.columns) == ["split", "image", "label", "x", "y", "z"] and len(points) == 30
    assert points.groupby("split").size().to_dict() == {"train": 15, "val": 15}
    emb, meta = _store_like()
    same = projections.project(emb, meta, method="pca", dims=3, fit_split="train", apply_splits=["val"], per_class=5)
    np.testing.assert_allclose(points[["x", "y", "z"]].to_numpy(),
                               np.concatenate([same.coords["train"], same.coords["val"]]), rtol=1e-5, atol=1e-5)
    assert points["image"].tolist() == same.meta["train"]["image"].tolist() + same.meta["val"]["image"].tolist()
    page = store / "projections" / "pca_3d_train+val.html"
    assert printed[1:] == [str(page), str(store / "projections" / "pca_3d_train+val_variance.png")]
    text = page.read_text()
    assert "PCA of store (global_pool), fitted on train, 5 per class" in text and text.count("train_A_") == 5
    assert json.loads((store / "projections" / "pca_3d_train+val.json").read_text())["points"] == {"train": 15,
                                                                                                   "val": 15}
    assert analyze.main(["project", str(store), "--method", "tsne", "--dims", "2", "--apply-split", "val"]) == 2
    assert "t-SNE has no transform" in capsys.readouterr().err


def test_cka_random_model_scores_lower_than_itself():
    """Known case on real networks: a model vs itself is 1, vs a differently seeded random init lower."""
    from mame_transfer.analysis.sources import load_source, pooled_features

    a = load_source("random:test_tiny", image_size=32, seed=0)
    b = load_source("random:test_tiny", image_size=32, seed=5)
    images = np.random.default_rng(0).uniform(0, 255, size=(48, 32, 32, 3)).astype(np.float32)
    layers = ["block1_relu", "block3_relu"]
    fa, fb = pooled_features(a, layers, images), pooled_features(b, layers, images)
    same = cka.MinibatchCKA(2, 2).update(fa, fa).matching()
    diff = cka.MinibatchCKA(2, 2).update(fa, fb).matching()
    assert np.allclose(same, 1.0)
    assert (diff < same - 1e-3).all()
