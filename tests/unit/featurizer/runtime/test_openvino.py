"""The OpenVINO backend against TensorFlow fp32: fidelity per precision, the IR cache, fingerprints, int8 heads."""

import logging
import math
import shutil
import threading
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("openvino", reason="the imgclf[openvino] extra is not installed")
pytest.importorskip("nncf", reason="the imgclf[openvino] extra (NNCF) is not installed")

from imgclf.core.errors import GraphError
from imgclf.core.precision import cpu_flags, cpu_model
from imgclf.featurizer.graph.contract import DEFAULT_CONTRACT
from imgclf.featurizer.images.demo import write_demo_images
from imgclf.featurizer.runtime import openvino as openvino_backend
from imgclf.featurizer.runtime.featurizer import Featurizer, FeaturizerConfig, calibration_for
from imgclf.featurizer.runtime.openvino import INT8_RECIPES, OpenVINOGraph, int8_recipe, native_bf16
from tests.support import images

NATIVE_BF16 = native_bf16()
# The per-image bars: cosine to the TensorFlow fp32 features.
MIN_COSINE = {"fp32": 0.9999, "bf16": 0.999, "int8": 0.99}
PHOTOS = [images.jpeg(seed, size, quality) for seed, size, quality in [
    (20, (500, 375), 90), (21, (375, 500), 80), (22, (640, 480), 95), (23, (120, 90), 70)]]


