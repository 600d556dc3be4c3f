"""datasets.mame: the MAMe layout (CSV + image folder) read row by row with named errors, and ``write_mame``."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
from tiny_sets import (
    CLASSES,
    comparable,
    make_folders,
    make_mame,
    rewrite_csv,
)

from mame_transfer.core.errors import DataError, OutputError
from mame_transfer.datasets.layouts import detect_layout, load_dataset
from mame_transfer.datasets.mame import write_mame
from mame_transfer.datasets.tables import COLUMNS, TABLE_COLUMNS

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


# --------------------------------------------------------------------------------------------------------------
# write_mame (the target of ``python -m mame_transfer.data import``)


@pytest.mark.parametrize("copy", [False, True])
def test_write_mame_round_trip(tmp_path, copy):
    source = load_dataset(make_folders(tmp_path / "pets", ext=".png"), museum="Louvre")
    out = write_mame(source, tmp_path / "imported", copy_images=copy)
    assert (out / "data").is_symlink() != copy
    header = (out / "MAMe_metadata" / "MAMe_dataset.csv").read_text().splitlines()[0]
    assert header == ",".join(COLUMNS)
    again = load_dataset(out)
    assert again.layout == "mame" and again.classes == source.classes
    pd.testing.assert_frame_equal(comparable(again.table), comparable(source.table), check_dtype=False)
    for a, b in zip(again.table["path"], source.table["path"]):
        assert Path(a).read_bytes() == Path(b).read_bytes()
    # an earlier import is replaced with overwrite only; any other non-empty folder is refused
    with pytest.raises(OutputError, match="already holds a MAMe import; pass --overwrite"):
        write_mame(source, out)
    write_mame(source, out, overwrite=True)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="holds files this command did not write"):
        write_mame(source, tmp_path / "busy", overwrite=True)
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"


def test_write_mame_of_mame_dataset(tmp_path):
    source = load_dataset(make_mame(tmp_path / "set"))
    again = load_dataset(write_mame(source, tmp_path / "copy"))
    pd.testing.assert_frame_equal(comparable(again.table), comparable(source.table), check_dtype=False)
