"""Shared fixtures: seeds, the shared data folder, tiny datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MAME_SHARED", REPO.parent / "shared")).resolve()
MAME_METADATA = SHARED / "data" / "mame_metadata"
LOUVRE = SHARED / "data" / "louvre_genre"
KERAS_HOME = SHARED / "keras_home"


def require(path: Path, what: str) -> Path:
    """Skip the calling test with a clear reason when a shared resource is absent."""
    if not path.exists():
        pytest.skip(f"{what} not found at {path} (set MAME_SHARED to the shared/ folder)")
    return path


@pytest.fixture(autouse=True)
def _seed():
    import keras

    keras.utils.set_random_seed(0)
    yield
    keras.backend.clear_session()


@pytest.fixture
def mame_metadata() -> Path:
    return require(MAME_METADATA / "MAMe_dataset.csv", "the real MAMe metadata").parent


@pytest.fixture
def louvre() -> Path:
    return require(LOUVRE, "the Louvre painting set")


@pytest.fixture
def keras_home(monkeypatch) -> Path:
    """Point Keras's download cache at the shared folder holding real MobileNet ImageNet weights."""
    home = require(KERAS_HOME / "models" / "mobilenet_2_5_224_tf_no_top.h5", "offline MobileNet weights").parents[1]
    monkeypatch.setenv("KERAS_HOME", str(home))
    return home
