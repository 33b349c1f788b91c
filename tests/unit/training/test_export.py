"""Export into the model repository: layout, atomicity, and every artifact against featurizer + head.

The SavedModel, ``head.pb`` and ``end_to_end.pb`` are loaded back in a fresh
Python process (as a server would load them, with nothing of the exporting
process around) and compared with the featurizer's own batched path followed
by the Keras head.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclf.core import export_names as names
from imgclf.core import repository
from imgclf.core.repository import list_versions
from imgclf.featurizer.graph import contract
from imgclf.featurizer.images.decode import decode_rgb
from imgclf.featurizer.runtime.featurizer import Featurizer, FeaturizerConfig
from imgclf.training import export
from tests.support import images

LABELS = ["daisy", "rose", "tulip"]
CARD = {"training": {"epochs": 3, "learning_rate": 0.01}, "metrics": {"val_accuracy": 0.9},
        "splits": {"train": 80, "validation": 10, "test": 10}}
TOLERANCE = 1e-4


def make_head(dim: int, num_classes: int, seed: int = 0, vectors: np.ndarray | None = None):
    """Return a Keras head Dense(softmax) with seeded weights; scaled to ``vectors`` so it is not saturated."""
    import keras

    rng = np.random.default_rng(seed)
    scale = 2.0 / float(np.linalg.norm(vectors, axis=1).mean()) if vectors is not None else 0.02
    head = keras.Sequential([keras.Input((dim,)), keras.layers.Dense(num_classes, activation="softmax")])
    head.layers[0].set_weights([(rng.normal(size=(dim, num_classes)) * scale).astype(np.float32),
                                rng.normal(0.0, 0.1, num_classes).astype(np.float32)])
    return head


def _with_exif_orientation(data: bytes, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.open(io.BytesIO(data)).save(buf, "JPEG", quality=95, exif=exif)
    return buf.getvalue()


def image_set() -> dict[str, bytes]:
    """Return encoded images of every kind the serving signature decodes, in several sizes."""
    alpha = np.linspace(0, 255, 320 * 240).reshape(240, 320).astype(np.uint8)
    gray16 = (np.linspace(0, 65535, 200 * 150).reshape(150, 200)).astype(np.uint16)
    return {
        "jpeg": images.jpeg(1),
        "jpeg_portrait": images.jpeg(2, (240, 400), quality=80),
        "gray_jpeg": images.encode(images.photo_like(3)[..., 0], "JPEG"),
        "png": images.encode(images.photo_like(4, (320, 240)), "PNG"),
        "rgba_png": images.encode(np.dstack([images.photo_like(5, (320, 240)), alpha]), "PNG"),
        "gray16_png": images.encode(Image.fromarray(gray16), "PNG"),
        "gif": images.encode(images.photo_like(6, (160, 120)), "GIF"),
        "bmp": images.encode(images.photo_like(7, (64, 48)), "BMP"),
        "webp": images.encode(images.photo_like(8, (300, 200)), "WEBP", quality=90),
    }


# Runs in a fresh interpreter: loads every artifact the way a server would and prints the results as JSON.
LOADER = r'''
import json, sys
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2

job = json.load(open(sys.argv[1]))
version_dir, images = job["version_dir"], [open(p, "rb").read() for p in job["images"]]
vectors = np.load(job["vectors"], allow_pickle=False)
out = {}

model = tf.saved_model.load(version_dir)
result = model.signatures["serving_default"](image_bytes=tf.constant(images))
out["serving"] = {k: (v.numpy().astype(str) if v.dtype == tf.string else v.numpy()).tolist() for k, v in result.items()}
out["serving_signature_inputs"] = sorted(model.signatures["serving_default"].structured_input_signature[1])
result = model.signatures["bottleneck"](bottleneck=tf.constant(vectors))
out["bottleneck"] = result["probabilities"].numpy().tolist()

if job.get("frozen"):
    # As TensorFlow Serving runs it: the MetaGraph in a (v1) session, fed and fetched by signature tensor names.
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], version_dir)
        signature = meta.signature_def["serving_default"]
        out["session"] = session.run(signature.outputs["probabilities"].name,
                                     {signature.inputs["image_bytes"].name: images}).tolist()

    def graph_def(name):
        gd = graph_pb2.GraphDef()
        gd.ParseFromString(open(f"{version_dir}/{name}", "rb").read())
        return gd

    head = graph_def("head.pb")
    with tf.Graph().as_default() as g:
        tf.graph_util.import_graph_def(head, name="")
        with tf.compat.v1.Session(graph=g) as session:
            out["head_pb"] = session.run(job["head_output"], {job["head_input"]: vectors}).tolist()

    e2e, jpeg = graph_def("end_to_end.pb"), open(job["jpeg"], "rb").read()
    with tf.Graph().as_default() as g:
        tf.graph_util.import_graph_def(e2e, name="")
        with tf.compat.v1.Session(graph=g) as session:
            out["e2e_import"] = session.run(job["e2e_output"], {job["e2e_input"]: jpeg}).tolist()
    wrapped = tf.compat.v1.wrap_function(lambda: tf.graph_util.import_graph_def(e2e, name=""), [])
    pruned = wrapped.prune(feeds=wrapped.graph.get_tensor_by_name(job["e2e_input"]),
                           fetches=wrapped.graph.get_tensor_by_name(job["e2e_output"]))
    out["e2e_pruned"] = pruned(tf.constant(jpeg)).numpy().tolist()
print("RESULT " + json.dumps(out))
'''


def load_in_fresh_process(version_dir: Path, data: dict[str, bytes], vectors: np.ndarray, work: Path,
                          frozen: bool = True, jpeg: bytes | None = None) -> dict:
    """Run LOADER in a new interpreter on ``version_dir`` and return its results."""
    work.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, blob in enumerate(data.values()):
        paths.append(str(work / f"image_{i}"))
        Path(paths[-1]).write_bytes(blob)
    np.save(work / "vectors.npy", vectors.astype(np.float32))
    (work / "jpeg").write_bytes(jpeg or b"")
    job = {"version_dir": str(version_dir), "images": paths, "vectors": str(work / "vectors.npy"),
           "jpeg": str(work / "jpeg"), "frozen": frozen,
           "head_input": names.HEAD_INPUT, "head_output": names.HEAD_OUTPUT,
           "e2e_input": names.END_TO_END_INPUT, "e2e_output": names.END_TO_END_OUTPUT}
    (work / "job.json").write_text(json.dumps(job))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-c", LOADER, str(work / "job.json")], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def reference(featurizer: Featurizer, head, data: dict[str, bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Return (bottlenecks, probabilities) of the in-process path: featurizer.preprocess → run → head."""
    vectors = featurizer.run(np.stack([featurizer.preprocess(blob) for blob in data.values()]))
    return vectors, np.asarray(head(vectors), np.float32)


