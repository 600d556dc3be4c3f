"""datasets.folders: class-per-folder sets (split or flat) and split lists read into a Dataset, errors, MAMe import."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest
from tiny_sets import comparable, jpeg_bytes, make_flat, make_folders

from mame_transfer import data
from mame_transfer.core.errors import ConfigError, DataError
from mame_transfer.datasets.folders import read_folders, write_split_list
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


# --------------------------------------------------------------------------------------------- flat class folders


def test_flat_folders_split_stratified_seeded_and_reproducible(tmp_path):
    root = make_flat(tmp_path / "flat", classes=("cats", "dogs", "owls"), per_class={"cats": 20, "dogs": 7, "owls": 3})
    (root / "cats" / "notes.txt").write_text("skipped")
    (root / "dogs" / "deeper").mkdir()
    (root / "dogs" / "deeper" / "x.JPG").write_bytes(jpeg_bytes(30, 30))  # nested and upper-case: still an image
    assert detect_layout(root) == "flat"
    ds = load_dataset(root)
    assert ds.layout == "flat" and ds.classes == ["cats", "dogs", "owls"] and len(ds.table) == 31
    counts = ds.summary()
    # round-half-up shares, at least one image per split and class
    assert counts.loc["cats", ["train", "val", "test"]].tolist() == [14, 3, 3]
    assert counts.loc["dogs", ["train", "val", "test"]].tolist() == [6, 1, 1]
    assert counts.loc["owls", ["train", "val", "test"]].tolist() == [1, 1, 1]
    assert "dogs/deeper/x.JPG" in set(ds.table["image"])
    again = load_dataset(root)
    pd.testing.assert_frame_equal(ds.table, again.table)
    other = load_dataset(root, split_seed=1)
    assert list(other.table["subset"]) != list(ds.table["subset"])
    # a class's split does not depend on the other classes
    (root / "owls").rename(tmp_path / "owls_away")
    without = load_dataset(root).table.set_index("image")["subset"]
    assert (without == ds.table.set_index("image")["subset"].loc[without.index]).all()
    no_test = load_dataset(root, test_fraction=0, val_fraction=0.25)
    assert no_test.subsets == ["train", "val"]
    with pytest.raises(DataError, match=r"required 'test' split is empty.*--test-fraction above 0"):
        load_dataset(root, test_fraction=0, require=("test",))


def test_flat_folders_errors(tmp_path):
    root = make_flat(tmp_path / "flat", classes=("big", "tiny", "two"), per_class={"big": 10, "tiny": 1, "two": 2})
    (root / "empty").mkdir()
    with pytest.raises(DataError) as info:
        load_dataset(root)
    message = str(info.value)
    assert "3 class(es) too small to split into train/val/test" in message
    assert "'tiny' (1 image)" in message and "'two' (2 images)" in message and "'empty' (0 images)" in message
    assert "'big'" not in message and "--test-fraction 0" in message
    (root / "empty").rmdir()
    (root / "tiny").rename(tmp_path / "tiny")
    assert load_dataset(root, test_fraction=0).summary().loc["two", "val"] == 1  # 2 images: train + val
    with pytest.raises(ConfigError, match=r"val_fraction=0.6, test_fraction=0.5"):
        load_dataset(root, val_fraction=0.6, test_fraction=0.5)
    (root / "loose.png").write_bytes(jpeg_bytes(20, 20, fmt="PNG"))
    with pytest.raises(DataError, match=r"1 image\(s\) lie directly in the folder.*loose.png"):
        load_dataset(root, test_fraction=0)
    (root / "loose.png").unlink()
    (root / "big" / "big_1.jpg").write_bytes(b"\xff\xd8\xff broken")
    with pytest.raises(DataError, match=r"1 image file\(s\) unreadable or corrupt: big/big_1.jpg"):
        load_dataset(root, test_fraction=0)


def test_split_list_round_trip_and_errors(tmp_path):
    root = make_flat(tmp_path / "flat", per_class=8, ext=".png")
    ds = load_dataset(root)
    listed = write_split_list(ds, tmp_path / "run" / "splits.csv")
    frame = pd.read_csv(listed)
    assert list(frame.columns) == ["file", "label", "subset"] and len(frame) == 16
    assert all(Path(f).is_absolute() for f in frame["file"])
    assert detect_layout(listed) == "list"
    back = load_dataset(listed)
    assert back.layout == "list" and back.classes == ds.classes
    pd.testing.assert_frame_equal(comparable(back.table), comparable(ds.table))
    # relative paths are relative to the CSV; extra columns are ignored
    hand = tmp_path / "flat" / "mine.csv"
    hand.write_text("File,Label,Subset,notes\ncats/cats_1.png,cats,train,x\ndogs/dogs_10.png,dogs,train,\n"
                    "dogs/dogs_9.png,dogs,val,\n")
    mine = load_dataset(hand, require=("train", "val"))
    assert mine.table["path"].tolist() == [str(root / "cats" / "cats_1.png"), str(root / "dogs" / "dogs_10.png"),
                                           str(root / "dogs" / "dogs_9.png")]
    untrained = tmp_path / "flat" / "untrained.csv"  # a class with val images only is refused (issue 12)
    untrained.write_text("file,label,subset\ncats/cats_1.png,cats,train\ndogs/dogs_9.png,dogs,val\n")
    with pytest.raises(DataError, match="have val/test images but no train image: 'dogs'"):
        load_dataset(untrained, require=("train", "val"))
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label,subset\na.jpg,x,train\na.jpg,,holdout\n")
    with pytest.raises(DataError) as info:
        load_dataset(bad)
    message = str(info.value)
    assert "line 3 ('')" in message and "with an empty label" in message
    assert "line 3 ('holdout')" in message and "naming the same file: line 2 ('a.jpg'), line 3" in message
    gone = tmp_path / "gone.csv"
    gone.write_text("file,label,subset\nnowhere.jpg,x,train\n")
    with pytest.raises(DataError, match=r"1 listed image file\(s\) missing: line 2 \(.*nowhere.jpg\)"):
        load_dataset(gone)
    other = tmp_path / "other.csv"
    other.write_text("path,class\na.jpg,x\n")
    with pytest.raises(DataError, match="missing column"):  # neither a split list nor a MAMe CSV
        load_dataset(other)


def test_cli_split_writes_the_mame_layout(tmp_path, capsys):
    root = make_flat(tmp_path / "flat", per_class=10, ext=".jpg")
    out = tmp_path / "mame"
    assert data.main(["split", str(root), "--out", str(out), "--val-fraction", "0.2", "--test-fraction", "0.1",
                      "--split-seed", "3", "--museum", "Mine"]) == 0
    assert "Split 20 images, 2 classes" in capsys.readouterr().out
    mame = load_dataset(out, require=("train", "val", "test"))
    flat = load_dataset(root, val_fraction=0.2, test_fraction=0.1, split_seed=3)
    assert mame.layout == "mame" and (mame.table["museum"] == "Mine").all()
    assert dict(zip(mame.table["image"], mame.table["subset"])) == dict(zip(flat.table["image"], flat.table["subset"]))
    assert data.main(["split", str(out), "--out", str(tmp_path / "again")]) == 2
    assert "not flat class folders" in capsys.readouterr().err
    too_small = make_flat(tmp_path / "small", per_class={"cats": 10, "dogs": 2})
    assert data.main(["split", str(too_small), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "'dogs' (2 images)" in err and not (tmp_path / "x").exists()
    assert data.main(["import", str(root), "--out", str(tmp_path / "y")]) == 2
    assert "use `mame-data split`" in capsys.readouterr().err
    assert data.main(["check", str(root)]) == 0
    assert "flat layout, 20 images, 2 classes" in capsys.readouterr().out
