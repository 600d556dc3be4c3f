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
