"""Hostile or careless input files (issue 12): nothing read from a file runs code, breaks a page or a plot, or
escapes its folder; every bad file is named without a traceback."""

from __future__ import annotations

import numpy as np
import pytest

from mame_transfer.classifiers.estimators import classifier_pipeline, load_pipeline, save_pipeline
from mame_transfer.core.errors import DataError

# --------------------------------------------------------------------------------------------- case 1: .skops


def test_skops_payload_that_calls_exec_is_refused_naming_file_and_types(tmp_path):
    """The reproduction of issue 12, case 1: a pipeline whose ``.transform`` runs ``runstring`` (``exec``)."""
    import skops.io as sio
    from numpy.testing._private.utils import runstring
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    marker = tmp_path / "pwned"
    code = f"open({str(marker)!r}, 'w').write('ran')"
    payload = Pipeline([
        ("fill", FunctionTransformer(np.full_like, kw_args={"fill_value": code, "dtype": "O"})),
        ("max", FunctionTransformer(np.max)),
        ("run", FunctionTransformer(runstring, kw_args={"dict": {}})),
    ])
    path = tmp_path / "best_model.skops"
    sio.dump(payload, path)
    with pytest.raises(DataError) as err:
        load_pipeline(path).transform(np.zeros((1, 1)))
    assert str(path) in str(err.value)
    assert "numpy.testing._private.utils.runstring" in str(err.value) and "FunctionNode" in str(err.value)
    assert not marker.exists(), "the payload ran"


def test_skops_function_types_trusted_by_skops_itself_are_refused(tmp_path):
    """Not only what skops calls untrusted: any class or function the package never saves is refused."""
    import skops.io as sio
    from sklearn.preprocessing import FunctionTransformer

    path = tmp_path / "f.skops"
    sio.dump(FunctionTransformer(np.sin), path)
    with pytest.raises(DataError, match="FunctionTransformer"):
        load_pipeline(path)


