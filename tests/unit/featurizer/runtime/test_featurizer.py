"""The batched featurizer against the graph's own one-image path, and bf16 (CPU) or fp16 (GPU) against fp32."""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import types_pb2

from imgclf.core.errors import GraphError, InvalidImage
from imgclf.core.precision import native_bf16_flags, onednn_enabled, resolve_precision
from imgclf.featurizer.graph.load import SingleImageGraph, contract_from_graph, load_graph
from imgclf.featurizer.runtime.featurizer import Featurizer, FeaturizerConfig
from tests.support import images

NATIVE_BF16 = bool(native_bf16_flags()) and onednn_enabled()
GPUS = tf.config.list_physical_devices("GPU")
JPEG_SET = [images.jpeg(seed, size, quality) for seed, size, quality in [
    (10, (500, 375), 90), (11, (375, 500), 75), (12, (640, 480), 95), (13, (299, 299), 85),
    (14, (1024, 200), 90), (15, (120, 90), 70), (16, (333, 517), 92), (17, (50, 60), 88)]]


def _cosines(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def _conv_types(featurizer, inputs) -> set[tuple[str, str]]:
    """Run ``inputs`` and return the (device type, dtype) of every convolution the session ran.

    Read from the partition graphs, so it shows what the grappler rewrite and the placer really did.
    """
    from tensorflow.core.protobuf import config_pb2

    graph, metadata = featurizer.graph, config_pb2.RunMetadata()
    graph.session.run(graph._output, {graph._input: inputs},
                      options=config_pb2.RunOptions(output_partition_graphs=True), run_metadata=metadata)
    return {(tf.DeviceSpec.from_string(node.device).device_type, types_pb2.DataType.Name(node.attr["T"].type))
            for partition in metadata.partition_graphs for node in partition.node
            if "Conv2D" in node.op and "T" in node.attr}


def _check_batched_equals_single(graph_path):
    featurizer = Featurizer(FeaturizerConfig(graph_path, precision="fp32"))
    single = SingleImageGraph(load_graph(graph_path)[0])  # the file as parsed: no rewrite, no batching
    try:
        batched = featurizer.run(np.stack([featurizer.preprocess(data) for data in JPEG_SET]))
        reference = np.stack([single.run(data) for data in JPEG_SET])
    finally:
        featurizer.close()
        single.close()
    assert batched.shape == (len(JPEG_SET), 2048)
    cosines = _cosines(batched, reference)
    assert cosines.min() >= 0.9999, cosines
    return cosines


def test_batched_features_equal_the_one_image_path_on_the_legacy_graph(legacy_graph_path):
    _check_batched_equals_single(legacy_graph_path)


def test_batched_features_equal_the_one_image_path_on_full_inception(full_graph_path):
    _check_batched_equals_single(full_graph_path)


def test_batch_size_does_not_change_features(legacy_graph_path):
    featurizer = Featurizer(FeaturizerConfig(legacy_graph_path, precision="fp32"))
    inputs = np.stack([featurizer.preprocess(data) for data in JPEG_SET])
    together = featurizer.run(inputs)
    alone = np.stack([featurizer.run(inputs[i:i + 1])[0] for i in range(len(inputs))])
    featurizer.close()
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not NATIVE_BF16, reason="this CPU has no native bf16 (AMX_BF16/AVX512_BF16) or oneDNN is off")
def test_bf16_features_stay_close_to_fp32_on_full_inception(full_graph_path, device_env):
    device_env(IMGCLF_DEVICE="/cpu:0")  # bf16 is a CPU rewrite: on a GPU host too
    fp32 = Featurizer(FeaturizerConfig(full_graph_path, precision="fp32"))
    bf16 = Featurizer(FeaturizerConfig(full_graph_path, precision="bf16"))
    try:
        inputs = np.stack([fp32.preprocess(data) for data in JPEG_SET])
        cosines = _cosines(bf16.run(inputs), fp32.run(inputs))
        assert bf16.fingerprint != fp32.fingerprint  # fp32 and bf16 vectors never share cache keys
        assert ("CPU", "DT_BFLOAT16") in _conv_types(bf16, inputs[:2])  # the rewrite did happen
    finally:
        fp32.close()
        bf16.close()
    assert cosines.min() >= 0.999, cosines