@pytest.fixture(scope="module")
def featurizer(legacy_graph_path):
    featurizer = Featurizer(FeaturizerConfig(legacy_graph_path, precision="fp32"))
    yield featurizer
    featurizer.close()


@pytest.fixture(scope="module")
def exported(featurizer, tmp_path_factory):
    """One export of the legacy graph + a seeded head, loaded back in a fresh process."""
    data = image_set()
    data["exif_rotated_jpeg"] = _with_exif_orientation(images.jpeg(9, (200, 120)), 6)
    vectors = featurizer.run(np.stack([featurizer.preprocess(blob) for blob in data.values()]))
    head = make_head(featurizer.dim, len(LABELS), seed=1, vectors=vectors)
    repo = tmp_path_factory.mktemp("repo")
    version_dir = export.export_model(repo, "flowers", head, featurizer, LABELS, CARD)
    loaded = load_in_fresh_process(version_dir, data, vectors, tmp_path_factory.mktemp("job"), jpeg=data["jpeg"])
    return {"repo": repo, "dir": version_dir, "head": head, "data": data, "vectors": vectors, "loaded": loaded}


def test_names_are_pinned():
    assert (names.SAVED_MODEL_FILE, names.HEAD_GRAPH_FILE, names.END_TO_END_GRAPH_FILE, names.LABELS_FILE,
            names.MODEL_CARD_FILE) == ("saved_model.pb", "head.pb", "end_to_end.pb", "labels.txt",
                                       "model_card.json")
    assert (names.SERVING_SIGNATURE, names.BOTTLENECK_SIGNATURE) == ("serving_default", "bottleneck")
    assert (names.IMAGE_BYTES_KEY, names.BOTTLENECK_KEY) == ("image_bytes", "bottleneck")
    assert names.OUTPUT_KEYS == ("probabilities", "classes", "labels", "unfamiliar", "unfamiliar_score")
    assert (names.HEAD_INPUT, names.HEAD_OUTPUT) == ("input/BottleneckInputPlaceholder:0", "final_result:0")
    assert names.HEAD_OUTPUTS == ("final_result:0", "unfamiliar_score:0", "unfamiliar:0")
    assert (names.CALIBRATION_FILE, names.RELIABILITY_DIAGRAM_FILE) == ("calibration.json", "reliability.png")
    assert (names.END_TO_END_INPUT, names.END_TO_END_OUTPUT) == ("DecodeJpeg/contents:0", "final_result:0")
    assert names.END_TO_END_INPUT == contract.JPEG_INPUT  # fed as the 2015 graph is


