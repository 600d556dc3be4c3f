"""Running a search: the KerasTuner tuner with the package's trial logic, the chief/worker engine, resume.

The tuner turns any trial exception into a FAILED trial (counted by ``max_consecutive_failed_trials``), records
per trial who ran it and on which route, keeps only the best trial's weights, and imports TensorBoard only when
the search writes TensorBoard logs (``--tensorboard``).
Distributed search is KerasTuner's own: ``KERASTUNER_TUNER_ID=chief`` serves the oracle (:func:`serve_chief`,
with a short poll), ``tuner<i>`` processes run trials, all sharing the tuning folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import time
import traceback
from pathlib import Path

from mame_transfer.core import config as cfg
from mame_transfer.core.errors import ConfigError, OutputError
from mame_transfer.core.fileio import check_output, locked, mark, write_json, write_text
from mame_transfer.training.compile import require_tensorboard, tensorboard_callback
from mame_transfer.tuning.hypermodel import TRIAL_INFO, SearchData, make_hypermodel
from mame_transfer.tuning.results import PROJECT, SEARCH_JSON, best_trial, write_results
from mame_transfer.tuning.space import SearchSpec, TuneError, load_spec, spec_from_dict, trial_config

log = logging.getLogger("mame_transfer")
SEARCH_FILE = "search.yaml"  # the spec and overrides of a search, written into its folder
FINGERPRINT = "fingerprint.json"  # the space, settings and data identity a search was started with
TUNING_KIND = "tuning"  # the owner kind of a tuning folder (mame_transfer.core.fileio.check_output)
# What a resumed search may change: its budget and verbosity (everything else would merge unlike trials).
RESUMABLE = ("max_trials", "verbose")


def _worker_index(tuner_id: str) -> int:
    match = re.search(r"(\d+)$", tuner_id)
    return int(match.group(1)) if match else -1


def make_tuner(spec: SearchSpec, data: SearchData, folder: Path, *, overwrite: bool = False, overrides=None):
    """The KerasTuner tuner of ``spec.tuner.algorithm`` with the package's trial logic mixed in."""
    import keras_tuner as kt
    from keras_tuner.src.distribute import utils as dist_utils

    t = spec.tuner
    objective = kt.Objective(t.objective, "max")
    base_cls = {"random": kt.RandomSearch, "hyperband": kt.Hyperband, "bayesian": kt.BayesianOptimization}[t.algorithm]

    class MameTuner(base_cls):
        """Adds: TensorBoard only when asked, failures that count, per-trial info, checkpoint pruning, fast chief."""

        def _configure_tensorboard_dir(self, callbacks, trial, execution=0):
            # KerasTuner imports tensorboard here for every trial; without tensorboard installed that ImportError
            # makes every trial INVALID. Only a search with a TensorBoard callback (--tensorboard, which checks
            # the package first) needs it: KerasTuner then gives each trial its log folder and HParams record.
            if any(cb.__class__.__name__ == "TensorBoard" for cb in callbacks):
                super()._configure_tensorboard_dir(callbacks, trial, execution)

        def run_trial(self, trial, *args, **kwargs):
            t0 = time.time()
            try:
                histories = super().run_trial(trial, *args, **kwargs)
            except kt.errors.FatalError:
                raise
            except Exception as exc:  # counted by max_consecutive_failed_trials (INVALID would not be)
                raise kt.errors.FailedTrialError(f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}") from exc
            from keras_tuner.src.engine import tuner_utils

            metrics = tuner_utils.convert_to_metrics_dict(histories, self.oracle.objective)
            epochs = sum(len(h.history.get("loss", [])) for h in histories)
            info = {"tuner_id": self.tuner_id, "epochs": epochs, "seconds": round(time.time() - t0, 2),
                    "route": data.route}
            metrics = {**{k: float(v) for k, v in metrics.items()}, "trial_epochs": float(epochs),
                       "trial_seconds": info["seconds"], "worker_index": float(_worker_index(self.tuner_id))}
            write_json(Path(self.get_trial_dir(trial.trial_id)) / TRIAL_INFO, info)
            return metrics

        def on_trial_end(self, trial):
            super().on_trial_end(trial)
            self._ran = getattr(self, "_ran", set()) | {trial.trial_id}
            self.prune(only=self._ran)

        def prune(self, only=None, final: bool = False) -> None:
            """Delete checkpoints of trials that are not the best (and cannot be continued by Hyperband).

            The best is :func:`best_trial` (ties keep the earlier trial); until a finished search rewrites
            ``search.json``, the trial it names keeps its files too, so it never points at a missing file.
            """
            best = best_trial(self.oracle)
            if best is None:
                return
            keep = {best.trial_id}
            if not final:
                keep |= {_named_best(folder)}
            if t.algorithm == "hyperband" and not final:
                brackets = getattr(self.oracle, "_brackets", None)
                if brackets is None:
                    return  # distributed worker: bracket state lives on the chief; pruned at the end
                keep |= {e.get(k) for br in brackets for rnd in br["rounds"] for e in rnd for k in ("id", "past_id")}
            trials_dir = Path(self.project_dir)
            for d in trials_dir.glob("trial_*"):
                tid = d.name[len("trial_"):]
                if tid in keep or (only is not None and tid not in only):
                    continue
                for f in d.glob("checkpoint*"):
                    f.unlink(missing_ok=True)

        def search(self, *fit_args, **fit_kwargs):
            if dist_utils.is_chief_oracle():
                self.save()
                serve_chief(self.oracle)
                return
            super().search(*fit_args, **fit_kwargs)

    kwargs = dict(objective=objective, seed=t.seed, overwrite=overwrite, directory=str(folder), project_name=PROJECT,
                  executions_per_trial=t.executions_per_trial,
                  max_consecutive_failed_trials=t.max_consecutive_failed_trials)
    hm = make_hypermodel(spec, data, overrides or {})
    if t.algorithm == "hyperband":
        return MameTuner(hm, max_epochs=t.max_epochs or data.base.epochs, factor=t.factor,
                         hyperband_iterations=t.hyperband_iterations, **kwargs)
    if t.algorithm == "bayesian":
        return MameTuner(hm, max_trials=t.max_trials, num_initial_points=t.num_initial_points, **kwargs)
    return MameTuner(hm, max_trials=t.max_trials, **kwargs)


