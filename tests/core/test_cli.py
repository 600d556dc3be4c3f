"""core.cli: the one runner behind every command's ``main()``; every command's help, exit codes and Ctrl-C hint."""

from __future__ import annotations

import argparse
import importlib
import sys
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


def test_parser_names_the_module_or_the_console_script(monkeypatch):
    p = cli.parser("x_cmd", "What it does.")
    assert p.prog == "python -m mame_transfer.x_cmd" and p.description == "What it does."
    assert "usage: python -m mame_transfer.x_cmd" in p.format_usage()
    # started as a console script (setup.cfg: mame-<command>, dashes for underscores): its own name
    monkeypatch.setattr(sys, "argv", ["/venv/bin/mame-x-cmd", "--help"])
    assert cli.parser("x_cmd", "d").prog == "mame-x-cmd"
    assert cli.parser("x_cmd sub", "d").prog == "mame-x-cmd sub"
    monkeypatch.setattr(sys, "argv", ["C:\\venv\\Scripts\\mame-x-cmd.exe"])
    assert cli.parser("x_cmd", "d").prog == "mame-x-cmd"
    monkeypatch.setattr(sys, "argv", ["/venv/bin/mame-other"])  # another script building this parser: the module
    assert cli.parser("x_cmd", "d").prog == "python -m mame_transfer.x_cmd"
    # a docstring's first line loses its reST markup and its python -m example
    assert cli.parser("x", "Compare things: ``python -m mame_transfer.x STORE``.").description == "Compare things."
    assert cli.parser("x", "Close? ``python -m mame_transfer.x S``.").description == "Close?"


def test_list_action_takes_commas_and_spaces(tmp_path):
    p = cli.parser("x", "t")
    p.add_argument("--layers", action=cli.ListAction)
    p.add_argument("--channels", action=cli.ListAction, item_type=int, default=[0, 1])
    p.add_argument("--images", action=cli.ListAction, keep_paths=True)
    odd = tmp_path / "a,b.jpg"
    odd.write_bytes(b"")
    a = p.parse_args(["--layers", "c1,c2", "c3", "--layers", "c4", "--images", str(odd), "x.jpg,y.jpg"])
    assert a.layers == ["c1", "c2", "c3", "c4"] and a.channels == [0, 1]
    assert a.images == [str(odd), "x.jpg", "y.jpg"]  # an existing file whose name holds a comma stays whole
    assert p.parse_args(["--channels", "5,6", "7"]).channels == [5, 6, 7]  # the default is replaced, not extended
    with pytest.raises(SystemExit):
        p.parse_args(["--channels", "1,x"])


# renamed flags: (command, argv with the former spellings, expected values) -- docs/options.md lists them
RENAMED = [
    ("finetune", ["--cache", "--cache-dtype", "float16"], {"image_cache": True, "prefix_cache_dtype": "float16"}),
    ("features", ["--model", "R", "--out", "S"], {"model": "R", "run": None}),
    ("analyze", ["featvis", "--a", "A", "--jitter", "3"], {"jitter_px": 3}),
    ("prepare", ["--data", "D", "--out", "O", "--no-draft", "--workers", "3", "--quiet"],
     {"draft": False, "jobs": 3, "verbose": 0}),
]


@pytest.mark.parametrize("name, argv, expected", RENAMED, ids=[r[0] for r in RENAMED])
def test_former_flag_spellings_still_work(name, argv, expected):
    args = _command(name).build_parser().parse_args(argv)
    assert {k: getattr(args, k) for k in expected} == expected
    table = (PACKAGE.parent / "docs" / "options.md").read_text().split("## Renamed flags")[1]
    for flag in (a for a in argv if a.startswith("--") and a not in ("--out", "--data", "--a")):
        assert f"`{flag}" in table, f"{flag} is not in the renamed-flags table of docs/options.md"


