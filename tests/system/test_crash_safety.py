"""`imgclf train` SIGKILLed at random points: the cache keeps every committed feature, the repository whole versions.

Each run is a real ``imgclf train`` process on the tiny 2015-style graph, killed
when its progress reaches a point drawn by a seeded RNG (``IMGCLF_CRASH_SEED``
picks other points): a number of committed cache rows while it featurizes, a
delay after its export's work directory appears, the moment its model card is
written (during the sync and rename), the moment the new version is published.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imgclf.core import export_names as names
from imgclf.core import repository
from imgclf.core.repository import integer_dirs, is_complete, list_models, list_versions, resolve
from imgclf.featurizer.runtime.featurizer import FeaturizerConfig
from imgclf.service import create_app
from imgclf.training.gate import GateConfig
from imgclf.training.train_job import TrainJob, run_train
from tests.support import images

ROOT = Path(__file__).resolve().parents[2]
SEED = int(os.environ.get("IMGCLF_CRASH_SEED", "7"))
RUN_TIMEOUT_S = 120  # one training run on a few dozen small images takes seconds


def cache_rows(path: Path) -> dict[tuple[str, str], bytes]:
    """Return {(featurizer fingerprint, image key): vector bytes} of every committed row (read-only)."""
    if not path.exists():
        return {}
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {(fp, key): blob for fp, key, blob in
                conn.execute("SELECT fingerprint, image_sha256, vector FROM features")}
    except sqlite3.OperationalError:  # no schema yet
        return {}
    finally:
        conn.close()


def integrity(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def train_command(image_dir: Path, graph: Path, cache: Path, repo: Path, name: str) -> list[str]:
    return [sys.executable, "-m", "imgclf.service.cli.main", "train", str(image_dir), "--graph", str(graph), "--cache",
            str(cache), "--model-dir", str(repo), "--name", name, "--precision", "fp32", "--quiet",
            "--batch-size", "2", "--decode-threads", "1",
            "--publish", "always"]  # random photos: nothing to learn, and these runs are about crashes


def run_and_kill(command: list[str], trigger, delay: float, log: Path) -> bool:
    """Run ``command``; SIGKILL it ``delay`` s after ``trigger()`` first holds. Return whether it was killed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while proc.poll() is None and not trigger():
            if time.monotonic() > deadline:
                pytest.fail(f"{command} did not reach its kill point in {RUN_TIMEOUT_S} s:\n{log.read_text()}")
            time.sleep(0.005)
        time.sleep(delay)
        killed = proc.poll() is None
        if killed:
            proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        if not killed:
            assert proc.returncode == 0, log.read_text(errors="replace")
        return killed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def photo_set(root: Path, per_class: int) -> Path:
    """Write two classes of small photo-like JPEGs."""
    for label, offset in (("cats", 0), ("dogs", 500)):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (root / label / f"{i:03d}.jpg").write_bytes(images.jpeg(offset + i, (96, 72), quality=80))
    return root


