"""deploy.classifier: a finished run labels raw images exactly as its own evaluation scores them; errors per file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from tiny_sets import jpeg_bytes, tiff16_bytes

import mame_transfer
from mame_transfer.core.errors import ConfigError, DataError
from mame_transfer.deploy.classifier import result_columns
from mame_transfer.training.evaluation import evaluate_run

REPO = Path(__file__).resolve().parents[2]


def _val_paths(run: Path) -> list[str]:
    splits = pd.read_csv(run / "splits.csv")
    return splits.loc[splits["subset"] == "val", "file"].tolist()


def _decoded(paths):
    import tensorflow as tf

    return [tf.io.decode_image(tf.io.read_file(p), channels=3, expand_animations=False).numpy() for p in paths]


def test_predict_equals_the_runs_own_val_scores(tiny_run):
    clf = mame_transfer.load_classifier(tiny_run)
    paths = _val_paths(tiny_run)
    frame = clf.predict(paths, top_k=3, batch_size=7)  # a batch size that leaves a remainder
    saved = pd.read_csv(tiny_run / "predictions_val.csv")
    assert list(frame.columns) == result_columns(3) == [
        "path", "prediction", "probability", "top2", "top2_probability", "top3", "top3_probability", "errors"]
    assert frame["path"].tolist() == paths and (frame["errors"] == "").all()
    assert frame["prediction"].tolist() == saved["predicted"].tolist()
    assert frame["top2"].tolist() == saved["top2"].tolist() and frame["top3"].tolist() == saved["top3"].tolist()
    np.testing.assert_allclose(frame["probability"], saved["probability"], atol=1e-5)
    np.testing.assert_allclose(frame["top3_probability"], saved["top3_prob"], atol=1e-5)
    assert (frame["probability"] >= frame["top2_probability"]).all()

    # uint8 arrays (one at a time, a list, a batch) give what the files give
    arrays = _decoded(paths[:5])
    from_arrays = clf.predict(arrays, top_k=2)
    assert from_arrays["path"].tolist() == [f"array[{i}]" for i in range(5)]
    np.testing.assert_allclose(from_arrays["probability"], frame["probability"][:5], atol=1e-5)
    assert from_arrays["prediction"].tolist() == frame["prediction"][:5].tolist()
    same_size = [a for a in arrays if a.shape == arrays[0].shape]
    batch = clf.predict(np.stack(same_size))
    assert len(batch) == len(same_size) and batch["prediction"][0] == from_arrays["prediction"][0]
    mixed = clf.predict([paths[0], arrays[1], paths[2]])
    assert mixed["path"].tolist() == [paths[0], "array[1]", paths[2]]
    assert mixed["prediction"].tolist() == frame["prediction"][:3].tolist()
    grey = clf.predict(arrays[0][..., 0])
    assert len(grey) == 1 and grey["errors"][0] == ""


@pytest.mark.parametrize("tta", ["flip", "patches"])
def test_tta_matches_evaluate(tiny_run, tmp_path, tta):
    evaluate_run(tiny_run, split="val", out=tmp_path, tta=tta, verbose=0)
    saved = pd.read_csv(tmp_path / f"predictions_val_{tta}.csv")
    frame = mame_transfer.load_classifier(tiny_run).predict(_val_paths(tiny_run), tta=tta)
    assert frame["prediction"].tolist() == saved["predicted"].tolist()
    np.testing.assert_allclose(frame["probability"], saved["probability"], atol=1e-5)


def test_unreadable_files_are_rows_with_a_reason(tiny_run, tmp_path):
    good = _val_paths(tiny_run)[:3]
    whole = jpeg_bytes(40, 40)
    (tmp_path / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "broken.tif").write_bytes(tiff16_bytes(np.zeros((20, 20), np.uint16))[:100])
    (tmp_path / "fine.tif").write_bytes(tiff16_bytes(np.full((20, 30), 30000, np.uint16)))
    paths = [good[0], str(tmp_path / "missing.jpg"), good[1], str(tmp_path / "truncated.jpg"),
             str(tmp_path / "text.png"), str(tmp_path / "broken.tif"), str(tmp_path / "fine.tif"), good[2]]
    clf = mame_transfer.load_classifier(tiny_run)
    for tta in ("none", "patches"):
        frame = clf.predict(paths, tta=tta, batch_size=2)
        errors = dict(zip(frame["path"], frame["errors"]))
        assert errors[paths[1]] == "file not found"
        assert errors[paths[3]].startswith("truncated JPEG")
        assert errors[paths[4]] == "not an image (unknown format)"
        assert errors[paths[5]].startswith(("truncated TIFF", "unreadable image header", "TIFF cannot be decoded")), errors
        labelled = frame[frame["errors"] == ""]
        assert labelled["path"].tolist() == [good[0], good[1], str(tmp_path / "fine.tif"), good[2]]
        assert frame.loc[frame["errors"] != "", "probability"].isna().all()
        assert (frame.loc[frame["errors"] != "", "prediction"] == "").all()
        alone = clf.predict(good, tta=tta)
        np.testing.assert_allclose(labelled["probability"].to_numpy()[[0, 1, 3]], alone["probability"], atol=1e-5)


def test_bad_options_and_arrays(tiny_run):
    clf = mame_transfer.load_classifier(tiny_run)
    with pytest.raises(ConfigError, match=r"top_k must be between 1 and the number of classes \(6\)"):
        clf.predict(_val_paths(tiny_run)[:1], top_k=7)
    with pytest.raises(ConfigError, match="tta must be one of none, flip, patches"):
        clf.predict(_val_paths(tiny_run)[:1], tta="mirror")
    with pytest.raises(DataError, match=r"array\[0\]: images given as arrays must be uint8.*float32"):
        clf.predict(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(DataError, match=r"array\[0\]: expected an image array.*\(8, 8, 5\)"):
        clf.predict(np.zeros((8, 8, 5), np.uint8))
    with pytest.raises(DataError, match="cannot label a int"):
        clf.predict([3])


def test_incomplete_or_foreign_run_directories_are_refused(tiny_run, tmp_path):
    def copy(name):
        return Path(shutil.copytree(tiny_run, tmp_path / name))

    with pytest.raises(ConfigError, match="does not exist"):
        mame_transfer.load_classifier(tmp_path / "nothing")
    with pytest.raises(ConfigError, match=r"still training or was interrupted \(rerun the same finetune command\)"):
        mame_transfer.load_classifier(copy("run.partial"))
    no_metrics = copy("no_metrics")
    (no_metrics / "metrics.json").unlink()
    with pytest.raises(ConfigError, match="not a finished run directory: metrics.json is missing"):
        mame_transfer.load_classifier(no_metrics)
    foreign = copy("foreign")
    config = yaml.safe_load((foreign / "config.yaml").read_text())
    config["optimiser_v2"] = "lamb"
    (foreign / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"written by another version of mame_transfer.*optimiser_v2"):
        mame_transfer.load_classifier(foreign)
    mismatch = copy("mismatch")
    index = json.loads((mismatch / "class_index.json").read_text())
    (mismatch / "class_index.json").write_text(json.dumps({**index, "Extra": len(index)}))
    with pytest.raises(ConfigError, match="model.keras has 6 outputs but class_index.json names 7 classes"):
        mame_transfer.load_classifier(mismatch)
    broken = copy("broken")
    (broken / "model.keras").write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="model.keras cannot be loaded"):
        mame_transfer.load_classifier(broken)


def test_import_stays_cheap():
    code = ("import sys, mame_transfer; assert callable(mame_transfer.load_classifier); "
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_variable_shape_run(variable_run):
    run = variable_run
    saved = pd.read_csv(run / "predictions_val.csv")
    paths = _val_paths(run)
    clf = mame_transfer.load_classifier(run)
    frame = clf.predict(paths)
    assert frame["prediction"].tolist() == saved["predicted"].tolist()
    np.testing.assert_allclose(frame["probability"], saved["probability"], atol=1e-5)
    np.testing.assert_allclose(clf.predict(_decoded(paths))["probability"], frame["probability"], atol=1e-5)