def test_version_directory_layout(exported):
    version_dir = exported["dir"]
    assert version_dir == exported["repo"] / "flowers" / "1"
    assert sorted(p.name for p in (exported["repo"] / "flowers").iterdir()) == ["1"]  # no work dir left
    present = {p.name for p in version_dir.iterdir()}
    assert {"saved_model.pb", "variables", "head.pb", "end_to_end.pb", "labels.txt", "model_card.json"} <= present
    umask = os.umask(0o022)
    os.umask(umask)
    for path in [version_dir, *version_dir.rglob("*")]:  # readable by a server running as another user
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        assert path.stat().st_mode & 0o777 == expected, path
    assert list_versions(exported["repo"], "flowers") == [1]


def test_labels_file_lists_labels_in_id_order(exported):
    assert (exported["dir"] / "labels.txt").read_text(encoding="utf-8") == "daisy\nrose\ntulip\n"


def test_model_card_describes_the_export(exported, featurizer):
    card = json.loads((exported["dir"] / "model_card.json").read_text(encoding="utf-8"))
    assert (card["name"], card["version"], card["labels"], card["num_classes"]) == ("flowers", 1, LABELS, 3)
    assert card["featurizer"]["graph_sha256"] == featurizer.graph_sha256
    assert card["featurizer"]["fingerprint"] == featurizer.fingerprint
    assert card["featurizer"]["contract"]["image_input"] == featurizer.contract.image_input
    assert card["featurizer"]["contract"]["bottleneck"] == featurizer.contract.bottleneck
    assert card["training_features_precision"] == "fp32" and card["serving_precision"] == "fp32"
    assert "EXIF" in " ".join(card["preprocessing"]["differences_from_python_featurizer"])
    serving = card["input_contract"]["saved_model"]["serving_default"]
    assert serving["inputs"]["image_bytes"]["dtype"] == "string"
    assert card["input_contract"]["end_to_end.pb"]["input"] == "DecodeJpeg/contents:0"
    for key, value in CARD.items():
        assert card[key] == value
    assert set(card["library_versions"]) >= {"tensorflow", "keras", "numpy", "pillow", "imgclf"}
    assert card["created_utc"].endswith("Z")
    datetime.fromisoformat(card["created_utc"].replace("Z", "+00:00"))
    files = card["files"]
    assert files["head.pb"]["bytes"] == (exported["dir"] / "head.pb").stat().st_size


@pytest.mark.parametrize("kind", list(image_set()))
def test_serving_signature_matches_featurizer_plus_head(exported, featurizer, kind):
    data, loaded = exported["data"], exported["loaded"]
    index = list(data).index(kind)
    _, expected = reference(featurizer, exported["head"], {kind: data[kind]})
    got = np.asarray(loaded["serving"]["probabilities"][index])
    np.testing.assert_allclose(got, expected[0], atol=TOLERANCE, rtol=0)
    assert loaded["serving"]["classes"][index] == int(np.argmax(got))
    assert loaded["serving"]["labels"][index] == LABELS[int(np.argmax(got))]


def test_probabilities_are_not_saturated(exported):
    """A saturated softmax would make every comparison pass trivially."""
    probabilities = np.asarray(exported["loaded"]["serving"]["probabilities"])
    assert probabilities.max() < 0.999 and len(set(exported["loaded"]["serving"]["classes"])) > 1


def test_serving_signature_uses_stored_pixels_not_exif_orientation(exported, featurizer):
    """Documented difference: TF ops cannot read EXIF, so a rotated photo is classified as stored."""
    import tensorflow as tf

    data, loaded = exported["data"], exported["loaded"]
    index = list(data).index("exif_rotated_jpeg")
    stored = tf.io.decode_jpeg(data["exif_rotated_jpeg"], channels=3).numpy()
    assert decode_rgb(data["exif_rotated_jpeg"], jpeg_dct_method="").shape != stored.shape  # Python turns it
    expected = np.asarray(exported["head"](featurizer.run(featurizer.to_input(stored)[None])))
    np.testing.assert_allclose(loaded["serving"]["probabilities"][index], expected[0], atol=TOLERANCE, rtol=0)