def test_train_killed_while_featurizing_keeps_every_committed_feature(tmp_path, legacy_graph_path):
    rng = random.Random(SEED)
    total = 48
    data = photo_set(tmp_path / "photos", per_class=total // 2)
    cache, repo = tmp_path / "features.sqlite", tmp_path / "models"
    command = train_command(data, legacy_graph_path, cache, repo, "pets")
    points = sorted(rng.sample(range(2, total - 8), 2))  # committed rows to wait for before each SIGKILL
    seen = f"seed {SEED}, kills at {points} committed rows"
    committed: dict = {}
    for number, rows in enumerate(points):
        killed = run_and_kill(command, lambda rows=rows: len(cache_rows(cache)) >= rows, 0.0,
                              tmp_path / f"run{number}.log")
        now = cache_rows(cache)
        assert killed and len(now) < total, f"{seen}: run {number} finished featurizing before its kill"
        assert integrity(cache) == "ok", seen
        lost = [key for key, blob in committed.items() if now.get(key) != blob]
        assert not lost, f"{seen}: run {number} lost or changed {len(lost)} committed rows"
        assert list_models(repo) == {} and not integer_dirs(repo / "pets"), seen
        committed = now
    outcome = run_train(TrainJob(image_dir=data, featurizer=FeaturizerConfig(legacy_graph_path, precision="fp32"),
                                 cache=cache, model_dir=repo, name="pets", batch_size=2, progress=False,
                                 gate=GateConfig(publish="always")))
    final = cache_rows(cache)
    assert len(final) == total and all(final[key] == blob for key, blob in committed.items()), seen
    assert outcome.dataset.extract.cached == len(committed), seen  # the rerun computed only the rest
    assert integrity(cache) == "ok" and list_models(repo) == {"pets": [1]}, seen


def work_dirs(model_dir: Path) -> set[Path]:
    return set(model_dir.glob(f"{names.TEMP_PREFIX}*"))


def predict(client, jpeg: bytes) -> tuple[int, str, float]:
    response = client.post("/predict", data=jpeg, content_type="image/jpeg")
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    return body["version"], body["predictions"][0]["label"], body["predictions"][0]["score"]


def test_an_export_killed_mid_write_leaves_no_version_and_the_server_keeps_the_previous_one(
        tmp_path, model_repo, legacy_graph_path):
    rng = random.Random(SEED)
    repo, cache = tmp_path / "models", tmp_path / "features.sqlite"
    shutil.copytree(model_repo, repo)  # "shapes" version 1
    with sqlite3.connect(model_repo.parent / "features.sqlite") as source, sqlite3.connect(cache) as copy:
        source.backup(copy)  # every feature cached: the runs go straight to training and export
    image_dir, model_dir = model_repo.parent / "images", repo / "shapes"
    command = train_command(image_dir, legacy_graph_path, cache, repo, "shapes")
    jpeg = sorted((image_dir / "sunsets").glob("*.jpg"))[0].read_bytes()
    # No poller: the running app must keep version 1 until told to look (below), however long the kills take.
    running = create_app({"model_repository": repo, "load_in_background": False, "poll_seconds": 0})
    client = running.test_client()
    reference = predict(client, jpeg)
    assert reference[0] == 1
    rows = cache_rows(cache)

    points = [("work dir appears", rng.uniform(0.0, 1.0)), ("model card written", rng.uniform(0.0, 0.01)),
              ("version published", 0.0)]
    seen = f"seed {SEED}, kill points " + ", ".join(f"{what} + {delay:.3f} s" for what, delay in points)
    mid_write, landed = 0, []
    for number, (what, delay) in enumerate(points):
        before, dirs_before = list_versions(repo, "shapes"), work_dirs(model_dir)

        def trigger(what=what, before=before, dirs_before=dirs_before):
            new = work_dirs(model_dir) - dirs_before
            if what == "work dir appears":
                return bool(new)
            if what == "model card written":
                return any((d / names.MODEL_CARD_FILE).exists() for d in new)
            return len(integer_dirs(model_dir)) > len(before)

        killed = run_and_kill(command, trigger, delay, tmp_path / f"run{number}.log")
        after = list_versions(repo, "shapes")
        assert all(is_complete(d) for d in integer_dirs(model_dir).values()), f"{seen}: a half version is visible"
        assert after in (before, before + [before[-1] + 1]), f"{seen}: versions {before} -> {after}"
        if after == before:  # killed before the rename: only a hidden work directory is left
            assert killed and len(work_dirs(model_dir) - dirs_before) == 1, seen
            assert resolve(model_dir) == model_dir / str(before[-1]), seen
            mid_write += 1
        landed.append(f"{what}: {'mid-write' if after == before else 'after publishing'}")
        assert integrity(cache) == "ok" and cache_rows(cache) == rows, seen
    seen += f" ({'; '.join(landed)})"
    print(seen)
    assert mid_write >= 1, f"{seen}: no kill landed in the middle of an export"
    assert list_models(repo) == {"shapes": list_versions(repo, "shapes")}

    # The running app still serves version 1; a fresh one loads the newest complete version.
    assert client.get("/readyz").status_code == 200
    version, label, score = predict(client, jpeg)
    assert (version, label) == reference[:2] and score == pytest.approx(reference[2], abs=1e-6), seen
    # One poll of the repository brings in the newest complete version and nothing from the work directories.
    running.extensions["imgclf.models"].sync()
    assert predict(client, jpeg)[0] == max(list_versions(repo, "shapes")), seen
    fresh = create_app({"model_repository": repo, "load_in_background": False, "poll_seconds": 0})
    assert fresh.test_client().get("/readyz").status_code == 200
    assert predict(fresh.test_client(), jpeg)[0] == max(list_versions(repo, "shapes")), seen
    for app in (running, fresh):
        app.extensions["imgclf.models"].close()

    # The next export publishes the next version; leftovers untouched for an hour are removed, younger
    # ones (maybe another export's, running now) stay.
    leftovers = sorted(work_dirs(model_dir))
    old = leftovers[0]
    for path in (old, *old.rglob("*")):
        os.utime(path, (time.time() - 2 * repository.STALE_WORK_DIR_SECONDS,) * 2, follow_symlinks=False)
    newest = max(list_versions(repo, "shapes"))
    outcome = run_train(TrainJob(image_dir=image_dir, featurizer=FeaturizerConfig(legacy_graph_path, precision="fp32"),
                                 cache=cache, model_dir=repo, name="shapes", batch_size=2, progress=False,
                                 gate=GateConfig(publish="always")))
    assert outcome.version_dir == model_dir / str(newest + 1) and is_complete(outcome.version_dir), seen
    assert work_dirs(model_dir) == set(leftovers[1:]), seen


def test_only_stale_work_dirs_are_removed(tmp_path):
    model_dir = tmp_path / "pets"
    stale, fresh, touched = (model_dir / f"{names.TEMP_PREFIX}{n}" for n in ("stale", "fresh", "touched"))
    for work in (stale, fresh, touched):
        (work / "variables").mkdir(parents=True)
        (work / "variables" / "data").write_bytes(b"x")
    (model_dir / "1").mkdir()
    long_ago = time.time() - 2 * repository.STALE_WORK_DIR_SECONDS
    for path in (*stale.rglob("*"), stale, touched, touched / "variables"):
        os.utime(path, (long_ago, long_ago))
    assert repository.remove_stale_work_dirs(model_dir) == [stale]  # "touched" has a file written just now
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(["1", fresh.name, touched.name])