def test_list_archs_shows_the_product_backbones_only(capsys):
    assert _command("finetune").main(["--list-archs"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == ["vgg16", "vgg19", "resnet50", "efficientnetb0", "efficientnetb3", "efficientnetv2b0",
                     "efficientnetv2b3", "efficientnetv2s", "convnext_tiny", "convnext_small", "mobilenet"]  # no test_tiny


def test_hidden_alias_and_help_formatter():
    p = cli.parser("x", "t")
    p.add_argument("--jitter-px", type=int, default=4, help="shift in pixels")
    cli.hidden_alias(p, "--jitter", dest="jitter_px", type=int)
    p.add_argument("--size", type=int, help="side (default: the backbone's)")
    p.add_argument("--mode", choices=("a", "b"), default="a", metavar="MODE", help="the mode")
    assert p.parse_args(["--jitter", "7"]).jitter_px == 7 and p.parse_args([]).jitter_px == 4
    text = p.format_help()
    assert "--jitter " not in text and "--jitter-px JITTER_PX" in text
    assert "shift in pixels (default: 4)" in text
    assert "side (default: the backbone's)\n" in text  # the help's own default, not a second "(default: None)"
    assert "the mode (choices: a, b) (default: a)" in text


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
def test_help_exits_0_with_usage(name, capsys, monkeypatch):
    with pytest.raises(SystemExit) as info:
        _command(name).main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m mame_transfer.{name}"), out[:200]
    script = "mame-" + name.replace("_", "-")  # as installed by setup.cfg's console_scripts
    monkeypatch.setattr(sys, "argv", [f"/venv/bin/{script}", "--help"])
    with pytest.raises(SystemExit):
        _command(name).main(["--help"])
    assert capsys.readouterr().out.startswith(f"usage: {script}")


def _parsers(name: str):
    """Every parser of a command: its own, its sub-commands' (and features' projector parser)."""
    module = _command(name)
    todo = [module.build_parser()] + ([module.build_projector_parser()] if name == "features" else [])
    while todo:
        parser = todo.pop()
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    assert choice.help, f"{parser.prog} {choice.dest}: sub-command without help"
                todo.extend(action.choices.values())


@pytest.mark.parametrize("name", COMMANDS)
def test_every_flag_has_help_choices_and_one_default(name):
    """Every flag says what it does, lists its choices, prints its default at most once and never as None; every
    positional reads in capitals."""
    for parser in _parsers(name):
        formatter = parser._get_formatter()
        visible = {a.dest for a in parser._actions if a.help != argparse.SUPPRESS}
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            where = f"{parser.prog} {'/'.join(action.option_strings) or action.dest}"
            if action.help == argparse.SUPPRESS:  # a renamed flag's former spelling, nothing else is hidden
                assert getattr(action, "alias_of", None) in visible, f"{where}: hidden but not a visible flag's alias"
                continue
            assert action.help and action.help.strip(), f"{where}: no help"
            if not action.option_strings and not action.choices:  # RUN, STORE...: placeholders read in capitals
                assert action.metavar and action.metavar.isupper(), f"{where}: positional shown as {action.metavar!r}"
            text = formatter._format_action_invocation(action) + " " + formatter._expand_help(action)
            for choice in action.choices or ():
                assert str(choice) in text, f"{where}: choice {choice!r} not listed in {text!r}"
            assert text.count("(default") <= 1 and "(default: None)" not in text, f"{where}: {text!r}"


# every long command (and analyze sub-command) -> the least it needs besides --verbose and --jobs
LONG_COMMANDS = {"finetune": [], "evaluate": ["RUN"], "tune": [], "features": ["--out", "S"],
                 "classify": ["--out", "O"], "task_similarity": ["S"], "explore": ["S"],
                 "prepare": ["--data", "D", "--out", "O"], "ensemble": ["R1", "R2"], "analyze project": ["S"],
                 "analyze gradcam": ["RUN"], "analyze cka": ["--a", "A"], "analyze maxact": ["--a", "A"],
                 "analyze featvis": ["--a", "A"]}


@pytest.mark.parametrize("command", LONG_COMMANDS)
def test_long_commands_take_verbose_and_jobs(command):
    name, _, sub = command.partition(" ")
    parser = next(p for p in _parsers(name) if p.prog.endswith(f".{name}{' ' + sub if sub else ''}"))
    args = parser.parse_args(LONG_COMMANDS[command] + ["--verbose", "0", "--jobs", "2"])
    assert int(args.verbose) == 0 and args.jobs == 2  # (finetune's flags are strings until its config resolves)
    with pytest.raises(SystemExit):
        parser.parse_args(LONG_COMMANDS[command] + ["--jobs", "0"])


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
