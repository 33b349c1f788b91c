"""GPU setup, device pinning, placement logging and GPU precision (imgclf.core.devices, imgclf.core.precision).

Most tests simulate 0, 1 or 2 GPUs by replacing TensorFlow's ``tf.config``
device functions; the others run the real path on this machine (and, where a
GPU is visible, on it).
"""

from __future__ import annotations

import ctypes
import logging
import re

import numpy as np
import pytest
import tensorflow as tf

from imgclf.core import devices, precision
from imgclf.core.devices import ComputeTarget, DeviceError, compute_target, configure_tensorflow
from imgclf.core.precision import resolve_precision

GPUS = tf.config.list_physical_devices("GPU")
PLACEMENT_LINE = re.compile(  # what TensorFlow's placer prints per op when placement is logged
    r"^(?P<node>\S+): \((?P<op>\w+)\): /job:localhost/replica:0/task:0/device:(?P<dev>\w+:\d+)$", re.MULTILINE)


class FakeGPUs:
    """Stands in for TensorFlow's device functions with ``len(capabilities)`` GPUs; records what is set."""

    def __init__(self, monkeypatch, capabilities, fail_with=None):
        self.gpus = [tf.config.PhysicalDevice(f"/physical_device:GPU:{i}", "GPU") for i in range(len(capabilities))]
        self.cpu = tf.config.PhysicalDevice("/physical_device:CPU:0", "CPU")
        self.capabilities = dict(zip((g.name for g in self.gpus), capabilities))
        self.growth, self.logical, self.placement_logging = {}, {}, []
        self.fail_with = fail_with  # an exception the memory setters raise (TensorFlow already initialised)
        patch = monkeypatch.setattr
        patch(tf.config, "list_physical_devices", self.list_physical_devices)
        patch(tf.config, "list_logical_devices", self.list_logical_devices)
        patch(tf.config, "set_logical_device_configuration", self.set_logical_device_configuration)
        patch(tf.config.experimental, "set_memory_growth", self.set_memory_growth)
        patch(tf.config.experimental, "get_device_details", self.get_device_details)
        patch(tf.debugging, "set_log_device_placement", self.placement_logging.append)

    def list_physical_devices(self, device_type=None):
        every = [self.cpu, *self.gpus]
        return [d for d in every if device_type is None or d.device_type == device_type]

    def list_logical_devices(self, device_type=None):
        every = [tf.config.LogicalDevice("/device:CPU:0", "CPU")] + [
            tf.config.LogicalDevice(f"/device:GPU:{i}", "GPU") for i in range(len(self.gpus))]
        return [d for d in every if device_type is None or d.device_type == device_type]

    def set_memory_growth(self, device, enable):
        if self.fail_with:
            raise self.fail_with
        self.growth[device.name] = enable

    def set_logical_device_configuration(self, device, configs):
        if self.fail_with:
            raise self.fail_with
        self.logical[device.name] = [c.memory_limit for c in configs]

    def get_device_details(self, device):
        capability = self.capabilities[device.name]
        return {"device_name": f"Fake GPU {device.name[-1]}",
                **({"compute_capability": capability} if capability else {})}


@pytest.fixture
def fake_gpus(monkeypatch, device_env):
    """Return a factory: ``fake_gpus((8, 6), (7, 5))`` simulates two GPUs with those compute capabilities."""
    return lambda *capabilities, **kwargs: FakeGPUs(monkeypatch, capabilities, **kwargs)


@pytest.mark.parametrize("capabilities", [(), ((7, 5),), ((8, 6), (6, 1))], ids=["0 GPUs", "1 GPU", "2 GPUs"])
def test_memory_growth_is_set_on_every_gpu(fake_gpus, capabilities):
    fake = fake_gpus(*capabilities)
    settings = configure_tensorflow()
    assert fake.growth == {f"/physical_device:GPU:{i}": True for i in range(len(capabilities))}
    assert fake.logical == {}
    assert settings == devices.DeviceSettings()
    assert fake.placement_logging == []