def test_every_saved_classifier_loads_back(tmp_path):
    """The allowlist covers each pipeline ``classify`` can save, binary and multi-class."""
    import warnings

    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 4)).astype(np.float32)
    for n_classes in (2, 3):
        y = np.arange(40) % n_classes
        for name in ("linear_svc", "svc_rbf", "logreg", "knn", "random_forest", "voting"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fitted = classifier_pipeline(name).fit(X, y)
            path = save_pipeline(fitted, tmp_path / f"{name}-{n_classes}.skops")
            np.testing.assert_array_equal(load_pipeline(path).predict(X), fitted.predict(X))


def test_not_a_skops_file_is_named(tmp_path):
    path = tmp_path / "model.skops"
    path.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable .skops file"):
        load_pipeline(path)


# --------------------------------------------------------------------------------------------- cases 5 and 7: pages, plots

# Class names that are markup (issue 12, case 5, verbatim), script, a page placeholder and bad mathtext (case 7).
HOSTILE_CLASSES = ['"><svg onload=alert(2)>', "<!--<script>", "</script><script>alert(3)</script>",
                   "Tempera $\\foo$ on wood", "__DATA__ \u2028 & co"]


@pytest.fixture(scope="module")
def hostile_set(tmp_path_factory):
    """A MAMe-layout set whose 5 classes are named :data:`HOSTILE_CLASSES` (4 train, 2 val, 2 test images each)."""
    import pandas as pd
    from tiny_sets import jpeg_bytes

    from mame_transfer.datasets.tables import COLUMNS

    root = tmp_path_factory.mktemp("hostile") / "set"
    (root / "data_256").mkdir(parents=True)
    (root / "MAMe_metadata").mkdir()
    rows, n = [], 0
    for subset, count in (("train", 4), ("val", 2), ("test", 2)):
        for k, label in enumerate(HOSTILE_CLASSES):
            for _ in range(count):
                n += 1
                (root / "data_256" / f"{n}.jpg").write_bytes(jpeg_bytes(32, 32, seed=n))
                rows.append([f"{n}.jpg", label, "Met", str(n), subset, 32.0, 32.0, 1024.0, 1.0])
    pd.DataFrame(rows, columns=COLUMNS).to_csv(root / "MAMe_metadata" / "MAMe_dataset.csv", index=False)
    return root


@pytest.fixture(scope="module")
def hostile_run(hostile_set, tmp_path_factory):
    """Issue 12, case 7: a run on classes named with ``$...$`` could never finish (every plot raised)."""
    from mame_transfer import finetune

    out = tmp_path_factory.mktemp("hostile_runs") / "run"
    code = finetune.main(["--data", str(hostile_set), "--arch", "test_tiny", "--weights", "none", "--image-size", "32",
                          "--head", "8", "--epochs", "1", "--batch-size", "8", "--out", str(out), "--verbose", "0"])
    assert code == 0
    return out


def test_run_with_mathtext_class_names_finishes_with_plain_labels(hostile_run):
    from file_checks import png_size

    from mame_transfer.core import plots
    from mame_transfer.training.runs import read_classes

    assert read_classes(hostile_run) == sorted(HOSTILE_CLASSES)
    for name in ("confusion_matrix.png", "confusion_matrix_val.png", "training_curves.png"):
        png_size(hostile_run / name)
    fig = plots.bar_figure(HOSTILE_CLASSES, [0.1, 0.2, 0.3, 0.4, 0.5], title=HOSTILE_CLASSES[3])
    plots.save(fig, hostile_run / "bars.png")
    ticks = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert ticks == HOSTILE_CLASSES and fig.axes[0].get_title() == HOSTILE_CLASSES[3]  # drawn as written
    texts = fig.findobj(lambda a: hasattr(a, "get_parse_math"))
    assert texts and not any(t.get_parse_math() for t in texts)


def _page_checks(view, texts):
    page = view.page
    assert page.evaluate("document.body.innerText.length") > 20, "the page is blank"
    body = page.evaluate("document.body.textContent")
    for text in texts:
        assert text in body, text  # shown literally, as text
    assert page.locator("svg[onload]").count() == 0
    view.assert_clean()  # no dialog (alert), no script error


def test_projection_page_keeps_hostile_names_as_text(tmp_path):
    """Issue 12, case 5: ``__DATA__`` in the store folder or manifest layer, a class ``"><svg onload=alert(2)>``
    and a class ``<!--<script>``, through ``analyze project --dims 3``."""
    import pandas as pd
    from browser import open_page

    from mame_transfer import analyze
    from mame_transfer.store.store import write_store

    rng = np.random.default_rng(0)
    labels = [HOSTILE_CLASSES[i % 5] for i in range(40)]
    meta = pd.DataFrame({"image": [f"{c}.jpg" for c in labels], "path": "", "label": labels,
                         "label_index": [HOSTILE_CLASSES.index(c) for c in labels], "subset": "train"})
    store = tmp_path / "store__DATA__"
    write_store(store, manifest={"arch": "synthetic", "layer": "__DATA__</title><script>alert(4)</script>",
                                 "classes": HOSTILE_CLASSES},
                splits={"train": (rng.normal(size=(40, 6)).astype(np.float32), meta)})
    assert analyze.main(["project", str(store), "--method", "pca", "--dims", "3", "--out", str(tmp_path / "p")]) == 0
    page = tmp_path / "p" / "pca_3d_train.html"
    with open_page(page) as view:
        view.page.wait_for_function("window.__projection_ready === 40")
        legend = view.page.evaluate("[...document.querySelectorAll('#legend div')].map(d => d.textContent)")
        assert legend == HOSTILE_CLASSES
        assert "__DATA__</title><script>alert(4)</script>" in view.page.title()
        _page_checks(view, [])


def test_report_and_explorer_keep_hostile_class_names_as_text(hostile_run, hostile_set, tmp_path):
    from browser import open_page

    from mame_transfer.analysis.report import build_report
    from mame_transfer.datasets.layouts import load_dataset
    from mame_transfer.explorer.site import build_site
    from mame_transfer.store.export import export

    page = build_report(hostile_run, out=tmp_path / "report.html", gradcam=2, mistakes=4)
    with open_page(page) as view:
        _page_checks(view, HOSTILE_CLASSES)
    store = export(tmp_path / "store", load_dataset(hostile_set), run=hostile_run, verbose=0)
    site = build_site(store, tmp_path / "site", k=3)
    with open_page(site.path / "index.html") as view:
        view.page.wait_for_selector("body[data-ready='1']")
        options = view.page.evaluate("[...document.querySelectorAll('#f-class option')].map(o => o.text)")
        assert sorted(options[1:]) == sorted(HOSTILE_CLASSES)
        _page_checks(view, [])


# --------------------------------------------------------------------------------------------- case 8 and data files


def test_image_paths_leaving_the_image_folder_are_refused(tmp_path, capsys):
    """Issue 12, case 8: ``prepare`` wrote outside ``--out`` for an ``Image file`` holding ``../``."""
    from tiny_sets import jpeg_bytes, make_mame, rewrite_csv

    from mame_transfer import prepare
    from mame_transfer.datasets.layouts import load_dataset

    src = make_mame(tmp_path / "src")
    (tmp_path / "escape.jpg").write_bytes(jpeg_bytes(32, 32))

    def edit(frame):
        frame.loc[1, "Image file"] = "../../escape.jpg"
        frame.loc[4, "Image file"] = "/etc/passwd.jpg"
        return frame

    rewrite_csv(src, edit)
    with pytest.raises(DataError, match=r"2 row\(s\) whose 'Image file' leaves the image folder: line 3 "
                                        r"\('../../escape.jpg'\), line 6 \('/etc/passwd.jpg'\)"):
        load_dataset(src, check_files=False)
    out = tmp_path / "a" / "b" / "out"
    assert prepare.main(["--data", str(src), "--size", "16", "--workers", "1", "--quiet", "--out", str(out)]) == 2
    assert "leaves the image folder" in capsys.readouterr().err
    assert not (tmp_path / "a" / "escape.jpg").exists() and not (tmp_path / "a" / "b" / "escape.jpg").exists()


def test_16_bit_png_is_scaled_to_8_bits_not_clipped_to_white(tmp_path):
    """Issue 12, case 8: a 16-bit greyscale PNG came out of ``prepare`` almost white."""
    from PIL import Image
    from tiny_sets import make_mame

    from mame_transfer.datasets.prepare import prepare

    src = make_mame(tmp_path / "src", per_split=(1, 1, 1))
    ramp = np.linspace(0, 65535, 48 * 48).reshape(48, 48).astype(np.uint16)
    victim = sorted((src / "data_256").glob("*.jpg"))[0]
    png = victim.with_suffix(".png")
    Image.fromarray(ramp).save(png)
    victim.unlink()
    import pandas as pd

    csv = src / "MAMe_metadata" / "MAMe_dataset.csv"
    frame = pd.read_csv(csv, dtype=str)
    frame.loc[frame["Image file"] == victim.name, "Image file"] = png.name
    frame.to_csv(csv, index=False)
    prepare(src, tmp_path / "out", 48, workers=1, progress=False)
    with Image.open(tmp_path / "out" / "data" / png.name) as im:
        out = np.asarray(im.convert("L"), dtype=float)
    assert abs(out.mean() - ramp.mean() / 257) < 3, out.mean()  # mid-grey on average, not 255


def test_csv_in_windows_1252_is_named_by_line_with_the_fix(tmp_path):
    from tiny_sets import make_mame

    from mame_transfer.datasets.layouts import load_dataset

    src = make_mame(tmp_path / "src")
    csv = src / "MAMe_metadata" / "MAMe_dataset.csv"
    good = csv.read_bytes()
    lines = csv.read_text().splitlines()
    lines[3] = lines[3].replace("Etching", "Etching caf\u00e9")
    csv.write_bytes(("\n".join(lines) + "\n").encode("cp1252"))
    with pytest.raises(DataError, match=r"MAMe_dataset.csv line 4 is not UTF-8 text \(byte 0xe9.*Save the file as "
                                        r"UTF-8"):
        load_dataset(src, check_files=False)
    csv.write_bytes(good)
    labels = src / "MAMe_metadata" / "MAMe_labels.csv"
    labels.write_bytes("0,Etching\n1,Oil on canvas\n2,Woven fabric caf\u00e9\n".encode("cp1252"))
    with pytest.raises(DataError, match=r"MAMe_labels.csv line 3 is not UTF-8 text"):
        load_dataset(src, check_files=False)


def _jpeg(tmp_path, name="x.jpg") -> tuple:
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=90)
    return tmp_path / name, buffer.getvalue()


