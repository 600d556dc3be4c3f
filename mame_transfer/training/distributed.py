"""Several machines: the cluster of a ``--strategy multiworker`` run, its data shards and its training step loop.

The cluster comes from the standard ``TF_CONFIG`` variable (or, without it, from Slurm's environment inside an
``srun`` job step); :func:`connect` creates the ``tf.distribute.MultiWorkerMirroredStrategy`` and says which
worker this process is. The chief (``chief`` task, or ``worker`` 0 when there is none) writes the run directory.

Keras 3.15's ``model.fit`` cannot run under that strategy ("Attempt to convert a value (PerReplica:...) with an
unsupported type", keras-team/keras issue 20585), so :class:`StepLoop` trains with ``strategy.run`` inside a
``tf.function`` on ``strategy.distribute_datasets_from_function`` and reports the same logs as ``fit`` (``loss``,
``accuracy``, ``top5`` and their ``val_`` twins, class weights and L2 penalties included) to the same callbacks.

Every worker reads only its own rows (:func:`shard_table`: rows ``i::N`` of a split), padded with rows of label
``-1`` to the same number of full batches, so all workers run the same number of steps (a collective step
waits for every worker). Padding rows carry zero weight: the loss of a step is the weighted sum over the real
rows of all workers divided by their global count, the mean ``fit`` takes over a batch of the same images.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mame_transfer.core.errors import ConfigError, MameTransferError

log = logging.getLogger("mame_transfer")
TASK_TYPES = ("chief", "worker")


class ClusterError(MameTransferError, RuntimeError):
    """A worker of a multi-worker run stopped or cannot be reached."""


@dataclass
class Cluster:
    """This process's place in a multi-worker run.

    Attributes:
        strategy: the ``MultiWorkerMirroredStrategy``.
        index: position of this worker (0 = the chief).
        count: number of workers.
        replicas: replicas (devices) on this worker; ``strategy.num_replicas_in_sync`` counts all of them.
        source: where the cluster came from (``TF_CONFIG``, ``Slurm`` or ``single worker``).
    """

    strategy: object
    index: int
    count: int
    replicas: int
    source: str

    @property
    def chief(self) -> bool:
        return self.index == 0

    @property
    def name(self) -> str:
        return f"worker {self.index + 1}/{self.count}"


def _tf_config() -> dict | None:
    text = os.environ.get("TF_CONFIG", "").strip()
    if not text:
        return None
    try:
        conf = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"TF_CONFIG is not valid JSON ({exc}). Expected e.g. "
                          '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", '
                          '"index": 0}}') from exc
    cluster, task = conf.get("cluster") or {}, conf.get("task") or {}
    tasks = [(t, i) for t in TASK_TYPES for i in range(len(cluster.get(t) or []))]
    if not tasks:
        raise ConfigError(f"TF_CONFIG lists no 'chief' or 'worker' addresses: cluster={cluster!r}")
    if (task.get("type"), task.get("index")) not in tasks:
        raise ConfigError(f"TF_CONFIG task {task!r} is not one of the cluster's tasks "
                          f"({', '.join(f'{t} {i}' for t, i in tasks)}); parameter servers and evaluators are not "
                          "used by --strategy multiworker")
    return conf


def resolve_cluster():
    """``(cluster resolver or None, source, task list, this task)`` from ``TF_CONFIG``, else from Slurm."""
    import tensorflow as tf

    conf = _tf_config()
    if conf is not None:
        tasks = [(t, i) for t in TASK_TYPES for i in range(len(conf["cluster"].get(t) or []))]
        me = (conf["task"]["type"], int(conf["task"]["index"]))
        return tf.distribute.cluster_resolver.TFConfigClusterResolver(), "TF_CONFIG", tasks, me
    if int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) > 1 and "SLURM_PROCID" in os.environ:
        # An srun job step, one task per node (or per GPU): addresses are the step's nodes, ports from port_base on.
        port = int(os.environ.get("MAME_SLURM_PORT", "8888"))
        if shutil.which("nvidia-smi") or "CUDA_VISIBLE_DEVICES" in os.environ:  # GPUs shared out among the tasks
            resolver = tf.distribute.cluster_resolver.SlurmClusterResolver(port_base=port)
        else:  # CPU nodes: the resolver places tasks on GPU slots, so give it one pseudo-slot per task
            resolver = tf.distribute.cluster_resolver.SlurmClusterResolver(
                port_base=port, gpus_per_node=4096, gpus_per_task=1, auto_set_gpu=False)
        n = int(os.environ["SLURM_STEP_NUM_TASKS"])
        return resolver, "Slurm", [("worker", i) for i in range(n)], ("worker", int(os.environ["SLURM_PROCID"]))
    return None, "single worker (no TF_CONFIG and no Slurm job step)", [("worker", 0)], ("worker", 0)


def connect() -> Cluster:
    """Create the strategy (before any other TensorFlow op) and wait until every worker has joined."""
    import tensorflow as tf

    resolver, source, tasks, me = resolve_cluster()
    index = tasks.index(me)
    if len(tasks) > 1:
        log.info("multi-worker: this is %s %d of a %d-worker cluster (%s); waiting for the other workers...",
                 me[0], me[1], len(tasks), source)
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    except RuntimeError as exc:  # TensorFlow was already initialised in this process
        raise ConfigError(f"--strategy multiworker must start before TensorFlow runs anything in the process: "
                          f"{exc}") from exc
    cluster = Cluster(strategy, index, len(tasks), strategy.num_replicas_in_sync // len(tasks), source)
    log.info("MultiWorkerMirroredStrategy: %s, %d replica(s) in sync (%s)", cluster.name,
             strategy.num_replicas_in_sync, source)
    return cluster


# --------------------------------------------------------------------------------------------- data


def per_replica_batch(global_batch: int, replicas: int) -> int:
    """``--batch-size`` is the global batch (as with ``fit`` under a strategy): split evenly over the replicas."""
    if global_batch % replicas:
        raise ConfigError(f"--batch-size {global_batch} cannot be split over {replicas} replicas: choose a multiple "
                          f"of {replicas}")
    return global_batch // replicas


def shard_table(table: pd.DataFrame, index: int, count: int, multiple: int) -> pd.DataFrame:
    """Rows ``index::count`` of ``table``, padded to the longest shard rounded up to ``multiple`` rows.

    Padding rows repeat the table's first row with ``label_index`` -1 (zero weight in :class:`StepLoop`), so
    every worker has the same number of full batches.
    """
    rows = table.iloc[index::count]
    size = math.ceil(math.ceil(len(table) / count) / multiple) * multiple
    pad = table.iloc[[0] * (size - len(rows))].copy()
    pad["label_index"] = -1
    return pd.concat([rows, pad], ignore_index=True)


def distribute(strategy, dataset):
    """A worker's own shard pipeline as a distributed dataset (no auto-sharding: it is already this worker's)."""
    return strategy.distribute_datasets_from_function(lambda context: dataset)


_BROADCASTS: dict = {}


def _broadcast_fn(strategy, dtype):
    """One traced all-reduce per dtype over a flat vector (collectives run eagerly are slow)."""
    import tensorflow as tf

    key = (id(strategy), np.dtype(dtype).name)
    if key not in _BROADCASTS:
        def keep_first(v):
            first = tf.equal(tf.distribute.get_replica_context().replica_id_in_sync_group, 0)
            return tf.where(first, v, tf.zeros_like(v))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.as_dtype(np.dtype(dtype)))])
        def broadcast(flat):
            return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(keep_first, args=(flat,)), axis=None)

        _BROADCASTS[key] = broadcast
    return _BROADCASTS[key]


def from_chief(strategy, values: list) -> list[np.ndarray]:
    """The chief's ``values`` on every worker (a sum all-reduce to which only the first replica contributes)."""
    arrays = [np.asarray(v) for v in values]
    out: list = [None] * len(arrays)
    for dtype in sorted({a.dtype for a in arrays}, key=str):  # the same collective order on every worker
        idx = [i for i, a in enumerate(arrays) if a.dtype == dtype]
        flat = np.asarray(_broadcast_fn(strategy, dtype)(np.concatenate([arrays[i].ravel() for i in idx])))
        offset = 0
        for i in idx:
            out[i] = flat[offset: offset + arrays[i].size].reshape(arrays[i].shape)
            offset += arrays[i].size
    return out


