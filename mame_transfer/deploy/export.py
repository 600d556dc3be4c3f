"""A finished run exported as a model that runs without mame_transfer, verified against the run's own model.

Formats, each written into the folder ``out`` with ``class_index.json`` (class name -> output index) and
``export.json`` (what was exported from which run, and the verification):

* ``savedmodel``: ``out`` is a SavedModel. Its ``serving_default`` signature takes ``images``, a batch of encoded
  images (``tf.string [n]``: JPEG, PNG, WebP, GIF or BMP bytes of any size), and returns ``probabilities``
  (float32 ``[n, classes]``, class order of ``class_index.json``), ``classes`` (``tf.string [n, classes]``, the
  class names sorted by probability, top-1 first) and ``scores`` (the probabilities in that order). Decoding, the
  antialiased resize (or the pixel budget of a ``--shape variable`` run), ``preprocess_input`` and the class names
  are inside the graph: ``tf.saved_model.load(out)`` is all a user needs, and TensorFlow Serving serves it.
* ``keras``: ``out/model.keras``, a Keras model taking uint8 images of one fixed size (``input_size``, default
  the run's) and returning the probabilities; the resize (two fixed matrix products, exactly TensorFlow's
  antialiased bilinear resize) and the preprocessing (a fixed per-pixel affine map) are layers of the model.
* ``tflite``: ``out/model.tflite``, the same model converted to TensorFlow Lite builtin ops, float32 weights or
  float16 ones (``quantize="float16"``, half the size).

Verification runs the exported file (reloaded from disk) and the run's own model on the same few images: encoded
files for the SavedModel (against ``predict``'s pipeline), uint8 pixels for the others. A float32 export whose top-1
differs on any image, or whose probabilities differ by more than ``TOLERANCE``, is not written.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from mame_transfer.core import __version__
from mame_transfer.core.errors import ConfigError, MameTransferError
from mame_transfer.core.fileio import atomic_path, output_folder, write_json
from mame_transfer.deploy.classifier import Classifier, load_classifier
from mame_transfer.training import runs

FORMATS = ("savedmodel", "keras", "tflite")
QUANTIZE = ("none", "float16")
KERAS_FILE, TFLITE_FILE, MANIFEST = "model.keras", "model.tflite", "export.json"
SIGNATURE = "serving_default"
EXPORT_KIND = "model-export"  # the owner kind of an export folder
TOLERANCE = 1e-3  # largest |probability difference| a float32 export may show against the run's model


def export_run(run_dir: str | os.PathLike, out: str | os.PathLike, *, fmt: str = "savedmodel",
               quantize: str = "none", input_size: int | None = None, verify: Sequence[str] | None = None,
               n_verify: int = 8, overwrite: bool = False) -> dict:
    """Export a finished run to ``out`` in ``fmt`` and verify it (see the module docstring).

    Args:
        input_size: ``keras`` / ``tflite``: side of the square uint8 input (default: the run's image size).
        verify: image files to verify on (default: up to ``n_verify`` of the run's val images, one class after
            the other, or generated images when the run's data are not readable here).

    Returns:
        The manifest written to ``export.json`` (``verification``: images, source, top-1 agreement, max |diff|).

    Raises:
        ConfigError: bad options, an incomplete run.
        OutputError: ``out`` holds an earlier export (without ``overwrite``) or anything else.
        MameTransferError: the export disagrees with the run's model (nothing is written).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}. Received: format={fmt!r}")
    if quantize not in QUANTIZE:
        raise ConfigError(f"quantize must be one of {', '.join(QUANTIZE)}. Received: quantize={quantize!r}")
    if quantize != "none" and fmt != "tflite":
        raise ConfigError(f"--quantize applies to --format tflite. Received: format={fmt}, quantize={quantize}")
    if input_size is not None and (fmt == "savedmodel" or input_size < 8):
        raise ConfigError("--input-size applies to --format keras and tflite and must be at least 8. "
                          f"Received: format={fmt}, input_size={input_size}")
    out = Path(out)
    # An earlier export is replaced only with --overwrite; any other folder at --out is refused whatever the flags.
    with output_folder(out, EXPORT_KIND, overwrite=overwrite, legacy=lambda p: (p / MANIFEST).is_file(),
                       what="model export", command="export") as existed:
        return _export(run_dir, out, existed, fmt=fmt, quantize=quantize, input_size=input_size, verify=verify,
                       n_verify=n_verify)


def _export(run_dir, out: Path, existed: bool, *, fmt: str, quantize: str, input_size: int | None, verify,
            n_verify: int) -> dict:
    """The body of :func:`export_run`, with ``out`` locked and checked."""
    clf = load_classifier(run_dir)
    sources, source_text = verification_sources(clf, verify, n_verify)
    started = time.perf_counter()
    with atomic_path(out, kind=EXPORT_KIND, replace=existed) as tmp:
        tmp.mkdir(parents=True)
        if fmt == "savedmodel":
            write_savedmodel(clf, tmp)
            check = verify_savedmodel(clf, tmp, sources)
            files, inputs = [], {"images": "tf.string [n]: encoded JPEG/PNG/WebP/GIF/BMP bytes, any size"}
        else:
            size = int(input_size or clf.image_size)
            model = pixel_model(clf, size)
            name = KERAS_FILE if fmt == "keras" else TFLITE_FILE
            if fmt == "keras":
                model.save(tmp / name)
            else:
                (tmp / name).write_bytes(tflite_bytes(model, quantize))
            check = verify_pixel_model(clf, tmp / name, sources, size)
            files, inputs = [name], {"image": f"uint8 [n, {size}, {size}, 3] RGB pixels"}
        check.update(source=source_text)
        exact = fmt != "tflite" or quantize == "none"
        if exact and (check["top1_agree"] < check["images"] or check["max_abs_diff"] > TOLERANCE):
            raise MameTransferError(f"export verification failed: the {fmt} export agrees with {run_dir} on "
                                    f"{check['top1_agree']} of {check['images']} images (max |probability "
                                    f"difference| {check['max_abs_diff']:.2e}, allowed {TOLERANCE:g}); nothing "
                                    f"written to {out}")
        write_json(tmp / runs.CLASS_INDEX, {c: i for i, c in enumerate(clf.classes)})
        manifest = {"format": fmt, "quantize": quantize, "files": files, "run": str(Path(run_dir).resolve()),
                    "arch": clf.config.arch, "image_size": clf.image_size, "shape": clf.config.shape,
                    "inputs": inputs, "outputs": _outputs(fmt, len(clf.classes)), "classes": clf.classes,
                    "verification": check, "seconds": round(time.perf_counter() - started, 1),
                    "mame_transfer": __version__, "tensorflow": _tf_version()}
        write_json(tmp / MANIFEST, manifest)
    return manifest


def _outputs(fmt: str, n: int) -> dict:
    if fmt != "savedmodel":
        return {"probabilities": f"float32 [n, {n}] in class_index.json order"}
    return {"probabilities": f"float32 [n, {n}] in class_index.json order",
            "classes": f"tf.string [n, {n}] class names, most probable first",
            "scores": f"float32 [n, {n}] the probabilities in the order of classes"}


def _tf_version() -> str:
    import tensorflow as tf

    return tf.__version__


# --------------------------------------------------------------------------------------------- the SavedModel


def write_savedmodel(clf: Classifier, path: Path) -> None:
    """Write the SavedModel (signature ``serving_default``: encoded images in, probabilities and names out)."""
    import keras
    import tensorflow as tf

    from mame_transfer.datasets.varshape import budget_hw_tf

    model, preprocess, size = clf.model, clf.preprocess, clf.image_size
    names = tf.constant(clf.classes)
    n_classes = len(clf.classes)

    def decoded(data):  # exactly datasets.pipeline: decode to uint8 RGB, antialiased bilinear resize, float32
        return tf.io.decode_image(data, channels=3, expand_animations=False)

    def probabilities(images):
        if clf.variable:  # each image at its own pixel-budget size, one at a time
            def one(data):
                image = decoded(data)
                image = tf.cast(tf.image.resize(image, tf.stack(budget_hw_tf(tf.shape(image), clf.config.pixels)),
                                                method="bilinear", antialias=True), tf.float32)
                return tf.cast(model(preprocess(image[None]), training=False)[0], tf.float32)

            return tf.map_fn(one, images, fn_output_signature=tf.TensorSpec((n_classes,), tf.float32))

        def fixed(data):
            image = tf.image.resize(decoded(data), (size, size), method="bilinear", antialias=True)
            return tf.ensure_shape(tf.cast(image, tf.float32), (size, size, 3))

        x = tf.map_fn(fixed, images, fn_output_signature=tf.TensorSpec((size, size, 3), tf.float32))
        return tf.cast(model(preprocess(x), training=False), tf.float32)

    def serve(images):
        p = probabilities(images)
        order = tf.argsort(p, axis=-1, direction="DESCENDING", stable=True)
        return {"probabilities": p, "classes": tf.gather(names, order), "scores": tf.gather(p, order, batch_dims=1)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(SIGNATURE, serve, input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    archive.write_out(str(path), verbose=False)


def verify_savedmodel(clf: Classifier, path: Path, sources: list) -> dict:
    """Top-1 agreement and max |difference| of the reloaded SavedModel against ``predict`` on the same files."""
    import tensorflow as tf

    reference = _reference(clf, sources)
    serve = tf.saved_model.load(str(path)).signatures[SIGNATURE]
    encoded = [Path(s).read_bytes() if isinstance(s, str) else _png(s) for s in sources]
    out = serve(images=tf.constant(encoded))
    got = out["probabilities"].numpy()
    top_names = [c.decode("utf-8") for c in out["classes"].numpy()[:, 0]]
    names_agree = all(top_names[i] == clf.classes[int(np.argmax(got[i]))] for i in range(len(got)))
    result = _compare(reference, got)
    if not names_agree:  # the classes output must name the most probable class
        result["top1_agree"] = 0
    return result


# --------------------------------------------------------------------------------------------- uint8 models


def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``R`` (``n_out x n_in``) with ``R @ v`` = TensorFlow's antialiased bilinear resize of ``v`` along one axis."""
    import tensorflow as tf

    eye = tf.eye(n_in)[:, :, None]  # column j is the unit vector j: resizing the rows resizes every basis vector
    return tf.image.resize(eye, (n_out, n_in), method="bilinear", antialias=True)[:, :, 0].numpy()


def _affine_preprocess(preprocess) -> tuple[np.ndarray, np.ndarray]:
    """``(A, b)`` with ``preprocess(x) = x @ A + b`` per pixel (every registry preprocessing is affine)."""
    probe = np.zeros((5, 1, 1, 3), np.float32)
    probe[1:4, 0, 0] = np.eye(3, dtype=np.float32) * 255.0
    probe[4, 0, 0] = np.random.default_rng(0).uniform(0, 255, 3)
    out = np.asarray(preprocess(probe.copy()), dtype=np.float64)[:, 0, 0]
    b = out[0]
    a = (out[1:4] - b) / 255.0
    if not np.allclose(probe[4, 0, 0] @ a + b, out[4], atol=1e-4):
        raise ConfigError(f"{getattr(preprocess, '__name__', preprocess)} is not an affine per-pixel map; it "
                          "cannot become a layer of the exported model")
    return a.astype(np.float32), b.astype(np.float32)


def pixel_model(clf: Classifier, input_size: int):
    """A Keras model: uint8 ``(input_size, input_size, 3)`` pixels -> resize -> preprocessing -> the run's model.

    Only built-in layers (``Permute``, ``Dense`` with fixed weights), so the ``.keras`` file loads anywhere and
    converts to TensorFlow Lite builtin ops.
    """
    import keras

    from mame_transfer.datasets.varshape import budget_hw

    if clf.variable:
        height, width = budget_hw(input_size, input_size, clf.config.pixels)
    else:
        height = width = clf.image_size
    inputs = keras.Input((input_size, input_size, 3), dtype="uint8", name="image")
    a, b = _affine_preprocess(clf.preprocess)
    pre = keras.layers.Dense(3, name="preprocess", trainable=False)  # casts the uint8 pixels to float32
    x = pre(inputs)
    pre.set_weights([a, b])
    if (height, width) != (input_size, input_size):
        # Rows then columns of the channel-first image; resizing after the affine preprocessing equals resizing
        # before it, because each row of a resize matrix sums to 1.
        rows = keras.layers.Dense(height, use_bias=False, name="resize_rows", trainable=False)
        cols = keras.layers.Dense(width, use_bias=False, name="resize_cols", trainable=False)
        x = rows(keras.layers.Permute((3, 2, 1), name="to_cwh")(x))
        x = cols(keras.layers.Permute((1, 3, 2), name="to_chw")(x))
        x = keras.layers.Permute((2, 3, 1), name="to_hwc")(x)
        rows.set_weights([_resize_matrix(input_size, height).T])
        cols.set_weights([_resize_matrix(input_size, width).T])
    outputs = clf.model(x)
    return keras.Model(inputs, outputs, name=f"{clf.model.name}_uint8")


def tflite_bytes(model, quantize: str = "none") -> bytes:
    """The model converted to TensorFlow Lite (builtin ops only), float32 or float16 weights."""
    import tensorflow as tf

    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):  # the converter prints the whole intermediate SavedModel signature
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        if quantize == "float16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        try:
            return converter.convert()
        except Exception as exc:  # noqa: BLE001  (the converter's error types are internal)
            raise MameTransferError(f"TensorFlow Lite conversion failed: {str(exc).splitlines()[0]}") from None


def verify_pixel_model(clf: Classifier, file: Path, sources: list, input_size: int) -> dict:
    """Agreement of the reloaded ``.keras`` / ``.tflite`` file with the run's model on the same uint8 pixels."""
    pixels = np.stack([_pixels(s, input_size) for s in sources])
    reference = np.stack([p for _, p, _ in clf.iter_proba(list(pixels))])
    if file.suffix == ".keras":
        import keras

        got = np.asarray(keras.models.load_model(file, compile=False).predict(pixels, verbose=0))
    else:
        got = run_tflite(file.read_bytes(), pixels)
    return _compare(reference, got)


def run_tflite(blob: bytes, pixels: np.ndarray) -> np.ndarray:
    """Probabilities of a TFLite model on uint8 images ``[n, h, w, 3]`` (``tf.lite.Interpreter``)."""
    import warnings

    import tensorflow as tf

    with warnings.catch_warnings():  # TF 2.21 announces tf.lite.Interpreter's move to ai_edge_litert
        warnings.simplefilter("ignore", UserWarning)
        interpreter = tf.lite.Interpreter(model_content=blob)
    entry, exit_ = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(entry["index"], list(pixels.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(entry["index"], pixels.astype(entry["dtype"]))
    interpreter.invoke()
    return np.array(interpreter.get_tensor(exit_["index"]))


# --------------------------------------------------------------------------------------------- verification


def verification_sources(clf: Classifier, verify: Sequence[str] | None, n: int) -> tuple[list, str]:
    """Images to verify on: the given files, else the run's val images (classes in turn), else generated ones."""
    if verify:
        missing = [p for p in verify if not Path(p).is_file()]
        if missing:
            raise ConfigError(f"verification image(s) {', '.join(missing)} do not exist")
        return [str(p) for p in verify], f"{len(verify)} given image file(s)"
    try:
        from mame_transfer.datasets.images import check_images

        dataset = runs.dataset_for(clf.config, require=(), check_images=False, run_dir=clf.run_dir)
        subset = next(s for s in ("val", "test", "train") if s in dataset.subsets)
        table = dataset.split(subset)
        table = table.assign(turn=table.groupby("label").cumcount()).sort_values(["turn", "label_index"], kind="stable")
        candidates = table["path"].astype(str).tolist()[: 4 * n]
        bad = {p for p, _ in check_images(candidates)}
        chosen = [p for p in candidates if p not in bad][:n]
        if chosen:
            return chosen, f"{len(chosen)} {subset} image(s) of the run's dataset"
    except (MameTransferError, OSError, StopIteration):
        pass  # the data are not on this machine: generated images still compare the two models
    rng = np.random.default_rng(0)
    images = []
    for _ in range(n):
        h, w = (int(v) for v in rng.integers(48, 320, 2))
        smooth = rng.uniform(0, 255, (4, 4, 3)).astype(np.float32)
        base = np.asarray(_resize_np(smooth, h, w))
        images.append(np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8))
    return images, f"{n} generated image(s) (the run's dataset is not readable here)"


def _resize_np(image: np.ndarray, h: int, w: int) -> np.ndarray:
    import tensorflow as tf

    return tf.image.resize(image, (h, w), method="bilinear").numpy()


def _reference(clf: Classifier, sources: list) -> np.ndarray:
    rows = list(clf.iter_proba(sources))
    failed = [str(sources[i]) for i, p, _ in rows if p is None]
    if failed:
        raise ConfigError(f"verification image(s) cannot be read: {', '.join(failed)}")
    return np.stack([p for _, p, _ in rows])


def _pixels(source, size: int) -> np.ndarray:
    """uint8 ``(size, size, 3)`` pixels of a file or an array, resized as the pipelines resize, then rounded."""
    import tensorflow as tf

    from mame_transfer.datasets.images import decode_rgb

    image = decode_rgb(tf.io.read_file(source), source)[0] if isinstance(source, str) else tf.constant(source)
    resized = tf.image.resize(image, (size, size), method="bilinear", antialias=True)
    return np.clip(np.round(resized.numpy()), 0, 255).astype(np.uint8)


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _compare(reference: np.ndarray, got: np.ndarray) -> dict:
    reference, got = np.asarray(reference, np.float64), np.asarray(got, np.float64)
    if reference.shape != got.shape:
        raise MameTransferError(f"the export returned shape {got.shape} for {reference.shape[0]} images; expected "
                                f"{reference.shape}")
    return {"images": int(len(reference)), "top1_agree": int((reference.argmax(1) == got.argmax(1)).sum()),
            "max_abs_diff": float(np.abs(reference - got).max())}
