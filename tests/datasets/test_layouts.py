"""datasets.layouts: which layout a path holds, load_dataset, and ``python -m mame_transfer.data check``."""

from __future__ import annotations

import pytest
from tiny_sets import make_mame

from mame_transfer import data
from mame_transfer.core.errors import DataError
from mame_transfer.core.errors import DataError as _DataError
from mame_transfer.datasets.layouts import detect_layout, load_dataset


def test_detect_layout_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        detect_layout(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"neither dataset layout \(it holds: notes.txt\).*MAMe layout.*class-per-folder"):
        detect_layout(tmp_path)
    (tmp_path / "data_256").mkdir()  # a MAMe release without its CSV is not taken for one class folder
    with pytest.raises(DataError, match=r"neither dataset layout \(it holds: data_256/, notes.txt\)"):
        detect_layout(tmp_path)
    (tmp_path / "data_256").rmdir()
    (tmp_path / "cats").mkdir()
    assert detect_layout(tmp_path) == "flat"
    with pytest.raises(DataError, match=r"at least 2 class folders; found 'cats'"):
        load_dataset(tmp_path)
    assert issubclass(DataError, _DataError)


def test_cli_check(tmp_path, capsys, mame_metadata):
    root = make_mame(tmp_path / "set")
    assert data.main(["check", str(root)]) == 0
    out = capsys.readouterr().out
    assert "21 images, 3 classes" in out and "Woven fabric" in out
    (root / "data_256" / "img001.jpg").unlink()
    assert data.main(["check", str(root)]) == 2  # a user error: exit 2, like every command
    assert "img001.jpg" in capsys.readouterr().err
    assert data.main(["check", str(mame_metadata), "--no-files", "--toy"]) == 0
    assert "3480 images, 29 classes" in capsys.readouterr().out
    assert data.main(["check", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err