def test_jpeg_with_a_trailer_after_its_end_marker_is_accepted(tmp_path):
    """Phones append data after FF D9 (motion photos, maker notes): a valid picture, formerly called truncated."""
    from mame_transfer.datasets.images import check_images
    from mame_transfer.datasets.pipeline import make_pipeline

    path, data = _jpeg(tmp_path)
    path.write_bytes(data + b"\x00" * 64 + b"SEFT trailer written by a phone" * 40)
    assert check_images([path]) == []
    import pandas as pd

    batch = next(iter(make_pipeline(pd.DataFrame({"path": [str(path)], "label_index": [0]}), image_size=32,
                                    preprocess=None, batch_size=1)))
    assert batch[0].shape == (1, 32, 32, 3)


def test_truncated_jpeg_ending_in_ff_d9_is_caught(tmp_path):
    from mame_transfer.datasets.images import check_images

    path, data = _jpeg(tmp_path)
    path.write_bytes(data[: len(data) // 2] + b"\xff\xd9")
    [(bad, reason)] = check_images([path])
    assert bad == str(path) and "truncated JPEG" in reason


def test_empty_class_folder_and_class_without_train_images_are_errors(tmp_path):
    from tiny_sets import make_folders

    from mame_transfer.datasets.folders import read_folders

    root = make_folders(tmp_path / "a")
    (root / "train" / "birds").mkdir()
    (root / "train" / "birds" / "README.txt").write_text("todo")
    with pytest.raises(DataError, match=r"1 class folder\(s\) hold no .jpg/.jpeg/.png/.tif/.tiff/.webp image: .*train/birds"):
        read_folders(root)
    root = make_folders(tmp_path / "b")
    (root / "val" / "fish").mkdir()
    next((root / "val" / "cats").glob("*.jpg")).rename(root / "val" / "fish" / "x.jpg")
    with pytest.raises(DataError, match=r"1 class\(es\) have val/test images but no train image: 'fish' \(in val\)"):
        read_folders(root)


def test_class_names_are_unicode_normalised(tmp_path):
    """``Café`` typed precomposed (NFC) in train and decomposed (NFD, as macOS writes folder names) in val."""
    import unicodedata

    from tiny_sets import make_folders

    from mame_transfer.datasets.folders import read_folders

    root = make_folders(tmp_path / "s", classes=("x",))
    nfc, nfd = unicodedata.normalize("NFC", "Caf\u00e9"), unicodedata.normalize("NFD", "Caf\u00e9")
    assert nfc != nfd
    (root / "train" / "x").rename(root / "train" / nfc)
    (root / "val" / "x").rename(root / "val" / nfd)
    dataset = read_folders(root)
    assert dataset.classes == [nfc] and set(dataset.table["label"]) == {nfc}


# --------------------------------------------------------------------------------------------- weights, models, stores


def test_broken_image_with_no_check_images_is_named_without_traceback(two_class_set, tmp_path, capsys):
    import shutil

    from mame_transfer import finetune

    data = shutil.copytree(two_class_set, tmp_path / "data")
    victim = next((data / "train" / "dark").glob("*.jpg"))
    victim.write_bytes(victim.read_bytes()[:200])
    code = finetune.main(["--data", str(data), "--no-check-images", "--arch", "test_tiny", "--weights", "none",
                          "--image-size", "32", "--head", "8", "--epochs", "1", "--out", str(tmp_path / "r"),
                          "--verbose", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert f"{victim} cannot be decoded" in err and "data check" in err


def test_weights_file_that_does_not_fit_names_the_file_and_the_network(tmp_path, capsys, demo_root):
    from mame_transfer import finetune

    text = tmp_path / "weights.h5"
    text.write_text("not HDF5")
    base = ["--demo", "--arch", "mobilenet", "--image-size", "32", "--epochs", "1", "--verbose", "0",
            "--out", str(tmp_path / "r")]
    assert finetune.main(base + ["--alpha", "0.25", "--weights", str(text)]) == 2
    err = capsys.readouterr().err
    assert f"weights file '{text}' cannot be loaded into mobilenet alpha 0.25" in err and "HDF5" in err
    assert "Traceback" not in err


def test_weights_file_of_another_alpha_is_named(keras_home, tmp_path, capsys, demo_root):
    from mame_transfer import finetune

    quarter = keras_home / "models" / "mobilenet_2_5_224_tf_no_top.h5"
    assert finetune.main(["--demo", "--arch", "mobilenet", "--alpha", "0.75", "--weights", str(quarter),
                          "--image-size", "32", "--epochs", "1", "--verbose", "0", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "cannot be loaded into mobilenet alpha 0.75" in err and "mobilenet_7_5_224_tf_no_top.h5" in err


def test_truncated_model_keras_says_corrupt(tiny_run, tmp_path, capsys):
    import shutil

    from mame_transfer import evaluate

    run = shutil.copytree(tiny_run, tmp_path / "run")
    model = run / "model.keras"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    assert evaluate.main([str(run), "--split", "val", "--verbose", "0"]) == 2
    err = capsys.readouterr().err
    assert f"{model} is corrupt" in err and "not found" not in err.lower()


def test_classify_refuses_a_store_whose_splits_come_from_different_exports(tmp_path, capsys):
    import json
    import shutil

    import pandas as pd

    from mame_transfer import classify
    from mame_transfer.store.store import write_store

    def store(path, seed):
        rng = np.random.default_rng(seed)
        splits = {}
        for split, n in (("train", 12), ("val", 6)):
            meta = pd.DataFrame({"image": [f"{seed}-{split}{i}.jpg" for i in range(n)], "path": "",
                                 "label": ["a", "b"] * (n // 2), "label_index": [0, 1] * (n // 2), "subset": split})
            splits[split] = (rng.normal(size=(n, 4)).astype(np.float32), meta)
        return write_store(path, manifest={"arch": "synthetic", "classes": ["a", "b"]}, splits=splits).path

    a, b = store(tmp_path / "a", 0), store(tmp_path / "b", 1)
    shutil.rmtree(a / "val")
    shutil.copytree(b / "val", a / "val")  # the same shape: only the provenance tells
    argv = ["--with", "", "--classifiers", "logreg", "--fast"]
    assert classify.main([str(a), *argv, "--out", str(tmp_path / "r1")]) == 2
    assert "val/metadata.csv is not the metadata this store was exported with" in capsys.readouterr().err
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["splits"]["train"]["dataset"], manifest["splits"]["val"]["dataset"] = "/data/A", "/data/B"
    (b / "manifest.json").write_text(json.dumps(manifest))
    assert classify.main([str(b), *argv, "--out", str(tmp_path / "r2")]) == 2
    assert "its splits come from different data sets (train: /data/A; val: /data/B)" in capsys.readouterr().err
