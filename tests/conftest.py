"""Shared fixtures: every graph, image and data set is built by the tests themselves."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Test apps serve in fp32: the bf16 switch is process-wide and would change the in-process
# references other tests compare against. tests/test_serve_precision.py checks bf16 in a subprocess.
os.environ.setdefault("IMGCLF_PRECISION", "fp32")

import pytest


@pytest.fixture(scope="session")
def legacy_graph_path(tmp_path_factory):
    """A tiny frozen graph with the 2015 interface and old ops (producer < 9)."""
    from tests.support.legacy_graph import write_legacy_graph

    return write_legacy_graph(tmp_path_factory.mktemp("graphs") / "legacy_inception.pb")


@pytest.fixture(scope="session")
def full_graph_path(tmp_path_factory):
    """A full-size Inception-v3 graph (seeded random weights) with the 2015 interface."""
    from imgclf.featurizer.export_inception import export_inception

    path = tmp_path_factory.mktemp("graphs") / "inception_random.pb"
    export_inception(path, weights="random", seed=0)
    return path


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory, legacy_graph_path):
    """A model repository with one trained image classifier, "shapes" version 1 (tiny legacy graph).

    Trained on the demo image set (bubbles, checkers, stripes, sunsets; 8 per class).
    Returns the repository path; images live in ``<repo>/../images``.
    """
    from imgclf.featurizer.demo_images import write_demo_images
    from imgclf.featurizer.extractor import FeaturizerConfig
    from imgclf.training.train_job import TrainJob, run_train

    root = tmp_path_factory.mktemp("model_repo")
    images = write_demo_images(root / "images", per_class=8)
    repo = root / "models"
    run_train(TrainJob(image_dir=images, featurizer=FeaturizerConfig(legacy_graph_path, precision="fp32"),
                       cache=root / "features.sqlite", model_dir=repo, name="shapes", progress=False))
    return repo


@pytest.fixture(scope="session")
def secondary_repo(tmp_path_factory):
    """A model repository with the three secondary models, trained briefly: quadratic, mnist-mlp, lenet5.

    The digit models learn a synthetic mnist.npz (tests/mnist_data.py), written to ``<repo>/../mnist.npz``.
    """
    from imgclf.training.config import train_config
    from imgclf.training.models_job import ModelsTrainJob, run_models_train
    from tests.support.mnist_data import write_mnist_npz

    root = tmp_path_factory.mktemp("secondary_repo")
    repo = root / "models"
    mnist = write_mnist_npz(root / "mnist.npz")
    run_models_train(ModelsTrainJob("quadratic", repo, train_config("quadratic", epochs=120, optimizer="adam",
                                                                    learning_rate=0.05, checkpoint_epochs=60)))
    run_models_train(ModelsTrainJob("mnist-mlp", repo, train_config("mnist-mlp", epochs=12, batch_size=50,
                                                                    validation_size=200), data=mnist))
    run_models_train(ModelsTrainJob("lenet5", repo, train_config("lenet5", epochs=3, batch_size=50,
                                                                 validation_size=200, optimizer="adam"),
                                    data=mnist))
    return repo


@pytest.fixture
def device_env(monkeypatch):
    """Run a test under chosen ``IMGCLF_*`` device variables: ``device_env(IMGCLF_DEVICE="/cpu:0")`` (None unsets).

    The device variables start unset; the process's device settings
    (:func:`imgclf.core.devices.configure_tensorflow`) are read again after each
    call and after the test, so no other test inherits them.
    """
    from imgclf.core import devices

    for name in (devices.ENV_DEVICE, devices.ENV_GPU_MEMORY_LIMIT_MB, devices.ENV_LOG_DEVICE_PLACEMENT):
        monkeypatch.delenv(name, raising=False)
    devices.reset_for_tests()

    def set_env(**values):  # a value of None unsets the variable
        for name, value in values.items():
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)
        devices.reset_for_tests()

    yield set_env
    devices.reset_for_tests()