def test_a_memory_limit_replaces_growth_on_every_gpu(fake_gpus, device_env):
    fake = fake_gpus((8, 6), (8, 6))
    device_env(IMGCLF_GPU_MEMORY_LIMIT_MB="4096")
    assert configure_tensorflow().gpu_memory_limit_mb == 4096
    assert fake.logical == {"/physical_device:GPU:0": [4096], "/physical_device:GPU:1": [4096]}
    assert fake.growth == {}


def test_settings_handed_over_are_applied_instead_of_the_environment(fake_gpus, device_env):
    fake = fake_gpus((8, 6))
    device_env(IMGCLF_GPU_MEMORY_LIMIT_MB="4096")  # what the environment says now...
    devices.use_settings(devices.DeviceSettings(gpu_memory_limit_mb=2048))  # ...the service's tree read before
    assert configure_tensorflow().gpu_memory_limit_mb == 2048
    assert fake.logical == {"/physical_device:GPU:0": [2048]}
    assert configure_tensorflow({"IMGCLF_GPU_MEMORY_LIMIT_MB": "1024"}).gpu_memory_limit_mb == 2048  # first wins


def test_device_settings_are_a_section_of_the_tree():
    env = {"IMGCLF_DEVICE": "GPU", "IMGCLF_CPU_DEVICES": "4", "IMGCLF_LOG_DEVICE_PLACEMENT": "on"}
    settings = devices.DeviceSettings.from_env(env)
    assert (settings.device, settings.device_spec, settings.cpu_devices, settings.log_device_placement) == (
        "/device:GPU:0", "GPU", 4, True)
    with pytest.raises(DeviceError, match="IMGCLF_CPU_DEVICES must be at least 1; received 0"):
        devices.DeviceSettings.from_env({"IMGCLF_CPU_DEVICES": "0"})


def test_memory_settings_that_come_too_late(fake_gpus, device_env, caplog):
    late = RuntimeError("Physical devices cannot be modified after being initialized")
    fake_gpus((8, 6), fail_with=late)
    with caplog.at_level(logging.WARNING, logger="imgclf.core.devices"):
        configure_tensorflow()  # growth: a warning, the process still works
    assert "memory growth not set on /physical_device:GPU:0" in caplog.text
    device_env(IMGCLF_GPU_MEMORY_LIMIT_MB="2048")
    with pytest.raises(DeviceError, match=r"IMGCLF_GPU_MEMORY_LIMIT_MB=2048 cannot be applied .*must run first"):
        configure_tensorflow()  # an asked-for limit that does not hold: an error


@pytest.mark.parametrize("spec, canonical", [
    ("/gpu:0", "/device:GPU:0"), ("/GPU:1", "/device:GPU:1"), ("gpu", "/device:GPU:0"),
    ("/cpu:0", "/device:CPU:0"), ("/device:CPU:0", "/device:CPU:0"), (" cpu ", "/device:CPU:0")])
def test_device_names_are_canonical(spec, canonical):
    assert devices.canonical_device(spec) == canonical


@pytest.mark.parametrize("name, value, message", [
    ("IMGCLF_DEVICE", "/tpu:0", r"IMGCLF_DEVICE='/tpu:0' is not a device; use /gpu:N or /cpu:0"),
    ("IMGCLF_DEVICE", "gpu0", r"IMGCLF_DEVICE='gpu0' is not a device"),
    ("IMGCLF_GPU_MEMORY_LIMIT_MB", "4G", r"IMGCLF_GPU_MEMORY_LIMIT_MB='4G' is not a valid int"),
    ("IMGCLF_GPU_MEMORY_LIMIT_MB", "0", r"IMGCLF_GPU_MEMORY_LIMIT_MB must be at least 1; received 0"),
    ("IMGCLF_GPU_MEMORY_LIMIT_MB", "-512", r"IMGCLF_GPU_MEMORY_LIMIT_MB must be at least 1; received -512"),
    ("IMGCLF_LOG_DEVICE_PLACEMENT", "verbose", r"IMGCLF_LOG_DEVICE_PLACEMENT='verbose' is not a yes or a no"),
    ("IMGCLF_LOG_DEVICE_PLACEMENT", "2", r"IMGCLF_LOG_DEVICE_PLACEMENT='2' is not a yes or a no"),
])
def test_malformed_variables_are_refused(fake_gpus, device_env, name, value, message):
    fake = fake_gpus((8, 6))
    device_env(**{name: value})
    with pytest.raises(DeviceError, match=message):
        configure_tensorflow()
    assert fake.growth == {}  # refused before anything was changed


