"""datasets.demo: the generated set is a valid MAMe layout, varied, and cached."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from mame_transfer import data
from mame_transfer.datasets import demo
from mame_transfer.datasets.layouts import detect_layout, load_dataset
from mame_transfer.datasets.pipeline import decode_and_resize
from mame_transfer.datasets.tables import COLUMNS, SUBSETS

SIZES = (10, 3, 4)


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> tuple[Path, float]:
    start = time.perf_counter()
    # Fewer images than the default (40/10/15 per class) keeps the suite fast; the code path is the same.
    root = demo.ensure_demo(tmp_path_factory.mktemp("cache"), sizes=SIZES)
    return root, time.perf_counter() - start


def test_demo_is_a_valid_mame_layout(demo_root):
    root, seconds = demo_root
    assert seconds < 20, f"generating the demo set took {seconds:.1f} s"
    assert root.name == "demo-v1-seed0-10-3-4"
    assert detect_layout(root) == "mame"
    ds = load_dataset(root)  # checks every row and every image file
    assert ds.classes == demo.CLASSES and ds.num_classes == 6
    assert ds.image_root == root / "data_256"
    counts = ds.table.groupby(["subset", "label"]).size()
    for subset, n in zip(SUBSETS, SIZES):
        assert (counts[subset] == n).all()
    assert set(ds.table["museum"]) <= set(demo.MUSEUMS) and ds.table["museum"].nunique() >= 2
    toy = load_dataset(root, toy=True)
    assert len(toy.table) == 6 * (3 + 1 + 1) and toy.classes == ds.classes
    assert set(toy.table["image"]) <= set(ds.table["image"])


def test_demo_csv_spells_woven_fabric_like_mame(demo_root):
    root, _ = demo_root
    text = (root / "MAMe_metadata" / "MAMe_dataset.csv").read_text()
    assert text.splitlines()[0] == ",".join(COLUMNS)
    assert ",Woven fabric ," in text
    assert "5,Woven fabric\n" in (root / "MAMe_metadata" / "MAMe_labels.csv").read_text()


def test_demo_sizes_vary_and_match_the_files(demo_root):
    root, _ = demo_root
    table = load_dataset(root).table
    assert table["width"].between(48, 320).all() and table["height"].between(48, 320).all()
    assert table["width"].nunique() > 30 and table["height"].nunique() > 30
    assert table["aspect_ratio"].min() < 0.7 and table["aspect_ratio"].max() > 1.4
    assert table["aspect_ratio"].between(0.49, 2.01).all()
    from PIL import Image

    for row in table.sample(10, random_state=0).itertuples():
        with Image.open(row.path) as im:
            assert im.size == (row.width, row.height) and im.format == "JPEG"
    assert np.allclose(table["product_size"], table["width"] * table["height"])
    assert table["image"].str.endswith(".jpeg").any() and table["image"].str.endswith(".jpg").any()


def test_demo_classes_differ(demo_root):
    root, _ = demo_root
    table = load_dataset(root).split("train")
    import tensorflow as tf

    means = {}
    for label, rows in table.groupby("label"):
        images = [decode_and_resize(tf.constant(p), 32).numpy() for p in rows["path"][:6]]
        means[label] = np.mean([im.std() for im in images])  # texture contrast differs by class
    assert len(means) == 6 and max(means.values()) > 1.5 * min(means.values())


def test_ensure_demo_reuses_the_cache(demo_root, monkeypatch):
    root, _ = demo_root
    marker = (root / demo.MARKER).stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("regenerated although a complete set exists")

    monkeypatch.setattr(demo, "generate", fail)
    assert demo.ensure_demo(root.parent, sizes=SIZES) == root
    assert (root / demo.MARKER).stat().st_mtime_ns == marker


def test_interrupted_generation_is_not_taken_as_complete(tmp_path, monkeypatch):
    calls = {"n": 0}
    original = demo._save_jpeg

    def flaky(pixels, path, quality):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-way
        original(pixels, path, quality)

    monkeypatch.setattr(demo, "_save_jpeg", flaky)
    with pytest.raises(KeyboardInterrupt):
        demo.ensure_demo(tmp_path, sizes=(2, 1, 1))
    assert not any(p.name.startswith("demo-v1") for p in tmp_path.iterdir())
    monkeypatch.setattr(demo, "_save_jpeg", original)
    root = demo.ensure_demo(tmp_path, sizes=(2, 1, 1))
    assert root.name == "demo-v1-seed0-2-1-1"
    assert len(load_dataset(root).table) == 6 * 4


def test_seed_changes_the_images(tmp_path):
    a = demo.ensure_demo(tmp_path, seed=1, sizes=(1, 1, 1))
    b = demo.ensure_demo(tmp_path, seed=2, sizes=(1, 1, 1))
    c = demo.ensure_demo(tmp_path / "other", seed=1, sizes=(1, 1, 1))
    first = lambda root: (root / "data_256").glob("*")  # noqa: E731
    assert a != b
    assert [p.read_bytes() for p in sorted(first(a))] == [p.read_bytes() for p in sorted(first(c))]
    assert [p.read_bytes() for p in sorted(first(a))] != [p.read_bytes() for p in sorted(first(b))]


def test_cache_location_and_cli(demo_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MAME_TRANSFER_CACHE", str(tmp_path / "env_cache"))
    assert demo.default_cache_dir() == tmp_path / "env_cache"
    monkeypatch.delenv("MAME_TRANSFER_CACHE")
    assert demo.default_cache_dir() == Path.home() / ".cache" / "mame_transfer"
    root, _ = demo_root
    assert demo.main(["--out", str(root.parent), "--seed", "0", "--sizes", "10", "3", "4"]) == 0  # reuses it
    printed = capsys.readouterr().out.strip()
    assert printed == str(root)
    assert data.main(["check", printed]) == 0
    with pytest.raises(ValueError, match="sizes"):
        demo.ensure_demo(tmp_path, sizes=(1, 0, 1))