def test_session_loader_as_tf_serving_runs_it(exported):
    np.testing.assert_allclose(exported["loaded"]["session"], exported["loaded"]["serving"]["probabilities"],
                               atol=1e-6, rtol=0)
    assert exported["loaded"]["serving_signature_inputs"] == ["image_bytes"]


def test_bottleneck_signature_equals_head(exported):
    expected = np.asarray(exported["head"](exported["vectors"]))
    np.testing.assert_allclose(exported["loaded"]["bottleneck"], expected, atol=TOLERANCE, rtol=0)


def test_head_pb_equals_head(exported):
    expected = np.asarray(exported["head"](exported["vectors"]))
    np.testing.assert_allclose(exported["loaded"]["head_pb"], expected, atol=TOLERANCE, rtol=0)


def test_end_to_end_pb_equals_featurizer_plus_head(exported):
    index = list(exported["data"]).index("jpeg")
    expected = np.asarray(exported["loaded"]["serving"]["probabilities"][index])
    for key in ("e2e_import", "e2e_pruned"):
        got = np.asarray(exported["loaded"][key])
        assert got.shape == (1, len(LABELS)), key
        np.testing.assert_allclose(got[0], expected, atol=TOLERANCE, rtol=0, err_msg=key)


def test_frozen_graphs_hold_only_current_ops(exported):
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    from imgclf.featurizer.graph.legacy_ops import deprecated_ops
    from imgclf.featurizer.graph.load import load_graph

    for name in ("head.pb", "end_to_end.pb"):
        graph_def, _ = load_graph(exported["dir"] / name)
        ops = {node.op for node in graph_def.node} | {n.op for f in graph_def.library.function for n in f.node_def}
        assert not ops & {"BatchNormWithGlobalNormalization", "Concat"}, name
        assert graph_def.versions.producer == tf.version.GRAPH_DEF_VERSION, name
        assert not deprecated_ops(graph_def), name
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((exported["dir"] / "saved_model.pb").read_bytes())
    library = saved.meta_graphs[0].graph_def.library
    ops = {n.op for f in library.function for n in f.node_def}
    assert "Conv2D" in ops and not ops & {"BatchNormWithGlobalNormalization", "Concat"}


def test_versions_increment_and_old_ones_stay(featurizer, tmp_path):
    head = make_head(featurizer.dim, 2, seed=3)
    dirs = [export.export_model(tmp_path, "pets", head, featurizer, ["cat", "dog"], {}) for _ in range(3)]
    assert [d.name for d in dirs] == ["1", "2", "3"]
    assert list_versions(tmp_path, "pets") == [1, 2, 3]
    for number, version_dir in enumerate(dirs, start=1):
        assert json.loads((version_dir / "model_card.json").read_text())["version"] == number
        assert (version_dir / "saved_model.pb").is_file()


