"""core.fileio: a finished work folder takes its final name, replacing an earlier output only once it is whole."""

from __future__ import annotations

from mame_transfer.core.fileio import replace_folder, write_text


def test_replace_folder_new_and_existing(tmp_path):
    work, final = tmp_path / "run.partial", tmp_path / "run"
    write_text(work / "a.txt", "first")
    assert replace_folder(work, final) == final
    assert (final / "a.txt").read_text() == "first" and not work.exists()

    write_text(work / "b.txt", "second")  # a new complete output replaces the earlier one whole
    replace_folder(work, final)
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no work folder, no set-aside copy left
