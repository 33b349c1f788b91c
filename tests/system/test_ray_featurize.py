"""`imgclf featurize --engine ray` on a real two-node Ray cluster (tests/support/ray_cluster.py) on 127.0.0.1.

One cluster for the module: `ray start --head` plus a second node joining it (`ray start --address`),
2 logical CPUs each, 80 MB object stores; an S3-compatible server (moto, in this process) holds images
and datasets. Drivers run in this process (imgclf.service.cli.main.main) or, to be SIGKILLed, in a subprocess.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from imgclf.featurizer.images import sources
from imgclf.featurizer.store.dataset import load_features, read_manifest
from imgclf.featurizer.store.identity import FeaturizerIdentity
from imgclf.featurizer.store.object_store import open_location
from imgclf.service.cli.main import main
from tests.support import images
from tests.support.ray_cluster import RayCluster
from tests.support.s3_server import s3_server, upload_folder

ROOT = Path(__file__).resolve().parents[2]
ACTOR_TITLE = "ray::MapWorker(MapBatches(GraphActor))"


@pytest.fixture(scope="module")
def cluster():
    with s3_server() as s3_env:
        ray_cluster = RayCluster(s3_env).start()  # the nodes reach the S3 server with these credentials
        saved = {name: os.environ.get(name) for name in ray_cluster.driver_env}
        os.environ.update(ray_cluster.driver_env)
        try:
            yield ray_cluster
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            ray_cluster.stop()


def _photos(root: Path, per_class: int, size=(160, 120)) -> Path:
    for label, offset in (("cats", 0), ("dogs", 500)):
        for i in range(per_class):
            path = root / label / f"{label}_{i:03d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(images.jpeg(offset + i, size, quality=85))
    return root


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = _photos(tmp_path_factory.mktemp("ray") / "photos", per_class=8)
    (root / "dogs" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return root


@pytest.fixture(scope="module")
def local_dataset(photos, legacy_graph_path):
    dest = photos.parent / "local-ds"
    assert _featurize(photos, legacy_graph_path, dest) == 0
    return dest


def _featurize(source, graph, dest, *extra) -> int:
    return main(["featurize", str(source), "--graph", str(graph), "--precision", "fp32", "--quiet",
                 "--output-dataset", str(dest), *extra])


def _identity(dest) -> FeaturizerIdentity:
    (entry,) = read_manifest(open_location(dest))["featurizers"].values()
    return FeaturizerIdentity.from_description(entry["featurizer"])


def _shard_rows(dest) -> list[str]:
    """Return the path of every row of every shard (duplicates included)."""
    location = open_location(dest)
    paths = []
    for rel, _ in location.list_files():
        if rel.rsplit("/", 1)[-1].startswith("part-"):
            paths += pq.read_table(location.path(rel), filesystem=location.fs, columns=["path"]).column("path") \
                .to_pylist()
    return paths


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _predictions(model_dir, files, capsys):
    capsys.readouterr()
    assert main(["predict", "--model", str(model_dir), *map(str, files), "--json", "--top-k", "2"]) == 0
    return [{p["label"]: p["score"] for p in json.loads(line)["predictions"]}
            for line in capsys.readouterr().out.strip().splitlines()]


def test_s3_to_s3_on_the_cluster_equals_the_local_engine_and_trains_the_same_model(
        cluster, photos, local_dataset, legacy_graph_path, tmp_path, capsys, monkeypatch):
    upload_folder(cluster.driver_env, photos, "ray-images", "photos")
    upload_folder(cluster.driver_env, photos / "cats", "ray-features", "placeholder")  # the bucket exists
    vanishing = tmp_path / "vanishing"  # one more object, deleted after the driver lists the bucket
    (vanishing / "cats").mkdir(parents=True)
    (vanishing / "cats" / "vanishing.jpg").write_bytes(images.jpeg(99, (160, 120)))
    upload_folder(cluster.driver_env, vanishing, "ray-images", "photos")

    def list_then_delete(source):
        listed = real_listing(source)
        assert "cats/vanishing.jpg" in [image.rel_path for image in listed.entries]
        listed.location.delete("cats/vanishing.jpg")
        return listed

    real_listing = sources.open_image_source
    monkeypatch.setattr(sources, "open_image_source", list_then_delete)
    report = tmp_path / "report.json"
    assert _featurize("s3://ray-images/photos/", legacy_graph_path, "s3://ray-features/run1", "--engine", "ray",
                      "--ray-address", cluster.address, "--actors", "2", "--batch-size", "4", "--shard-rows", "5",
                      "--report", str(report)) == 0
    identity = _identity(local_dataset)
    assert _identity("s3://ray-features/run1") == identity
    remote, remote_entry = load_features("s3://ray-features/run1", identity)
    local, local_entry = load_features(local_dataset, identity)
    assert remote.paths == local.paths and len(remote.paths) == 16
    assert remote.label_names == local.label_names and remote.image_sha256 == local.image_sha256
    assert _cosines(remote.features, local.features).min() >= 0.9999
    assert [bad["path"] for bad in remote_entry["bad_files"]] == ["cats/vanishing.jpg", "dogs/broken.jpg"]
    assert remote_entry["bad_files"][1:] == local_entry["bad_files"]  # the undecodable one, as the local engine says
    assert remote_entry["bad_files"][0]["reason"].startswith("cannot read file: ")  # skipped, reported, job done
    summary = json.loads(report.read_text())
    assert summary["skipped"] == remote_entry["bad_files"]
    assert (summary["computed"], summary["featurized"], summary["dataset"]["shards"]) == (16, 16, 4)
    assert sorted(_shard_rows("s3://ray-features/run1")) == remote.paths  # every image once
    models = tmp_path / "models"
    for name, features in (("from-bucket", "s3://ray-features/run1"), ("from-local", str(local_dataset))):
        assert main(["train", "--features", features, "--graph", str(legacy_graph_path), "--precision", "fp32",
                     "--model-dir", str(models), "--name", name, "--quiet", "--seed", "3",
                     "--publish", "always"]) == 0  # 8 photos a class: too few to pass the publish gate
    files = [photos / "cats" / "cats_001.jpg", photos / "dogs" / "dogs_002.jpg", photos / "dogs" / "dogs_005.jpg"]
    bucket, local_predictions = (_predictions(models / n / "1", files, capsys) for n in ("from-bucket", "from-local"))
    for got, want in zip(bucket, local_predictions):
        assert max(got, key=got.get) == max(want, key=want.get)
        assert all(abs(got[k] - want[k]) < 1e-3 for k in want)


@pytest.fixture(scope="module")
def many_photos(tmp_path_factory):
    return _photos(tmp_path_factory.mktemp("ray-many") / "photos", per_class=30, size=(64, 48))


def _wait_for_a_shard(dest: Path, timeout: float, still_running) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and still_running():
        if any(dest.glob("featurizer-*/part-*.parquet")):
            return True
        time.sleep(0.02)
    return False


def test_a_sigkilled_actor_is_restarted_and_every_image_is_featurized_once(cluster, many_photos,
                                                                            legacy_graph_path, tmp_path):
    dest, report, killed = tmp_path / "ds", tmp_path / "r.json", []
    done = threading.Event()

    def kill_the_actor_mid_job():
        if _wait_for_a_shard(dest, 150, lambda: not done.is_set()):
            for pid in cluster.processes_titled(ACTOR_TITLE):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    killer = threading.Thread(target=kill_the_actor_mid_job, daemon=True)
    killer.start()
    try:
        # --precision auto: the identity comes from a task on a node, as for GPU actors (bf16 here with AMX)
        code = _featurize(many_photos, legacy_graph_path, dest, "--engine", "ray", "--ray-address", cluster.address,
                          "--batch-size", "2", "--shard-rows", "4", "--report", str(report), "--precision", "auto")
    finally:
        done.set()
        killer.join(10)
    assert killed, "the job ended before the actor could be killed"
    assert code == 0
    rows = load_features(dest, _identity(dest))[0].paths
    assert len(rows) == 60 and sorted(_shard_rows(dest)) == rows  # all there, each once
    summary = json.loads(report.read_text())
    assert summary["computed"] == 60
    from imgclf.core.precision import resolve_precision

    assert summary["featurizer"]["precision"] == _identity(dest).precision == resolve_precision("auto")


def test_a_sigkilled_driver_resumes_from_its_shards_and_duplicates_nothing(cluster, many_photos,
                                                                           legacy_graph_path, tmp_path):
    dest, report = tmp_path / "ds", tmp_path / "r.json"
    command = [sys.executable, "-m", "imgclf.service.cli.main", "featurize", str(many_photos), "--graph",
               str(legacy_graph_path), "--precision", "fp32", "--quiet", "--output-dataset", str(dest),
               "--engine", "ray", "--ray-address", cluster.address, "--batch-size", "2", "--shard-rows", "2"]
    driver = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert _wait_for_a_shard(dest, 150, lambda: driver.poll() is None), "no shard before the driver ended"
        driver.send_signal(signal.SIGKILL)
        driver.wait(30)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(30)
    before = _shard_rows(dest)
    assert 0 < len(before) < 60 and len(set(before)) == len(before)
    assert _featurize(many_photos, legacy_graph_path, dest, "--engine", "ray", "--ray-address", cluster.address,
                      "--batch-size", "8", "--report", str(report)) == 0
    result = json.loads(report.read_text())
    assert (result["from_cache"], result["computed"]) == (len(before), 60 - len(before))
    after = _shard_rows(dest)
    assert len(after) == 60 and sorted(after) == load_features(dest, _identity(dest))[0].paths
