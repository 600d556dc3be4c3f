"""deploy.export and ``python -m mame_transfer.export``: SavedModel, .keras, TFLite, each verified; plain TF loads them."""

from __future__ import annotations

import io
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
from file_checks import read_json
from PIL import Image

from mame_transfer import export
from mame_transfer.core.errors import MameTransferError, OutputError
from mame_transfer.deploy import export as export_mod
from mame_transfer.deploy.classifier import load_classifier

# Run in a fresh interpreter that never imports mame_transfer: only TensorFlow (and Keras for the .keras file).
PLAIN = r"""
import json, sys
import numpy as np
import tensorflow as tf
job = json.load(open(sys.argv[1]))
out = {}
if job.get("savedmodel"):
    serve = tf.saved_model.load(job["savedmodel"]).signatures["serving_default"]
    got = serve(images=tf.constant([open(p, "rb").read() for p in job["files"]]))
    out["classes"] = [[c.decode() for c in row] for row in got["classes"].numpy()]
    out["probabilities"] = got["probabilities"].numpy().tolist()
    out["scores"] = got["scores"].numpy().tolist()
if job.get("keras"):
    import keras
    pixels = np.load(job["keras_pixels"])
    out["keras"] = keras.models.load_model(job["keras"], compile=False).predict(pixels, verbose=0).tolist()
for key in ("tflite", "tflite16"):
    if job.get(key):
        pixels = np.load(job["tflite_pixels"])
        it = tf.lite.Interpreter(model_path=job[key])
        entry, exit_ = it.get_input_details()[0], it.get_output_details()[0]
        it.resize_tensor_input(entry["index"], list(pixels.shape)); it.allocate_tensors()
        it.set_tensor(entry["index"], pixels); it.invoke()
        out[key] = it.get_tensor(exit_["index"]).tolist()
out["mame_transfer_imported"] = sorted(m for m in sys.modules if m.startswith("mame_transfer"))
print(json.dumps(out))
"""


def plain_tensorflow(tmp_path: Path, **job) -> dict:
    (tmp_path / "job.json").write_text(json.dumps(job))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", PLAIN, str(tmp_path / "job.json")], capture_output=True, text=True,
                          env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result.pop("mame_transfer_imported") == []
    return result


def _val_paths(run) -> list[str]:
    splits = pd.read_csv(run / "splits.csv")
    return splits.loc[splits["subset"] == "val", "file"].tolist()


def _encoded(tmp_path: Path, path: str, fmt: str, size: tuple[int, int]) -> str:
    """The image at ``path`` resized and re-encoded (other formats, sizes than the run's files)."""
    with Image.open(path) as im:
        out = tmp_path / f"{Path(path).stem}_{size[0]}x{size[1]}.{fmt.lower()}"
        im.convert("RGB").resize(size).save(out, format=fmt)
    return str(out)