def sync_variables(strategy, variables) -> None:
    """Give every worker the chief's values of ``variables`` (after the chief loaded a checkpoint)."""
    variables = list(variables)
    if not variables:
        return
    for var, value in zip(variables, from_chief(strategy, [np.asarray(v) for v in variables])):
        var.assign(value)


# --------------------------------------------------------------------------------------------- the step loop


class StepLoop:
    """Training and evaluation steps of one model under a multi-worker strategy, with ``fit``'s logs.

    Args:
        strategy: the strategy the model and its optimizer were created under.
        model: a compiled model (its optimizer is used; the loss is recomputed per example here).
        num_classes: outputs of the softmax.
        label_smoothing: as ``--label-smoothing``.
        class_weight: ``{class: weight}`` or None (weights the training loss and metrics as ``fit`` does).
    """

    def __init__(self, strategy, model, *, num_classes: int, label_smoothing: float = 0.0,
                 class_weight: dict | None = None):
        import tensorflow as tf

        self.strategy, self.model = strategy, model
        self.num_classes, self.smoothing = num_classes, float(label_smoothing)
        self.top_k = min(5, num_classes)
        weights = np.ones(num_classes, np.float32)
        for c, w in (class_weight or {}).items():
            weights[int(c)] = w
        self.class_weight = tf.constant(weights)
        self._train = tf.function(self._train_step)
        self._eval = tf.function(self._eval_step)

    def _per_example(self, y, pred):
        import keras
        from keras import ops

        if self.smoothing:
            return keras.losses.categorical_crossentropy(ops.one_hot(y, self.num_classes), pred,
                                                         label_smoothing=self.smoothing)
        return keras.losses.sparse_categorical_crossentropy(y, pred)

    def _sums(self, y, pred, weight, per_example, reg, n):
        """What a step reports, summed over replicas: loss, weight, correct top-1 and top-k, real rows."""
        import tensorflow as tf

        top1 = tf.cast(tf.equal(tf.argmax(pred, axis=-1, output_type=tf.int32), y), tf.float32)
        topk = tf.cast(tf.math.in_top_k(y, tf.cast(pred, tf.float32), self.top_k), tf.float32)
        return tf.stack([tf.reduce_sum(weight * per_example) + reg * n, tf.reduce_sum(weight),
                         tf.reduce_sum(weight * top1), tf.reduce_sum(weight * topk), n])

    def _inputs(self, x, y, weighted: bool):
        import tensorflow as tf

        y = tf.reshape(tf.cast(y, tf.int32), [-1])
        real = tf.cast(y >= 0, tf.float32)
        y = tf.maximum(y, 0)
        weight = real * tf.gather(self.class_weight, y) if weighted else real
        return x, y, weight, tf.reduce_sum(real)

    def _train_step(self, iterator):
        import tensorflow as tf

        model, strategy = self.model, self.strategy

        def replica(x, y):
            x, y, weight, n = self._inputs(x, y, weighted=True)
            ctx = tf.distribute.get_replica_context()
            n_global = ctx.all_reduce(tf.distribute.ReduceOp.SUM, n)
            variables = model.trainable_variables
            with tf.GradientTape() as tape:
                pred = model(x, training=True)
                per_example = tf.cast(self._per_example(y, pred), tf.float32)
                reg = tf.add_n([tf.cast(v, tf.float32) for v in model.losses]) if model.losses else tf.constant(0.0)
                # Gradients are summed over replicas: each adds its share of the global mean and of the penalty.
                loss = tf.reduce_sum(weight * per_example) / tf.maximum(n_global, 1.0) + \
                    reg / strategy.num_replicas_in_sync
                scaled = model.optimizer.scale_loss(loss)
            grads = tape.gradient(scaled, variables)
            model.optimizer.apply_gradients(zip(grads, variables))
            return self._sums(y, pred, weight, per_example, reg, n)

        sums = strategy.run(replica, args=next(iterator))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, sums, axis=None)

    def _eval_step(self, iterator):
        import tensorflow as tf

        model, strategy = self.model, self.strategy

        def replica(x, y):
            x, y, weight, n = self._inputs(x, y, weighted=False)
            pred = model(x, training=False)
            per_example = tf.cast(self._per_example(y, pred), tf.float32)
            reg = tf.add_n([tf.cast(v, tf.float32) for v in model.losses]) if model.losses else tf.constant(0.0)
            return self._sums(y, pred, weight, per_example, reg, n)

        sums = strategy.run(replica, args=next(iterator))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, sums, axis=None)

    @staticmethod
    def _logs(total: np.ndarray, prefix: str = "") -> dict:
        loss, weight, top1, topk, n = (float(v) for v in total)
        values = {"accuracy": top1 / max(weight, 1e-12), "loss": loss / max(n, 1.0), "top5": topk / max(weight, 1e-12)}
        return {prefix + k: float(np.float32(v)) for k, v in values.items()}  # float32, as fit logs them

    def train_epoch(self, iterator, steps: int, callbacks=None) -> dict:
        """Run ``steps`` training steps on a distributed iterator; returns the epoch's logs."""
        total = np.zeros(5)
        for step in range(steps):
            if callbacks is not None:
                callbacks.on_train_batch_begin(step)
            total += np.asarray(self._train(iterator), dtype=np.float64)
            if callbacks is not None:
                callbacks.on_train_batch_end(step, self._logs(total))
        return self._logs(total)

    def evaluate(self, iterator, steps: int) -> dict:
        """``val_`` logs over ``steps`` evaluation steps."""
        total = np.zeros(5)
        for _ in range(steps):
            total += np.asarray(self._eval(iterator), dtype=np.float64)
        return self._logs(total, "val_")