def test_a_crash_mid_export_leaves_no_version(featurizer, tmp_path, monkeypatch):
    head = make_head(featurizer.dim, 2, seed=4)
    export.export_model(tmp_path, "pets", head, featurizer, ["cat", "dog"], {})
    written = []

    def crash(*args, **kwargs):  # runs after the SavedModel is on disk
        written.extend(p.name for p in (tmp_path / "pets").glob(".export-*/saved_model.pb"))
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(export, "end_to_end_graph_def", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        export.export_model(tmp_path, "pets", head, featurizer, ["cat", "dog"], {})
    assert written == ["saved_model.pb"]
    assert sorted(p.name for p in (tmp_path / "pets").iterdir()) == ["1"]
    assert list_versions(tmp_path, "pets") == [1]


def test_a_killed_export_leaves_only_a_hidden_dir_that_is_ignored(featurizer, tmp_path, monkeypatch):
    head = make_head(featurizer.dim, 2, seed=5)
    export.export_model(tmp_path, "pets", head, featurizer, ["cat", "dog"], {})
    # A SIGKILL runs no cleanup: the work directory, with its SavedModel and card, stays behind.
    monkeypatch.setattr(repository.shutil, "rmtree", lambda *a, **k: None)
    monkeypatch.setattr(repository.os, "rename", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        export.export_model(tmp_path, "pets", head, featurizer, ["cat", "dog"], {})
    monkeypatch.undo()
    (leftover,) = [p for p in (tmp_path / "pets").iterdir() if p.name.startswith(".")]
    assert (leftover / "saved_model.pb").is_file() and (leftover / "model_card.json").is_file()
    assert list_versions(tmp_path, "pets") == [1]
    assert export.export_model(tmp_path, "pets", head, featurizer, ["cat", "dog"], {}).name == "2"


def test_a_concurrently_taken_version_number_is_skipped(featurizer, tmp_path, monkeypatch):
    head = make_head(featurizer.dim, 2, seed=6)
    real_rename = os.rename

    def rename_after_a_rival(src, dst):  # another export publishes "1" just before this one renames
        rival = Path(dst).parent / "1"
        if not rival.exists():
            rival.mkdir()
            (rival / "saved_model.pb").write_bytes(b"rival")
        return real_rename(src, dst)

    monkeypatch.setattr(repository.os, "rename", rename_after_a_rival)
    version_dir = export.export_model(tmp_path, "pets", head, featurizer, ["cat", "dog"], {})
    assert version_dir.name == "2"
    assert (tmp_path / "pets" / "1" / "saved_model.pb").read_bytes() == b"rival"
    assert json.loads((version_dir / "model_card.json").read_text())["version"] == 2


@pytest.mark.parametrize("name", ["", ".", "..", ".hidden", "a/b", "../x", "a\\b", "a b", "x" * 129, "ü",
                                  "a\n", None, 3])
def test_bad_model_names_are_refused(featurizer, tmp_path, name):
    head = make_head(featurizer.dim, 2)
    with pytest.raises(ValueError, match="model name"):
        export.export_model(tmp_path, name, head, featurizer, ["cat", "dog"], {})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("labels, message", [
    (["cat"], r"\[N, 1\]"), (["cat", "dog", "cow"], r"\[N, 3\]"), (["cat", "cat"], "unique"),
    (["cat", "do\ng"], "one-line"), (["cat", ""], "non-empty"), ([], "non-empty")])
def test_labels_must_match_the_head(featurizer, tmp_path, labels, message):
    head = make_head(featurizer.dim, 2)
    with pytest.raises(ValueError, match=message):
        export.export_model(tmp_path, "pets", head, featurizer, labels, {})
    assert not (tmp_path / "pets").exists()


def test_head_must_end_in_softmax(featurizer, tmp_path):
    import keras

    head = keras.Sequential([keras.Input((featurizer.dim,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="softmax"):
        export.export_model(tmp_path, "pets", head, featurizer, ["cat", "dog"], {})


@pytest.mark.parametrize("card, message", [({"labels": ["x"]}, "written by the export"),
                                           ({"metrics": {"loss": float("nan")}}, "JSON"),
                                           ({"training": object()}, "JSON"), ([], "must be a dict")])
def test_bad_cards_are_refused(featurizer, tmp_path, card, message):
    with pytest.raises(ValueError, match=message):
        export.export_model(tmp_path, "pets", make_head(featurizer.dim, 2), featurizer, ["cat", "dog"], card)


def test_full_inception_export_matches_featurizer_plus_head(full_graph_path, tmp_path):
    featurizer = Featurizer(FeaturizerConfig(full_graph_path, precision="fp32"))
    try:
        data = {"a": images.jpeg(21, (500, 375)), "b": images.jpeg(22, (300, 420), quality=80)}
        vectors = featurizer.run(np.stack([featurizer.preprocess(blob) for blob in data.values()]))
        head = make_head(featurizer.dim, 4, seed=7, vectors=vectors)
        expected = np.asarray(head(vectors))
        version_dir = export.export_model(tmp_path, "full", head, featurizer, ["a", "b", "c", "d"], {})
    finally:
        featurizer.close()
    # The folded batch norms replace the original weights: the export is no larger than the graph file.
    assert (version_dir / "saved_model.pb").stat().st_size < full_graph_path.stat().st_size
    loaded = load_in_fresh_process(version_dir, data, vectors, tmp_path / "job", frozen=False)
    np.testing.assert_allclose(loaded["serving"]["probabilities"], expected, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(loaded["bottleneck"], expected, atol=TOLERANCE, rtol=0)
    assert expected.max() < 0.999
