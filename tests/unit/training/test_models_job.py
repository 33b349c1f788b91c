"""Tests for training and exporting the secondary models (quadratic, MNIST MLP, LeNet-5).

Each model is trained once per module, in this process with the default
strategy, on the generated curve or a small synthetic mnist.npz. The exports
are loaded back in a fresh process, and a run killed with SIGKILL is resumed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from imgclf.core import export_names as names
from imgclf.core.errors import ModelNotFound
from imgclf.models.config import spec_for
from imgclf.models.data import X_RANGE, quadratic
from imgclf.models.serving import is_secondary, load_secondary
from imgclf.training.config import train_config
from imgclf.training.models_job import ModelsTrainJob, load_data, run_models_train, settings_key
from tests.support.mnist_data import write_mnist_npz

ROOT = Path(__file__).resolve().parents[3]
# The quadratic's test RMSE (raw y, which spans 0-101) after 200 epochs at the defaults is ~0.3;
# the threshold leaves room for other CPUs' rounding while still failing a poor fit.
QUADRATIC_RMSE_LIMIT = 1.0
QUADRATIC_SETTINGS = {"epochs": 200, "checkpoint_epochs": 20}


@pytest.fixture(scope="module")
def mnist_file(tmp_path_factory):
    """A synthetic mnist.npz: 1,000 training images (the last 200 validate), 300 test images."""
    return write_mnist_npz(tmp_path_factory.mktemp("mnist") / "mnist.npz")


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return tmp_path_factory.mktemp("models_repo")


@pytest.fixture(scope="module")
def quadratic_run(repo):
    return run_models_train(ModelsTrainJob("quadratic", repo, train_config("quadratic", **QUADRATIC_SETTINGS)))


@pytest.fixture(scope="module")
def mlp_run(repo, mnist_file):
    # lr 0.3: the default (0.1) suits batches of 100 over ~1,300+ images; these 800 synthetic digits in
    # batches of 50 for 20 epochs need a larger step to get far above chance.
    config = train_config("mnist-mlp", epochs=20, batch_size=50, validation_size=200, ema_decay=0.99,
                          learning_rate=0.3)
    rows = []
    outcome = run_models_train(ModelsTrainJob("mnist-mlp", repo, config, data=mnist_file), on_epoch=rows.append)
    return outcome, rows


@pytest.fixture(scope="module")
def lenet_run(repo, mnist_file):
    config = train_config("lenet5", epochs=5, batch_size=50, validation_size=200, optimizer="adam")
    return run_models_train(ModelsTrainJob("lenet5", repo, config, data=mnist_file, dropout=0.25))


def test_quadratic_fits_the_curve(quadratic_run):
    metrics = quadratic_run.metrics
    assert metrics["test"]["rmse"] < QUADRATIC_RMSE_LIMIT, metrics
    assert metrics["train"]["rmse"] < QUADRATIC_RMSE_LIMIT
    assert quadratic_run.fit.steps == 200 * (2000 // 20)
    x = np.linspace(*X_RANGE, 7, dtype=np.float32)[:, None]
    y = load_secondary(quadratic_run.version_dir).predict(x)["y"]
    np.testing.assert_allclose(y[:, 0], quadratic(x[:, 0]), atol=4 * QUADRATIC_RMSE_LIMIT)


def test_digit_models_learn_the_synthetic_digits(mlp_run, lenet_run):
    mlp, rows = mlp_run
    for outcome in (mlp, lenet_run):
        assert outcome.metrics["test"]["accuracy"] >= 0.8, (outcome.version_dir, outcome.metrics)  # chance is 0.1
        assert outcome.metrics["validation"]["accuracy"] >= 0.75
    assert [row["epoch"] for row in rows] == list(range(1, 21))
    assert rows[-1]["steps"] == 20 * 800 // 50
    assert rows[0]["learning_rate"] > rows[-1]["learning_rate"]  # exponential decay
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]


def _card(outcome) -> dict:
    return json.loads((outcome.version_dir / names.MODEL_CARD_FILE).read_text())


def test_export_layout_and_model_card(quadratic_run, mlp_run, lenet_run, repo):
    mlp = mlp_run[0]
    assert quadratic_run.version_dir == repo / "quadratic" / "1"
    assert mlp.version_dir == repo / "mnist-mlp" / "1" and lenet_run.version_dir == repo / "lenet5" / "1"
    for outcome in (quadratic_run, mlp, lenet_run):
        files = {p.name for p in outcome.version_dir.iterdir()}
        assert {"saved_model.pb", "variables", "model_card.json"} <= files
        assert not [p for p in outcome.version_dir.parent.iterdir() if p.name.startswith(".export-")]
        card = _card(outcome)
        assert card["format"] == "imgclf-model-card/1" and card["version"] == 1 and card["created_utc"]
        assert card["signature"]["name"] == "serving_default"
        assert card["library_versions"]["tensorflow"]
        assert card["training"]["strategy"] == "default" and card["training"]["replicas"] == 1
        assert is_secondary(card)

    card = _card(quadratic_run)
    assert (card["name"], card["kind"], card["model"], card["labels"]) == ("quadratic", "regression", "quadratic", [])
    assert card["signature"]["inputs"] == {"x": {"dtype": "float32", "shape": [-1, 1], "meaning": "raw x"}}
    assert card["signature"]["outputs"]["y"]["shape"] == [-1, 1]
    assert card["normalization"] == pytest.approx({"x_min": -20, "x_max": 20, "y_min": quadratic(2.5).item(),
                                                   "y_max": 101}, abs=1e-3)
    assert card["input_range"] == [-20, 20]
    assert card["splits"] == {"train": 2000, "validation": 0, "test": 1500}
    assert card["metrics"]["test"]["rmse"] == pytest.approx(quadratic_run.metrics["test"]["rmse"])
    assert not (quadratic_run.version_dir / names.LABELS_FILE).exists()

    for outcome, model in ((mlp, "mnist-mlp"), (lenet_run, "lenet5")):
        card = _card(outcome)
        assert (card["name"], card["kind"], card["model"]) == (model, "digit-classifier", model)
        assert card["labels"] == [str(d) for d in range(10)]
        assert (outcome.version_dir / names.LABELS_FILE).read_text().splitlines() == card["labels"]
        assert card["signature"]["inputs"]["images"]["shape"] == [-1, 28, 28]
        assert card["signature"]["outputs"]["probabilities"] == {"dtype": "float32", "shape": [-1, 10]}
        assert card["signature"]["outputs"]["classes"]["dtype"] == "int64"
        assert card["input_range"] == [0, 1]
        assert card["splits"] == {"train": 800, "validation": 200, "test": 300}
        assert set(card["metrics"]) == {"test", "validation"}
        assert card["data"]["sha256"]
    assert _card(mlp)["training"]["ema_decay"] == 0.99 and _card(lenet_run)["training"]["net"]["dropout"] == 0.25


_RELOAD = """
import sys, numpy as np
from imgclf.models.serving import load_secondary
inputs = np.load(sys.argv[1], allow_pickle=False)
outputs = {}
for key in inputs.files:
    model = load_secondary(key.replace("~", "/"))
    for name, value in model.predict(inputs[key]).items():
        outputs[key + ":" + name] = value
