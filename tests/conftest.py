"""Shared fixtures: every graph, image and data set is built by the tests themselves."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Test apps serve in fp32: the bf16 switch is process-wide and would change the in-process
# references other tests compare against. tests/test_serve_precision.py checks bf16 in a subprocess.
os.environ.setdefault("IMGCLF_PRECISION", "fp32")

import pytest

# Unit tests that are system tests by what they do (make test-fast leaves them out, make test runs them).
# A test that uses one of these fixtures builds or runs the full-size Inception-v3 (about 90 MB of weights).
SYSTEM_FIXTURES = ("full_graph_path",)
# Each of these starts processes (and kills them), or builds full-size Keras networks; each takes over 10 s
# on a 2-core machine.
SYSTEM_TESTS = (
    "tests/unit/core/test_devices.py::test_placement_is_logged_for_tf_functions_in_a_fresh_process",
    "tests/unit/featurizer/graph/test_export.py::test_local_weights_file_with_top",
    "tests/unit/featurizer/graph/test_export.py::test_local_weights_file_without_top_falls_back_to_random_logits",
    "tests/unit/featurizer/graph/test_export.py::test_random_weights_depend_on_the_seed",
    "tests/unit/featurizer/jobs/test_featurize.py::test_sigkill_loses_nothing_committed_and_the_rerun_finishes",
    # 400 generated 1600x1200 JPEGs, featurized twice, ten heads trained (about 45 s)
    "tests/unit/featurizer/jobs/test_featurize.py::test_a_head_on_fast_decoded_large_photos_is_as_accurate_as_on_exact",
    # Featurizes 400 images twice (TensorFlow fp32, OpenVINO int8 after NNCF calibration) and trains two heads.
    "tests/unit/featurizer/runtime/test_openvino.py::test_a_head_on_int8_features_is_within_one_point_of_fp32",
    "tests/unit/training/test_distribute.py::test_two_workers_train_identical_weights_and_only_the_chief_exports",
    "tests/unit/training/test_distribute.py::test_mirrored_over_two_logical_cpus_matches_one_device",
    "tests/unit/training/test_models_job.py::test_sigkilled_run_resumes_from_its_checkpoint",
    "tests/unit/training/test_models_job.py::test_fresh_process_reproduces_in_memory_predictions",
    # These run `imgclf` in a subprocess (a fresh TensorFlow each, 6-7 s).
    "tests/unit/core/test_cli.py::test_a_diverging_train_prints_one_error_line_and_exits_1",
    "tests/unit/core/test_cli.py::test_an_unwritable_model_dir_prints_one_line_and_exits_1",
    "tests/unit/featurizer/test_cli.py::test_featurize_never_imports_flask",
)


@pytest.hookimpl(tryfirst=True)  # before -k/-m deselect anything, so a stale SYSTEM_TESTS entry is seen
def pytest_collection_modifyitems(config, items):
    """Mark the unit tests of SYSTEM_FIXTURES and SYSTEM_TESTS ``system``; fail on an entry that names no test."""
    root = config.rootpath
    collected_files, marked = set(), set()
    for item in items:
        path = Path(item.path).resolve().relative_to(root).as_posix()
        collected_files.add(path)
        test_id = f"{path}::{getattr(item, 'originalname', item.name)}"
        if test_id in SYSTEM_TESTS or any(name in item.fixturenames for name in SYSTEM_FIXTURES):
            item.add_marker(pytest.mark.system)
            marked.add(test_id)
    stale = [t for t in SYSTEM_TESTS if not (root / t.split("::")[0]).is_file()  # moved or deleted
             or (t.split("::")[0] in collected_files and t not in marked)]
    if stale:
        raise pytest.UsageError(f"tests/conftest.py SYSTEM_TESTS names tests that do not exist (renamed?): {stale}")


@pytest.fixture(autouse=True)
def _mixed_precision_stays_in_its_test():
    """Turn grappler's process-wide mixed-precision rewrites off after each test.

    A registry that serves in bf16 (precision "auto" on a CPU with AMX, as a ServingSettings built without
    IMGCLF_PRECISION resolves) switches the rewrite on for the whole process (imgclf.service.servables.runtime
    .apply_precision); without this, the fp32 references of whichever tests run next in that worker
    would be compared against bf16 numbers.
    """
    yield
    tf = sys.modules.get("tensorflow")
    if tf is None:
        return
    from imgclf.core.tf_private import MIXED_PRECISION_REWRITES

    options = tf.config.optimizer.get_experimental_options()
    on = {name: False for name in MIXED_PRECISION_REWRITES if options.get(name)}
    if on:
        tf.config.optimizer.set_experimental_options(on)


@pytest.fixture(scope="session")
def legacy_graph_path(tmp_path_factory):
    """A tiny frozen graph with the 2015 interface and old ops (producer < 9)."""
    from tests.support.legacy_graph import write_legacy_graph

    return write_legacy_graph(tmp_path_factory.mktemp("graphs") / "legacy_inception.pb")


@pytest.fixture(scope="session")
def full_graph_path(tmp_path_factory):
    """A full-size Inception-v3 graph (seeded random weights) with the 2015 interface."""
    from imgclf.featurizer.graph.export import export_inception

    path = tmp_path_factory.mktemp("graphs") / "inception_random.pb"
    export_inception(path, weights="random", seed=0)
    return path


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory, legacy_graph_path):
    """A model repository with one trained image classifier, "shapes" version 1 (tiny legacy graph).

    Trained on the demo image set (bubbles, checkers, stripes, sunsets; 8 per class), published with
    ``--publish always``: a test split of 5 cannot pass the publish gate's binomial test (5 of 5 against
    2 of 5 is p = 0.0102), and these tests are about serving it, not about its quality.
    Returns the repository path; images live in ``<repo>/../images``.
    """
    from imgclf.featurizer.images.demo import write_demo_images
    from imgclf.featurizer.runtime.featurizer import FeaturizerConfig
    from imgclf.training.gate import GateConfig
    from imgclf.training.train_job import TrainJob, run_train

    root = tmp_path_factory.mktemp("model_repo")
    images = write_demo_images(root / "images", per_class=8)
    repo = root / "models"
    run_train(TrainJob(image_dir=images, featurizer=FeaturizerConfig(legacy_graph_path, precision="fp32"),
                       cache=root / "features.sqlite", model_dir=repo, name="shapes", progress=False,
                       gate=GateConfig(publish="always")))
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
