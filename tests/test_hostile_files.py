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