def _cosines(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    """Four separable synthetic classes, 16 images each: int8 calibrates on all 64, fidelity uses every 4th."""
    return write_demo_images(tmp_path_factory.mktemp("ov") / "images", per_class=16, seed=3)


@pytest.fixture(scope="module")
def ov_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("ov_cache")


def _openvino(graph, precision, cache, calibration_dir=None, calibration_images=64, **options):
    config = FeaturizerConfig(graph, precision=precision, backend="openvino", openvino_cache=cache,
                              calibration_images=calibration_images, **options)
    return Featurizer(config, calibration_for(config, calibration_dir) if calibration_dir else None)


def _inputs(featurizer, demo_dir):
    files = sorted(demo_dir.rglob("*.jpg"))[::4]
    return np.stack([featurizer.preprocess(data) for data in PHOTOS + [f.read_bytes() for f in files]])


def _check_fidelity(graph, demo_dir, cache, precisions, **options):
    reference = Featurizer(FeaturizerConfig(graph, precision="fp32"))
    try:
        inputs = _inputs(reference, demo_dir)
        expected = reference.run(inputs)
    finally:
        reference.close()
    found = {}
    for precision in precisions:
        featurizer = _openvino(graph, precision, cache, demo_dir, **options)
        try:
            assert (featurizer.backend, featurizer.precision) == ("openvino", precision)
            got = featurizer.run(inputs)
        finally:
            featurizer.close()
        assert got.shape == expected.shape and got.dtype == np.float32
        cosines = _cosines(got, expected)
        assert cosines.min() >= MIN_COSINE[precision], (precision, cosines)
        found[precision] = float(cosines.min())
    return found


def _precisions():
    return ["fp32", "int8"] + (["bf16"] if NATIVE_BF16 else [])


def test_features_match_tensorflow_fp32_per_image_on_the_legacy_graph(legacy_graph_path, demo_dir, ov_cache):
    print("lowest cosine per precision:", _check_fidelity(legacy_graph_path, demo_dir, ov_cache, _precisions()))


def test_features_match_tensorflow_fp32_per_image_on_full_inception(full_graph_path, demo_dir, tmp_path):
    # The fully quantized model, measured: on this drawn set one checked picture is at 0.9896 on an AVX2 CPU, and
    # the floor's layer ranking would take minutes on this graph (it is tested on the legacy graph, and measured
    # on this one by bench.int8_fidelity).
    found = _check_fidelity(full_graph_path, demo_dir, tmp_path, _precisions(), int8_floor=0.0)
    print("lowest cosine per precision:", found)


def test_batches_are_split_over_the_infer_requests_in_order(legacy_graph_path, demo_dir, ov_cache):
    featurizer = _openvino(legacy_graph_path, "fp32", ov_cache)
    try:
        inputs = _inputs(featurizer, demo_dir)
        together = featurizer.run(inputs)
        alone = np.concatenate([featurizer.run(inputs[i:i + 1]) for i in range(len(inputs))])
        odd = featurizer.run(inputs[:3])
    finally:
        featurizer.close()
    assert featurizer.graph.streams >= 1
    assert featurizer.graph.requests == 2 * featurizer.graph.streams  # one running and one queued per stream
    assert featurizer.min_batch == featurizer.graph.requests  # the pipeline runs that many without a whole batch
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(odd, together[:3], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"images must be \[N, 299, 299, 3\]"):
        featurizer.run(np.zeros((1, 10, 10, 3), np.float32))


def test_calls_from_many_threads_share_the_infer_requests_and_get_their_own_answers(legacy_graph_path, demo_dir,
                                                                                   ov_cache):
    from concurrent.futures import ThreadPoolExecutor

    featurizer = _openvino(legacy_graph_path, "fp32", ov_cache)
    try:
        inputs = _inputs(featurizer, demo_dir)
        expected = featurizer.run(inputs)
        # single images and batches of 2-5 at once, from more threads than there are infer requests
        spans = [(i, i + 1 + i % 5) for i in range(len(inputs) - 5)] * 3
        with ThreadPoolExecutor(max_workers=4 * featurizer.graph.requests + 2) as pool:
            answers = list(pool.map(lambda span: featurizer.run(inputs[span[0]:span[1]]), spans))
        assert featurizer.graph.describe()["slice_images"] >= 1
        # every request went back to the pool: a run can still take all of them
        assert featurizer.graph._idle.qsize() == featurizer.graph.requests
    finally:
        featurizer.close()
    for (start, stop), got in zip(spans, answers):
        np.testing.assert_allclose(got, expected[start:stop], rtol=1e-5, atol=1e-6)
    with pytest.raises(GraphError, match="closed"):
        featurizer.graph.run(inputs[:1])


class _GatedRequest:
    """An infer request whose slice finishes when the test opens its gate; its output is each image's first pixels."""

    def __init__(self):
        self.gate, self.waiting = threading.Event(), threading.Event()
        self._out = None

    def start_async(self, inputs):
        self._out = inputs[0].reshape(len(inputs[0]), -1)[:, :4].copy()

    def wait(self):
        self.waiting.set()
        assert self.gate.wait(10), "the test never opened this request's gate"

    def get_output_tensor(self, index):
        return SimpleNamespace(data=self._out)


class _GatedCompiled:
    """A compiled model of one stream with the given requests, one image per request, 4 outputs per image."""

    def __init__(self, requests):
        import openvino as ov

        self._requests = list(requests)
        self.outputs = [SimpleNamespace(get_partial_shape=lambda: ov.PartialShape([1, 4]))]

    def get_property(self, name):  # one stream: imgclf makes two requests for it
        return {"INFERENCE_PRECISION_HINT": "f32", "OPTIMAL_NUMBER_OF_INFER_REQUESTS": 1}[name]

    def create_infer_request(self):
        return self._requests.pop(0)


def test_a_call_hands_each_infer_request_back_as_it_finishes_so_an_overlapping_call_need_not_wait():
    first, second = _GatedRequest(), _GatedRequest()
    graph = OpenVINOGraph(_GatedCompiled([first, second]), DEFAULT_CONTRACT, "fp32", slice_images=1)
    images = np.random.default_rng(0).random((2, 299, 299, 3), dtype=np.float32)
    first.gate.set()  # the first image finishes at once; the second is held
    answers: dict = {}
    call_a = threading.Thread(target=lambda: answers.update(a=graph.run(images)), daemon=True)
    call_a.start()
    assert second.waiting.wait(10)  # call A has collected its first request and waits on its second
    call_b = threading.Thread(target=lambda: answers.update(b=graph.run(images[1:] + 1)), daemon=True)
    call_b.start()
    call_b.join(10)
    assert not call_b.is_alive(), "the second call waited for the first call's last slice"
    assert call_a.is_alive()  # still holding the second request
    np.testing.assert_array_equal(answers["b"], (images[1:] + 1).reshape(1, -1)[:, :4])
    second.gate.set()
    call_a.join(10)
    np.testing.assert_array_equal(answers["a"], images.reshape(2, -1)[:, :4])
    assert graph._idle.qsize() == 2


def test_the_converted_model_is_cached_and_reused(legacy_graph_path, demo_dir, tmp_path):
    first = _openvino(legacy_graph_path, "fp32", tmp_path)
    inputs = _inputs(first, demo_dir)
    try:
        expected = first.run(inputs)
        assert first.graph.rewrite_report is not None  # converted now
    finally:
        first.close()
    cached = sorted(p.name for p in tmp_path.iterdir())
    assert len(cached) == 1 and not cached[0].startswith(".")  # one key, no temporary folder left
    second = _openvino(legacy_graph_path, "bf16" if NATIVE_BF16 else "fp32", tmp_path)
    try:
        assert second.graph.rewrite_report is None  # read from the cache, not converted again
        assert second.graph.ir_dir == first.graph.ir_dir  # fp32 and bf16 share the IR
        if not NATIVE_BF16:
            np.testing.assert_array_equal(second.run(inputs), expected)
    finally:
        second.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == cached


def test_int8_calibration_is_reproducible_cached_and_keyed(legacy_graph_path, demo_dir, tmp_path):
    a = _openvino(legacy_graph_path, "int8", tmp_path, demo_dir, calibration_images=12)
    b = _openvino(legacy_graph_path, "int8", tmp_path, demo_dir, calibration_images=12)  # from the cache
    c = _openvino(legacy_graph_path, "int8", tmp_path, demo_dir, calibration_images=20)
    try:
        inputs = _inputs(a, demo_dir)
        assert b.graph.rewrite_report is None and b.graph.ir_dir == a.graph.ir_dir
        np.testing.assert_array_equal(a.run(inputs), b.run(inputs))
        assert a.fingerprint == b.fingerprint
        assert c.fingerprint != a.fingerprint and c.graph.ir_dir != a.graph.ir_dir
        described = a.describe()
        calibration = described["openvino"]["calibration"]
        assert calibration["images"] == 12 and calibration["requested"] == 12
        assert described["calibration_sha256"] == calibration["sha256"] == a.calibration.sha256
        assert (described["backend"], described["precision"]) == ("openvino", "int8")
        # the card says how it was quantized, and features of another recipe never share a fingerprint
        # (round 2's vnni keys stay valid: that recipe is not named in the fingerprint)
        assert described["openvino"]["int8_recipe"] == a._key_parts().get("int8_recipe", "vnni") == int8_recipe()
        assert described["openvino"]["int8_settings"] == INT8_RECIPES[int8_recipe()]
        # how faithful the new IR is on this CPU, measured once when it was built, read back from the cache
        fidelity = described["openvino"]["int8_fidelity"]
        assert fidelity["images"] == min(12, openvino_backend.INT8_FIDELITY_IMAGES)
        assert 0.99 <= fidelity["worst_cosine"] <= fidelity["mean_cosine"] <= 1.0
        assert fidelity["cpu"] == cpu_model() and set(fidelity["cpu_int8"]) <= cpu_flags()  # the CPU it holds on
        assert b.describe()["openvino"]["int8_fidelity"] == fidelity
    finally:
        for featurizer in (a, b, c):
            featurizer.close()


def test_int8_fidelity_is_each_images_cosine_to_the_float_model():
    import openvino as ov
    from openvino import opset13 as ops

    def scaled(factors):  # [N, 2, 2, 3] -> the input times a factor per channel, flattened
        image = ops.parameter([-1, 2, 2, 3], np.float32)
        product = ops.multiply(image, ops.constant(np.asarray(factors, np.float32)))
        return ov.Model([ops.reshape(product, ops.constant(np.asarray([-1, 12], np.int64)), False)], [image])

    rng = np.random.default_rng(4)
    inputs = [rng.random((2, 2, 3), dtype=np.float32) + 0.1 for _ in range(5)]
    factors = [1.0, 0.5, 2.0]
    expected = [float(x.ravel() @ (x * factors).ravel() / np.linalg.norm(x) / np.linalg.norm(x * factors))
                for x in inputs]
    found = openvino_backend.int8_fidelity(scaled([1.0, 1.0, 1.0]), scaled(factors), inputs)
    assert found["images"] == 5 and found["worst_cosine"] == round(min(expected), 6)
    assert found["mean_cosine"] == round(float(np.mean(expected)), 6) and min(expected) < 0.99
    assert openvino_backend.int8_fidelity(scaled(factors), scaled(factors), inputs)["worst_cosine"] == 1.0


def _int8_fed(xml) -> set[str]:
    """Return the ops of the IR at ``xml`` with an int8 input, as "Type n" (the n-th op of that type in topological
    order: OpenVINO's own names carry a counter of the process that converted it): an input from a FakeQuantize
    op, or weights that are an int8 Constant dequantized on the way (Convert, Subtract, Multiply)."""
    import openvino as ov

    def int8(node, hops=4):
        kind = node.get_type_name()
        if kind in ("FakeQuantize", "Constant"):
            return kind == "FakeQuantize" or node.get_element_type().get_type_name() in ("i8", "u8")
        return hops > 0 and kind in ("Convert", "Subtract", "Multiply", "Reshape", "Transpose") and any(
            int8(value.get_node(), hops - 1) for value in node.input_values())

    counts, fed = {}, set()
    for op in ov.Core().read_model(str(xml)).get_ordered_ops():
        kind = op.get_type_name()
        counts[kind] = counts.get(kind, 0) + 1
        if kind in ("Convolution", "GroupConvolution", "MatMul", "MaxPool", "AvgPool", "Concat") and any(
                int8(value.get_node()) for value in op.input_values()):
            fed.add(f"{kind} {counts[kind]}")
    return fed


def test_an_int8_ir_under_its_floor_keeps_the_layers_that_lose_the_most_float(legacy_graph_path, demo_dir,
                                                                               tmp_path):
    cache = tmp_path / "ov"
    plain = _openvino(legacy_graph_path, "int8", cache, demo_dir, int8_floor=0.0)  # measured, nothing kept
    fp32 = _openvino(legacy_graph_path, "fp32", cache)
    guarded = None
    try:
        first = plain.describe()["openvino"]["int8_fidelity"]
        assert first["floor"] == 0.0 and first["kept_float"] == [] and plain.graph.info["int8_kept_float"] == []
        # missed, by less than the retry's reach: halfway to fp32 or to the reach, whichever is closer
        floor = round(first["worst_cosine"] + min(1.0 - first["worst_cosine"], openvino_backend.INT8_FLOOR_REACH) / 2,
                      6)
        guarded = _openvino(legacy_graph_path, "int8", cache, demo_dir, int8_floor=floor)
        fidelity = guarded.describe()["openvino"]["int8_fidelity"]
        kept = fidelity["kept_float"]
        assert kept and fidelity["floor"] == floor and fidelity["worst_cosine"] >= floor
        assert fidelity["before_kept_float"]["worst_cosine"] == first["worst_cosine"]
        # checked another way: both int8 featurizers and OpenVINO fp32 on the images the floor is held on
        checked = np.stack(guarded.calibration.inputs(guarded.preprocess)[:openvino_backend.INT8_FIDELITY_IMAGES])
        reference = fp32.run(checked)
        assert _cosines(plain.run(checked), reference).min() < floor
        assert _cosines(guarded.run(checked), reference).min() >= floor - 1e-6  # compiled otherwise: last bits
        # read back from the IRs on disk: the kept layers take int8 inputs in the fully quantized one, float ones
        # in the other, and nothing else changed
        xml = openvino_backend.IR_FILE
        assert _int8_fed(plain.graph.ir_dir / xml) - _int8_fed(guarded.graph.ir_dir / xml) == set(kept)
        assert any(name.startswith("Convolution ") for name in kept)
        # another IR and other vectors: keyed apart, and the fingerprint names the float layers
        assert guarded.graph.ir_dir != plain.graph.ir_dir and guarded.fingerprint != plain.fingerprint
        assert guarded._key_parts()["int8_kept_float"] == kept and "int8_kept_float" not in plain._key_parts()
        assert guarded.graph.info["int8_kept_float"] == kept
    finally:
        for featurizer in (plain, fp32, guarded):
            if featurizer is not None:
                featurizer.close()


def test_an_int8_ir_that_cannot_reach_its_floor_is_kept_with_a_warning(legacy_graph_path, demo_dir, tmp_path,
                                                                      monkeypatch, caplog):
    calls = []

    def keeps_nothing(model, dataset, inputs, references, floor, options, quantized):
        calls.append(floor)
        return quantized, [], 9

    monkeypatch.setattr(openvino_backend, "_keep_faithful", keeps_nothing)
    monkeypatch.setattr(openvino_backend, "INT8_FLOOR_REACH", 1.0)  # any shortfall is tried
    # a logger of this test's own: another test's logging set-up (the CLI's) may stop imgclf's from propagating
    monkeypatch.setattr(openvino_backend, "log", logging.getLogger("tests.int8_floor"))
    caplog.set_level(logging.WARNING, logger="tests.int8_floor")
    with _openvino(legacy_graph_path, "int8", tmp_path, demo_dir, calibration_images=8,
                   int8_floor=0.999999) as featurizer:
        fidelity = featurizer.describe()["openvino"]["int8_fidelity"]
    assert calls == [0.999999] and fidelity["worst_cosine"] < 0.999999 and fidelity["kept_float"] == []
    assert "under the floor 0.999999" in caplog.text and "--precision bf16" in caplog.text


def test_a_floor_out_of_reach_of_a_quarter_of_the_ops_float_stops_there_and_warns(legacy_graph_path, demo_dir,
                                                                                   tmp_path, monkeypatch, caplog):
    import nncf

    steps = []
    accuracy_control = nncf.quantize_with_accuracy_control

    def counted(*args, **kwargs):
        steps.append(kwargs["advanced_accuracy_restorer_parameters"].max_num_iterations)
        return accuracy_control(*args, **kwargs)

    monkeypatch.setattr(nncf, "quantize_with_accuracy_control", counted)
    monkeypatch.setattr(openvino_backend, "INT8_FLOOR_REACH", 1.0)  # tried, however far under the floor
    monkeypatch.setattr(openvino_backend, "log", logging.getLogger("tests.int8_mostly_float"))
    caplog.set_level(logging.INFO, logger="tests.int8_mostly_float")
    with _openvino(legacy_graph_path, "int8", tmp_path, demo_dir, calibration_images=8,
                   int8_floor=0.99999999) as featurizer:  # as close as fp32 itself: out of int8's reach
        fidelity = featurizer.describe()["openvino"]["int8_fidelity"]
        ir = featurizer.graph.ir_dir / openvino_backend.IR_FILE
    kept = fidelity["kept_float"]
    int8_ops = next(int(record.args[1]) for record in caplog.records if "take float inputs now" in record.msg)
    # NNCF reverted at most a quarter of the int8 ops' groups (a group is one op or a few), and the IR on disk
    # takes int8 inputs in the others
    assert steps == [math.ceil(int8_ops * openvino_backend.MOSTLY_FLOAT)]
    assert 0 < len(kept) and len(_int8_fed(ir)) <= int8_ops - len(kept)
    assert fidelity["worst_cosine"] < 0.99999999 and fidelity["before_kept_float"]["worst_cosine"] < 0.99999999
    assert f"with {len(kept)} of its {int8_ops} int8 op(s) kept float" in caplog.text
    assert "under the floor 0.99999999" in caplog.text and "--precision bf16" in caplog.text
    if len(kept) > int8_ops * openvino_backend.MOSTLY_FLOAT:  # the steps' groups held several ops
        assert "int8 gains little here" in caplog.text and "lower --int8-floor" in caplog.text


def test_a_shortfall_beyond_the_floors_reach_warns_at_once_and_keeps_nothing_float(legacy_graph_path, demo_dir,
                                                                                   tmp_path, monkeypatch, caplog):
    calls = []
    monkeypatch.setattr(openvino_backend, "_keep_faithful", lambda *args: calls.append(args))
    monkeypatch.setattr(openvino_backend, "INT8_FLOOR_REACH", 1e-7)  # any shortfall of int8 is beyond it
    monkeypatch.setattr(openvino_backend, "log", logging.getLogger("tests.int8_reach"))
    caplog.set_level(logging.WARNING, logger="tests.int8_reach")
    with _openvino(legacy_graph_path, "int8", tmp_path, demo_dir, calibration_images=8,
                   int8_floor=0.999999) as featurizer:
        fidelity = featurizer.describe()["openvino"]["int8_fidelity"]
        assert featurizer.graph.info["int8_kept_float"] == []
    assert calls == [] and fidelity["kept_float"] == [] and "before_kept_float" not in fidelity
    assert fidelity["floor_reach"] == 1e-7 and 0.999999 - fidelity["worst_cosine"] > 1e-7
    assert "under the floor 0.999999, more than 1e-07 under it: int8 loses more on these images" in caplog.text
    assert "--precision bf16" in caplog.text


@pytest.mark.parametrize("floor", [1.0, -0.1, float("nan"), "high"])
def test_an_int8_floor_out_of_range_is_refused_before_anything_is_built(legacy_graph_path, tmp_path, floor):
    from imgclf.core.errors import UsageError

    config = FeaturizerConfig(legacy_graph_path, precision="int8", backend="openvino", int8_floor=floor,
                              openvino_cache=tmp_path / "ov")
    root = write_demo_images(tmp_path / "images", per_class=2, seed=5)
    with pytest.raises(UsageError, match="int8 floor"):
        Featurizer(config, calibration_for(config, root))
    assert not (tmp_path / "ov").exists()


def test_the_featurizer_quantizes_on_the_calibration_it_is_handed_and_never_reads_the_folder(
        legacy_graph_path, tmp_path):
    root = write_demo_images(tmp_path / "images", per_class=4, seed=5)
    config = FeaturizerConfig(legacy_graph_path, precision="int8", backend="openvino", calibration_images=8,
                              openvino_cache=tmp_path / "ov")
    calibration = calibration_for(config, root)
    shutil.rmtree(root)  # gone: the constructor must not look for it
    with Featurizer(config, calibration) as featurizer:
        assert featurizer.calibration is calibration
        assert featurizer.describe()["calibration_sha256"] == calibration.sha256
        assert featurizer.describe()["openvino"]["calibration"]["images"] == 8


def test_fingerprints_key_on_backend_and_precision(legacy_graph_path, tmp_path):
    tf_fp32 = Featurizer(FeaturizerConfig(legacy_graph_path, precision="fp32"))
    ov_fp32 = _openvino(legacy_graph_path, "fp32", tmp_path)
    try:
        assert "backend" not in tf_fp32._key_parts()  # TensorFlow caches made before the backend option still hit
        assert tf_fp32.describe()["backend"] == "tensorflow"
        assert ov_fp32.fingerprint != tf_fp32.fingerprint
        assert ov_fp32.describe()["openvino"]["inference_precision"] == "f32"
    finally:
        tf_fp32.close()
        ov_fp32.close()


def test_int8_without_an_image_folder_is_a_clear_error(legacy_graph_path, tmp_path):
    with pytest.raises(ValueError, match="int8 precision calibrates on the images being featurized"):
        _openvino(legacy_graph_path, "int8", tmp_path, calibration_dir=None)


@pytest.mark.parametrize("precision, message", [("fp16", "fp16 is TensorFlow's GPU precision")])
def test_precisions_openvino_cannot_run_are_refused(legacy_graph_path, tmp_path, precision, message):
    with pytest.raises(ValueError, match=message):
        _openvino(legacy_graph_path, precision, tmp_path)


def test_a_missing_ir_is_a_graph_error(tmp_path, legacy_graph_path):
    from imgclf.featurizer.graph.contract import DEFAULT_CONTRACT

    with pytest.raises(GraphError, match="is missing"):
        OpenVINOGraph.from_ir(tmp_path / "featurizer.xml", DEFAULT_CONTRACT, "fp32")


def test_a_head_on_int8_features_is_within_one_point_of_fp32(legacy_graph_path, tmp_path):
    """Train the same head on TensorFlow fp32 and on OpenVINO int8 features of a separable set; test both."""
    from imgclf.training.config import HeadConfig, TrainConfig
    from imgclf.training.fit_head import train_head

    root = write_demo_images(tmp_path / "set", per_class=100, seed=11)
    files = sorted(root.rglob("*.jpg"))
    labels = np.array([sorted({f.parent.name for f in files}).index(f.parent.name) for f in files])
    split = np.arange(len(files)) % 4  # 0, 1: train (200); 2: validation (100); 3: test (100)
    train, val, test = split < 2, split == 2, split == 3
    accuracies = {}
    for name, featurizer in [
        ("fp32", Featurizer(FeaturizerConfig(legacy_graph_path, precision="fp32"))),
        ("int8", _openvino(legacy_graph_path, "int8", tmp_path / "cache", root, calibration_images=64)),
    ]:
        try:
            vectors = np.concatenate([featurizer.run(np.stack([featurizer.preprocess(f.read_bytes())
                                                               for f in files[i:i + 50]]))
                                      for i in range(0, len(files), 50)])
        finally:
            featurizer.close()
        result = train_head(vectors[train], labels[train], vectors[val], labels[val], 4, HeadConfig(),
                            TrainConfig(epochs=40, batch_size=50), progress=False)
        predicted = np.argmax(result.model.predict(vectors[test], verbose=0), axis=1)
        accuracies[name] = int(np.sum(predicted == labels[test]))  # right answers: counted, not rounded
    n = int(test.sum())
    print(f"test accuracy: fp32 {accuracies['fp32'] / n:.3f}, int8 {accuracies['int8'] / n:.3f} of {n}")
    assert accuracies["fp32"] >= 0.5 * n  # the head learned something, so the comparison means something
    # within 1 point: at most n/100 images apart (one image of 100 is exactly one point, which passes)
    assert abs(accuracies["int8"] - accuracies["fp32"]) * 100 <= n, accuracies


def test_int8_recipes_key_the_cache_and_follow_the_cpu(monkeypatch):
    from imgclf.core import precision as precision_module
    from imgclf.featurizer.graph.contract import DEFAULT_CONTRACT

    def key(recipe, precision="int8"):
        return openvino_backend.ir_key("g" * 64, DEFAULT_CONTRACT, precision, "c" * 64, "2026.4", recipe)[0]

    assert key("vnni") == key(None)  # caches made before recipes existed keep their keys
    recipes = ["vnni", "no-vnni", "vnni-fullrange", "no-vnni-fullrange"]
    assert len({key(recipe) for recipe in recipes}) == 4  # an IR quantized by an older recipe is never reused
    assert key("no-vnni", "fp32") == key("vnni-fullrange", "fp32")  # float IRs have no recipe
    for flags, expected in [({"avx2", "fma"}, "no-vnni"), ({"avx2", "avx_vnni"}, "vnni"),
                            ({"avx512f", "avx512_vnni"}, "vnni"), ({"amx_int8", "amx_bf16"}, "vnni")]:
        monkeypatch.setattr(precision_module, "cpu_flags", lambda flags=flags: frozenset(flags))
        assert openvino_backend.int8_recipe() == expected
        assert openvino_backend.int8_recipe(full_range=True) == f"{expected}-fullrange"
    assert set(openvino_backend.INT8_RECIPES) == set(recipes)
    with pytest.raises(ValueError, match="int8 recipe must be one of vnni, no-vnni, .*; received 'fast'"):
        OpenVINOGraph.from_graph_def(None, "g" * 64, precision="fp32", recipe="fast")


def _input_range(model):
    """Return (low, high) of the FakeQuantize NNCF put on the network's input."""
    (fq,) = [op for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"
             and op.input(0).get_source_output().get_node().get_type_name() == "Parameter"]
    low, high = (float(np.min(fq.input(i).get_source_output().get_node().get_data())) for i in (1, 2))
    return low, high


def test_the_fullrange_recipes_quantize_activations_over_the_whole_calibration_range(legacy_graph_path, tmp_path):
    """The old recipe's range is the mean of each image's min and max; the new one spans every image's values."""
    import openvino as ov

    from imgclf.featurizer.graph.load import inference_graph_def, load_graph
    from imgclf.featurizer.runtime.openvino import _quantize

    root = write_demo_images(tmp_path / "images", per_class=4, seed=5)
    config = FeaturizerConfig(legacy_graph_path, precision="int8", backend="openvino", calibration_images=16)
    calibration = calibration_for(config, root)
    with Featurizer(FeaturizerConfig(legacy_graph_path, precision="fp32")) as reference:
        preprocess = reference.preprocess
        flat = np.stack(calibration.inputs(preprocess)).reshape(16, -1)
    model = ov.convert_model(inference_graph_def(load_graph(legacy_graph_path)[0])[0])
    ranges = {recipe: _input_range(_quantize(model.clone(), calibration, preprocess, recipe)[0])
              for recipe in ("no-vnni", "no-vnni-fullrange", "vnni-fullrange")}
    whole, mean_max = (flat.min(), flat.max()), flat.max(1).mean()
    assert mean_max < whole[1] - 0.05  # some images are darker than others: the two ranges differ
    step = (whole[1] - whole[0]) / 255  # one quantization step: NNCF aligns the range's ends to its grid
    assert abs(ranges["no-vnni"][1] - mean_max) < 2 * step, (ranges, mean_max)
    for recipe in ("no-vnni-fullrange", "vnni-fullrange"):
        low, high = ranges[recipe]
        assert low <= whole[0] + step and high >= whole[1] - 2 * step, (recipe, ranges[recipe], whole)