def _named_best(folder: Path) -> str | None:
    """The trial ``search.json`` names as the best (None when there is none)."""
    try:
        return str(json.loads((Path(folder) / SEARCH_JSON).read_text())["best_trial"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def serve_chief(oracle, poll_s: float = 0.5) -> None:
    """KerasTuner's chief gRPC server (its ``OracleServicer``), stopping within ``poll_s`` of the last trial.

    ``keras_tuner``'s own ``start_server`` polls every 20 s once the oracle has stopped; this loop is the same
    server with a short poll.
    """
    from concurrent import futures

    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute import oracle_chief

    ip, port = os.environ["KERASTUNER_ORACLE_IP"], os.environ["KERASTUNER_ORACLE_PORT"]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    servicer = oracle_chief.OracleServicer(oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    if not server.add_insecure_port(f"{ip}:{port}"):
        raise TuneError(f"chief could not listen on {ip}:{port} (KERASTUNER_ORACLE_IP/PORT); is the port taken?")
    server.start()
    log.info("chief oracle listening on %s:%s", ip, port)
    try:
        while not (servicer.stop_triggered and oracle_chief.exit_chief(oracle)):
            time.sleep(poll_s)
    finally:
        server.stop(grace=2)


TENSORBOARD_DIR = "tensorboard"  # with --tensorboard: <folder>/tensorboard/<trial id>/execution<k>/


def run_search(spec: SearchSpec, folder: str | Path, *, overwrite: bool = False, verbose: int = 1,
               resume: bool = False, tensorboard: bool = False, **overrides) -> dict | None:
    """Run (or, with ``resume``, continue) a search in ``folder``; returns the summary (None on a distributed worker).

    ``folder`` must be new, empty or a tuning folder: ``overwrite`` deletes an earlier search first, ``resume``
    continues it, and only when it was searched over the same space, settings and data (:func:`search_fingerprint`);
    anything else is refused instead of merging unlike trials. One process at a time holds the folder (the chief
    of a distributed search, whose workers share it).

    With ``tensorboard`` every trial writes TensorBoard logs under ``<folder>/tensorboard/``, scalars per epoch
    and, through KerasTuner, the trial's hyperparameters for TensorBoard's HParams view.
    """
    from keras_tuner.src.distribute import utils as dist_utils

    folder = Path(folder)
    worker = dist_utils.has_chief_oracle() and not dist_utils.is_chief_oracle()
    if tensorboard:
        require_tensorboard()
    overrides = {k: v for k, v in overrides.items() if v is not None}
    overrides.setdefault("verbose", verbose)
    with contextlib.nullcontext() if worker else locked(folder, "tune"):
        existed = check_output(folder, TUNING_KIND, additive=True, legacy=lambda p: (p / SEARCH_FILE).is_file(),
                               what="tuning folder")
        dataset = _dataset(spec, overrides)
        fp = search_fingerprint(spec, overrides, dataset)
        if existed and overwrite and not dist_utils.has_chief_oracle():
            shutil.rmtree(folder)  # our own earlier search (checked above)
        elif existed and (folder / SEARCH_FILE).is_file():
            _check_continuation(folder, fp, resume=resume or dist_utils.has_chief_oracle())
        folder.mkdir(parents=True, exist_ok=True)
        mark(folder, TUNING_KIND)
        write_text(folder / SEARCH_FILE, _yaml({**spec.to_dict(), "overrides": overrides}))
        write_json(folder / FINGERPRINT, fp)
        return _search(spec, folder, overrides, dataset, verbose, worker, tensorboard)


def _dataset(spec: SearchSpec, overrides: dict):
    from mame_transfer.training.runs import dataset_for

    return dataset_for(trial_config(spec, {}, **overrides))


def search_fingerprint(spec: SearchSpec, overrides: dict, dataset) -> dict:
    """What a search's trials depend on: the spec (not its budget), the overrides and the data's identity."""
    from mame_transfer.training.runs import fingerprint

    search = spec.to_dict()
    search.pop("name", None)
    search["tuner"] = {k: v for k, v in search["tuner"].items() if k not in RESUMABLE}
    data = fingerprint(trial_config(spec, {}, **overrides), dataset)["data"]
    return json.loads(json.dumps({"search": search, "data": data}, default=str))


def _check_continuation(folder: Path, fp: dict, *, resume: bool) -> None:
    """Refuse to add trials to a search over another space, other settings or other data."""
    try:
        saved = json.loads((folder / FINGERPRINT).read_text())
    except (OSError, ValueError):
        saved = None  # searched before fingerprints existed: only search.yaml can be compared
        old = cfg.load_yaml(folder / SEARCH_FILE)
        old.pop("overrides", None)
        old.pop("name", None)
        old["tuner"] = {k: v for k, v in (old.get("tuner") or {}).items() if k not in RESUMABLE}
        changes = _diff("", json.loads(json.dumps(old, default=str)), fp["search"])
    if saved is not None:
        changes = _diff("", saved.get("search", {}), fp["search"]) + _diff("data ", saved.get("data", {}), fp["data"])
    if changes:
        raise OutputError(f"{folder} holds a search over another space, other settings or other data: "
                          f"{'; '.join(changes)}. Adding trials would mix two searches. Pass --overwrite to delete it "
                          f"and start over, or choose another --out.")
    if not resume:
        raise OutputError(f"{folder} already holds a search; pass --resume to continue it, --overwrite to start over, "
                          f"or choose another --out")


def _diff(prefix: str, a, b) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [item for key in sorted(set(a) | set(b)) for item in _diff(f"{prefix}{key}.", a.get(key), b.get(key))]
    if a == b:
        return []
    if prefix.endswith("files."):
        return [f"{prefix[:-1]} (an image was added, removed, relabelled or modified)"]
    return [f"{prefix[:-1]}: {a!r} -> {b!r}"]


def _search(spec: SearchSpec, folder: Path, overrides: dict, dataset, verbose: int, worker: bool,
            tensorboard: bool = False) -> dict | None:
    """The search itself, in a checked and locked folder."""
    data = SearchData(spec, folder, overrides, dataset=dataset)
    log.info("search %s: %s, objective %s, route %s, %d classes", spec.name, spec.tuner.algorithm,
             spec.tuner.objective, data.route, data.num_classes)
    tuner = make_tuner(spec, data, folder, overwrite=False, overrides=overrides)
    callbacks = [tensorboard_callback(folder / TENSORBOARD_DIR)] if tensorboard else []
    try:
        tuner.search(verbose=verbose, callbacks=callbacks)
    except RuntimeError as exc:
        if "consecutive failures" in str(exc):
            raise TuneError(f"search aborted: {exc}") from exc
        raise
    if worker:
        return None  # the chief writes the merged results
    return write_results(tuner, spec, data, folder, overrides)


def _yaml(obj) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False)


def resolve_search(config: str | None, out: str | None, *, resume: bool = False, overwrite: bool = False,
                   tuner: dict | None = None, base: dict | None = None, data: str | None = None,
                   demo: bool = False) -> tuple[SearchSpec, Path, dict]:
    """The spec, folder and dataset overrides of a search from what the command line gave.

    Args:
        config: a search YAML; optional with ``resume`` and ``out`` (the folder's own ``search.yaml`` is read).
        out: the tuning folder (default ``tuning/<name>``).
        tuner: ``tuner:`` settings given as flags (algorithm, objective, max_trials, seed).
        base: ``base:`` options given as flags (seed, epochs, image_size).
        data, demo: the dataset; a resumed search keeps the one it was started with unless given.
    """
    if resume and overwrite:
        raise ConfigError("--resume continues a search and --overwrite deletes it; pass one of them")
    saved_overrides: dict = {}
    if config:
        spec = load_spec(config)
    elif resume and out:
        saved = cfg.load_yaml(Path(out) / SEARCH_FILE)
        saved_overrides = saved.pop("overrides", {}) or {}
        spec = spec_from_dict(saved, source=str(Path(out) / SEARCH_FILE))
    else:
        raise ConfigError("pass --config SEARCH.yaml (or --resume --out FOLDER)")
    folder = Path(out or Path("tuning") / spec.name)
    if resume:
        if not (folder / SEARCH_FILE).is_file():
            raise ConfigError(f"--resume: no search to continue in {folder} ({SEARCH_FILE} missing)")
        saved = cfg.load_yaml(folder / SEARCH_FILE)
        saved_overrides = {**(saved.get("overrides") or {}), **saved_overrides}
    for key, value in (tuner or {}).items():
        if value is not None:
            setattr(spec.tuner, key, value)
    spec.tuner.validate(spec.source)
    spec.base.update({k: v for k, v in (base or {}).items() if v is not None})
    overrides = {**saved_overrides, **{k: v for k, v in (("data", data), ("demo", demo or None)) if v is not None}}
    overrides.pop("verbose", None)
    if overrides.get("data"):
        overrides["data"] = str(Path(overrides["data"]).resolve())
    return spec, folder, overrides
