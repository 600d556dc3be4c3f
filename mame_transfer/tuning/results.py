"""What a finished search writes: ``trials.csv`` / ``trials.md``, two plots, ``best.yaml`` and ``search.json``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from mame_transfer.core import config as cfg
from mame_transfer.core.fileio import markdown_table, write_json, write_text
from mame_transfer.tuning.hypermodel import TRIAL_INFO, SearchData
from mame_transfer.tuning.space import SEARCHABLE, SearchSpec, TuneError, trial_config

PROJECT = "kt"  # KerasTuner's project folder inside the tuning folder
SEARCH_JSON = "search.json"  # the summary of a finished search; its best_weights file is never pruned
CHECKPOINT = "checkpoint.weights.h5"  # what KerasTuner saves per trial


def _order(trial_id: str) -> tuple:
    """Run order of a trial id: KerasTuner numbers trials (zero-padded to a width that grows with the budget)."""
    return (0, int(trial_id), "") if str(trial_id).isdigit() else (1, 0, str(trial_id))


def best_trial(oracle):
    """The completed trial with the best score; of tied trials, the one that ran first.

    KerasTuner's own ``get_best_trials`` breaks ties by the order its trial files are listed on reload, so a resumed
    search could switch to another tied trial (whose weights were pruned). None when no trial completed.
    """
    trials = getattr(oracle, "trials", None)
    if trials is None:  # a distributed worker's client: the chief's oracle ranks the trials
        try:
            ranked = oracle.get_best_trials(1)
        except Exception:  # noqa: BLE001  (no completed trial yet, or the chief is gone)
            return None
        return ranked[0] if ranked else None
    done = [t for t in trials.values()
            if str(t.status) == "COMPLETED" and t.score is not None and np.isfinite(float(t.score))]
    if not done:
        return None
    sign = 1.0 if oracle.objective.direction == "max" else -1.0
    return min(done, key=lambda t: (-sign * float(t.score), _order(t.trial_id)))


def trials_table(oracle, folder: Path, spec: SearchSpec, n_val: int = 0):
    """One row per trial: id, status, worker, route, every hyperparameter, score (with ``n_val``: the val size and
    the bootstrap 95 % interval of the val accuracy), epochs, seconds."""
    import pandas as pd

    from mame_transfer.inference.metrics import top1_interval

    rows = []
    for tid, trial in sorted(oracle.trials.items()):
        info_file = Path(folder) / PROJECT / f"trial_{tid}" / TRIAL_INFO
        info = json.loads(info_file.read_text()) if info_file.is_file() else {}

        def metric(name):
            try:
                value = trial.metrics.get_best_value(name)
            except (ValueError, KeyError):
                return None
            return None if value is None else float(value)

        row = {"trial": tid, "status": str(trial.status)}
        worker = metric("worker_index")
        row["worker"] = info.get("tuner_id") or (f"tuner{int(worker)}" if worker is not None else None)
        row["route"] = info.get("route")
        for name, value in trial.hyperparameters.values.items():
            row[name] = value
        row["score"] = trial.score
        for name in ("val_accuracy", "val_macro_f1"):
            if metric(name) is not None:
                row[name] = metric(name)
        if n_val and row.get("val_accuracy") is not None:  # n and the bootstrap interval of the top-1
            row["val_n"] = n_val
            low, high = top1_interval(row["val_accuracy"], n_val)
            row["val_accuracy_ci"] = f"[{low:.3f}, {high:.3f}]"
        epochs, seconds = metric("trial_epochs"), metric("trial_seconds")
        row["epochs"] = int(epochs) if epochs is not None else info.get("epochs")
        row["seconds"] = seconds if seconds is not None else info.get("seconds")
        rows.append(row)
    return pd.DataFrame(rows)


def score_per_trial_figure(table, objective: str):
    """Score of each trial in run order, with the running best."""
    from mame_transfer.core.plots import PlainFigure as Figure  # plain-text labels
    from mame_transfer.core.plots import label_axes

    fig = Figure(figsize=(7, 3.5))
    ax = fig.add_subplot()
    done = table[table["score"].notna()]
    x = np.arange(1, len(done) + 1)
    ax.plot(x, done["score"], "o", label="trial")
    ax.plot(x, np.maximum.accumulate(done["score"].to_numpy(dtype=float)), "-", label="best so far")
    label_axes(ax, "trial (in id order)", objective, legend=True)
    fig.tight_layout()
    return fig


def score_vs_lr_figure(table, objective: str):
    """Score against learning rate (log axis)."""
    from mame_transfer.core.plots import PlainFigure as Figure  # plain-text labels
    from mame_transfer.core.plots import label_axes

    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    done = table[table["score"].notna()]
    ax.scatter(done["lr"], done["score"], c="#4477aa")
    ax.set_xscale("log")
    label_axes(ax, "learning rate", objective)
    fig.tight_layout()
    return fig


def write_results(tuner, spec: SearchSpec, data: SearchData, folder: Path, overrides: dict) -> dict:
    """Check every trial really trained, then write the table, plots, best.yaml and search.json."""
    from mame_transfer.core import plots

    oracle = tuner.oracle
    table = trials_table(oracle, folder, spec, n_val=len(data.val_t))
    if table.empty:
        raise TuneError(f"{folder}: the search ran no trial")
    write_text(folder / "trials.csv", table.to_csv(index=False))
    write_text(folder / "trials.md", markdown_table(table, float_format="{:.4g}", nan=""))
    bad = table[table["status"] != "COMPLETED"]
    if len(bad):
        first = oracle.trials[bad["trial"].iloc[0]]
        raise TuneError(f"{len(bad)} of {len(table)} trials did not complete "
                        f"({', '.join(f'{t}: {s}' for t, s in zip(bad['trial'], bad['status']))}); see "
                        f"{folder / 'trials.csv'}. First error:\n{(first.message or '')[-2000:]}")
    plots.save(score_per_trial_figure(table, spec.tuner.objective), folder / "score_per_trial.png")
    plots.save(score_vs_lr_figure(table, spec.tuner.objective), folder / "score_vs_lr.png")
    best = best_trial(oracle)
    values = {k: v for k, v in best.hyperparameters.values.items() if k in SEARCHABLE}
    best_conf = trial_config(spec, values, **overrides)
    best_conf = dataclasses.replace(best_conf, out=None, overwrite=False, verbose=2)
    if data.cached:
        best_conf.augment = False  # the search trained without augmentation (features computed once)
    header = (f"# best trial {best.trial_id} of {folder} ({spec.tuner.algorithm}, {data.route}): "
              f"{spec.tuner.objective} {best.score:.4f}\n# retrain: mame-finetune --config "
              f"{folder / 'best.yaml'}\n")
    write_text(folder / "best.yaml", header + cfg.dump_yaml(best_conf))
    weights = Path(tuner.get_trial_dir(best.trial_id)) / CHECKPOINT
    summary = {"name": spec.name, "algorithm": spec.tuner.algorithm, "objective": spec.tuner.objective,
               "route": data.route, "trials": int(len(table)), "completed": int((table["status"] == "COMPLETED").sum()),
               "best_trial": best.trial_id, "best_score": float(best.score), "best_values": values,
               "best_weights": str(weights) if weights.is_file() else None,
               "workers": sorted(str(w) for w in table["worker"].dropna().unique())}
    write_json(folder / SEARCH_JSON, summary)
    tuner.prune(final=True)  # only now that search.json names the new best may the previous one's files go
    return summary

