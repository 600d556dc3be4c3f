"""core.runtime: TensorFlow's start-up lines hidden (unless asked for), CPU threads limited by --jobs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mame_transfer.core import runtime

REPO = Path(__file__).resolve().parents[2]
COMMANDS = ["data", "finetune", "evaluate", "tune", "features", "classify", "task_similarity", "analyze", "report",
            "explore", "prepare", "ensemble"]
# A command with --jobs and --verbose whose work imports TensorFlow and prints its thread settings.
SCRIPT = textwrap.dedent("""
    import sys
    from mame_transfer.core import cli

    parser = cli.parser("x", "test")
    cli.add_jobs(parser)
    cli.add_verbose(parser)

    def work(args):
        import tensorflow as tf
        print(tf.config.threading.get_intra_op_parallelism_threads(),
              tf.config.threading.get_inter_op_parallelism_threads())

    sys.exit(cli.run(parser, work, sys.argv[1:]))
""")


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", runtime.SHOW_LOGS_ENV)}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return {**env, **extra}


def _run(args, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True, env=_env(**env),
                          timeout=300)


def test_noise_pattern_drops_start_up_lines_only():
    noise = ["WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
             "I0000 00:00:1795444762.106909   30018 port.cc:153] oneDNN custom operations are on.",
             "W0000 00:00:1795444762.1   30018 some.cc:1] a warning",
             "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow",
             "E0000 00:00:1.5 12 cuda_dnn.cc:8] Unable to register cuDNN factory: already registered"]
    kept = ["E0000 00:00:1.5 12 op.cc:1] OOM when allocating tensor", "Traceback (most recent call last):",
            "UserWarning: something the user should see"]
    assert all(runtime.NOISE.search(line) for line in noise)
    assert not any(runtime.NOISE.search(line) for line in kept)


def test_filtered_stderr_replays_everything_else(capfd):
    with runtime.filtered_stderr():
        os.write(2, b"I0000 00:00:1.25 7 port.cc:153] oneDNN custom operations are on.\nreal problem\n")
        print("python line", file=sys.stderr)
    err = capfd.readouterr().err
    assert "oneDNN" not in err and "real problem\n" in err and "python line\n" in err


def test_wants_tensorflow_logs(monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    monkeypatch.delenv(runtime.SHOW_LOGS_ENV, raising=False)
    assert not runtime.wants_tensorflow_logs(1) and runtime.wants_tensorflow_logs(2)
    monkeypatch.setenv(runtime.SHOW_LOGS_ENV, "1")
    assert runtime.wants_tensorflow_logs(0)
    monkeypatch.delenv(runtime.SHOW_LOGS_ENV)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")  # the user's own TensorFlow setting wins
    assert runtime.wants_tensorflow_logs(1)


def test_command_process_restores_the_environment(monkeypatch):
    for var in ("TF_CPP_MIN_LOG_LEVEL", *runtime.THREAD_VARS):
        monkeypatch.delenv(var, raising=False)
    with runtime.command_process(verbose=1, jobs=3):
        assert os.environ["OMP_NUM_THREADS"] == "3" and os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"
        from threadpoolctl import threadpool_info

        assert all(pool["num_threads"] <= 3 for pool in threadpool_info())
    assert not any(var in os.environ for var in ("TF_CPP_MIN_LOG_LEVEL", *runtime.THREAD_VARS))
    assert not any(isinstance(f, runtime._TensorFlowImport) for f in sys.meta_path)


def test_commands_import_no_tensorflow_before_main():
    """The import hook must be in place before TensorFlow loads: no command module imports it at import time."""
    code = ("import sys\n" + "".join(f"import mame_transfer.{c}\n" for c in COMMANDS)
            + "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_tensorflow_quiet_by_default_and_jobs_limit_its_threads():
    shown = _run(["--verbose", "2"])  # asked for: TensorFlow's own lines, its default thread pools
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split() == ["0", "0"]
    quiet = _run(["--jobs", "1"])
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.split() == ["1", "1"]  # TensorFlow's intra- and inter-op pools: one thread each
    for line in ("oneDNN", "absl::InitializeLog", "cpu_feature_guard"):
        assert line not in quiet.stderr, quiet.stderr
    if "oneDNN" not in shown.stderr:
        pytest.skip("this TensorFlow build prints no start-up lines, so hiding them was not exercised")
