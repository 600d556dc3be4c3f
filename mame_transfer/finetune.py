"""Fine-tune a registry backbone with a dense head: ``python -m mame_transfer.finetune``.

Examples::

    python -m mame_transfer.finetune --demo --arch mobilenet --alpha 0.25 --image-size 96 --epochs 3
    python -m mame_transfer.finetune --arch vgg16 --data /path/to/MAMe --freeze-until block3 \\
        --head 512,256 --lr 5e-5 --l2 0.1 --dropout 0.5 --batch-size 32 --epochs 20
    python -m mame_transfer.finetune --config my_run.yaml --lr 1e-5

A run trains inside ``<run>.partial/`` and is renamed to ``<run>/`` only once every artefact is written, so a
directory without the suffix is always complete. Running the same command again after an interrupt (Ctrl-C,
``kill -9``, a crash) resumes from the last finished epoch: weights, optimizer state, learning-rate schedule,
early-stopping and best-checkpoint state are restored. The library behind it is :mod:`mame_transfer.training`.
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
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", help="YAML file of options (flags given here override it)")
    parser.add_argument("--list-archs", action="store_true", help="print the registered backbones and exit")
    cfg.add_arguments(parser, TrainConfig)
    return parser


def _finetune(args) -> None:
    if args.list_archs:
        from mame_transfer.models import backbones

        for name, spec in backbones.REGISTRY.items():
            print(f"{name:<16} {spec.default_size:>4}px  blocks {spec.block_names[0]}..{spec.block_names[-1]:<8} "
                  f"default freeze {spec.default_freeze:<7} {spec.description}")
        return
    config = cfg.resolve(TrainConfig, args, config_path=args.config)
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
