"""datasets.images: fast readability checks of image files (header + end marker), TIFF/WebP, 16-bit decoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_sets import jpeg_bytes, tiff16_bytes

from mame_transfer.core.errors import DataError
from mame_transfer.datasets.images import check_images, decode_rgb, read_rgb, to_rgb8
from mame_transfer.datasets.layouts import load_dataset


def test_check_images(tmp_path):
    good = tmp_path / "good.jpg"
    good.write_bytes(jpeg_bytes(40, 30) + b"\x00\x00")  # a little padding after EOI is fine
    png = tmp_path / "good.png"
    png.write_bytes(jpeg_bytes(40, 30, fmt="PNG"))
    half_png = tmp_path / "half.png"
    half_png.write_bytes(png.read_bytes()[:-20])
    truncated = tmp_path / "truncated.jpg"
    whole = jpeg_bytes(64, 64)
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


def _rgb16():
    """A 16-bit RGB gradient using the whole range (high bytes 0..255 along x)."""
    x = np.linspace(0, 65535, 40).round().astype(np.uint16)
    pixels = np.zeros((30, 40, 3), np.uint16)
    pixels[..., 0], pixels[..., 1], pixels[..., 2] = x, 65535 - x, 32896
    return pixels


def test_tiff_and_webp_are_checked_and_read(tmp_path):
    grey = (np.arange(30 * 40).reshape(30, 40) * 54).astype(np.uint16)  # up to 64746: a 16-bit master
    files = {
        "grey16.tif": tiff16_bytes(grey),
        "rgb16.tiff": tiff16_bytes(_rgb16()),
        "rgb8.tif": jpeg_bytes(40, 30, fmt="TIFF"),
        "image.webp": jpeg_bytes(40, 30, fmt="WEBP"),
    }
    for name, blob in files.items():
        (tmp_path / name).write_bytes(blob)
    (tmp_path / "cut.tif").write_bytes(files["grey16.tif"][:-500])
    (tmp_path / "cut.webp").write_bytes(files["image.webp"][:-40])
    bad = dict(check_images(sorted(tmp_path.iterdir())))
    assert set(bad) == {str(tmp_path / "cut.tif"), str(tmp_path / "cut.webp")}
    assert bad[str(tmp_path / "cut.tif")].startswith("truncated TIFF (image data ends at byte")
    assert bad[str(tmp_path / "cut.webp")].startswith(("truncated WebP", "unreadable image header"))

    # 16 bits are scaled to 8 (Pillow's own convert("RGB") would clip the grey master at 255: all white)
    read = read_rgb(tmp_path / "grey16.tif")
    assert read.shape == (30, 40, 3) and read.dtype == np.uint8
    np.testing.assert_array_equal(read[..., 0], np.round(grey / 257).astype(np.uint8))
    assert read.max() == 252 and read.min() == 0
    rgb = read_rgb(tmp_path / "rgb16.tiff")
    assert np.abs(rgb.astype(int) - np.round(_rgb16() / 257).astype(int)).max() <= 1
    assert rgb[0, 0].tolist() == [0, 255, 128] and rgb[0, -1].tolist() == [255, 0, 128]
    with Image.open(tmp_path / "grey16.tif") as im:
        assert im.mode == "I;16" and np.asarray(to_rgb8(im)).max() == 252
        assert np.asarray(im.convert("RGB")).max() == 255  # what to_rgb8 exists for
    float_image = Image.fromarray(np.full((4, 4), 0.5, np.float32), "F")
    assert np.asarray(to_rgb8(float_image))[0, 0].tolist() == [128, 128, 128]


def test_decode_rgb_in_graph(tmp_path):
    import tensorflow as tf

    grey = (np.arange(30 * 40).reshape(30, 40) * 54).astype(np.uint16)
    cases = {"grey16.tif": tiff16_bytes(grey), "rgb16.tif": tiff16_bytes(_rgb16()),
             "image.webp": jpeg_bytes(40, 30, fmt="WEBP"), "image.png": jpeg_bytes(40, 30, fmt="PNG"),
             "image.jpg": jpeg_bytes(40, 30)}
    for name, blob in cases.items():
        image, ok = decode_rgb(tf.constant(blob), tf.constant(name))
        assert bool(ok) and image.dtype == tf.uint8 and tuple(image.shape) == (30, 40, 3), name
        # lossless formats decode to the very same pixels; two JPEG decoders may differ by a few levels
        tolerance = 8 if name.endswith(".jpg") else 0
        assert np.abs(image.numpy().astype(int) - read_rgb(blob).astype(int)).max() <= tolerance, name
    for name, blob in {"cut.tif": cases["grey16.tif"][:200], "cut.webp": cases["image.webp"][:-30],
                       "cut.jpg": cases["image.jpg"][:-100], "text.png": b"not an image", "empty": b""}.items():
        image, ok = decode_rgb(tf.constant(blob), tf.constant(name))
        assert not bool(ok) and tuple(image.shape) == (1, 1, 3), name


def test_a_tiff_pillow_cannot_decode_is_named(tmp_path):
    blob = bytearray(tiff16_bytes(np.zeros((20, 30), np.uint16)))
    # Compression tag (259) says deflate (8) but the strip holds raw zeros: the header reads, the pixels do not.
    at = blob.find(bytes([3, 1, 3, 0, 1, 0, 0, 0, 1, 0]))  # tag 259, type SHORT, count 1, value 1
    blob[at + 8:at + 10] = (8).to_bytes(2, "little")
    (tmp_path / "odd.tif").write_bytes(bytes(blob))
    (path, reason), = check_images([tmp_path / "odd.tif"])
    assert path.endswith("odd.tif") and reason.startswith("TIFF cannot be decoded (OSError"), reason
    with pytest.raises(DataError, match=r"odd.tif \(TIFF cannot be decoded"):
        _flat_with(tmp_path)


def _flat_with(tmp_path):
    """Flat class folders holding the undecodable TIFF: training refuses the set with one message naming it."""
    from tiny_sets import make_flat

    root = make_flat(tmp_path / "flat", per_class=3)
    (tmp_path / "odd.tif").rename(root / "cats" / "odd.tif")
    return load_dataset(root, test_fraction=0)
