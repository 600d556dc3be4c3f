"""KerasTuner search over learning rate, L2, dropout (and optionally head, freeze block, optimizer, batch size).

Examples::

    python -m mame_transfer.tune --config tuner_configs/vgg16.yaml --data /path/to/MAMe
    python -m mame_transfer.tune --config tuner_configs/vgg16.yaml --resume       # continue after an interrupt
    python -m mame_transfer.finetune --config tuning/vgg16/best.yaml              # retrain the winner

A search YAML has three sections: ``base`` (fixed :class:`~mame_transfer.core.config.TrainConfig` options of every
trial), ``tuner`` (algorithm, objective, budget, seed) and ``space`` (the searched options; the default of each
is the untuned ``TrainConfig`` default). Outputs go to ``tuning/<name>/``: ``trials.csv``/``trials.md``,
``score_per_trial.png``, ``score_vs_lr.png``, ``best.yaml`` (a ``finetune --config`` file) and ``search.json``.

Distributed search uses KerasTuner's own chief/worker engine: start one process with
``KERASTUNER_TUNER_ID=chief`` and one per worker with ``KERASTUNER_TUNER_ID=tuner<i>``, all with the same
``KERASTUNER_ORACLE_IP``/``KERASTUNER_ORACLE_PORT`` and the same ``--out`` folder (a shared file system).
The library is :mod:`mame_transfer.tuning`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from mame_transfer.core import cli
from mame_transfer.tuning.search import resolve_search, run_search
from mame_transfer.tuning.space import ALGORITHMS, OBJECTIVES


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("tune", "KerasTuner search over learning rate, L2, dropout and more.")
    p.add_argument("--config", help="search YAML (see tuner_configs/); optional with --resume")
    p.add_argument("--data", help="dataset folder (MAMe layout or class-per-folder)")
    p.add_argument("--demo", action="store_true", help="use the built-in demo set")
    p.add_argument("--out", help="tuning folder (default tuning/<name>)")
    p.add_argument("--resume", action="store_true", help="continue the search saved in the tuning folder")
    p.add_argument("--overwrite", action="store_true", help="delete the tuning folder and start over")
    p.add_argument("--algorithm", choices=ALGORITHMS, help="search algorithm (default: the YAML's tuner.algorithm)")
    p.add_argument("--objective", choices=OBJECTIVES,
                   help="score to maximise on val (default: the YAML's tuner.objective)")
    p.add_argument("--max-trials", type=cli.positive_int, help="trials of random / bayesian search (default: the YAML's)")
    p.add_argument("--epochs", type=cli.positive_int, help="epochs per trial (base.epochs)")
    p.add_argument("--image-size", type=cli.positive_int, help="input side in pixels of every trial (base.image_size)")
    p.add_argument("--seed", type=int, help="seed of the tuner and of every trial")
    p.add_argument("--tensorboard", action="store_true",
                   help="TensorBoard logs of every trial in <out>/tensorboard (scalars and the HParams view); "
                        "needs pip install 'mame_transfer[tensorboard]'")
    cli.add_jobs(p)
    cli.add_verbose(p)
    return p


def _tune(args) -> None:
    cli.log_to_stdout()
    spec, folder, overrides = resolve_search(
        args.config, args.out, resume=args.resume, overwrite=args.overwrite, data=args.data, demo=args.demo,
        tuner={"algorithm": args.algorithm, "objective": args.objective, "max_trials": args.max_trials,
               "seed": args.seed},
        base={"seed": args.seed, "epochs": args.epochs, "image_size": args.image_size})
    summary = run_search(spec, folder, overwrite=args.overwrite, verbose=args.verbose, resume=args.resume,
                         tensorboard=args.tensorboard,
                         **overrides)
    if summary:  # None on a distributed worker: the chief writes the results
        print(f"best trial {summary['best_trial']}: {summary['objective']} {summary['best_score']:.4f} "
              f"({summary['trials']} trials, {summary['route']}); retrain with: mame-finetune "
              f"--config {folder / 'best.yaml'}")


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(build_parser(), _tune, argv, on_interrupt="rerun with --resume to continue the search")


if __name__ == "__main__":
    sys.exit(main())
