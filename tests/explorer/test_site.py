"""explorer.site (+ serve): the site files, bad input, reuse, the local server, and click-through in headless
Chromium."""

from __future__ import annotations

import json
import urllib.request
import warnings

import numpy as np
import pandas as pd
import pytest
from browser import open_page
from file_checks import png_size, read_csv, read_json

from mame_transfer import explore
from mame_transfer.core.errors import ConfigError, DataError, OutputError
from mame_transfer.explorer.serve import serving
from mame_transfer.explorer.site import ExplorerWarning, build_site
from mame_transfer.store.export import export
from mame_transfer.store.store import write_store

HOSTILE_LABEL = '<script>window.__pwned=1</script>"quoted\' label'
HOSTILE_NAME = 'x"><img src=x onerror="window.__pwned=2">\'</script>.jpg'


# ------------------------------------------------------------------------------------------------- stores


def _synthetic_store(path, images, labels, paths, dim=24, seed=0, classes=None):
    """A store whose embeddings cluster by label (so neighbours mostly agree)."""
    rng = np.random.default_rng(seed)
    classes = classes or sorted(set(labels))
    idx = np.array([classes.index(c) for c in labels])
    emb = (8 * np.eye(len(classes), dim)[idx] + rng.normal(size=(len(labels), dim))).astype(np.float32)
    meta = pd.DataFrame({"image": images, "path": paths, "label": labels, "label_index": idx,
                         "subset": "train", "museum": "Met", "width": 50, "height": 40,
                         "product_size": 2000, "aspect_ratio": 1.25})
    manifest = {"arch": "synthetic", "alpha": None, "weights": None, "run": None, "layer": "x", "image_size": 32,
                "preprocessing": "none", "classes": classes}
    return write_store(path, manifest=manifest, splits={"train": (emb, meta)})


@pytest.fixture(scope="module")
def demo_stores(demo_root, tmp_path_factory):
    """Two stores of the demo set: test_tiny features (32 px) and a second store of the same images."""
    from mame_transfer.datasets.layouts import load_dataset

    base = tmp_path_factory.mktemp("explore_stores")
    ds = load_dataset(demo_root)
    store = export(base / "tiny", ds, arch="test_tiny", weights=None, image_size=32, batch_size=64,
                   verbose=0)
    table = pd.concat([store.metadata(s) for s in store.splits], ignore_index=True)
    other = _synthetic_store(base / "other", table["image"].tolist(), table["label"].tolist(),
                             table["path"].tolist(), classes=store.classes)
    return store, other


# ------------------------------------------------------------------------------------------------- browser


