"""Tests for imgclf.training.distribute and distributed training: cluster files, mirrored and multi-worker runs.

The distributed runs are real processes (devices and the multi-worker runtime
are set up once per process): a MirroredStrategy over two logical CPUs, and
two MultiWorkerMirroredStrategy workers on loopback ports. Both must end with
the weights of a one-device run with the same global batch and seed.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from imgclf.core.errors import UsageError
from imgclf.training.config import train_config
from imgclf.training.distribute import DistributeError, WorkerRole, cpu_devices_from_env, make_strategy, read_cluster
from imgclf.training.models_job import ModelsTrainJob, run_models_train
from tests.support.mnist_data import write_mnist_npz

ROOT = Path(__file__).resolve().parents[3]
SETTINGS = {"epochs": 2, "batch_size": 50, "validation_size": 100, "ema_decay": 0.9}


def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "cluster.yml"
    path.write_text(text)
    return path


def test_cluster_file_becomes_tf_config(tmp_path):
    path = _write(tmp_path, "job_name: worker\nps_hosts: []\nworker_hosts: [a:2222, b:2222]\ntask_id: 1\n")
    assert read_cluster(path) == {"cluster": {"worker": ["a:2222", "b:2222"]}, "task": {"type": "worker", "index": 1}}
    path = _write(tmp_path, "job_name: worker\nps_hosts: 'p:1'\nworker_hosts: 'a:1,b:2'\ntask_id: 0\n")
    assert read_cluster(path)["cluster"]["worker"] == ["a:1", "b:2"]  # the TF1 flags' comma lists


@pytest.mark.parametrize("text, message", [
    ("job_name: ps\nps_hosts: [p:1]\nworker_hosts: [a:1]\ntask_id: 0\n", "parameter-server training is not supported"),
    ("job_name: chief\nworker_hosts: [a:1]\ntask_id: 0\n", "job_name .* must be 'worker'"),
    ("job_name: worker\nworker_hosts: [a:1, b:2]\ntask_id: 2\n", "task_id .* index into worker_hosts \\(0 to 1\\)"),
    ("job_name: worker\nworker_hosts: [a:1]\n", "lacks task_id"),
    ("job_name: worker\nworker_hosts: [justahost]\ntask_id: 0\n", "host:port"),
    ("- a\n- b\n", "must be a mapping"),
    ("job_name: [unclosed\n", "not a YAML cluster file"),
])
def test_bad_cluster_files(tmp_path, text, message):
    with pytest.raises(DistributeError, match=message):
        read_cluster(_write(tmp_path, text))


def test_strategy_settings_are_checked_before_tensorflow_starts(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(DistributeError, match="needs the cluster: set TF_CONFIG"):
        make_strategy("multiworker")
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1"], "ps": ["p:1"]}, '
                                    '"task": {"type": "worker", "index": 0}}')
    with pytest.raises(DistributeError, match="parameter-server training is not supported"):
        make_strategy("multiworker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(DistributeError, match="TF_CONFIG is not a cluster description"):
        make_strategy("multiworker")
    with pytest.raises(DistributeError, match="needs --strategy multiworker"):
        make_strategy("mirrored", cluster=tmp_path / "cluster.yml")
    with pytest.raises(DistributeError, match="strategy must be one of"):
        make_strategy("parameter-server")
    with pytest.raises(FileNotFoundError, match="no cluster file"):
        read_cluster(tmp_path / "missing.yml")
    monkeypatch.setenv("IMGCLF_CPU_DEVICES", "two")
    with pytest.raises(UsageError, match="IMGCLF_CPU_DEVICES"):  # a setting: exit status 2
        cpu_devices_from_env(None)
    monkeypatch.setenv("IMGCLF_CPU_DEVICES", "3")
    assert cpu_devices_from_env(None) == 3 and cpu_devices_from_env(2) == 2


def test_chief_is_worker_zero_unless_a_chief_task_exists():
    assert WorkerRole().is_chief
    assert WorkerRole("worker", 0, 2).is_chief and not WorkerRole("worker", 1, 2).is_chief
    assert not WorkerRole("worker", 0, 3, has_chief_job=True).is_chief and WorkerRole("chief", 0, 3, True).is_chief


@pytest.fixture(scope="module")
def mnist_file(tmp_path_factory):
    """600 synthetic training images (the last 100 validate: 10 global batches of 50 per epoch)."""
    return write_mnist_npz(tmp_path_factory.mktemp("mnist") / "mnist.npz", train_per_class=60, test_per_class=10)


@pytest.fixture(scope="module")
def one_device_weights(tmp_path_factory, mnist_file):
    """Weights of the MLP trained here with the default strategy (the reference for the distributed runs)."""
    root = tmp_path_factory.mktemp("one_device")
    run_models_train(ModelsTrainJob("mnist-mlp", root / "repo", train_config("mnist-mlp", **SETTINGS),
                                    data=mnist_file, save_weights=root / "weights.npz"))
    with np.load(root / "weights.npz", allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def _command(repo: Path, mnist_file: Path, weights: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "imgclf.service.cli.main", "models", "train",
            "mnist-mlp", "--model-dir", str(repo), "--data", str(mnist_file),
            "--quiet", "--save-weights", str(weights), *[f"--{k.replace('_', '-')}={v}" for k, v in SETTINGS.items()],
            *extra]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "IMGCLF_CPU_DEVICES")}
    return {**env, "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


def _assert_close(weights: Path, reference: dict, **tolerance) -> None:
    with np.load(weights, allow_pickle=False) as f:
        assert sorted(f.files) == sorted(reference)
        for key in f.files:
            np.testing.assert_allclose(f[key], reference[key], err_msg=key, **tolerance)


def test_mirrored_over_two_logical_cpus_matches_one_device(tmp_path, mnist_file, one_device_weights):
    repo = tmp_path / "repo"
    run = subprocess.run(_command(repo, mnist_file, tmp_path / "w.npz", "--strategy", "mirrored", "--cpu-devices", "2"),
                         check=False, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "20 steps over 2 replica(s) x 1 worker(s)" in run.stdout
    card = json.loads((repo / "mnist-mlp" / "1" / "model_card.json").read_text())
    assert card["training"]["strategy"] == "mirrored" and card["training"]["replicas"] == 2
    # Each replica takes half of every global batch; the summed gradients equal the one-device ones.
    _assert_close(tmp_path / "w.npz", one_device_weights, rtol=1e-4, atol=1e-5)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _run_together(commands: list[tuple[list[str], dict]], tmp_path: Path) -> tuple[list, list[str]]:
    """Start every command at once, wait up to 120 s for each, always kill what is left; return outputs."""
    procs = []
    with contextlib.ExitStack() as stack:
        logs = [stack.enter_context(open(tmp_path / f"worker{i}.log", "w+")) for i in range(len(commands))]
        try:
            for (command, env), log in zip(commands, logs):
                procs.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
            for proc in procs:
                proc.wait(timeout=120)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(30)
        output = []
        for log in logs:
            log.seek(0)
            output.append(log.read())
    return procs, output


def test_two_workers_train_identical_weights_and_only_the_chief_exports(tmp_path, mnist_file, one_device_weights):
    hosts = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    cluster = tmp_path / "cluster.yml"  # worker 0 reads the curriculum's cluster file, worker 1 TF_CONFIG
    cluster.write_text(f"job_name: worker\nps_hosts: []\nworker_hosts: [{', '.join(hosts)}]\ntask_id: 0\n")
    tf_config = json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": 1}})
    worker_tmp = tmp_path / "worker1_tmp"
    worker_tmp.mkdir()
    commands = [
        (_command(tmp_path / "repo_chief", mnist_file, tmp_path / "w0.npz", "--strategy", "multiworker",
                  "--cluster", str(cluster)), _env()),
        (_command(tmp_path / "repo_worker", mnist_file, tmp_path / "w1.npz", "--strategy", "multiworker"),
         _env(TF_CONFIG=tf_config, TMPDIR=str(worker_tmp))),
    ]
    procs, output = _run_together(commands, tmp_path)
    assert [p.returncode for p in procs] == [0, 0], output
    assert "20 steps over 2 replica(s) x 2 worker(s)" in output[0] and "exported" in output[0]
    assert "worker 1: done (the chief exports)" in output[1]

    with np.load(tmp_path / "w0.npz", allow_pickle=False) as w0, \
            np.load(tmp_path / "w1.npz", allow_pickle=False) as w1:
        for key in w0.files:
            np.testing.assert_array_equal(w0[key], w1[key], err_msg=key)  # all-reduce: the same update everywhere
    _assert_close(tmp_path / "w0.npz", one_device_weights, rtol=1e-4, atol=1e-5)

    chief = tmp_path / "repo_chief" / "mnist-mlp"
    assert sorted(p.name for p in chief.iterdir()) == ["1", "checkpoints", "runs"]
    card = json.loads((chief / "1" / "model_card.json").read_text())
    assert card["training"]["strategy"] == "multiworker" and card["training"]["workers"] == 2
    assert list(chief.glob("checkpoints/*/checkpoint"))
    assert not (tmp_path / "repo_worker").exists()  # the non-chief wrote nothing into its repository
    assert list(worker_tmp.iterdir()) == []  # and removed its temporary checkpoints