@pytest.mark.parametrize("capabilities, spec, available", [
    (((8, 6),), "/gpu:1", "/device:CPU:0, /device:GPU:0"),
    ((), "/gpu:0", "/device:CPU:0"),
])
def test_an_unknown_device_is_an_error_that_lists_the_devices(fake_gpus, device_env, capabilities, spec, available):
    fake_gpus(*capabilities)
    device_env(IMGCLF_DEVICE=spec)
    message = rf"IMGCLF_DEVICE='{spec}' \(/device:GPU:\d\) names no device of this process.*; available: {available}$"
    with pytest.raises(DeviceError, match=message):
        configure_tensorflow()
    with pytest.raises(DeviceError, match="names no device"):  # not remembered as configured
        configure_tensorflow()


def test_a_pinned_gpu_is_the_compute_target(fake_gpus, device_env):
    fake_gpus((6, 1), (8, 6))
    device_env(IMGCLF_DEVICE="/gpu:1")
    assert configure_tensorflow().device == "/device:GPU:1"
    target = compute_target()
    assert target == ComputeTarget("gpu", "/device:GPU:1", (8, 6), "Fake GPU 1")
    assert target.describe() == "/device:GPU:1 (Fake GPU 1, compute capability 8.6)"
    device_env(IMGCLF_DEVICE="/cpu:0")
    assert compute_target() == ComputeTarget("cpu", "/device:CPU:0")
    device_env(IMGCLF_DEVICE=None)  # unpinned: TensorFlow's choice, the first GPU
    assert compute_target().device == "/device:GPU:0"


@pytest.mark.parametrize("capability, auto, fp16", [
    ((6, 1), "fp32", "needs a GPU of compute capability 7.0 or more"),
    ((7, 5), "fp16", "fp16"),
    ((8, 6), "fp16", "fp16"),  # bf16-capable hardware, but TensorFlow has no bf16 rewrite for GPUs
    (None, "fp32", "needs a GPU of compute capability 7.0 or more"),  # TensorFlow does not say
], ids=["6.1", "7.5", "8.6", "unknown"])
def test_precision_on_a_gpu_follows_its_compute_capability(fake_gpus, capability, auto, fp16):
    fake_gpus(capability)
    assert resolve_precision("auto") == auto
    assert resolve_precision("fp32") == "fp32"
    if fp16 == "fp16":
        assert resolve_precision("fp16") == "fp16"
    else:
        with pytest.raises(ValueError, match=fp16):
            resolve_precision("fp16")
    with pytest.raises(ValueError, match=r"no bf16 graph rewrite for GPUs.*IMGCLF_DEVICE=/cpu:0"):
        resolve_precision("bf16")


def test_precision_pinned_to_the_cpu_follows_the_cpu_rule(fake_gpus, device_env, monkeypatch):
    fake_gpus((8, 6))
    device_env(IMGCLF_DEVICE="/cpu:0")
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512f", "amx_bf16"}))
    monkeypatch.setattr(precision, "onednn_enabled", lambda: True)
    assert resolve_precision("auto") == "bf16"
    assert resolve_precision("bf16") == "bf16"
    with pytest.raises(ValueError, match=r"fp16 precision needs a GPU .* computes on /device:CPU:0"):
        resolve_precision("fp16")


def test_without_a_gpu_fp16_is_refused(fake_gpus):
    fake_gpus()
    with pytest.raises(ValueError, match="fp16 precision needs a GPU"):
        resolve_precision("fp16")


def test_apply_precision_turns_on_the_gpu_rewrite(fake_gpus, monkeypatch):
    from imgclf.service.servables.runtime import apply_precision

    switched = []
    monkeypatch.setattr(tf.config.optimizer, "set_experimental_options", switched.append)  # process-wide otherwise
    fake_gpus((8, 0))
    assert apply_precision("auto") == "fp16"
    assert switched == [{"auto_mixed_precision": True}]


