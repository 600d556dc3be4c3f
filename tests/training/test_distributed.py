"""training.distributed without a cluster: shards, batch split, TF_CONFIG / Slurm resolution and their errors (the
two-process runs are in test_multiworker.py)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from mame_transfer import finetune
from mame_transfer.core.errors import ConfigError
from mame_transfer.training.compile import make_strategy
from mame_transfer.training.distributed import per_replica_batch, resolve_cluster, shard_table


def _table(n: int) -> pd.DataFrame:
    return pd.DataFrame({"path": [f"img{i}.jpg" for i in range(n)], "label_index": [i % 3 for i in range(n)]})


@pytest.mark.parametrize("n, count, multiple", [(10, 2, 4), (7, 3, 2), (5, 1, 5), (2, 3, 1)])
def test_shards_cover_every_row_once_with_the_same_padded_length(n, count, multiple):
    table = _table(n)
    shards = [shard_table(table, i, count, multiple) for i in range(count)]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) % multiple == 0
    real = pd.concat([s[s["label_index"] >= 0] for s in shards])
    assert sorted(real["path"]) == sorted(table["path"])  # every row exactly once, none lost or doubled
    padded = sum(int((s["label_index"] < 0).sum()) for s in shards)
    assert padded == len(shards[0]) * count - n
    assert list(shards[0]["path"][: len(range(0, n, count))]) == list(table["path"][0::count])


def test_batch_split_over_replicas():
    assert per_replica_batch(32, 4) == 8
    with pytest.raises(ConfigError, match="--batch-size 30 cannot be split over 4 replicas: choose a multiple of 4"):
        per_replica_batch(30, 4)


def test_cluster_from_tf_config_or_slurm(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.delenv("SLURM_STEP_NUM_TASKS", raising=False)
    resolver, source, tasks, me = resolve_cluster()
    assert resolver is None and source.startswith("single worker") and tasks == [("worker", 0)]

    conf = {"cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]}, "task": {"type": "worker", "index": 1}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(conf))
    resolver, source, tasks, me = resolve_cluster()
    assert source == "TF_CONFIG" and tasks.index(me) == 2 and len(tasks) == 3  # the chief is worker 0
    assert resolver.cluster_spec().as_dict()["worker"] == ["b:1", "c:1"]

    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ConfigError, match="TF_CONFIG is not valid JSON"):
        resolve_cluster()
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"ps": ["a:1"]}, "task": {"type": "ps", "index": 0}}))
    with pytest.raises(ConfigError, match="lists no 'chief' or 'worker' addresses"):
        resolve_cluster()
    monkeypatch.setenv("TF_CONFIG", json.dumps(dict(conf, task={"type": "worker", "index": 5})))
    with pytest.raises(ConfigError, match=r"task \{'type': 'worker', 'index': 5\} is not one of the cluster's tasks"):
        resolve_cluster()

    monkeypatch.delenv("TF_CONFIG")
    slurm = {"SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "1", "SLURM_STEP_NODELIST": "node[1-2]",
             "SLURM_STEP_TASKS_PER_NODE": "1(x2)", "MAME_SLURM_PORT": "9000"}
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    resolver, source, tasks, me = resolve_cluster()
    assert source == "Slurm" and tasks == [("worker", 0), ("worker", 1)] and me == ("worker", 1)
    assert resolver.cluster_spec().as_dict() == {"worker": ["node1:9000", "node2:9000"]}


def test_bad_cluster_is_a_user_error_and_fit_refuses_the_strategy(monkeypatch, capsys):
    monkeypatch.setenv("TF_CONFIG", "[1, 2")
    assert finetune.main(["--demo", "--arch", "test_tiny", "--strategy", "multiworker", "--verbose", "0"]) == 2
    assert "error: TF_CONFIG is not valid JSON" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="not by model.fit"):
        make_strategy("multiworker")
