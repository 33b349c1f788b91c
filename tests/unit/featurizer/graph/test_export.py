"""Tests of the full-size Inception-v3 export: interface, numerics, weights sources, errors.

The full graph (~95 MB) is built once per session by the ``full_graph_path``
fixture; the Keras reference is rebuilt from the same seed and compared with
what the frozen graph computes.
"""

from __future__ import annotations

import io
import socket
import time

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from imgclf.core.errors import DownloadError, GraphError
from imgclf.featurizer.graph import contract as names
from imgclf.featurizer.graph import export as ei
from imgclf.featurizer.graph.load import (
    BottleneckGraph,
    SingleImageGraph,
    contract_from_graph,
    file_sha256,
    load_graph,
    missing_tensors,
)

CONTRACT_TENSORS = [names.JPEG_INPUT, names.DECODED_IMAGE, names.RESIZED_IMAGE, names.NORMALIZED_IMAGE,
                    names.BOTTLENECK, names.BOTTLENECK_SINGLE, names.SOFTMAX]


def make_jpeg(seed: int, size: tuple[int, int] = (320, 240)) -> bytes:
    """Return a smooth seeded random photo-like JPEG (low-res noise upsampled by Pillow)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(small).resize(size, Image.BILINEAR).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Return the cosine similarity of two arrays, flattened."""
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def tf_preprocess(jpeg: bytes) -> np.ndarray:
    """Decode, squash-resize and normalise a JPEG with TF ops, as the 2015 graph does."""
    image = tf.cast(tf.io.decode_jpeg(jpeg, channels=3), tf.float32)[tf.newaxis]
    resized = tf.compat.v1.image.resize_bilinear(image, [names.INPUT_SIZE, names.INPUT_SIZE], align_corners=False)
    return ((resized - names.INPUT_MEAN) / names.INPUT_STD).numpy()


@pytest.fixture(scope="module")
def graph_def(full_graph_path):
    return load_graph(full_graph_path)[0]


@pytest.fixture(scope="module")
def session(graph_def):
    """The exported graph, untouched, in a v1 session."""
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    sess = tf.compat.v1.Session(graph=graph)
    yield sess
    sess.close()


@pytest.fixture(scope="module")
def reference():
    """The Keras model the fixture graph was frozen from, rebuilt from the same seed."""
    return ei.build_inception("random", seed=0)


def test_graph_has_the_2015_interface(graph_def):
    assert missing_tensors(graph_def, CONTRACT_TENSORS) == []
    nodes = {node.name: node for node in graph_def.node}
    assert [n.name for n in graph_def.node if n.op == "Placeholder"] == [names.node_name(names.JPEG_INPUT)]
    assert nodes[names.node_name(names.DECODED_IMAGE)].attr["channels"].i == 3
    resize = nodes[names.RESIZE_NODE]
    assert resize.op == "ResizeBilinear"
    assert not resize.attr["align_corners"].b and not resize.attr["half_pixel_centers"].b
    assert nodes[names.node_name(names.BOTTLENECK)].op == "AvgPool"
    assert nodes[names.node_name(names.SOFTMAX)].op == "Softmax"
    shape = nodes[names.node_name(names.BOTTLENECK_SINGLE)].input[1]
    assert tf.make_ndarray(nodes[shape].attr["value"].tensor).tolist() == [1, names.BOTTLENECK_DIM]
    contract = contract_from_graph(graph_def)
    assert (contract.input_size, contract.input_mean, contract.input_std) == (299, 128.0, 128.0)


def test_bottleneck_batch_dimension_stays_free(graph_def):
    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, 299, 299, 3])
        (pool,) = tf.graph_util.import_graph_def(graph_def, input_map={names.NORMALIZED_IMAGE: images},
                                                 return_elements=[names.BOTTLENECK], name="")
    assert pool.shape.as_list() == [None, 1, 1, names.BOTTLENECK_DIM]


def test_single_jpeg_gives_sane_features_and_probabilities(session):
    features, probs = session.run([names.BOTTLENECK_SINGLE, names.SOFTMAX], {names.JPEG_INPUT: make_jpeg(1)})
    assert features.shape == (1, names.BOTTLENECK_DIM)
    assert np.all(np.isfinite(features))
    assert features.std() > 0 and np.count_nonzero(features) > names.BOTTLENECK_DIM // 2
    assert 0.05 < np.abs(features).mean() < 50  # calibrated batch norms: activations neither vanish nor explode
    assert probs.shape == (1, ei.RANDOM_NUM_CLASSES)
    assert probs.sum() == pytest.approx(1.0, abs=1e-4)
    other = session.run(names.BOTTLENECK_SINGLE, {names.JPEG_INPUT: make_jpeg(2)})
    assert cosine(features, other) < 0.9999  # different images, different features


def test_graph_matches_the_keras_model(session, reference):
    normalised = session.run(names.NORMALIZED_IMAGE, {names.JPEG_INPUT: make_jpeg(3)})
    for image in (normalised, ei.synthetic_images(1, seed=11)):
        pooled, probs = session.run([names.BOTTLENECK, names.SOFTMAX], {names.NORMALIZED_IMAGE: image})
        expected = reference.body(image, training=False).numpy().mean(axis=(1, 2))
        assert cosine(pooled, expected) >= 0.9999
        logits = expected @ reference.logits_kernel + reference.logits_bias
        expected_probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        assert cosine(probs, expected_probs) >= 0.9999