def test_click_through_in_chromium(demo_stores, tmp_path):
    store, other = demo_stores
    site = build_site(store, tmp_path / "site", k=5, compare=other)
    assert site.missing == [] and site.n == sum(store.manifest["splits"][s]["n"] for s in store.splits)
    assert set(site.quality.index) == set(store.classes) | {"all"}
    assert site.quality_compare.loc["all", "P@5"] > 0.9  # the clustered second store retrieves its labels
    assert (tmp_path / "site" / "precision_at_k.csv").is_file()
    written = read_csv(tmp_path / "site" / "precision_at_k.csv", ["n", "P@5"], len(store.classes) + 1, index_col=0)
    assert set(written.index) == set(site.quality.index)
    pd.testing.assert_frame_equal(written.loc[site.quality.index], site.quality, check_dtype=False, atol=1e-4)
    build = read_json(tmp_path / "site" / "build.json", ["n", "k", "missing", "compare"])
    assert (build["n"], build["k"], build["missing"]) == (site.n, 5, [])

    with serving(site.path) as url, open_page(url) as view:
        page = view.page
        page.wait_for_selector("body[data-ready='1']")
        assert page.locator("#grid figure.thumb").count() == 60  # first page of the paged grid
        page.click("#grid figure.thumb >> nth=7")
        page.wait_for_selector("#neighbours[data-count='5']")
        assert page.locator("#neighbours figure").count() == 5
        scores = [float(s) for s in page.locator("#neighbours .score").all_inner_texts()]
        assert len(scores) == 5 and scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)
        assert "share the label" in page.inner_text("#nbr-summary")
        assert page.locator("#neighbours-b figure").count() == 5  # --compare column, same query
        page.wait_for_selector("#hist[data-rendered='7']")
        drawn = page.evaluate("""() => { const c = document.getElementById('hist');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; }""")
        assert drawn > 1000
        assert "nearest neighbours" in page.inner_text("#hist-caption")
        # compare queries: pin this one, move on to a neighbour, both distributions are overlaid
        page.click("#pin")
        page.wait_for_selector("#unpin:not([hidden])")
        first = page.get_attribute("#neighbours figure >> nth=0", "data-id")
        page.click("#neighbours figure >> nth=0")
        page.wait_for_selector(f"#hist[data-rendered='{first}']")
        page.wait_for_selector("#hist-caption:has-text('query B')")
        view.screenshot(tmp_path / "explorer.png")
        # browse filters: class and file-name search narrow the grid
        n_class = sum(int(store.metadata(s)["label"].eq(store.classes[1]).sum()) for s in store.splits)
        page.select_option("#f-class", "1")
        assert page.inner_text("#count").startswith(f"{n_class} of ")
        page.select_option("#f-class", "")
        name = store.metadata("val")["image"].iloc[0]
        page.fill("#f-search", name)
        page.wait_for_function("() => document.getElementById('count').textContent.startsWith('1 of')")
        # per-class table: one row per class + overall, weakest first
        page.click("button[data-tab='quality']")
        rows = page.locator("#quality-table tbody tr")
        assert rows.count() == len(store.classes) + 1
        values = [float(v) for v in page.locator("#quality-table tbody tr:not(.all) td:nth-child(6)").all_inner_texts()]
        assert values == sorted(values)
        view.assert_clean()
    assert (tmp_path / "explorer.png").stat().st_size > 10_000
    width, height = png_size(tmp_path / "explorer.png", min_side=800)
    assert width == 1400 and height >= 900  # the viewport's width, the whole page's height


def test_missing_images_and_hostile_names(tmp_path, demo_root):
    real = sorted((demo_root / "data_256").glob("*.jpg"))[:9]
    images = [p.name for p in real] + [HOSTILE_NAME, "gone.jpg"]
    labels = ["plain"] * 5 + [HOSTILE_LABEL] * 6
    paths = [str(p) for p in real] + [str(real[0]), str(tmp_path / "gone.jpg")]
    paths[3] = ""  # no path at all
    store = _synthetic_store(tmp_path / "store", images, labels, paths)
    with pytest.warns(ExplorerWarning, match=r"2 of 11 image file\(s\).*gone\.jpg"):
        site = build_site(store, tmp_path / "site", k=3)
    assert len(site.missing) == 2
    for f in (tmp_path / "site" / "data").rglob("*.js"):
        text = f.read_text()
        assert "<" not in text and ">" not in text, f  # nothing in a data file can open or close a tag
    idx = images.index(HOSTILE_NAME)
    with open_page(tmp_path / "site" / "index.html") as view:  # file://, no server
        page = view.page
        page.wait_for_selector("body[data-ready='1']")
        assert page.locator("#grid .placeholder").count() == 2
        page.click(f"#grid figure[data-id='{idx}']")
        page.wait_for_selector("#neighbours[data-count='3']")
        page.wait_for_selector(f"#hist[data-rendered='{idx}']")
        assert HOSTILE_NAME in page.inner_text("#query")  # shown literally, as text
        assert HOSTILE_LABEL in page.inner_text("#query")
        page.click("button[data-tab='quality']")
        assert HOSTILE_LABEL in page.inner_text("#quality-table")
        page.click("button[data-tab='about']")
        assert page.evaluate("window.__pwned") is None
        assert page.locator("img[src='x']").count() == 0
        view.assert_clean()


# ------------------------------------------------------------------------------------------------- CLI, serving


