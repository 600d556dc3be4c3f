"""datasets.folders: the class-per-folder layout read into a Dataset, its errors, and its import into MAMe."""

from __future__ import annotations

import time

import pandas as pd
import pytest
from tiny_sets import comparable, jpeg_bytes, make_folders

from mame_transfer import data
from mame_transfer.core.errors import DataError
from mame_transfer.datasets.folders import read_folders
from mame_transfer.datasets.layouts import detect_layout, load_dataset
from mame_transfer.datasets.tables import UNKNOWN_MUSEUM


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
    (root / "train" / "loose.jpg").write_bytes(jpeg_bytes(32, 32))
    with pytest.raises(DataError, match=r"1 image\(s\) lie directly in a split folder.*loose.jpg"):
        read_folders(root)
    (root / "train" / "loose.jpg").unlink()
    (root / "val" / "cats" / "cats_7.jpg").write_bytes(b"")
    whole = jpeg_bytes(64, 64)
    (root / "train" / "dogs" / "dogs_4.jpg").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError) as info:
        read_folders(root)
    assert "2 image file(s) unreadable" in str(info.value)
    assert "train/dogs/dogs_4.jpg (truncated JPEG" in str(info.value)
    assert "val/cats/cats_7.jpg (empty file" in str(info.value)
    with pytest.raises(DataError, match=r"required 'val' split is empty"):
        load_dataset(make_folders(tmp_path / "only_train", splits=("train",)))


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
        comparable(again.table).drop(columns=["museum"]), comparable(ds.table).drop(columns=["museum"]),
        check_dtype=False,
    )
    assert data.main(["check", str(tmp_path / "louvre_mame")]) == 0
    assert "all image files readable" in capsys.readouterr().out