@pytest.mark.skipif(not GPUS, reason="no GPU visible to TensorFlow")
def test_gpu_fp16_features_stay_close_to_fp32_on_full_inception(full_graph_path, device_env):
    from imgclf.core.devices import compute_target

    target = compute_target()
    if resolve_precision("auto") != "fp16":
        pytest.skip(f"no fast fp16 on {target.describe()} (needs compute capability 7.0 or more)")
    fp32 = Featurizer(FeaturizerConfig(full_graph_path, precision="fp32"))
    fp16 = Featurizer(FeaturizerConfig(full_graph_path, precision="auto"))
    try:
        assert fp16.precision == "fp16"
        inputs = np.stack([fp32.preprocess(data) for data in JPEG_SET])
        cosines = _cosines(fp16.run(inputs), fp32.run(inputs))
        assert fp16.fingerprint != fp32.fingerprint  # fp32 and fp16 vectors never share cache keys
        assert ("GPU", "DT_HALF") in _conv_types(fp16, inputs[:2])  # placed on the GPU and rewritten
        assert ("GPU", "DT_HALF") not in _conv_types(fp32, inputs[:2])
    finally:
        fp32.close()
        fp16.close()
    assert cosines.min() >= 0.999, (target.describe(), cosines)


def test_precision_auto_follows_the_cpu_flags(monkeypatch):
    from imgclf.core import devices, precision

    # The CPU rule, on a GPU host too.
    monkeypatch.setattr(devices, "compute_target", lambda: devices.ComputeTarget("cpu", "/device:CPU:0"))
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert resolve_precision("auto") == "fp32"
    with pytest.raises(ValueError, match="neither AMX_BF16 nor AVX512_BF16"):
        resolve_precision("bf16")
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512f", "amx_bf16"}))
    monkeypatch.setattr(precision, "onednn_enabled", lambda: True)
    assert resolve_precision("auto") == "bf16"
    monkeypatch.setattr(precision, "onednn_enabled", lambda: False)
    assert resolve_precision("auto") == "fp32"
    assert resolve_precision("fp32") == "fp32"
    with pytest.raises(ValueError, match="received 'fp8'"):
        resolve_precision("fp8")
    with pytest.raises(ValueError, match="fp16 precision needs a GPU"):
        resolve_precision("fp16")


def test_features_reports_bad_images_per_item(legacy_graph_path):
    featurizer = Featurizer(FeaturizerConfig(legacy_graph_path, precision="fp32"))
    results = featurizer.features([JPEG_SET[0], b"garbage", JPEG_SET[1]])
    featurizer.close()
    assert results[0].shape == (2048,) and results[2].shape == (2048,)
    assert isinstance(results[1], InvalidImage)


def test_fingerprint_depends_on_graph_and_names(legacy_graph_path, tmp_path):
    from tests.support.legacy_graph import write_legacy_graph

    other = write_legacy_graph(tmp_path / "other.pb", seed=1)
    a = Featurizer(FeaturizerConfig(legacy_graph_path, precision="fp32"))
    b = Featurizer(FeaturizerConfig(other, precision="fp32"))
    assert a.fingerprint != b.fingerprint
    assert a.describe()["graph_sha256"] != b.describe()["graph_sha256"]
    a.close()
    b.close()


@pytest.mark.parametrize("override, message", [
    ({"bottleneck": "pool_9:0"}, "pool_9:0"),
    ({"image_input": "NoSuchNode:0"}, "NoSuchNode:0"),
])
def test_missing_tensors_are_named(legacy_graph_path, override, message):
    from imgclf.featurizer.graph.contract import DEFAULT_CONTRACT

    with pytest.raises(GraphError, match=message):
        Featurizer(FeaturizerConfig(legacy_graph_path, contract=DEFAULT_CONTRACT.with_overrides(**override)))


def test_a_file_that_is_not_a_graph_is_refused(tmp_path):
    bad = tmp_path / "bad.pb"
    bad.write_bytes(b"\x00\x01 definitely not a graph")
    with pytest.raises(GraphError, match="not a frozen TensorFlow GraphDef|holds no nodes"):
        Featurizer(FeaturizerConfig(bad))
    with pytest.raises(GraphError, match="cannot read graph"):
        Featurizer(FeaturizerConfig(tmp_path / "missing.pb"))


