"""deploy.inputs: image files, folders (recursive) and lists of paths expanded for predict; their errors."""

from __future__ import annotations

import pytest
from tiny_sets import jpeg_bytes

from mame_transfer.core.errors import DataError
from mame_transfer.deploy.inputs import collect_inputs


def test_files_folders_and_lists_in_order(tmp_path, monkeypatch):
    scans = tmp_path / "scans"
    (scans / "b" / "deep").mkdir(parents=True)
    (scans / ".hidden").mkdir()
    for name in ("z.jpg", "a.PNG", "b/deep/m.tif", "b/c.webp", ".hidden/x.jpg", "._a.jpg", "notes.txt"):
        (scans / name).write_bytes(jpeg_bytes(8, 8))
    single = tmp_path / "single.jpeg"
    single.write_bytes(jpeg_bytes(8, 8))
    listed = tmp_path / "lists" / "list.csv"
    listed.parent.mkdir()
    listed.write_text("id,Path,notes\n1,../single.jpeg,x\n2,/abs/elsewhere.jpg,\n3,,empty rows skipped\n")
    text = tmp_path / "lists" / "more.txt"
    text.write_text("# scanned on Monday\n\nrel/one.jpg\n  /abs/two.jpg  \n")
    got = collect_inputs([scans, single, listed, text])
    assert got == [
        str(scans / "a.PNG"), str(scans / "z.jpg"), str(scans / "b" / "c.webp"), str(scans / "b" / "deep" / "m.tif"),
        str(single),
        str(tmp_path / "lists" / "../single.jpeg"), "/abs/elsewhere.jpg",
        str(tmp_path / "lists" / "rel/one.jpg"), "/abs/two.jpg",
    ]
    monkeypatch.chdir(tmp_path / "lists")
    assert collect_inputs(["more.txt"]) == ["rel/one.jpg", "/abs/two.jpg"]  # relative to the current folder here
    assert collect_inputs([str(single), str(single)]) == [str(single)] * 2  # what is asked twice is labelled twice


def test_input_errors_name_the_input(tmp_path):
    with pytest.raises(DataError, match=r"input .*typo.jpg does not exist"):
        collect_inputs([tmp_path / "typo.jpg"])
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("no images")
    with pytest.raises(DataError, match=r"empty: no images \(\.jpg/\.jpeg/\.png/\.tif/\.tiff/\.webp\)"):
        collect_inputs([tmp_path / "empty"])
    no_column = tmp_path / "labels.csv"
    no_column.write_text("name,label\na.jpg,x\n")
    with pytest.raises(DataError, match=r"labels.csv: no path column; name the column .*path, file.*\(found: name, label\)"):
        collect_inputs([no_column])
    blank = tmp_path / "blank.txt"
    blank.write_text("# nothing\n\n")
    with pytest.raises(DataError, match="blank.txt lists no image paths"):
        collect_inputs([blank])
    with pytest.raises(DataError, match="no input given"):
        collect_inputs([])