def test_batched_path_matches_single_image_path(graph_def):
    jpegs = [make_jpeg(seed, size) for seed, size in ((4, (320, 240)), (5, (299, 299)), (6, (150, 400)))]
    batched = BottleneckGraph(graph_def)
    single = SingleImageGraph(graph_def)
    try:
        features = batched.run(np.concatenate([tf_preprocess(jpeg) for jpeg in jpegs]))
        assert features.shape == (3, names.BOTTLENECK_DIM)
        for row, jpeg in zip(features, jpegs):
            assert cosine(row, single.run(jpeg)) >= 0.9999
    finally:
        batched.close()
        single.close()


def test_same_seed_gives_identical_bytes(full_graph_path, tmp_path):
    out = tmp_path / "nested" / "dir" / "again.pb"
    info = ei.export_inception(out, weights="random", seed=0)
    assert info["sha256"] == file_sha256(full_graph_path) == file_sha256(out)
    assert info["path"] == str(out) and info["bytes"] == out.stat().st_size
    assert (info["weights"], info["seed"], info["num_classes"]) == ("random", 0, ei.RANDOM_NUM_CLASSES)
    assert info["producer"] >= 9
    assert [p.name for p in out.parent.iterdir()] == ["again.pb"]  # no temp file left behind


def test_random_weights_depend_on_the_seed(reference):
    other = ei.build_inception("random", seed=1, calibration_images=2)
    assert not np.array_equal(other.logits_kernel, reference.logits_kernel)
    assert not np.array_equal(other.body.weights[0].numpy(), reference.body.weights[0].numpy())


def test_synthetic_images_are_seeded_smooth_and_bounded():
    images = ei.synthetic_images(3, seed=0)
    assert images.shape == (3, 299, 299, 3) and images.dtype == np.float32
    assert images.min() >= -1.0 and images.max() <= 1.0 and images.std() > 0.1
    np.testing.assert_array_equal(images, ei.synthetic_images(3, seed=0))
    assert not np.array_equal(images, ei.synthetic_images(3, seed=1))
    neighbour_step = np.abs(np.diff(images, axis=2)).mean()
    assert neighbour_step < 0.25 * images.std()  # smooth; white noise has a step about 1.2 std


def test_local_weights_file_with_top(tmp_path, monkeypatch):
    import keras

    keras.utils.set_random_seed(3)
    model = keras.applications.InceptionV3(include_top=True, weights=None)
    ei.calibrate_batch_norm(model, ei.synthetic_images(2, seed=3))
    weights = tmp_path / "w.weights.h5"
    model.save_weights(weights)
    image = ei.synthetic_images(1, seed=12)
    pooled_model = keras.Model(model.input, model.get_layer("avg_pool").output)
    expected_features = pooled_model(image, training=False).numpy()
    expected_probs = model(image, training=False).numpy()
    expected_kernel = model.get_layer("predictions").kernel.numpy()
    del model, pooled_model

    info = ei.export_inception(tmp_path / "local.pb", weights=str(weights), seed=0)
    assert (info["weights"], info["num_classes"]) == (str(weights), 1000)
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(load_graph(info["path"])[0], name="")
    with tf.compat.v1.Session(graph=graph) as sess:
        pooled, probs = sess.run([names.BOTTLENECK, names.SOFTMAX], {names.NORMALIZED_IMAGE: image})
    assert cosine(pooled, expected_features) >= 0.9999
    assert cosine(probs, expected_probs) >= 0.9999

    # "imagenet" is the same path once Keras' download (faked here) hands over a file.
    fetched = []
    monkeypatch.setattr(keras.utils, "get_file", lambda *args, **kwargs: fetched.append(args) or str(weights))
    imagenet = ei.build_inception("imagenet", seed=0)
    assert fetched and fetched[0][1] == ei.IMAGENET_WEIGHTS_URL
    assert (imagenet.description, imagenet.num_classes) == ("imagenet", 1000)
    np.testing.assert_array_equal(imagenet.logits_kernel, expected_kernel)


def test_local_weights_file_without_top_falls_back_to_random_logits(tmp_path):
    import keras

    keras.utils.set_random_seed(4)
    model = keras.applications.InceptionV3(include_top=False, weights=None, input_shape=(299, 299, 3))
    weights = tmp_path / "notop.weights.h5"
    model.save_weights(weights)
    built = ei.build_inception(str(weights), seed=0)
    assert built.num_classes == ei.RANDOM_NUM_CLASSES and "no top" in built.description
    for loaded, saved in zip(built.body.weights, model.weights):
        np.testing.assert_array_equal(loaded.numpy(), saved.numpy())


@pytest.mark.parametrize("name, content", [
    ("missing.weights.h5", None),
    ("corrupt.weights.h5", b"not an hdf5 file"),
    ("not-a-file", "directory"),
])
def test_bad_weights_path_is_named_in_the_error(tmp_path, name, content):
    path = tmp_path / name
    if content == "directory":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(GraphError, match=name):
        ei.export_inception(tmp_path / "out.pb", weights=str(path))
    assert not (tmp_path / "out.pb").exists()


def test_unknown_weights_name_is_rejected(tmp_path):
    with pytest.raises(GraphError, match="imagnet"):
        ei.export_inception(tmp_path / "out.pb", weights="imagnet")


def test_imagenet_fails_fast_offline(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", offline)
    monkeypatch.setattr(ei, "IMAGENET_WEIGHTS_FILE", "imgclf-test-never-cached.h5")  # never a cache hit
    timeout = socket.getdefaulttimeout()
    started = time.monotonic()
    with pytest.raises(DownloadError, match="ImageNet weights"):
        ei.export_inception(tmp_path / "out.pb", weights="imagenet")
    assert time.monotonic() - started < 10
    assert socket.getdefaulttimeout() == timeout
    assert not (tmp_path / "out.pb").exists()
