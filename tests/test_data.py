"""Tests of mame_transfer.data: reading, validation, import, tf.data pipeline, metadata features."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mame_transfer import data
from mame_transfer.classifiers.inputs import metadata_features
from mame_transfer.core.errors import DataError
from mame_transfer.core.errors import DataError as _DataError
from mame_transfer.datasets.folders import read_folders
from mame_transfer.datasets.images import check_images
from mame_transfer.datasets.layouts import detect_layout, load_dataset
from mame_transfer.datasets.mame import write_mame
from mame_transfer.datasets.pipeline import decode_and_resize, make_pipeline
from mame_transfer.datasets.tables import (
    COLUMNS,
    SUBSETS,
    TABLE_COLUMNS,
    UNKNOWN_MUSEUM,
    Dataset,
)

CLASSES = ["Etching", "Oil on canvas", "Woven fabric"]


def _jpeg_bytes(width: int, height: int, seed: int = 0, fmt: str = "JPEG") -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def make_mame(root: Path, *, per_split=(3, 2, 2), labels_file=True, image_dir="data_256", meta="MAMe_metadata"):
    """A tiny MAMe-layout set: 3 classes, JPEGs 32-48 px, 'Woven fabric ' spelled like the real CSV."""
    (root / image_dir).mkdir(parents=True, exist_ok=True)
    (root / meta).mkdir(parents=True, exist_ok=True)
    rows, n = [], 0
    for subset, count in zip(SUBSETS, per_split):
        for label in CLASSES:
            for _ in range(count):
                n += 1
                w, h = 32 + (n * 5) % 17, 32 + (n * 3) % 17
                name = f"img{n:03d}.jpeg" if n % 4 == 0 else f"img{n:03d}.jpg"
                (root / image_dir / name).write_bytes(_jpeg_bytes(w, h, seed=n))
                medium = "Woven fabric " if label == "Woven fabric" else label
                rows.append([name, medium, "Metropolitan Museum of Art", f"{n}.1", subset, float(w), float(h),
                             float(w * h), round(w / h, 4)])
    pd.DataFrame(rows, columns=COLUMNS).to_csv(root / meta / "MAMe_dataset.csv", index=False)
    if labels_file:
        (root / meta / "MAMe_labels.csv").write_text("".join(f"{i},{c}\n" for i, c in enumerate(CLASSES)))
    return root


def rewrite_csv(root: Path, edit) -> Path:
    path = root / "MAMe_metadata" / "MAMe_dataset.csv"
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame = edit(frame)
    frame.to_csv(path, index=False)
    return path


def make_folders(root: Path, splits=("train", "val"), classes=("cats", "dogs"), per_class=3, ext=".jpg"):
    n = 0
    for split in splits:
        for cls in classes:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for _ in range(per_class):
                n += 1
                fmt = "PNG" if ext == ".png" else "JPEG"
                (root / split / cls / f"{cls}_{n}{ext}").write_bytes(_jpeg_bytes(40 + n, 32 + 2 * n, n, fmt))
    return root


# --------------------------------------------------------------------------------------------------------------
# The real MAMe metadata


def test_real_mame_metadata(mame_metadata):
    ds = load_dataset(mame_metadata, check_files=False)
    assert ds.layout == "mame"
    assert len(ds.table) == 37407
    assert ds.num_classes == 29
    assert {s: len(ds.split(s)) for s in ds.subsets} == {"train": 20300, "val": 1450, "test": 15657}
    labels = (mame_metadata / "MAMe_labels.csv").read_text().splitlines()
    assert ds.classes == [line.split(",", 1)[1] for line in labels]
    woven = ds.table[ds.table["label"] == "Woven fabric"]
    assert len(woven) == 1450
    assert (woven["label_index"] == ds.class_index["Woven fabric"]).all()
    assert set(ds.table["label"]) <= set(ds.classes)
    assert ds.table["museum"].value_counts().to_dict() == {
        "Metropolitan Museum of Art": 24911,
        "The Cleveland Museum of Art": 6965,
        "Los Angeles County Museum of Art": 5531,
    }
    assert list(ds.table.columns) == TABLE_COLUMNS
    assert ds.table["instance_id"].iloc[0] == "29.100.60"  # kept as text, not a float
    assert all(os.path.isabs(p) for p in ds.table["path"].head())


def test_real_mame_toy_csv(mame_metadata):
    ds = load_dataset(mame_metadata, toy=True, check_files=False)
    assert len(ds.table) == 3480
    assert ds.table.groupby("subset").size().to_dict() == {"train": 29 * 50, "val": 29 * 20, "test": 29 * 50}


def test_real_mame_needs_images_unless_metadata_only(mame_metadata):
    with pytest.raises(DataError, match="No image folder"):
        load_dataset(mame_metadata)


# --------------------------------------------------------------------------------------------------------------
# MAMe layout


def test_read_mame_tiny(tmp_path):
    root = make_mame(tmp_path / "set")
    ds = load_dataset(root)
    assert ds.classes == CLASSES
    assert ds.subsets == ["train", "val", "test"]
    assert ds.num_classes == 3 and len(ds.table) == 21
    assert set(ds.table["label"]) == set(CLASSES)  # "Woven fabric " was stripped
    assert (ds.table["label_index"] == ds.table["label"].map(ds.class_index)).all()
    assert ds.image_root == root / "data_256"
    assert all(Path(p).is_file() for p in ds.table["path"])
    train = ds.split("train")
    assert list(train.index) == list(range(9)) and (train["subset"] == "train").all()
    # the CSV file itself and the metadata folder are accepted too
    assert len(load_dataset(root / "MAMe_metadata").table) == 21
    assert len(load_dataset(root / "MAMe_metadata" / "MAMe_dataset.csv").table) == 21


def test_read_mame_without_labels_file_and_flat_layout(tmp_path):
    root = make_mame(tmp_path / "flat", labels_file=False, image_dir="data", meta=".")
    assert detect_layout(root) == "mame"
    ds = load_dataset(root)
    assert ds.classes == sorted(CLASSES)
    assert ds.image_root == root / "data"


def test_explicit_image_folder(tmp_path):
    root = make_mame(tmp_path / "set", image_dir="pictures")
    with pytest.raises(DataError, match="No image folder"):
        load_dataset(root)
    assert len(load_dataset(root, images=root / "pictures").table) == 21


def test_split_errors(tmp_path):
    ds = load_dataset(make_mame(tmp_path / "set", per_split=(2, 1, 0)))
    assert ds.subsets == ["train", "val"]
    with pytest.raises(DataError, match=r"No 'test' rows.*available subsets: train, val"):
        ds.split("test")
    with pytest.raises(DataError, match="Unknown subset 'dev'"):
        ds.split("dev")
    with pytest.raises(DataError, match=r"required 'test' split is empty"):
        load_dataset(tmp_path / "set", require=("train", "test"))


def test_missing_columns(tmp_path):
    root = make_mame(tmp_path / "set")
    rewrite_csv(root, lambda f: f.drop(columns=["Subset", "Height"]))
    with pytest.raises(DataError, match=r"MAMe_dataset.csv: missing column\(s\) 'Subset', 'Height'") as info:
        load_dataset(root)
    assert ",".join(COLUMNS) in str(info.value)


def test_unknown_subset_names_rows(tmp_path):
    root = make_mame(tmp_path / "set")

    def edit(f):
        f.loc[[0, 4], "Subset"] = ["training", "dev"]
        return f

    rewrite_csv(root, edit)
    expected = r"(?s)MAMe_dataset.csv.*2 row\(s\) with an unknown Subset: line 2 \('training'\), line 6 \('dev'\)"
    with pytest.raises(DataError, match=expected):
        load_dataset(root)


def test_unknown_label_and_bad_numbers_in_one_error(tmp_path):
    root = make_mame(tmp_path / "set")

    def edit(f):
        f.loc[1, "Medium"] = "Bronze"
        f.loc[2, "Width"] = "wide"
        f.loc[3, "Height"] = "-5"
        return f

    rewrite_csv(root, edit)
    with pytest.raises(DataError) as info:
        load_dataset(root)
    message = str(info.value)
    assert "3 problem(s)" in message
    assert "line 3 ('Bronze')" in message and "MAMe_labels.csv" in message
    assert "line 4 ('wide')" in message and "line 5 ('-5')" in message


def test_duplicate_rows(tmp_path):
    root = make_mame(tmp_path / "set")

    def edit(f):
        return pd.concat([f, f.iloc[[0]]], ignore_index=True)

    rewrite_csv(root, edit)
    with pytest.raises(DataError, match=r"2 row\(s\) naming the same image file: line 2 \('img001.jpg'\), line 23"):
        load_dataset(root)


def test_many_bad_rows_are_counted(tmp_path):
    root = make_mame(tmp_path / "set")

    def edit(f):
        f["Subset"] = "nope"
        return f

    rewrite_csv(root, edit)
    with pytest.raises(DataError, match=r"(?s)21 row\(s\).*and 11 more \(21 in total\)"):
        load_dataset(root)


def test_missing_and_corrupt_files_all_listed(tmp_path):
    root = make_mame(tmp_path / "set")
    images = root / "data_256"
    (images / "img002.jpg").unlink()
    (images / "img005.jpg").unlink()
    whole = (images / "img003.jpg").read_bytes()
    (images / "img003.jpg").write_bytes(whole[: len(whole) // 2])  # truncated JPEG
    (images / "img006.jpg").write_bytes(b"this is not an image")
    (images / "img007.jpg").write_bytes(b"")
    with pytest.raises(DataError) as info:
        load_dataset(root)
    message = str(info.value)
    assert "MAMe_dataset.csv" in message
    assert "2 image file(s) missing" in message and "line 3 ('img002.jpg')" in message and "img005.jpg" in message
    assert "3 image file(s) unreadable or corrupt" in message
    assert "line 4 ('img003.jpg': truncated JPEG" in message
    assert "img006.jpg': not an image" in message
    assert "img007.jpg': empty file" in message
    # metadata-only reading still works
    assert len(load_dataset(root, check_files=False).table) == 21


def test_check_images(tmp_path):
    good = tmp_path / "good.jpg"
    good.write_bytes(_jpeg_bytes(40, 30) + b"\x00\x00")  # a little padding after EOI is fine
    png = tmp_path / "good.png"
    png.write_bytes(_jpeg_bytes(40, 30, fmt="PNG"))
    half_png = tmp_path / "half.png"
    half_png.write_bytes(png.read_bytes()[:-20])
    truncated = tmp_path / "truncated.jpg"
    whole = _jpeg_bytes(64, 64)
    truncated.write_bytes(whole[: len(whole) // 2])
    paths = [good, png, half_png, truncated, tmp_path / "absent.jpg"] * 5  # >16 files: the thread pool path
    bad = check_images(paths, workers=4)
    assert [Path(p).name for p, _ in bad[:3]] == ["half.png", "truncated.jpg", "absent.jpg"]
    assert len(bad) == 15
    assert dict(bad)[str(truncated)].startswith("truncated JPEG")
    assert dict(bad)[str(tmp_path / "absent.jpg")] == "file not found"
    assert check_images([good, png]) == []
    header_only = tmp_path / "header_only.jpg"
    header_only.write_bytes(whole[:300])
    assert check_images([header_only])[0][1].startswith("truncated image header")


def test_detect_layout_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        detect_layout(tmp_path / "nope")
    (tmp_path / "cats").mkdir()
    with pytest.raises(DataError, match=r"neither dataset layout \(it holds: cats/\).*MAMe layout.*class-per-folder"):
        detect_layout(tmp_path)
    assert issubclass(DataError, _DataError)


# --------------------------------------------------------------------------------------------------------------
# Folder layout and import


def test_read_folders(tmp_path):
    root = make_folders(tmp_path / "pets", splits=("train", "val", "test"))
    (root / "train" / "dogs" / "notes.txt").write_text("not an image")
    assert detect_layout(root) == "folders"
    ds = load_dataset(root, museum="Louvre")
    assert ds.layout == "folders" and ds.classes == ["cats", "dogs"]
    assert len(ds.table) == 18 and ds.subsets == ["train", "val", "test"]
    row = ds.table.iloc[0]
    assert row["image"] == "train/cats/cats_1.jpg" and row["instance_id"] == "cats_1"
    assert (row["width"], row["height"]) == (41.0, 34.0)
    assert row["product_size"] == 41 * 34 and row["aspect_ratio"] == round(41 / 34, 4)
    assert (ds.table["museum"] == "Louvre").all()
    assert load_dataset(root).table["museum"].iloc[0] == UNKNOWN_MUSEUM


def test_read_folders_errors(tmp_path):
    root = make_folders(tmp_path / "pets")
    (root / "extra").mkdir()
    with pytest.raises(DataError, match=r"folder\(s\) 'extra' are not splits"):
        read_folders(root)
    (root / "extra").rmdir()
    (root / "train" / "loose.jpg").write_bytes(_jpeg_bytes(32, 32))
    with pytest.raises(DataError, match=r"1 image\(s\) lie directly in a split folder.*loose.jpg"):
        read_folders(root)
    (root / "train" / "loose.jpg").unlink()
    (root / "val" / "cats" / "cats_7.jpg").write_bytes(b"")
    whole = _jpeg_bytes(64, 64)
    (root / "train" / "dogs" / "dogs_4.jpg").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError) as info:
        read_folders(root)
    assert "2 image file(s) unreadable" in str(info.value)
    assert "train/dogs/dogs_4.jpg (truncated JPEG" in str(info.value)
    assert "val/cats/cats_7.jpg (empty file" in str(info.value)
    with pytest.raises(DataError, match=r"required 'val' split is empty"):
        load_dataset(make_folders(tmp_path / "only_train", splits=("train",)))


def _comparable(table: pd.DataFrame) -> pd.DataFrame:
    return table.drop(columns=["path"]).reset_index(drop=True)


@pytest.mark.parametrize("copy", [False, True])
def test_write_mame_round_trip(tmp_path, copy):
    source = load_dataset(make_folders(tmp_path / "pets", ext=".png"), museum="Louvre")
    out = write_mame(source, tmp_path / "imported", copy_images=copy)
    assert (out / "data").is_symlink() != copy
    header = (out / "MAMe_metadata" / "MAMe_dataset.csv").read_text().splitlines()[0]
    assert header == ",".join(COLUMNS)
    again = load_dataset(out)
    assert again.layout == "mame" and again.classes == source.classes
    pd.testing.assert_frame_equal(_comparable(again.table), _comparable(source.table), check_dtype=False)
    for a, b in zip(again.table["path"], source.table["path"]):
        assert Path(a).read_bytes() == Path(b).read_bytes()
    # an earlier import is replaced; any other non-empty folder is refused
    write_mame(source, out)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not an earlier MAMe import"):
        write_mame(source, tmp_path / "busy")


def test_write_mame_of_mame_dataset(tmp_path):
    source = load_dataset(make_mame(tmp_path / "set"))
    again = load_dataset(write_mame(source, tmp_path / "copy"))
    pd.testing.assert_frame_equal(_comparable(again.table), _comparable(source.table), check_dtype=False)


def test_louvre_import_round_trip_and_cli(louvre, tmp_path, capsys):
    start = time.perf_counter()
    ds = load_dataset(louvre)
    elapsed = time.perf_counter() - start
    assert len(ds.table) == 1150 and ds.classes == ["Genre", "Landscape", "Naturmort", "Portrait"]
    assert ds.subsets == ["train", "val"] and len(ds.split("val")) == 200
    assert (ds.table["width"] == 500).all() and (ds.table["aspect_ratio"] == 1.0).all()
    assert elapsed < 15, f"header-only reading of 1,150 images took {elapsed:.1f} s"

    assert data.main(["import", str(louvre), "--out", str(tmp_path / "louvre_mame"), "--museum", "Louvre"]) == 0
    printed = capsys.readouterr().out
    assert "Imported 1150 images, 4 classes" in printed and "Portrait" in printed and "1150" in printed
    again = load_dataset(tmp_path / "louvre_mame", check_files=False)
    assert (again.table["museum"] == "Louvre").all()
    pd.testing.assert_frame_equal(
        _comparable(again.table).drop(columns=["museum"]), _comparable(ds.table).drop(columns=["museum"]),
        check_dtype=False,
    )
    assert data.main(["check", str(tmp_path / "louvre_mame")]) == 0
    assert "all image files readable" in capsys.readouterr().out


def test_cli_check(tmp_path, capsys, mame_metadata):
    root = make_mame(tmp_path / "set")
    assert data.main(["check", str(root)]) == 0
    out = capsys.readouterr().out
    assert "21 images, 3 classes" in out and "Woven fabric" in out
    (root / "data_256" / "img001.jpg").unlink()
    assert data.main(["check", str(root)]) == 2  # a user error: exit 2, like every command
    assert "img001.jpg" in capsys.readouterr().err
    assert data.main(["check", str(mame_metadata), "--no-files", "--toy"]) == 0
    assert "3480 images, 29 classes" in capsys.readouterr().out
    assert data.main(["check", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------------
# tf.data pipeline


@pytest.fixture
def tiny(tmp_path) -> Dataset:
    return load_dataset(make_mame(tmp_path / "set"))


def _collect(ds):
    images, labels = [], []
    for x, y in ds:
        images.append(x.numpy())
        labels.append(y.numpy())
    return np.concatenate(images), np.concatenate(labels)


def test_decode_and_resize(tiny):
    import tensorflow as tf

    image = decode_and_resize(tf.constant(tiny.table["path"][0]), 24)
    assert image.shape == (24, 24, 3) and image.dtype == tf.float32
    assert 0 <= float(tf.reduce_min(image)) and float(tf.reduce_max(image)) <= 255
    assert decode_and_resize(tf.constant(tiny.table["path"][0]), (20, 30)).shape == (20, 30, 3)


def test_pipeline_shapes_labels_and_order(tiny):
    import tensorflow as tf

    train = tiny.split("train")
    ds = make_pipeline(train, image_size=32, preprocess=None, batch_size=4)
    x, y = next(iter(ds))
    assert x.shape == (4, 32, 32, 3) and x.dtype == tf.float32 and y.dtype == tf.int32
    images, labels = _collect(ds)
    assert images.shape == (9, 32, 32, 3)
    np.testing.assert_array_equal(labels, train["label_index"].to_numpy())
    assert images.max() > 1.0 and images.min() >= 0.0  # 0..255, not rescaled
    np.testing.assert_array_equal(_collect(ds)[0], images)  # no augmentation, no shuffle: deterministic
    dropped = make_pipeline(train, image_size=32, preprocess=None, batch_size=4, drop_remainder=True)
    assert sum(1 for _ in dropped) == 2
    only_images = next(iter(make_pipeline(train, image_size=32, preprocess=None, batch_size=9, with_labels=False)))
    np.testing.assert_array_equal(only_images.numpy(), images)


def test_preprocess_applied_once_after_augmentation(tiny):
    train = tiny.split("train")

    def preprocess(x):
        return x / 127.5 - 1.0  # MobileNet-style: 0..255 -> -1..1; twice would land near -1

    raw, _ = _collect(make_pipeline(train, image_size=32, preprocess=None, batch_size=4))
    done, _ = _collect(make_pipeline(train, image_size=32, preprocess=preprocess, batch_size=4))
    np.testing.assert_allclose(done, raw / 127.5 - 1.0, rtol=1e-5, atol=1e-5)
    augmented, _ = _collect(
        make_pipeline(train, image_size=32, preprocess=preprocess, batch_size=4, augment=True, training=True)
    )
    assert augmented.min() >= -1.0 - 1e-5 and augmented.max() <= 1.0 + 1e-5 and augmented.max() > 0
    import keras

    with_keras, _ = _collect(make_pipeline(
        train, image_size=32, preprocess=keras.applications.mobilenet.preprocess_input, batch_size=4))
    np.testing.assert_allclose(with_keras, done, rtol=1e-5, atol=1e-5)


def test_shuffle_and_augment_are_seeded(tiny):
    train = tiny.split("train")

    def run(**kw):
        return _collect(make_pipeline(train, image_size=32, preprocess=None, batch_size=4, **kw))

    x1, y1 = run(training=True, augment=True, seed=3)
    x2, y2 = run(training=True, augment=True, seed=3)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert sorted(y1) == sorted(train["label_index"])
    plain, labels = run()
    flipped_or_rotated, _ = run(augment=True)  # augment without shuffle keeps the order
    assert not np.allclose(flipped_or_rotated, plain)
    ds = make_pipeline(train, image_size=32, preprocess=None, batch_size=9, training=True, seed=1)
    epochs = [next(iter(ds))[1].numpy().tolist() for _ in range(4)]
    assert len({tuple(e) for e in epochs}) > 1  # reshuffled each epoch


def test_cache_gives_same_images(tiny, tmp_path):
    train = tiny.split("train")
    plain, _ = _collect(make_pipeline(train, image_size=32, preprocess=None, batch_size=4))
    ds = make_pipeline(train, image_size=32, preprocess=None, batch_size=4, cache=True)
    first, second = _collect(ds)[0], _collect(ds)[0]
    np.testing.assert_array_equal(first, plain)
    np.testing.assert_array_equal(second, plain)
    shuffled = make_pipeline(train, image_size=32, preprocess=None, batch_size=9, cache=True, training=True)
    a, b = next(iter(shuffled))[1].numpy(), next(iter(shuffled))[1].numpy()
    assert sorted(a) == sorted(b) == sorted(train["label_index"])
    on_disk = make_pipeline(train, image_size=32, preprocess=None, batch_size=4, cache=str(tmp_path / "c"))
    np.testing.assert_array_equal(_collect(on_disk)[0], plain)


def test_decode_failure_names_the_file(tiny):
    import tensorflow as tf

    train = tiny.split("train")
    bad = train["path"][2]
    Path(bad).write_bytes(Path(bad).read_bytes()[:200])
    ds = make_pipeline(train, image_size=32, preprocess=None, batch_size=4)
    with pytest.raises(tf.errors.InvalidArgumentError, match=os.path.basename(bad)):
        _collect(ds)


def test_empty_table_rejected(tiny):
    with pytest.raises(DataError, match="empty table"):
        make_pipeline(tiny.table.iloc[:0], image_size=32, preprocess=None, batch_size=4)


# --------------------------------------------------------------------------------------------------------------
# Metadata features


def test_metadata_features():
    table = pd.DataFrame(
        {
            "image": ["a.jpg", "b.jpg", "c.jpg"],
            "width": [100.0, 200.0, 50.0],
            "height": [100.0, 100.0, 200.0],
            "product_size": [1e4, 2e4, 1e4],
            "aspect_ratio": [1.0, 2.0, 0.25],
            "museum": ["Met", "LACMA", "Met"],
        }
    )
    matrix, names = metadata_features(table)
    assert names == ["width", "height", "product_size", "aspect_ratio", "museum=LACMA", "museum=Met"]
    assert matrix.dtype == np.float32 and matrix.shape == (3, 6)
    np.testing.assert_allclose(matrix[:, 0], np.log1p([100, 200, 50]), rtol=1e-6)
    np.testing.assert_allclose(matrix[:, 3], [1.0, 2.0, 0.25])
    np.testing.assert_array_equal(matrix[:, 4:], [[0, 1], [1, 0], [0, 1]])
    # val/test use the train museums: same columns, unknown museum -> zeros
    other = table.assign(museum=["Cleveland", "Met", "Met"])
    matrix2, names2 = metadata_features(other, museums=["LACMA", "Met"])
    assert names2 == names
    np.testing.assert_array_equal(matrix2[:, 4:], [[0, 0], [0, 1], [0, 1]])
    with pytest.raises(DataError, match="b.jpg"):
        metadata_features(table.assign(width=[1.0, np.nan, 2.0]))