np.savez(sys.argv[2], **outputs)
"""


def test_fresh_process_reproduces_in_memory_predictions(quadratic_run, mlp_run, lenet_run, mnist_file, tmp_path):
    import tensorflow as tf

    x = np.linspace(-25, 25, 101, dtype=np.float32)[:, None]  # a little beyond the training range too
    with np.load(mnist_file, allow_pickle=False) as f:
        images = (f["x_test"][:64] / 255.0).astype(np.float32)
    norm = _card(quadratic_run)["normalization"]
    x01 = ((x - norm["x_min"]) / (norm["x_max"] - norm["x_min"])).astype(np.float32)
    expected = {"quadratic": np.asarray(quadratic_run.fit.model(x01)) * (norm["y_max"] - norm["y_min"]) + norm["y_min"]}
    for outcome, key in ((mlp_run[0], "mnist-mlp"), (lenet_run, "lenet5")):
        expected[key] = tf.nn.softmax(outcome.fit.model(images)).numpy()
    runs = {"quadratic": quadratic_run, "mnist-mlp": mlp_run[0], "lenet5": lenet_run}
    inputs = {str(runs[k].version_dir).replace("/", "~"): (x if k == "quadratic" else images) for k in runs}
    np.savez(tmp_path / "in.npz", **inputs)
    subprocess.run([sys.executable, "-c", _RELOAD, str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
                   cwd=ROOT, check=True, timeout=120, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    with np.load(tmp_path / "out.npz", allow_pickle=False) as out:
        for key, outcome in runs.items():
            prefix = str(outcome.version_dir).replace("/", "~") + ":"
            if key == "quadratic":
                assert out[prefix + "y"].dtype == np.float32 and out[prefix + "y"].shape == (101, 1)
                # Within 1e-5 in the network's own output units: de-normalising multiplies the
                # float32 rounding of the output layer by the y range (~101).
                y_range = norm["y_max"] - norm["y_min"]
                np.testing.assert_allclose(out[prefix + "y"] / y_range, expected[key] / y_range, rtol=1e-5,
                                           atol=1e-5)
            else:
                np.testing.assert_allclose(out[prefix + "probabilities"], expected[key], rtol=1e-5, atol=1e-5)
                classes = out[prefix + "classes"]
                assert classes.dtype == np.int64
                np.testing.assert_array_equal(classes, expected[key].argmax(axis=1))


BAD_INPUTS = [
    ("quadratic", np.zeros((3,), np.float32), "x must have shape \\[N, 1\\]; received shape \\[3\\]"),
    ("quadratic", np.zeros((3, 2), np.float32), "received shape \\[3, 2\\]"),
    ("quadratic", np.array([[1.0], [np.nan]]), "1 NaN or infinite"),
    ("quadratic", np.array([["a"]]), "real numbers .*received dtype <U1"),
    ("quadratic", np.array([[True]]), "real numbers .*bool"),
    ("quadratic", [[1.0], [2.0, 3.0]], "ragged"),
    ("mnist-mlp", np.zeros((2, 28, 28, 1), np.float32), "images must have shape \\[N, 28, 28\\]"),
    ("mnist-mlp", np.zeros((2, 784), np.float32), "received shape \\[2, 784\\]"),
    ("mnist-mlp", np.full((1, 28, 28), 255.0), "pixels must be in \\[0, 1\\] .*to 255"),
    ("lenet5", np.full((1, 28, 28), np.inf, np.float32), "784 NaN or infinite"),
]


@pytest.mark.parametrize("model, batch, message", BAD_INPUTS)
def test_predict_rejects_bad_batches(quadratic_run, mlp_run, lenet_run, model, batch, message):
    runs = {"quadratic": quadratic_run, "mnist-mlp": mlp_run[0], "lenet5": lenet_run}
    with pytest.raises(ValueError, match=message):
        load_secondary(runs[model].version_dir).predict(batch)


def test_loaded_model_attributes_and_accepted_inputs(quadratic_run, lenet_run):
    model = load_secondary(quadratic_run.version_dir)
    assert (model.name, model.version, model.kind, model.labels) == ("quadratic", 1, "regression", [])
    assert model.card["model"] == "quadratic"
    assert model.predict([[0], [1]])["y"].shape == (2, 1)  # integer lists become float32
    assert model.predict(np.zeros((0, 1)))["y"].shape == (0, 1)
    digits = load_secondary(lenet_run.version_dir)
    assert digits.labels == [str(d) for d in range(10)] and digits.kind == "digit-classifier"
    out = digits.predict(np.zeros((3, 28, 28), np.float64))
    assert out["probabilities"].shape == (3, 10) and out["probabilities"].dtype == np.float32
    np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, rtol=1e-5)


def test_is_secondary_and_loader_refusals(tmp_path, quadratic_run):
    assert is_secondary({"kind": "regression"}) and is_secondary({"kind": "digit-classifier"})
    assert not is_secondary({"labels": ["a", "b"]}) and not is_secondary([])
    with pytest.raises(ModelNotFound, match="missing saved_model.pb, model_card.json"):
        load_secondary(tmp_path)
    import shutil

    image_model = tmp_path / "shapes" / "1"
    shutil.copytree(quadratic_run.version_dir, image_model)
    card = _card(quadratic_run)
    del card["kind"]
    (image_model / names.MODEL_CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ModelNotFound, match="not a secondary model"):
        load_secondary(image_model)


def _scalars(logdir: Path) -> dict[str, list[float]]:
    import tensorflow as tf

    found: dict[str, list[float]] = {}
    for event_file in logdir.rglob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            for value in event.summary.value:
                tag = f"{event_file.parent.name}/{value.tag}"
                found.setdefault(tag, []).append(float(tf.make_ndarray(value.tensor)))
    return found


def test_tensorboard_scalars(quadratic_run, mlp_run):
    quad = _scalars(Path(quadratic_run.card["training"]["logdir"]))
    assert set(quad) == {"train/loss", "train/rmse", "train/learning_rate"}
    assert len(quad["train/rmse"]) == 200 and quad["train/rmse"][-1] < quad["train/rmse"][0]
    mlp = _scalars(Path(mlp_run[0].card["training"]["logdir"]))
    assert set(mlp) == {"train/loss", "train/accuracy", "train/learning_rate", "validation/loss",
                        "validation/accuracy"}
    assert len(mlp["validation/accuracy"]) == 20


def test_rerun_exports_the_same_weights_and_longer_runs_continue(quadratic_run, repo):
    again = run_models_train(ModelsTrainJob("quadratic", repo, train_config("quadratic", **QUADRATIC_SETTINGS)))
    assert again.version_dir == repo / "quadratic" / "2"
    assert again.fit.resumed_from_epoch == 200 and again.fit.history == []
    assert again.metrics["test"]["rmse"] == pytest.approx(quadratic_run.metrics["test"]["rmse"], rel=1e-6)
    # The checkpoint directory does not depend on --epochs: a longer run continues the finished one.
    longer = run_models_train(ModelsTrainJob("quadratic", repo, train_config("quadratic", **{
        **QUADRATIC_SETTINGS, "epochs": 205})))
    assert longer.fit.resumed_from_epoch == 200
    assert [row["epoch"] for row in longer.fit.history] == list(range(201, 206))
    assert longer.fit.steps == 205 * 100 and longer.version_dir == repo / "quadratic" / "3"
    with pytest.raises(ValueError, match="is at epoch 205, beyond --epochs 100"):
        run_models_train(ModelsTrainJob("quadratic", repo, train_config("quadratic", epochs=100, checkpoint_epochs=20)))
    assert sorted(p.name for p in (repo / "quadratic").iterdir() if p.name.isdigit()) == ["1", "2", "3"]


def _train_command(repo: Path) -> list[str]:
    return [sys.executable, "-m", "imgclf.service.cli.main", "models", "train",
            "quadratic", "--model-dir", str(repo), "--quiet",
            *[f"--{k.replace('_', '-')}={v}" for k, v in QUADRATIC_SETTINGS.items()]]


def test_sigkilled_run_resumes_from_its_checkpoint(quadratic_run, tmp_path):
    """Kill a run right after its first checkpoint; the same command resumes it and matches an unbroken run."""
    repo = tmp_path / "repo"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen(_train_command(repo), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not list(repo.glob("quadratic/checkpoints/*/checkpoint")):
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    assert not (repo / "quadratic" / "1").exists()

    rerun = subprocess.run(_train_command(repo), check=False, cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    card = json.loads((repo / "quadratic" / "1" / names.MODEL_CARD_FILE).read_text())
    resumed = card["training"]["resumed_from_epoch"]
    assert resumed % 20 == 0 and 20 <= resumed < 200, resumed
    assert f"resumed from the checkpoint at epoch {resumed}" in rerun.stdout
    assert card["training"]["steps"] == quadratic_run.fit.steps
    assert card["training"]["final_epoch"]["epoch"] == 200
    # Batch order depends only on (seed, epoch): the resumed run ends where the unbroken one did.
    assert card["metrics"]["test"]["rmse"] == pytest.approx(quadratic_run.metrics["test"]["rmse"], rel=1e-4)
    x = np.linspace(-20, 20, 9, dtype=np.float32)[:, None]
    np.testing.assert_allclose(load_secondary(repo / "quadratic" / "1").predict(x)["y"],
                               load_secondary(quadratic_run.version_dir).predict(x)["y"], rtol=1e-5, atol=1e-5)


def test_cli_is_registered_and_reports_errors(tmp_path, monkeypatch, capsys):
    from imgclf.core.paths import model_repository
    from imgclf.service.cli.main import build_parser, main

    monkeypatch.setenv("IMGCLF_MODEL_REPOSITORY", str(tmp_path / "env_repo"))
    args = build_parser().parse_args(["models", "train", "lenet5", "--strategy", "mirrored", "--cpu-devices", "2"])
    assert model_repository(args.model_dir) == tmp_path / "env_repo" and args.model == "lenet5"
    assert args.cpu_devices == 2
    assert build_parser().parse_args(["models", "fetch-mnist"]).func.__name__ == "cmd_fetch_mnist"

    monkeypatch.setenv("IMGCLF_HOME", str(tmp_path / "home"))
    assert main(["models", "train", "mnist-mlp"]) == 1
    assert "no MNIST file at" in capsys.readouterr().err
    assert main(["models", "train", "quadratic", "--epochs", "0"]) == 2
    assert "epochs must be an integer >= 1; received 0" in capsys.readouterr().err
    assert main(["models", "train", "quadratic", "--batch-size", "5000", "--model-dir", str(tmp_path)]) == 2
    assert "larger than the training set (2000 examples)" in capsys.readouterr().err
    assert main(["models", "train", "quadratic", "--dropout", "0.5"]) == 2
    assert "--dropout applies to the digit models" in capsys.readouterr().err
    assert main(["models", "train", "quadratic", "--name", "../x"]) == 2
    assert "model name must be" in capsys.readouterr().err
    monkeypatch.delenv("IMGCLF_MODEL_REPOSITORY")
    args = build_parser().parse_args(["models", "train", "quadratic"])
    assert model_repository(args.model_dir) == Path("models")  # the one rule: flag, variable, ./models


def test_a_secondary_export_removes_work_dirs_left_by_killed_exports(tmp_path):
    stale = tmp_path / "quadratic" / f"{names.TEMP_PREFIX}killed"
    (stale / "variables").mkdir(parents=True)
    (stale / "saved_model.pb").write_bytes(b"half")
    hours_ago = time.time() - 2 * 3600
    for path in (stale / "saved_model.pb", stale / "variables", stale):
        os.utime(path, (hours_ago, hours_ago))
    outcome = run_models_train(ModelsTrainJob("quadratic", tmp_path, train_config("quadratic", epochs=2)))
    assert not stale.exists() and outcome.version_dir == tmp_path / "quadratic" / "1"


def test_secondary_models_are_not_calibrated_and_their_checkpoint_key_ignores_calibration():
    config = train_config("quadratic")
    assert config.calibration == "none"  # the card records what was done: temperature scaling is the head's
    net, data = spec_for("quadratic").net, load_data("quadratic", None, None)
    key = settings_key("quadratic", net, config, data)
    # Calibration follows training: checkpoints made before the field existed still resume.
    assert settings_key("quadratic", net, dataclasses.replace(config, calibration="temperature"), data) == key
    assert settings_key("quadratic", net, dataclasses.replace(config, seed=1), data) != key