def test_savedmodel_serves_encoded_images_in_plain_tensorflow(tiny_run, tmp_path, capsys):
    out = tmp_path / "exported" / "media"
    assert export.main([str(tiny_run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "verified on 8 val image(s) of the run's dataset: top-1 agrees with the run's model on 8/8" in printed
    assert (out / "saved_model.pb").is_file() and (out / "variables").is_dir()
    manifest = read_json(out / "export.json", keys=("format", "run", "classes", "verification", "inputs", "outputs"))
    assert manifest["format"] == "savedmodel" and manifest["verification"]["max_abs_diff"] < 1e-4
    classes = manifest["classes"]
    assert json.loads((out / "class_index.json").read_text()) == {c: i for i, c in enumerate(classes)}

    files = _val_paths(tiny_run)[:6]
    files += [_encoded(tmp_path, files[0], "PNG", (97, 41)), _encoded(tmp_path, files[1], "WEBP", (300, 260))]
    served = plain_tensorflow(tmp_path, savedmodel=str(out), files=files)
    reference = load_classifier(tiny_run).predict(files, top_k=len(classes))
    proba = np.array(served["probabilities"])
    assert proba.shape == (8, len(classes))
    np.testing.assert_allclose(proba.max(1), reference["probability"], atol=1e-5)
    assert [row[0] for row in served["classes"]] == reference["prediction"].tolist()
    assert [row[1] for row in served["classes"]] == reference["top2"].tolist()
    np.testing.assert_allclose(np.array(served["scores"]), -np.sort(-proba, axis=1), atol=1e-7)
    assert all(sorted(row) == sorted(classes) for row in served["classes"])


def test_keras_and_tflite_take_uint8_pixels(tiny_run, tmp_path, capsys):
    for args in (["--format", "keras", "--input-size", "48"], ["--format", "tflite"],
                 ["--format", "tflite", "--quantize", "float16"]):
        name = "_".join(a.strip("-") for a in args)
        assert export.main([str(tiny_run), "--out", str(tmp_path / name), *args, "--verify-count", "4"]) == 0
        assert "on 4/4" in capsys.readouterr().out
    keras_file = tmp_path / "format_keras_input-size_48" / "model.keras"
    tflite = tmp_path / "format_tflite" / "model.tflite"
    tflite16 = tmp_path / "format_tflite_quantize_float16" / "model.tflite"
    assert tflite16.stat().st_size < 0.75 * tflite.stat().st_size
    assert read_json(tflite16.parent / "export.json")["quantize"] == "float16"
    clf = load_classifier(tiny_run)
    rng = np.random.default_rng(0)
    pixels48 = rng.integers(0, 256, (5, 48, 48, 3), dtype=np.uint8)
    pixels32 = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "p48.npy", pixels48)
    np.save(tmp_path / "p32.npy", pixels32)
    got = plain_tensorflow(tmp_path, keras=str(keras_file), keras_pixels=str(tmp_path / "p48.npy"),
                           tflite=str(tflite), tflite16=str(tflite16), tflite_pixels=str(tmp_path / "p32.npy"))
    reference = np.stack([p for _, p, _ in clf.iter_proba(list(pixels48))])
    np.testing.assert_allclose(np.array(got["keras"]), reference, atol=1e-5)
    reference = np.stack([p for _, p, _ in clf.iter_proba(list(pixels32))])
    np.testing.assert_allclose(np.array(got["tflite"]), reference, atol=1e-5)
    np.testing.assert_allclose(np.array(got["tflite16"]), reference, atol=1e-2)


def test_bad_exports_are_refused_and_write_nothing(tiny_run, tmp_path, capsys, monkeypatch):
    partial = Path(shutil.copytree(tiny_run, tmp_path / "run.partial"))
    assert export.main([str(partial), "--out", str(tmp_path / "a")]) == 2
    assert "still training or was interrupted" in capsys.readouterr().err
    incomplete = Path(shutil.copytree(tiny_run, tmp_path / "incomplete"))
    (incomplete / "model.keras").unlink()
    assert export.main([str(incomplete), "--out", str(tmp_path / "a")]) == 2
    assert "not a finished run directory: model.keras is missing" in capsys.readouterr().err
    assert export.main([str(tiny_run), "--out", str(tmp_path / "a"), "--quantize", "float16"]) == 2
    assert "--quantize applies to --format tflite" in capsys.readouterr().err
    assert export.main([str(tiny_run), "--out", str(tmp_path / "a"), "--input-size", "64"]) == 2
    assert "--input-size applies to --format keras and tflite" in capsys.readouterr().err
    assert export.main([str(tiny_run), "--out", str(tmp_path / "a"), "--verify-images", "nope.jpg"]) == 2
    assert "verification image(s) nope.jpg do not exist" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep")
    for extra in ([], ["--overwrite"]):  # a folder export did not write is refused whatever the flags
        assert export.main([str(tiny_run), "--out", str(tmp_path / "taken"), *extra]) == 2
        assert "holds files this command did not write (mine.txt)" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and (tmp_path / "taken" / "mine.txt").is_file()

    monkeypatch.setattr(export_mod, "verify_savedmodel",
                        lambda clf, path, sources: {"images": 8, "top1_agree": 7, "max_abs_diff": 0.3})
    assert export.main([str(tiny_run), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "export verification failed: the savedmodel export agrees with" in err and "on 7 of 8 images" in err
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".b.*"))


def test_generated_verification_images_when_the_data_are_gone(tiny_run, tmp_path):
    moved = Path(shutil.copytree(tiny_run, tmp_path / "moved"))
    config = yaml.safe_load((moved / "config.yaml").read_text())
    config.update(demo=False, data=str(tmp_path / "gone"))
    (moved / "config.yaml").write_text(yaml.safe_dump(config))
    manifest = export_mod.export_run(moved, tmp_path / "out", fmt="keras", n_verify=3)
    assert manifest["verification"]["source"] == "3 generated image(s) (the run's dataset is not readable here)"
    assert manifest["verification"]["top1_agree"] == 3
    # an earlier export is replaced only with overwrite (issue 12's rule for every output folder)
    with pytest.raises(OutputError, match="already holds a model export; pass --overwrite"):
        export_mod.export_run(moved, tmp_path / "out", fmt="keras", n_verify=3)
    assert export_mod.export_run(moved, tmp_path / "out", fmt="tflite", n_verify=3, overwrite=True)["format"] == "tflite"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".mame_transfer.json", "class_index.json",
                                                                     "export.json", "model.tflite"]


def test_variable_shape_run_exports(variable_run, tmp_path):
    run = variable_run
    saved = export_mod.export_run(run, tmp_path / "sm")
    assert saved["shape"] == "variable" and saved["verification"]["top1_agree"] == saved["verification"]["images"]
    pixels = export_mod.export_run(run, tmp_path / "k", fmt="keras", input_size=40)
    assert pixels["verification"]["max_abs_diff"] < 1e-4


def test_resize_and_preprocessing_layers_are_exact():
    import tensorflow as tf

    from mame_transfer.models import backbones

    image = np.random.default_rng(1).uniform(0, 255, (37, 53, 3)).astype(np.float32)
    rows, cols = export_mod._resize_matrix(37, 24), export_mod._resize_matrix(53, 24)
    mine = np.einsum("oh,hwc->owc", rows, image)
    mine = np.einsum("pw,owc->opc", cols, mine)
    tf_resized = tf.image.resize(image, (24, 24), method="bilinear", antialias=True).numpy()
    np.testing.assert_allclose(mine, tf_resized, atol=1e-3)
    for arch in ("vgg16", "resnet50", "mobilenet", "efficientnetb0", "test_tiny"):
        preprocess = backbones.get(arch).preprocess
        a, b = export_mod._affine_preprocess(preprocess)
        np.testing.assert_allclose(image @ a + b, np.asarray(preprocess(image.copy())), atol=1e-3, err_msg=arch)
    with pytest.raises(MameTransferError, match="not an affine per-pixel map"):
        export_mod._affine_preprocess(lambda x, **k: np.sqrt(x))


def test_png_helper_round_trips():
    image = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    with Image.open(io.BytesIO(export_mod._png(image))) as im:
        np.testing.assert_array_equal(np.asarray(im), image)
