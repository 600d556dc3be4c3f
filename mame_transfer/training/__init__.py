"""Training runs: the run directory, compiling, fine-tuning with resume, the prefix cache, transfer methods.

* :mod:`.runs` owns the run directory format (create, resume, finish, load).
* :mod:`.compile`: optimizer, loss, metrics, strategy, callbacks (shared by ``finetune`` and ``tune``).
* :mod:`.trainer`: :func:`~.trainer.train`, what ``python -m mame_transfer.finetune`` runs.
* :mod:`.prefix_cache`: frozen layers computed once per image. :mod:`.methods`: per-block learning rates,
  re-initialisation, double fine-tuning.
* :mod:`.evaluation`: scoring finished runs, alone or as an ensemble.
"""

from mame_transfer.training.runs import load_run

__all__ = ["load_run"]
