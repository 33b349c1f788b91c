"""Serving an export on the backend its card names: the OpenVINO featurizer in the export, or why it can't."""

import numpy as np
import pytest

from imgclf.core import export_names as names
from imgclf.core.errors import ModelNotFound, UsageError
from imgclf.featurizer.runtime.backend import INSTALL_HINT
from imgclf.training import serving_backend
from imgclf.training.classifier import load_model
from imgclf.training.serving_backend import card_backend, choose_backend
from tests.support.images import jpeg

openvino = pytest.importorskip("openvino", reason="the imgclf[openvino] extra is not installed")


@pytest.fixture(scope="module")
def int8_repo(tmp_path_factory, legacy_graph_path):
    """A repository with "shapes-int8": trained on OpenVINO int8 features of the demo images."""
    from imgclf.featurizer.images.demo import write_demo_images
    from imgclf.featurizer.runtime.featurizer import FeaturizerConfig
    from imgclf.training.gate import GateConfig
    from imgclf.training.train_job import TrainJob, run_train

    root = tmp_path_factory.mktemp("int8_repo")
    images = write_demo_images(root / "images", per_class=8)
    config = FeaturizerConfig(legacy_graph_path, precision="int8", backend="openvino", calibration_images=16,
                              openvino_cache=root / "ov")
    outcome = run_train(TrainJob(image_dir=images, featurizer=config, cache=root / "features.sqlite",
                                 model_dir=root / "models", name="shapes-int8", progress=False,
                                 gate=GateConfig(publish="always")))  # 8 a class: too few to pass the gate
    return outcome.version_dir, config, images


def test_an_openvino_export_carries_its_ir_and_says_so(int8_repo):
    version_dir, _, _ = int8_repo
    import json

    card = json.loads((version_dir / names.MODEL_CARD_FILE).read_text())
    assert card_backend(card) == ("openvino", "int8")
    assert card["featurizer"]["openvino"]["calibration"]["images"] == 16
    for file in (names.OPENVINO_FEATURIZER_FILE, names.OPENVINO_FEATURIZER_FILE.replace(".xml", ".bin")):
        assert (version_dir / file).is_file() and file in card["files"]


def test_served_on_openvino_it_predicts_as_its_training_features_say(int8_repo):
    """The card's backend serves the very IR training used: same features, so the head sees what it learned on."""
    from imgclf.featurizer.runtime.featurizer import Featurizer, calibration_for

    version_dir, config, images = int8_repo
    model = load_model(version_dir)
    assert model.backend == "openvino" and model.featurizer_graph.precision == "int8"
    files = sorted(images.rglob("*.jpg"))[:6]
    inputs = np.stack([model.preprocess(f.read_bytes())[1] for f in files])
    featurizer = Featurizer(config, calibration_for(config, images))  # the training featurizer, from its cache
    try:
        expected = model.predict_bottlenecks(featurizer.run(inputs))
    finally:
        featurizer.close()
    served = model.infer_inputs(inputs)
    np.testing.assert_allclose(served["probabilities"], expected, atol=1e-5)
    # int8 backbone, float64 head: the probabilities sum to 1 up to float32 rounding; every image has a score
    assert np.abs(served["probabilities"].sum(axis=1, dtype=np.float64) - 1).max() < 1e-6
    assert served["unfamiliar_score"].shape == (len(files),) and np.isfinite(served["unfamiliar_score"]).all()
    on_tf = load_model(version_dir, backend="tensorflow")  # allowed, with a warning: close, not equal
    assert on_tf.backend == "tensorflow" and on_tf.featurizer_graph is None
    assert np.abs(on_tf.predict_inputs(inputs) - expected).max() < 0.1


def test_a_tensorflow_export_has_no_openvino_featurizer(model_repo):
    version_dir = model_repo / "shapes" / "1"
    assert load_model(version_dir, backend="card").backend == "tensorflow"
    assert load_model(version_dir, backend="auto").backend == "tensorflow"  # no IR: auto never fails
    with pytest.raises(ModelNotFound, match="has no OpenVINO featurizer .* retrain it with --backend openvino"):
        load_model(version_dir, backend="openvino")


def test_without_openvino_an_openvino_export_says_how_to_serve_it(int8_repo, monkeypatch):
    version_dir, _, _ = int8_repo
    monkeypatch.setattr(serving_backend, "openvino_installed", lambda: False)
    card = {"featurizer": {"backend": "openvino", "precision": "int8"}}
    with pytest.raises(UsageError) as info:
        choose_backend(version_dir, card, "card")
    assert INSTALL_HINT in str(info.value) and "IMGCLF_BACKEND=tensorflow" in str(info.value)
    with pytest.raises(UsageError, match="backend must be one of card, tensorflow, openvino, auto"):
        choose_backend(version_dir, card, "onnx")


def test_the_service_serves_it_on_openvino_and_reports_a_model_it_cannot(int8_repo, model_repo):
    from imgclf.service import create_app

    version_dir, _, _ = int8_repo
    app = create_app({"model_repository": version_dir.parents[1], "load_in_background": False})
    client = app.test_client()
    assert client.get("/readyz").status_code == 200
    response = client.post("/predict", data=jpeg(1), content_type="image/jpeg")
    assert response.status_code == 200 and response.get_json()["predictions"]
    failing = create_app({"model_repository": model_repo, "backend": "openvino", "load_in_background": False})
    ready = failing.test_client().get("/readyz")
    assert ready.status_code == 503 and "has no OpenVINO featurizer" in ready.get_json()["error"]


def test_imgclf_backend_is_checked(monkeypatch):
    from imgclf.service.settings import ServingSettings

    assert ServingSettings.from_env({}).backend == "card"
    assert ServingSettings.from_env({"IMGCLF_BACKEND": "openvino"}).backend == "openvino"
    with pytest.raises(UsageError, match="IMGCLF_BACKEND must be one of card, tensorflow, openvino, auto"):
        ServingSettings.from_env({"IMGCLF_BACKEND": "onnx"})


def test_an_int8_export_served_on_a_cpu_with_other_int8_instructions_says_so(int8_repo, monkeypatch, caplog):
    import json
    import logging

    from imgclf.core import precision

    version_dir, _, _ = int8_repo
    fidelity = json.loads((version_dir / names.MODEL_CARD_FILE).read_text())["featurizer"]["openvino"]["int8_fidelity"]
    here = sorted(precision.cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})
    assert fidelity["cpu_int8"] == here and fidelity["floor"] == 0.99  # the card says where the floor held
    monkeypatch.setattr(serving_backend, "log", logging.getLogger("tests.int8_cpu"))
    caplog.set_level(logging.WARNING, logger="tests.int8_cpu")
    assert serving_backend.check_int8_cpu(version_dir, fidelity) and caplog.text == ""
    assert serving_backend.check_int8_cpu(version_dir, {"worst_cosine": 0.999}) and caplog.text == ""  # no CPU kept
    other = ["amx_int8", "avx512_vnni"] if not here else []
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(other) | {"avx2"})
    model = load_model(version_dir)  # served as built, with the warning
    assert model.backend == "openvino" and model.featurizer_graph.precision == "int8"
    expected = ", ".join(other) or "AVX2 only"
    assert f"this CPU has {expected}" in caplog.text and "--precision int8 on this CPU" in caplog.text
