"""deploy.labels and ``python -m mame_transfer.predict``: the CSV appears only when complete, resumes, errors per row."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
from file_checks import read_csv

from mame_transfer import predict
from mame_transfer.deploy import labels
from mame_transfer.deploy.classifier import Classifier, load_classifier, result_columns
from mame_transfer.deploy.inputs import read_path_list


def _val_paths(run) -> list[str]:
    splits = pd.read_csv(run / "splits.csv")
    return splits.loc[splits["subset"] == "val", "file"].tolist()


def test_predict_command_writes_the_csv(tiny_run, tmp_path, capsys):
    folder = tmp_path / "new_scans" / "box1"  # unlabelled images, in a folder of their own
    folder.mkdir(parents=True)
    val = _val_paths(tiny_run)
    for i, p in enumerate(val[:4]):
        shutil.copy(p, folder / f"scan_{i}.jpg")
    (folder / "scan_9.jpg").write_bytes(b"\xff\xd8\xff not a whole jpeg")
    listed = tmp_path / "list.csv"
    pd.DataFrame({"path": val[4:10] + [str(tmp_path / "gone.jpg")]}).to_csv(listed, index=False)
    out = tmp_path / "out" / "labels.csv"
    assert predict.main([str(tiny_run), str(tmp_path / "new_scans"), val[10], str(listed), "--out", str(out),
                         "--top-k", "2", "--verbose", "0"]) == 0
    printed = capsys.readouterr().out
    assert "labelled 11 of 13 images; 2 unreadable (reasons in the errors column)" in printed
    frame = read_csv(out, columns=result_columns(2), rows=13, keep_default_na=False)
    assert frame["path"].tolist() == ([str(folder / f"scan_{i}.jpg") for i in (0, 1, 2, 3, 9)] + [val[10]]
                                      + val[4:10] + [str(tmp_path / "gone.jpg")])
    assert frame["errors"][4].startswith("not an image") and frame["errors"][12] == "file not found"
    saved = pd.read_csv(tiny_run / "predictions_val.csv").set_index("image")["predicted"]
    expected = [saved[p.split("data_256/")[1]] for p in val[:4] + [val[10]] + val[4:10]]
    got = frame.loc[frame["errors"] == "", "prediction"].tolist()
    assert got == expected
    assert not list(out.parent.glob("*.partial*"))
    assert predict.main([str(tiny_run), str(folder), "--out", str(out), "--verbose", "0"]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert predict.main([str(tiny_run), str(folder), "--out", str(out), "--overwrite", "--verbose", "0"]) == 0
    assert len(pd.read_csv(out)) == 5
    assert predict.main([str(tiny_run), str(folder), "--out", str(out), "--top-k", "9", "--overwrite"]) == 2
    assert "top_k must be between 1 and the number of classes (6)" in capsys.readouterr().err


def test_interrupted_predict_resumes_and_never_looks_complete(tiny_run, tmp_path, monkeypatch, capsys):
    paths = _val_paths(tiny_run)
    whole = tmp_path / "whole.csv"
    assert predict.main([str(tiny_run), *paths, "--out", str(whole), "--top-k", "3", "--batch-size", "8",
                         "--verbose", "0"]) == 0
    out = tmp_path / "labels.csv"
    real = Classifier.result_row
    calls = []

    def dying(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 21:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Classifier, "result_row", dying)
    assert predict.main([str(tiny_run), *paths, "--out", str(out), "--top-k", "3", "--batch-size", "8",
                         "--verbose", "0"]) == 130
    assert "interrupted: rerun the same command to resume" in capsys.readouterr().err
    partial, key = labels.partial_files(out)
    assert not out.exists() and partial.is_file() and key.is_file()
    written = partial.read_text().splitlines()
    assert 1 < len(written) <= 21
    with open(partial, "a") as fh:  # a kill -9 in the middle of a row
        fh.write(paths[len(written) - 1][:10])
    monkeypatch.setattr(Classifier, "result_row", real)
    assert predict.main([str(tiny_run), *paths, "--out", str(out), "--top-k", "3", "--batch-size", "8",
                         "--verbose", "0"]) == 0
    assert f"resumed after row {len(written) - 1}" in capsys.readouterr().out
    assert out.read_text() == whole.read_text()
    assert not partial.exists() and not key.exists()

    # a partial file of other work (other options) is started over, not continued
    monkeypatch.setattr(Classifier, "result_row", dying)
    calls.clear()
    assert predict.main([str(tiny_run), *paths, "--out", str(out), "--overwrite", "--verbose", "0"]) == 130
    monkeypatch.setattr(Classifier, "result_row", real)
    assert predict.main([str(tiny_run), *paths, "--out", str(out), "--top-k", "2", "--overwrite",
                         "--verbose", "0"]) == 0
    assert "resumed" not in capsys.readouterr().out
    assert list(pd.read_csv(out).columns) == result_columns(2) and len(pd.read_csv(out)) == len(paths)


def test_a_hundred_thousand_paths_stream(tiny_run, tmp_path):
    """100,000 listed paths (all missing here, so the test stays fast) stream through to 100,000 rows."""
    listed = tmp_path / "many.txt"
    listed.write_text("".join(f"box{i // 1000}/scan_{i}.jpg\n" for i in range(100_000)))
    out = tmp_path / "many.csv"
    summary = labels.write_predictions(load_classifier(tiny_run), read_path_list(listed), out, verbose=0)
    assert summary["images"] == summary["unreadable"] == 100_000
    frame = pd.read_csv(out, keep_default_na=False)
    assert len(frame) == 100_000 and (frame["errors"] == "file not found").all()
    assert frame["path"].iloc[-1] == str(tmp_path / "box99" / "scan_99999.jpg")


def _bad_input(tmp_path, image: str, bad: str) -> tuple[list[str], str]:
    """(the INPUT arguments, the message expected) of one kind of bad input."""
    if bad == "missing_input":
        return [image, str(tmp_path / "typo.jpg")], "input " + str(tmp_path / "typo.jpg") + " does not exist"
    if bad == "empty_folder":
        (tmp_path / "empty").mkdir()
        return [str(tmp_path / "empty")], "empty: no images (.jpg/.jpeg/.png/.tif/.tiff/.webp)"
    if bad == "csv_without_path_column":
        (tmp_path / "list.csv").write_text("name\nx.jpg\n")
        return [str(tmp_path / "list.csv")], "list.csv: no path column"
    raise ValueError(bad)


@pytest.mark.parametrize("bad", ["missing_input", "empty_folder", "csv_without_path_column", "out_is_a_folder",
                                 "missing_run"])
def test_bad_input_is_one_error_line_and_no_output(tiny_run, tmp_path, capsys, bad):
    image = _val_paths(tiny_run)[0]
    out = tmp_path / "labels.csv"
    if bad == "out_is_a_folder":
        argv, expected = [str(tiny_run), image, "--out", str(tmp_path)], "is a folder; give the CSV file to write"
    elif bad == "missing_run":
        argv = [str(tmp_path / "runs" / "nope"), image, "--out", str(out)]
        expected = "nope is not a finished run directory: it does not exist"
    else:
        inputs, expected = _bad_input(tmp_path, image, bad)
        argv = [str(tiny_run), *inputs, "--out", str(out)]
    assert predict.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and expected in err, err
    assert not out.exists() and not list(tmp_path.glob("labels.csv.partial*"))
