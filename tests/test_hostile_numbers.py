"""Hostile numbers (issue 12, case 6 and the weak cases on sizes and counts): every non-finite or out-of-range value
is refused when the flags are parsed, and a diverging run stops, incomplete, with a message."""

from __future__ import annotations

import pytest

from mame_transfer import analyze, evaluate, features, finetune, tune

TINY = ["--demo", "--arch", "test_tiny", "--weights", "none", "--image-size", "32", "--head", "16",
        "--batch-size", "16", "--verbose", "0"]


def _refused(capsys, code: int, *needles: str) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize("flag,value", [("--lr", "nan"), ("--lr", "inf"), ("--l2", "nan"), ("--lr=-inf", None),
                                        ("--dropout", "nan"), ("--label-smoothing", "inf"),
                                        ("--weight-decay", "nan")])
def test_non_finite_numbers_are_refused_before_anything_runs(flag, value, tmp_path, capsys, demo_root):
    """Issue 12, case 6: ``--lr nan`` trained to NaN and saved a "complete" run; ``--l2 nan`` gave a traceback."""
    out = tmp_path / "run"
    given = [flag] if value is None else [flag, value]
    _refused(capsys, finetune.main(TINY + ["--epochs", "1", *given, "--out", str(out)]),
             f"{flag[2:].split('=')[0].replace('-', '_')} must be a finite number")
    assert not out.exists() and not out.with_name("run.partial").exists()


def test_non_finite_numbers_in_a_yaml_config_are_refused(tmp_path, capsys, demo_root):
    config = tmp_path / "c.yaml"
    config.write_text("lr: .nan\n")
    _refused(capsys, finetune.main(TINY + ["--config", str(config), "--out", str(tmp_path / "r")]),
             "lr must be a finite number")
    _refused(capsys, finetune.main(TINY + ["--block-lr", "head:nan", "--out", str(tmp_path / "r")]),
             "--block-lr: learning rates must be finite")


@pytest.mark.parametrize("flag,value,needle", [("--image-size", "0", "image_size must be a positive integer"),
                                               ("--steps-per-epoch", "0", "steps_per_epoch must be a positive"),
                                               ("--batch-size", "0", "batch_size must be positive"),
                                               ("--plateau-factor", "1.5", "plateau_factor must be in (0, 1)")])
def test_zero_sizes_and_counts_are_refused(flag, value, needle, tmp_path, capsys, demo_root):
    """``--image-size 0`` silently meant the default size and ``--steps-per-epoch 0`` a full epoch."""
    _refused(capsys, finetune.main(TINY + ["--epochs", "1", flag, value, "--out", str(tmp_path / "r")]), needle)


@pytest.mark.parametrize("main,argv", [
    (features.main, ["--demo", "--arch", "test_tiny", "--alpha", "nan", "--out", "X"]),
    (features.main, ["--demo", "--arch", "test_tiny", "--image-size", "0", "--out", "X"]),
    (evaluate.main, ["RUN", "--patch-power", "inf"]),
    (evaluate.main, ["RUN", "--batch-size", "0"]),
    (analyze.main, ["featvis", "--a", "random:test_tiny", "--lr", "nan"]),
    (analyze.main, ["project", "STORE", "--per-class", "-1"]),
    (tune.main, ["--config", "C.yaml", "--image-size", "0"]),
])
def test_every_command_refuses_non_finite_and_zero_flags_at_parse_time(main, argv, capsys):
    with pytest.raises(SystemExit) as exc:  # argparse: exit 2 with usage, before anything is read
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "is not a finite number" in err or "must be at least" in err, err


def test_a_diverging_run_stops_and_stays_incomplete(tmp_path, capsys, demo_root):
    """A finite but absurd learning rate: the loss becomes inf/NaN; training stops there, nothing is "complete"."""
    out = tmp_path / "run"
    err = _refused(capsys, finetune.main(TINY + ["--optimizer", "sgd", "--lr", "1e30", "--epochs", "3",
                                                 "--steps-per-epoch", "5", "--out", str(out)]),
                   "training diverged: the loss is", "--overwrite")
    assert "epoch 1" in err
    assert not out.exists() and out.with_name("run.partial").is_dir()


def test_an_interrupted_run_continues_the_same_random_stream(tmp_path, monkeypatch, demo_root):
    """Data order, augmentation and dropout are seeded per epoch: a run interrupted after epoch 1 and resumed has the
    history of an uninterrupted one (with tf.data's own reshuffling it replayed epoch 1's order and augmentation)."""
    import numpy as np
    import pandas as pd

    from mame_transfer.training import runs

    argv = TINY + ["--lr", "3e-3", "--epochs", "3", "--early-stopping", "0", "--steps-per-epoch", "6",
                   "--dropout", "0.5"]
    assert finetune.main(argv + ["--out", str(tmp_path / "whole")]) == 0
    real_save = runs.ResumeState.save

    def save_then_die(self, model, epoch, *args, **kwargs):
        real_save(self, model, epoch, *args, **kwargs)
        if epoch == 1:
            raise KeyboardInterrupt  # as if killed right after the epoch's state was written

    monkeypatch.setattr(runs.ResumeState, "save", save_then_die)
    assert finetune.main(argv + ["--out", str(tmp_path / "cut")]) == 130
    monkeypatch.setattr(runs.ResumeState, "save", real_save)
    assert finetune.main(argv + ["--out", str(tmp_path / "cut")]) == 0
    assert "resuming after epoch 1" in (tmp_path / "cut" / "run.log").read_text()
    whole, cut = pd.read_csv(tmp_path / "whole" / "history.csv"), pd.read_csv(tmp_path / "cut" / "history.csv")
    cols = ["loss", "accuracy", "val_loss", "val_accuracy"]
    np.testing.assert_allclose(cut[cols].to_numpy(), whole[cols].to_numpy(), rtol=1e-4, atol=1e-5)