def test_cli_build_reuse_and_local_server(tmp_path, demo_root, capsys):
    real = sorted((demo_root / "data_256").glob("*.jpg"))[:12]
    labels = ["a", "b", "c"] * 4
    _synthetic_store(tmp_path / "store", [p.name for p in real], labels, [str(p) for p in real])
    out = tmp_path / "site"
    assert explore.main([str(tmp_path / "store"), "--out", str(out), "--k", "4", "--pca-dim", "8"]) == 0
    printed = capsys.readouterr().out
    assert "P@4" in printed and "index.html" in printed
    build = json.loads((out / "build.json").read_text())
    assert build["n"] == 12 and build["k"] == 4 and build["approx"]["dim"] == 8
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = build_site(tmp_path / "store", out, k=4, pca_dim=8, reuse=True)
    assert again.reused
    with pytest.raises(OutputError, match="already holds an explorer site; pass --overwrite"):  # options changed
        build_site(tmp_path / "store", out, k=3, pca_dim=8, reuse=True)
    assert not build_site(tmp_path / "store", out, k=3, pca_dim=8, reuse=True, overwrite=True).reused
    with serving(out) as url:
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url + "data/meta.js") as resp:
            assert resp.read().startswith(b'MAMEX.put("meta",')


def test_bad_arguments(tmp_path, demo_root):
    real = sorted((demo_root / "data_256").glob("*.jpg"))[:4]
    store = _synthetic_store(tmp_path / "a", [p.name for p in real], ["a", "b"] * 2, [str(p) for p in real])
    other = _synthetic_store(tmp_path / "b", ["other1.jpg", "other2.jpg"], ["a", "b"], ["", ""])
    with pytest.raises(ConfigError, match="k=0"):
        build_site(store, tmp_path / "s", k=0)
    with pytest.raises(DataError, match=r"--compare .*only 0 of 4 images"):
        build_site(store, tmp_path / "s", k=2, compare=other, thumbnails=False)
    assert not (tmp_path / "s").exists()
    assert explore.main([str(tmp_path / "missing_store"), "--out", str(tmp_path / "s")]) == 2


def test_approximate_neighbours_and_sampled_distribution_in_chromium(tmp_path, monkeypatch):
    """--neighbours approx: recall measured and shown; above DIST_SAMPLE items the page's distribution is sampled."""
    from mame_transfer.explorer import site as site_mod
    from mame_transfer.knn import ApproxParams

    n = 900
    rng = np.random.default_rng(5)
    labels = [f"c{i}" for i in rng.integers(0, 6, n)]
    store = _synthetic_store(tmp_path / "store", [f"img{i}.jpg" for i in range(n)], labels, [""] * n, dim=48)
    monkeypatch.setattr(site_mod, "DIST_SAMPLE", 500)
    monkeypatch.setattr(site_mod, "DIST_CHUNK", 128)
    with pytest.warns(ExplorerWarning):  # no image files: placeholders
        site = build_site(store, tmp_path / "site", k=10, neighbours="approx", chunk=256,
                          params=ApproxParams(probes=40, candidates=40))  # 48-d rows: the index uses them all
    assert site.method == "approx" and site.recall["k"] == 10 and site.recall["recall"] >= 0.95
    build = read_json(tmp_path / "site" / "build.json", ["neighbours", "recall"])
    assert build["neighbours"] == "approx" and build["recall"] == site.recall
    assert len(list((tmp_path / "site" / "data" / "dist").glob("*.js"))) == 4  # 500 sampled items in chunks of 128
    with open_page(tmp_path / "site" / "index.html") as view:
        page = view.page
        page.wait_for_selector("body[data-ready='1']")
        page.click("#grid figure.thumb >> nth=3")
        page.wait_for_selector("#neighbours[data-count='10']")
        assert f"recall@10 {site.recall['recall']:.3f} against exact search on" in page.inner_text("#nbr-summary")
        page.wait_for_selector("#hist[data-rendered='3']")
        assert page.get_attribute("#hist", "data-items") == "80"
        caption = page.inner_text("#hist-caption")
        assert "a uniform sample of 500 of the 900 images" in caption
        page.click("button[data-tab='about']")
        about = page.inner_text("#about-list")
        assert "approximate: inverted file" in about and "uniform sample of 500 of the 900 images" in about
        view.assert_clean()
