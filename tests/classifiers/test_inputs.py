"""classifiers.inputs: the numeric metadata columns (log sizes, aspect ratio, museum one-hot)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mame_transfer.classifiers.inputs import metadata_features
from mame_transfer.core.errors import DataError


def test_metadata_features():
    table = pd.DataFrame(
        {
            "image": ["a.jpg", "b.jpg", "c.jpg"],
            "width": [100.0, 200.0, 50.0],
            "height": [100.0, 100.0, 200.0],
            "product_size": [1e4, 2e4, 1e4],
            "aspect_ratio": [1.0, 2.0, 0.25],
            "museum": ["Met", "LACMA", "Met"],
        }
    )
    matrix, names = metadata_features(table)
    assert names == ["width", "height", "product_size", "aspect_ratio", "museum=LACMA", "museum=Met"]
    assert matrix.dtype == np.float32 and matrix.shape == (3, 6)
    np.testing.assert_allclose(matrix[:, 0], np.log1p([100, 200, 50]), rtol=1e-6)
    np.testing.assert_allclose(matrix[:, 3], [1.0, 2.0, 0.25])
    np.testing.assert_array_equal(matrix[:, 4:], [[0, 1], [1, 0], [0, 1]])
    # val/test use the train museums: same columns, unknown museum -> zeros
    other = table.assign(museum=["Cleveland", "Met", "Met"])
    matrix2, names2 = metadata_features(other, museums=["LACMA", "Met"])
    assert names2 == names
    np.testing.assert_array_equal(matrix2[:, 4:], [[0, 0], [0, 1], [0, 1]])
    with pytest.raises(DataError, match="b.jpg"):
        metadata_features(table.assign(width=[1.0, np.nan, 2.0]))
