"""Layers computed on a Dask cluster on loopback equal those of a local run."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from pytest_setol import distributed
from pytest_setol.analysis import analyze
from pytest_setol.errors import SetolError
from tests.conftest import heavy_tailed_matrix

pytest.importorskip("distributed")


def without_timings(document: dict) -> dict:
    """Drop the wall-clock fields, the only ones that differ between runs."""
    for checkpoint in document["checkpoints"]:
        if checkpoint.get("summary"):
            checkpoint["summary"].pop("seconds")
        for layer in checkpoint["layers"]:
            layer.pop("seconds")
    return document


@pytest.fixture(scope="module")
def cluster():
    """A two-worker cluster of separate processes, listening on 127.0.0.1 only."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    ) as local:
        yield local


@pytest.fixture
def model(make_checkpoint):
    rng = np.random.default_rng(0)
    tensors = {
        f"block.{index}.weight": heavy_tailed_matrix(240, 96, rng).astype(np.float32)
        for index in range(6)
    }
    tensors["conv.weight"] = rng.standard_t(3.0, size=(32, 16, 3, 3)).astype(np.float32)
    tensors["tiny.weight"] = heavy_tailed_matrix(20, 10, rng)
    return make_checkpoint(tensors)


def test_cluster_equals_local(cluster, model):
    local = analyze(model, device="cpu")
    remote = analyze(model, device="cpu", scheduler=cluster.scheduler_address)
    assert without_timings(remote.to_dict()) == without_timings(local.to_dict())
    statuses = {layer.status for layer in remote.checkpoints[0].layers}
    assert "skipped" in statuses


def test_cluster_used_both_workers(cluster, model):
    from distributed import Client

    analyze(model, device="cpu", scheduler=cluster.scheduler_address)
    with Client(cluster.scheduler_address, set_as_default=False) as client:
        runs = client.run(lambda: len(distributed._worker_analyses))
    assert len(runs) == 2
    assert all(count >= 1 for count in runs.values())


def test_cli_scheduler_equals_local(cluster, model):
    def report(*extra: str) -> dict:
        done = subprocess.run(
            [sys.executable, "-m", "pytest_setol.cli", "report", "--format", "json"]
            + ["--no-cache", "--device", "cpu", *extra, str(model)],
            capture_output=True,
            text=True,
        )
        assert done.returncode in (0, 1), done.stderr
        return json.loads(done.stdout)

    local = report()
    remote = report("--scheduler", cluster.scheduler_address)
    assert without_timings(remote) == without_timings(local)


def test_in_memory_weights_rejected(cluster):
    weights = {"w": heavy_tailed_matrix(100, 60, np.random.default_rng(1))}
    with pytest.raises(SetolError, match="in-memory weights"):
        analyze(weights, device="cpu", scheduler=cluster.scheduler_address)


def test_unreachable_scheduler_named(monkeypatch, model):
    monkeypatch.setattr(distributed, "CONNECT_TIMEOUT", 1)
    with pytest.raises(SetolError, match="cannot connect to the Dask scheduler"):
        analyze(model, device="cpu", scheduler="tcp://127.0.0.1:9")
