"""KerasTuner searches over a TrainConfig, on one machine or many (KerasTuner's chief/worker engine).

* :mod:`.space`: the search YAML (``base``, ``tuner``, ``space``) and the declared hyperparameters.
* :mod:`.hypermodel`: what one trial trains (full network, or the head on prefix-cache tensors).
* :mod:`.search`: the tuner, the fast chief, running or resuming a search. :mod:`.results`: table, plots, best.yaml.
"""

from mame_transfer.tuning.search import run_search
from mame_transfer.tuning.space import load_spec

__all__ = ["load_spec", "run_search"]