def test_an_unpooled_bottleneck_is_refused_at_load(legacy_graph_path):
    from imgclf.featurizer.graph.contract import DEFAULT_CONTRACT

    contract = DEFAULT_CONTRACT.with_overrides(bottleneck="mixed_1/conv:0")  # [N, 24, 24, 2048]: before pool_3
    with pytest.raises(GraphError, match=r"\[None, 24, 24, 2048\].*between batch and features"):
        Featurizer(FeaturizerConfig(legacy_graph_path, contract=contract, precision="fp32"))


def test_a_bottleneck_of_unknown_spatial_size_is_checked_at_run_time(tmp_path):
    from imgclf.featurizer.graph.contract import DEFAULT_CONTRACT
    from tests.support.legacy_graph import build_legacy_graph_def

    graph_def = build_legacy_graph_def()
    hidden = graph_def.node.add(name="unknown_size", op="PlaceholderWithDefault", input=["mixed_1/conv"])
    hidden.attr["dtype"].type = types_pb2.DT_FLOAT
    for size in (-1, -1, -1, 2048):  # the static shape says nothing of the 24×24 grid
        hidden.attr["shape"].shape.dim.add(size=size)
    path = tmp_path / "unknown.pb"
    path.write_bytes(graph_def.SerializeToString())
    featurizer = Featurizer(FeaturizerConfig(path, contract=DEFAULT_CONTRACT.with_overrides(
        bottleneck="unknown_size:0"), precision="fp32"))
    try:
        inputs = np.stack([featurizer.preprocess(data) for data in JPEG_SET[:2]])
        with pytest.raises(GraphError, match="gave 1152 vectors of 2048 for 2 images"):
            featurizer.run(inputs)
    finally:
        featurizer.close()


def test_contract_reads_preprocessing_constants_of_shape_one():
    from tests.support.legacy_graph import build_legacy_graph_def

    graph_def = build_legacy_graph_def()
    for node in graph_def.node:
        if node.name in ("Sub/y", "Mul/y"):  # [1]-shaped, as some exporters write them
            value = np.float32(127.5) if node.name == "Sub/y" else np.float32(1 / 127.5)
            node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(np.array([value])))
    contract = contract_from_graph(graph_def)
    assert contract.input_mean == 127.5
    assert contract.input_std == pytest.approx(127.5)


def test_load_graph_hashes_the_bytes_it_parsed(tmp_path, monkeypatch):
    import hashlib

    from imgclf.featurizer.graph import load as graph_module
    from tests.support.legacy_graph import build_legacy_graph_def, write_legacy_graph

    path = write_legacy_graph(tmp_path / "g.pb", seed=0)
    original = path.read_bytes()
    parse = graph_module.parse_graph_def

    def parse_then_replace_the_file(data, source="graph"):
        parsed = parse(data, source)
        write_legacy_graph(tmp_path / "g.pb", seed=1)  # another process replaces the file meanwhile
        return parsed

    monkeypatch.setattr(graph_module, "parse_graph_def", parse_then_replace_the_file)
    graph_def, sha256 = graph_module.load_graph(path)
    assert graph_def == build_legacy_graph_def(seed=0)
    assert sha256 == hashlib.sha256(original).hexdigest()  # the parsed file's hash, not the new file's


