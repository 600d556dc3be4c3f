"""datasets.images: fast readability checks of image files (header + end marker)."""

from __future__ import annotations

from pathlib import Path

from tiny_sets import jpeg_bytes

from mame_transfer.datasets.images import check_images


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