def test_log_placement_reaches_the_session_config(fake_gpus, device_env):
    from tensorflow.core.protobuf import rewriter_config_pb2

    from imgclf.featurizer.graph.load import session_config

    fake = fake_gpus((7, 5))
    assert session_config().log_device_placement is False
    device_env(IMGCLF_LOG_DEVICE_PLACEMENT="1")
    assert session_config().log_device_placement is True
    assert fake.placement_logging == [True]  # eager ops and tf.functions too
    assert session_config(log_device_placement=False).log_device_placement is False
    config = session_config(precision="fp16")
    assert config.allow_soft_placement
    on = rewriter_config_pb2.RewriterConfig.ON
    assert config.graph_options.rewrite_options.auto_mixed_precision == on
    assert config.graph_options.rewrite_options.auto_mixed_precision_onednn_bfloat16 != on
    config = session_config(precision="bf16")
    assert config.graph_options.rewrite_options.auto_mixed_precision_onednn_bfloat16 == on
    assert config.graph_options.rewrite_options.auto_mixed_precision != on
    with pytest.raises(ValueError, match="received 'auto'"):
        session_config(precision="auto")


def test_the_service_reports_an_unknown_device(fake_gpus, device_env, tmp_path):
    from imgclf.service import create_app

    fake_gpus((8, 6))
    device_env(IMGCLF_DEVICE="/gpu:3")
    app = create_app({"model_repository": tmp_path, "load_in_background": False})
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "failed"
    assert "IMGCLF_DEVICE='/gpu:3'" in body["error"] and "available: /device:CPU:0, /device:GPU:0" in body["error"]


def test_model_calls_run_under_the_pinned_device():
    from tensorflow.python.eager import context

    from imgclf.training.classifier import LoadedModel

    seen = []

    class Signature:
        def __call__(self, **inputs):
            seen.append(context.context().device_name)
            return {"probabilities": tf.zeros((1, 2)), "unfamiliar_score": tf.zeros((1,))}

    card = {"featurizer": {"dim": 4, "contract": {"input_size": 3, "input_mean": 128.0, "input_std": 128.0}}}
    saved = type("Saved", (), {"signatures": {"images": Signature(), "bottleneck": Signature()}})()
    pinned = LoadedModel(path=None, name="m", version=1, labels=["a", "b"], card=card, _saved_model=saved,
                         device="/device:CPU:0")
    pinned.predict_inputs(np.zeros((1, 3, 3, 3), np.float32))
    pinned.predict_bottlenecks(np.zeros((1, 4), np.float32))
    free = LoadedModel(path=None, name="m", version=1, labels=["a", "b"], card=card, _saved_model=saved)
    free.predict_inputs(np.zeros((1, 3, 3, 3), np.float32))
    assert [name.rsplit("/", 1)[-1] for name in seen] == ["device:CPU:0", "device:CPU:0", ""]


# --- the real path, on this machine ---------------------------------------------------------------------------

def test_configuring_twice_is_harmless(device_env):
    first = configure_tensorflow()
    assert configure_tensorflow() is first
    assert configure_tensorflow(env={"IMGCLF_DEVICE": "/gpu:9"}) is first  # later calls change nothing
    assert "/device:CPU:0" in devices.available_devices()
    assert [d.name for d in tf.config.list_logical_devices("GPU")] == [f"/device:GPU:{i}" for i in range(len(GPUS))]


def _run_both_graphs(graph_path):
    """Run the batched and the one-image graph on ``graph_path``; return (features, one-image vector, featurizer)."""
    from imgclf.featurizer.graph.load import SingleImageGraph, load_graph
    from imgclf.featurizer.runtime.featurizer import Featurizer, FeaturizerConfig
    from tests.support import images

    featurizer = Featurizer(FeaturizerConfig(graph_path, precision="fp32"))
    single = SingleImageGraph(load_graph(graph_path)[0])
    jpeg = images.jpeg(3, (120, 90), 90)
    try:
        batched = featurizer.run(featurizer.preprocess(jpeg)[None])
        one = single.run(jpeg)
        ops = {op.name: op.device for op in featurizer.graph.graph.get_operations()}
        ops.update({f"single/{op.name}": op.device for op in single.graph.get_operations()})
    finally:
        featurizer.close()
        single.close()
    return batched, one, ops


