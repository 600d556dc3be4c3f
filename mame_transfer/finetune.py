"""Fine-tune a registry backbone with a dense head: ``python -m mame_transfer.finetune``.

Examples::

    python -m mame_transfer.finetune --demo --arch mobilenet --alpha 0.25 --image-size 96 --epochs 3
    python -m mame_transfer.finetune --arch vgg16 --data /path/to/MAMe --freeze-until block3 \\
        --head 512,256 --lr 5e-5 --l2 0.1 --dropout 0.5 --batch-size 32 --epochs 20
    python -m mame_transfer.finetune --config my_run.yaml --lr 1e-5
    python -m mame_transfer.finetune --recipe best-cpu --data /path/to/set        # a shipped recipe (--list-recipes)
    python -m mame_transfer.finetune --recipe best-cpu --data /path/to/set --folds 5 --out cv/best-cpu

A run trains inside ``<run>.partial/`` and is renamed to ``<run>/`` only once every artefact is written, so a
directory without the suffix is always complete. Running the same command again after an interrupt (Ctrl-C,
``kill -9``, a crash) resumes from the last finished epoch: weights, optimizer state, learning-rate schedule,
early-stopping and best-checkpoint state are restored. ``--folds K`` cross-validates instead: one run per fold and
a summary with 95 % intervals (:mod:`mame_transfer.training.crossval`). The library behind it is
:mod:`mame_transfer.training`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from mame_transfer.core import cli
from mame_transfer.core import config as cfg
from mame_transfer.core.config import TrainConfig


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser("finetune", "Fine-tune a backbone with a dense head on MAMe or any class-per-folder image set.",
                        usage="%(prog)s (--data DIR | --demo | --config FILE.yaml) [options]")
    parser.add_argument("--config", help="YAML file of options (flags given here override it)")
    parser.add_argument("--recipe", help="a recipe shipped with the package (--config and flags override it)")
    parser.add_argument("--list-archs", action="store_true", help="print the backbones and their blocks, and exit")
    parser.add_argument("--list-recipes", action="store_true",
                        help="print the shipped recipes with their measured results and exit")
    cfg.add_arguments(parser, TrainConfig)
    cli.add_jobs(parser)
    return parser


def _finetune(args) -> None:
    if args.list_archs:
        from mame_transfer.models import backbones

        for name in backbones.PRODUCT_ARCHS:  # the registry also holds test_tiny, for the tests only
            spec = backbones.REGISTRY[name]
            blocks = f"{spec.block_names[0]}..{spec.block_names[-1]}"
            print(f"{name:<16} {spec.default_size:>4}px  blocks {blocks:<15} default freeze {spec.default_freeze:<7} "
                  f"{spec.description}")
        return
    from mame_transfer.training import recipes

    if args.list_recipes:
        print(recipes.describe(), end="")
        return
    base = recipes.get_recipe(args.recipe).config if args.recipe else None
    config = cfg.resolve(TrainConfig, args, config_path=args.config, base=base)
    if config.folds:
        from mame_transfer.training.crossval import cross_validate

        print(cross_validate(config))
        return
    if config.strategy == "multiworker":  # its own step loop: Keras's fit cannot run under that strategy
        from mame_transfer.training.multiworker import train_multiworker as train
    else:
        from mame_transfer.training.trainer import train
    run = train(config)
    if run is not None:  # None: a multi-worker run's non-chief worker (the chief prints the run directory)
        print(run)


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(build_parser(), _finetune, argv,
                   on_interrupt="rerun the same command to resume from the last finished epoch")


if __name__ == "__main__":
    sys.exit(main())
