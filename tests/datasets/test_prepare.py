"""datasets.prepare: a resized MAMe copy that load_dataset reads, resumable, with DCT-domain JPEG downscaling."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mame_transfer import prepare as prepare_cmd
from mame_transfer.core.errors import DataError
from mame_transfer.datasets import demo
from mame_transfer.datasets.layouts import load_dataset
from mame_transfer.datasets.prepare import prepare, resize_file, target_size
from mame_transfer.datasets.tables import TOY_CSV


@pytest.fixture(scope="module")
def small_mame(tmp_path_factory):
    return demo.ensure_demo(tmp_path_factory.mktemp("prep"), sizes=(2, 1, 1))


def test_square_copy_is_a_valid_mame_layout_with_the_same_rows(small_mame, tmp_path, capsys):
    out = tmp_path / "p64"
    assert prepare_cmd.main(["--data", str(small_mame), "--out", str(out), "--size", "64", "--workers", "2",
                             "--quiet"]) == 0
    src = load_dataset(small_mame)
    dst = load_dataset(out)  # checks every output file
    assert dst.image_root.name == "data"
    pd.testing.assert_frame_equal(src.table.drop(columns="path"), dst.table.drop(columns="path"))
    assert (out / "MAMe_metadata" / TOY_CSV).read_bytes() == (small_mame / "MAMe_metadata" / TOY_CSV).read_bytes()
    for path in dst.table["path"]:
        with Image.open(path) as im:
            assert im.size == (64, 64)
    assert '"written": 24' in capsys.readouterr().out


def test_keep_aspect_sets_the_shorter_side_and_rerun_resumes(small_mame, tmp_path):
    out = tmp_path / "p256"
    first = prepare(small_mame, out, 256, keep_aspect=True, workers=1, progress=False)
    assert first["written"] == 24 and first["skipped"] == 0
    table = load_dataset(out).table
    assert (out / "data_256").is_dir()
    for path, w, h in zip(table["path"], table["width"], table["height"]):
        with Image.open(path) as im:
            assert min(im.size) == 256 and im.size == target_size(int(w), int(h), 256, True)
    victim = out / "data_256" / table["image"][3]
    victim.unlink()
    again = prepare(small_mame, out, 256, keep_aspect=True, workers=1, progress=False)
    assert again["written"] == 1 and again["skipped"] == 23 and victim.is_file()
    assert not list((out / "data_256").glob(".*.tmp"))


def test_dct_domain_draft_matches_full_decode_on_a_large_jpeg(tmp_path):
    yy, xx = np.mgrid[0:1600, 0:2400]
    pixels = np.stack([(xx / 10) % 255, (yy / 7) % 255, ((xx + yy) / 13) % 255], -1).astype(np.uint8)
    src = tmp_path / "big.jpg"
    Image.fromarray(pixels).save(src, quality=90)
    resize_file(str(src), str(tmp_path / "draft.jpg"), 128, draft=True)
    resize_file(str(src), str(tmp_path / "full.jpg"), 128, draft=False)
    with Image.open(src) as im:
        im.draft("RGB", (128, 128))
        assert im.size == (300, 200)  # decoded at 1/8 scale, still >= the target
    a = np.asarray(Image.open(tmp_path / "draft.jpg"), float)
    b = np.asarray(Image.open(tmp_path / "full.jpg"), float)
    assert a.shape == b.shape == (128, 128, 3)
    assert np.abs(a - b).mean() < 4.0


def test_bad_image_is_named_and_others_are_written(small_mame, tmp_path, capsys):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(small_mame, src)
    table = load_dataset(src).table
    (src / "data_256" / table["image"][0]).write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    assert prepare_cmd.main(["--data", str(src), "--out", str(out), "--size", "32", "--workers", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert table["image"][0] in err and "1 of 24" in err
    assert len(list((out / "data").iterdir())) == 23


def test_class_per_folder_source_is_refused(louvre, tmp_path):
    with pytest.raises(DataError, match="mame-data import"):
        prepare(louvre, tmp_path / "x", 64, progress=False)


def test_tiff_masters_keep_their_format_and_16_bits_are_scaled(tmp_path):
    from tiny_sets import tiff16_bytes

    src, dst = tmp_path / "master.tif", tmp_path / "out" / "master.tif"
    src.write_bytes(tiff16_bytes(np.full((40, 60), 40000, np.uint16)))
    assert resize_file(str(src), str(dst), 16) == (60, 40)
    with Image.open(dst) as im:
        assert im.format == "TIFF" and im.mode == "RGB" and im.size == (16, 16)
        assert np.asarray(im).min() == np.asarray(im).max() == 156  # 40000 / 257, not clipped to 255