def test_decode_mode_keys_the_fingerprint_and_reaches_preprocessing(legacy_graph_path):
    import hashlib
    import json

    from imgclf.featurizer.graph.contract import DEFAULT_CONTRACT
    from imgclf.featurizer.images.decode import decode_rgb, decode_to_input
    from imgclf.featurizer.runtime.featurizer import PREPROCESSING

    exact = Featurizer(FeaturizerConfig(legacy_graph_path, precision="fp32"))
    fast = Featurizer(FeaturizerConfig(legacy_graph_path, DEFAULT_CONTRACT.with_overrides(decode="fast"), "fp32"))
    c = exact.contract
    # exact keeps the fingerprint it had before decode modes existed: caches and cards made then stay valid
    before = {"graph_sha256": exact.graph_sha256, "image_input": c.image_input, "bottleneck": c.bottleneck,
              "input_size": c.input_size, "input_mean": c.input_mean, "input_std": c.input_std,
              "jpeg_dct_method": c.jpeg_dct_method, "precision": "fp32", "preprocessing": PREPROCESSING}
    assert exact.fingerprint == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()
    assert fast.fingerprint != exact.fingerprint
    assert fast.describe()["decode"] == "fast" and fast.describe()["contract"]["decode"] == "fast"
    assert exact.describe()["contract"]["decode"] == "exact"
    data = images.jpeg(60, (1300, 1250))
    np.testing.assert_array_equal(fast.preprocess(data),
                                  decode_to_input(data, jpeg_dct_method=c.jpeg_dct_method, decode="fast")[1])
    assert fast.decode(data).shape == (625, 650, 3) and exact.decode(data).shape == (1250, 1300, 3)
    np.testing.assert_array_equal(exact.decode(data), decode_rgb(data, jpeg_dct_method=c.jpeg_dct_method))
    exact.close()
    fast.close()


def test_the_decode_option_reaches_the_featurizer_config(tmp_path):
    import argparse

    from imgclf.featurizer.cli import add_featurizer_options, featurizer_config_from_args

    parser = argparse.ArgumentParser()
    add_featurizer_options(parser)
    graph = tmp_path / "g.pb"
    graph.write_bytes(b"")  # checked to exist, not loaded
    assert featurizer_config_from_args(parser.parse_args(["--graph", str(graph)])).contract.decode == "exact"
    assert featurizer_config_from_args(parser.parse_args(["--graph", str(graph), "--decode", "fast"])
                                       ).contract.decode == "fast"
    with pytest.raises(SystemExit):
        parser.parse_args(["--graph", "g.pb", "--decode", "quick"])


def test_fp32_runs_a_batch_in_micro_batches_with_the_same_features(legacy_graph_path):
    from imgclf.featurizer.graph.load import FP32_MICRO_BATCH

    featurizer = Featurizer(FeaturizerConfig(legacy_graph_path, precision="fp32"))
    graph = featurizer.graph
    assert graph.micro_batch == FP32_MICRO_BATCH >= 1
    inputs = np.stack([featurizer.preprocess(data) for data in JPEG_SET[:5]])
    calls = []
    real_run = graph.session.run
    graph.session.run = lambda fetches, feed: calls.append(len(next(iter(feed.values())))) or real_run(fetches, feed)
    micro = graph.run(inputs)
    assert calls == [FP32_MICRO_BATCH] * (5 // FP32_MICRO_BATCH) + ([5 % FP32_MICRO_BATCH] if 5 % FP32_MICRO_BATCH
                                                                     else [])
    graph.micro_batch = 0  # the whole batch in one session run: the reference
    calls.clear()
    whole = graph.run(inputs)
    assert calls == [5]
    np.testing.assert_allclose(micro, whole, rtol=1e-4, atol=1e-5)
    featurizer.close()


def test_fp32_micro_batches_run_side_by_side_and_keep_their_order(legacy_graph_path):
    """Several session runs at once (one per usable CPU, at least two here) give the rows of one at a time."""
    import threading

    featurizer = Featurizer(FeaturizerConfig(legacy_graph_path, precision="fp32"))
    graph = featurizer.graph
    assert featurizer.min_batch == graph.concurrent_runs >= 1  # one image per run, that many at once
    graph.concurrent_runs = 2
    inputs = np.stack([featurizer.preprocess(data) for data in JPEG_SET[:6]])
    lock, running, peak, both = threading.Lock(), [0], [0], threading.Event()
    real_run = graph.session.run

    def observed(fetches, feed):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            if running[0] == 2:
                both.set()
        both.wait(10 if graph.concurrent_runs > 1 else 0)  # until the other runner has started its own
        try:
            return real_run(fetches, feed)
        finally:
            with lock:
                running[0] -= 1

    graph.session.run = observed
    together = graph.run(inputs)
    assert peak[0] == 2
    graph.concurrent_runs, peak[0] = 1, 0
    one_by_one = graph.run(inputs)
    assert peak[0] == 1
    np.testing.assert_array_equal(together, one_by_one)
    np.testing.assert_array_equal(together[3], graph.run(inputs[3:4])[0])
    featurizer.close()
    assert graph._runners is None
