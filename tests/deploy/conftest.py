"""Fixtures of the deploy tests: a finished variable-shape run (aspect kept, pixel budget), shared read-only."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def variable_run(two_class_set, tmp_path_factory) -> Path:
    """A 1-epoch ``test_tiny`` run with ``--shape variable --pixels 1024`` on the two-class set."""
    from mame_transfer import finetune

    run = tmp_path_factory.mktemp("runs") / "variable"
    assert finetune.main(["--data", str(two_class_set), "--arch", "test_tiny", "--weights", "none", "--shape",
                          "variable", "--pixels", "1024", "--head", "8", "--epochs", "1", "--batch-size", "4",
                          "--out", str(run), "--verbose", "0"]) == 0
    return run