@pytest.mark.parametrize("spec", ["/cpu:0", pytest.param("/gpu:0", marks=pytest.mark.skipif(
    not GPUS, reason="no GPU visible to TensorFlow"))])
def test_featurizer_sessions_run_pinned(legacy_graph_path, device_env, spec):
    free_batched, free_one, free_ops = _run_both_graphs(legacy_graph_path)
    assert set(free_ops.values()) == {""}  # unpinned: TensorFlow's placement
    device_env(IMGCLF_DEVICE=spec)
    batched, one, ops = _run_both_graphs(legacy_graph_path)
    canonical = devices.canonical_device(spec)
    assert set(ops.values()) == {canonical}  # every op asks for it, DecodeJpeg too (soft placement moves it)
    # Identical on a CPU-only host; on a GPU host the unpinned run is on the GPU (TF32 convolutions).
    for pinned, free in ((batched[0], free_batched[0]), (one, free_one)):
        assert np.dot(pinned, free) / (np.linalg.norm(pinned) * np.linalg.norm(free)) >= 0.9999


def _fd_output(capfd) -> str:
    """Return what was written to fds 1 and 2 so far, C stdio buffers flushed first."""
    ctypes.CDLL(None).fflush(None)
    captured = capfd.readouterr()
    return captured.out + captured.err


def test_placement_is_logged_for_featurizer_sessions(legacy_graph_path, device_env, capfd):
    from imgclf.featurizer.runtime.featurizer import Featurizer, FeaturizerConfig

    device_env(IMGCLF_LOG_DEVICE_PLACEMENT="1")
    _fd_output(capfd)
    featurizer = Featurizer(FeaturizerConfig(legacy_graph_path, precision="fp32"))
    try:
        featurizer.run(np.zeros((1, featurizer.contract.input_size, featurizer.contract.input_size, 3), np.float32))
    finally:
        featurizer.close()
    lines = {m["node"]: (m["op"], m["dev"]) for m in PLACEMENT_LINE.finditer(_fd_output(capfd))}
    assert lines.get("imgclf/bottleneck") == ("Reshape", "GPU:0" if GPUS else "CPU:0"), sorted(lines)[:20]
    assert lines.get("conv/Conv2D", ("",))[0] == "Conv2D"


PROBE = """
from imgclf.core.devices import configure_tensorflow
configure_tensorflow()  # first, as the service and the CLI do
import tensorflow as tf

@tf.function
def probe(x):
    return tf.identity(x * 2.0, name="imgclf_placement_probe")

probe(tf.constant([1.0]))
"""


def test_placement_is_logged_for_tf_functions_in_a_fresh_process():
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "IMGCLF_LOG_DEVICE_PLACEMENT": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=Path(__file__).resolve().parents[3], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = {m["node"]: (m["op"], m["dev"]) for m in PLACEMENT_LINE.finditer(result.stdout)}
    assert lines.get("imgclf_placement_probe") == ("Identity", "GPU:0" if GPUS else "CPU:0"), result.stdout[-2000:]


def test_placement_logging_asked_for_too_late_is_a_warning(device_env, caplog):
    tf.constant(1.0)  # TensorFlow's runtime has started
    with caplog.at_level(logging.WARNING, logger="imgclf.core.devices"):
        device_env(IMGCLF_LOG_DEVICE_PLACEMENT="1")
        assert configure_tensorflow().log_device_placement
    assert "comes after TensorFlow started" in caplog.text


def test_placement_is_not_logged_by_default(legacy_graph_path, device_env, capfd):
    from imgclf.featurizer.runtime.featurizer import Featurizer, FeaturizerConfig

    _fd_output(capfd)
    featurizer = Featurizer(FeaturizerConfig(legacy_graph_path, precision="fp32"))
    try:
        featurizer.run(np.zeros((1, featurizer.contract.input_size, featurizer.contract.input_size, 3), np.float32))
    finally:
        featurizer.close()
    assert "imgclf/bottleneck: (Reshape)" not in _fd_output(capfd)
