"""core.cli: the one runner behind every command's ``main()``; every command's help, exit codes and Ctrl-C hint."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import pytest

from mame_transfer.core import cli
from mame_transfer.core.errors import (
    ConfigError,
    DataError,
    MameTransferError,
    WeightsError,
)

PACKAGE = Path(__file__).resolve().parents[2] / "mame_transfer"
COMMANDS = ["data", "finetune", "evaluate", "tune", "features", "classify", "task_similarity", "analyze", "report",
            "explore", "prepare", "ensemble", "predict", "export"]


def _command(name: str):
    return importlib.import_module(f"mame_transfer.{name}")


def _main(name: str, argv: list[str]) -> int:
    """``main(argv)`` of a command; a KeyboardInterrupt escaping it would stop the whole test session."""
    try:
        return _command(name).main(argv)
    except KeyboardInterrupt:
        pytest.fail(f"{name}: KeyboardInterrupt escaped main() instead of exit status 130")


def _no_traceback(err: str) -> None:
    assert "Traceback" not in err, err


# --------------------------------------------------------------------------------------------- the runner


def test_command_list_matches_the_package():
    """Every top-level module with a ``main`` is a command and is covered below (a new one must be added here)."""
    found = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    assert found == sorted(COMMANDS)


def test_parser_names_the_module():
    p = cli.parser("x_cmd", "What it does.")
    assert p.prog == "python -m mame_transfer.x_cmd" and p.description == "What it does."
    assert "usage: python -m mame_transfer.x_cmd" in p.format_usage()


def test_run_exit_codes_and_messages(capsys):
    p = cli.parser("x_cmd", "test")
    p.add_argument("value")
    seen = []
    assert cli.run(p, lambda a: seen.append(a.value), ["v1"]) == cli.EXIT_OK == 0
    assert seen == ["v1"]
    assert cli.run(p, lambda a: 3, ["v"]) == 3  # the command's own status is passed through
    assert cli.run(argparse.Namespace(value="given"), lambda a: seen.append(a.value), ["ignored"]) == 0
    assert seen[-1] == "given"  # a Namespace is used as is, argv is not parsed
    capsys.readouterr()

    for exc in (ConfigError("bad option"), DataError("bad option"), WeightsError("bad option"),
                MameTransferError("bad option")):
        def fail(a, exc=exc):
            raise exc

        assert cli.run(p, fail, ["v"]) == cli.EXIT_USER_ERROR == 2
        out, err = capsys.readouterr()
        assert err == "error: bad option\n" and out == "", type(exc).__name__

    def interrupted(a):
        raise KeyboardInterrupt

    assert cli.run(p, interrupted, ["v"], on_interrupt="rerun to resume") == cli.EXIT_INTERRUPTED == 130
    assert capsys.readouterr().err == "\ninterrupted: rerun to resume\n"
    assert cli.run(p, interrupted, ["v"]) == 130
    assert capsys.readouterr().err == "\ninterrupted\n"


def test_run_keeps_the_traceback_of_a_bug_and_argparse_errors():
    p = cli.parser("x_cmd", "test")
    p.add_argument("value")

    def bug(a):
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        cli.run(p, bug, ["v"])
    with pytest.raises(SystemExit) as info:
        cli.run(p, lambda a: None, ["v", "--no-such-flag"])
    assert info.value.code == 2


def test_choices_list():
    allowed = ("logreg", "knn", "linear_svc")
    assert cli.choices_list(" logreg, knn ,,", allowed, "classifier") == ["logreg", "knn"]
    assert cli.choices_list("", allowed, "classifier") == [] and cli.choices_list(None, allowed, "classifier") == []
    with pytest.raises(ConfigError, match=r"unknown classifier \['svm', 'rf'\]\. Choose from: logreg, knn, linear_svc"):
        cli.choices_list("knn,svm,rf", allowed, "classifier")


# --------------------------------------------------------------------------------------------- every command


@pytest.mark.parametrize("name", COMMANDS)
def test_help_exits_0_with_usage(name, capsys):
    with pytest.raises(SystemExit) as info:
        _command(name).main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m mame_transfer.{name}"), out[:200]


def _missing_path_argv(name: str, missing: Path, tmp: Path) -> list[str]:
    m = str(missing)
    return {
        "data": ["check", m],
        "finetune": ["--config", str(missing / "run.yaml")],
        "evaluate": [m],
        "tune": ["--config", str(missing / "search.yaml")],
        "features": ["--data", m, "--arch", "test_tiny", "--weights", "none", "--out", str(tmp / "store")],
        "classify": [m, "--out", str(tmp / "out")],
        "task_similarity": [m],
        "analyze": ["project", m],
        "report": [m],
        "explore": [m, "--out", str(tmp / "site")],
        "prepare": ["--data", m, "--out", str(tmp / "prepared")],
        "ensemble": [m, m, "--out", str(tmp / "ensemble")],
        "predict": [m, str(tmp), "--out", str(tmp / "labels.csv")],
        "export": [m, "--out", str(tmp / "exported")],
    }[name]


@pytest.mark.parametrize("name", COMMANDS)
def test_missing_path_is_exit_2_with_one_error_line(name, tmp_path, capsys):
    missing = tmp_path / "no_such_thing"
    assert _main(name, _missing_path_argv(name, missing, tmp_path)) == 2
    out, err = capsys.readouterr()
    _no_traceback(err)
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[0] == errors[0], err
    assert "no_such_thing" in err  # the message names what is missing
    assert not (tmp_path / "store").exists() and not (tmp_path / "site").exists()
    assert not (tmp_path / "labels.csv").exists() and not (tmp_path / "exported").exists()


# command -> (argv, the library function to interrupt as the command sees it, hint printed after Ctrl-C)
INTERRUPT = {
    "data": (["check", "DATA"], "mame_transfer.data.load_dataset", None),
    "finetune": (["--demo", "--arch", "test_tiny"], "mame_transfer.training.trainer.train",
                 "rerun the same command to resume"),
    "evaluate": (["RUN"], "mame_transfer.training.evaluation.evaluate_run", None),
    "tune": (["--config", "search.yaml"], "mame_transfer.tune.resolve_search", "rerun with --resume"),
    "features": (["--data", "DATA", "--arch", "test_tiny", "--out", "STORE"],
                 "mame_transfer.datasets.layouts.load_dataset", "rerun the same command to resume"),
    "classify": (["STORE", "--out", "OUT"], "mame_transfer.classifiers.comparison.source_from_store", None),
    "task_similarity": (["STORE"], "mame_transfer.classifiers.similarity.analyse", None),
    "analyze": (["project", "STORE"], "mame_transfer.analysis.projections.run_project", None),
    "report": (["RUN"], "mame_transfer.analysis.report.build_report", None),
    "explore": (["STORE", "--out", "SITE"], "mame_transfer.explorer.site.build_site", None),
    "prepare": (["--data", "DATA", "--out", "OUT"], "mame_transfer.datasets.prepare.prepare",
                "rerun the same command to resume"),
    "ensemble": (["RUN1", "RUN2", "--out", "OUT"], "mame_transfer.training.evaluation.ensemble_runs", None),
    "predict": (["RUN", "IMAGES", "--out", "OUT"], "mame_transfer.deploy.classifier.check_run",
                "rerun the same command to resume"),
    "export": (["RUN", "--out", "OUT"], "mame_transfer.deploy.export.export_run", None),
}


def test_interrupt_table_covers_every_command():
    assert sorted(INTERRUPT) == sorted(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_ctrl_c_is_exit_130_with_the_resume_hint(name, monkeypatch, capsys):
    argv, target, hint = INTERRUPT[name]
    calls = []

    def interrupt(*args, **kwargs):
        calls.append(args)
        raise KeyboardInterrupt

    _command(name)  # imported first, so that the patch below is what the command finds
    monkeypatch.setattr(target, interrupt)
    assert _main(name, argv) == 130
    assert calls, f"{target} was not called"
    err = capsys.readouterr().err
    _no_traceback(err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("interrupted"), err
    if hint:
        assert lines[-1].startswith(f"interrupted: {hint}"), err
