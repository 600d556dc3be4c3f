"""Acceptance run of issue 13 on real paintings: flat class folders -> finetune -> predict -> export -> plain TF.

    KERAS_HOME=$PWD/../shared/keras_home .venv/bin/python benchmarks/louvre_deploy.py [--louvre DIR] [--work DIR]

1. The shared Louvre set (``<split>/<class>/*.jpg``) is flattened to ``<work>/flat/<class>/*.jpg`` with symlinks.
2. ``finetune --data <work>/flat`` (MobileNet alpha 0.25, ImageNet weights, 128 px) splits it and records the split.
3. 100 images of the run's own test split are copied to ``<work>/unlabelled/img_XXX.jpg`` (names carry no label)
   and labelled with ``predict``.
4. ``export`` writes a SavedModel and a float32 TFLite model; a fresh Python process that imports only TensorFlow
   labels the same 100 files with each, and the script counts how often its top-1 equals ``predict``'s.

Every step runs the real command line (``python -m mame_transfer.<command>``); the numbers are printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]

# A fresh interpreter: TensorFlow only. SavedModel on the encoded files; TFLite on uint8 pixels resized here.
PLAIN = r"""
import json, sys
import numpy as np
import tensorflow as tf
files, saved, tflite, size = json.loads(sys.argv[1])
serve = tf.saved_model.load(saved).signatures["serving_default"]
top = []
for i in range(0, len(files), 25):
    out = serve(images=tf.constant([open(f, "rb").read() for f in files[i:i + 25]]))
    top += [c[0].decode() for c in out["classes"].numpy()]
index = json.load(open(tflite + "/class_index.json"))
names = [c for c, _ in sorted(index.items(), key=lambda kv: kv[1])]
it = tf.lite.Interpreter(model_path=tflite + "/model.tflite")
it.allocate_tensors()
entry, exit_ = it.get_input_details()[0], it.get_output_details()[0]
lite = []
for f in files:
    image = tf.io.decode_image(tf.io.read_file(f), channels=3, expand_animations=False)
    pixels = tf.image.resize(image, (size, size), method="bilinear", antialias=True)
    pixels = np.clip(np.round(pixels.numpy()), 0, 255).astype(np.uint8)[None]
    it.set_tensor(entry["index"], pixels); it.invoke()
    lite.append(names[int(np.argmax(it.get_tensor(exit_["index"])[0]))])
print(json.dumps({"savedmodel": top, "tflite": lite, "mame_transfer_imported": "mame_transfer" in sys.modules}))
"""


def run(*args: str) -> str:
    print("$", " ".join(args), flush=True)
    done = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}):\n{done.stderr[-4000:]}")
    print(done.stdout.strip(), flush=True)
    return done.stdout


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    shared = Path(os.environ.get("MAME_SHARED", REPO.parent / "shared"))
    ap.add_argument("--louvre", default=str(shared / "data" / "louvre_genre"),
                    help="the shared Louvre set, <split>/<class>/*.jpg (default: $MAME_SHARED/data/louvre_genre)")
    ap.add_argument("--work", default="/tmp/louvre_deploy", help="scratch folder of this script (replaced)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--n", type=int, default=100, help="unlabelled images to predict")
    args = ap.parse_args(argv)
    images = sorted(Path(args.louvre).glob("*/*/*.jpg"))  # <split>/<class>/<file>
    if not images:
        sys.exit(f"no <split>/<class>/*.jpg images under {args.louvre}: pass --louvre or set MAME_SHARED")
    work = Path(args.work)
    marker = work / ".louvre_deploy"
    if work.exists() and any(work.iterdir()) and not marker.is_file():
        sys.exit(f"{work} exists and was not made by this script; pass another --work (it is replaced)")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    marker.touch()
    flat = work / "flat"
    for image in images:
        target = flat / image.parent.name / f"{image.parent.parent.name}_{image.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(image.resolve())
    size = 128
    run_dir = work / "runs" / "louvre"
    run("mame_transfer.finetune", "--data", str(flat), "--arch", "mobilenet", "--alpha", "0.25", "--weights",
        "imagenet", "--image-size", str(size), "--freeze-until", "block9", "--head", "128", "--lr", "1e-3",
        "--epochs", str(args.epochs), "--no-augment", "--batch-size", "32", "--out", str(run_dir), "--verbose", "0")
    splits = pd.read_csv(run_dir / "splits.csv")
    test = splits[splits["subset"] == "test"].reset_index(drop=True)
    chosen = test.sample(n=min(args.n, len(test)), random_state=0).reset_index(drop=True)
    unlabelled = work / "unlabelled"
    unlabelled.mkdir()
    truth = {}
    for i, row in chosen.iterrows():
        dst = unlabelled / f"img_{i:03d}.jpg"
        shutil.copyfile(row["file"], dst)  # a copy, so no link target carries the label either
        truth[str(dst)] = row["label"]
    labels = work / "labels.csv"
    run("mame_transfer.predict", str(run_dir), str(unlabelled), "--out", str(labels), "--top-k", "3", "--verbose", "0")
    run("mame_transfer.export", str(run_dir), "--out", str(work / "exported" / "savedmodel"))
    run("mame_transfer.export", str(run_dir), "--out", str(work / "exported" / "tflite"), "--format", "tflite")
    frame = pd.read_csv(labels, keep_default_na=False)
    files = frame["path"].tolist()
    job = json.dumps([files, str(work / "exported" / "savedmodel"), str(work / "exported" / "tflite"), size])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", PLAIN, job], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"the plain TensorFlow process failed:\n{done.stderr[-4000:]}")
    plain = json.loads(done.stdout.strip().splitlines()[-1])
    predicted = frame["prediction"].tolist()
    result = {
        "run_split": splits["subset"].value_counts().to_dict(),
        "run_metrics_test_top1": json.loads((run_dir / "metrics.json").read_text())["test"]["top1"],
        "predicted_images": len(frame), "errors": int((frame["errors"] != "").sum()),
        "predict_accuracy_on_the_100": sum(p == truth[f] for p, f in zip(predicted, files)) / len(files),
        "savedmodel_agrees": sum(a == b for a, b in zip(predicted, plain["savedmodel"])),
        "tflite_float32_agrees": sum(a == b for a, b in zip(predicted, plain["tflite"])),
        "plain_process_imported_mame_transfer": plain["mame_transfer_imported"],
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
