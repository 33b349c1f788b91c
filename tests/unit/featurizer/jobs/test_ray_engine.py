"""The Ray engine's parts without a cluster: decode tasks and graph actor against the featurizer, options, errors.

The pipeline on a real Ray cluster is tested in tests/system/test_ray_featurize.py.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from imgclf.core.errors import GraphError
from imgclf.featurizer.graph.contract import DEFAULT_CONTRACT
from imgclf.featurizer.images.sources import open_image_source
from imgclf.featurizer.jobs.ray_engine import KNOWN, OK, GraphActor, RayOptions, _preprocess, check_address
from imgclf.featurizer.runtime.featurizer import Featurizer, FeaturizerConfig, calibration_for
from imgclf.featurizer.store.identity import sha256_bytes
from imgclf.featurizer.store.object_store import open_location
from imgclf.service.cli.main import main
from tests.support import images
from tests.support.processes import free_port


@pytest.fixture(scope="module")
def featurizer(legacy_graph_path):
    f = Featurizer(FeaturizerConfig(legacy_graph_path, precision="fp32"))
    yield f
    f.close()


def _folder(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def _batch(rel_paths) -> dict:
    return {"rel_path": np.array(list(rel_paths), dtype=object)}


def test_decode_task_and_actor_compute_what_the_featurizer_computes(featurizer, legacy_graph_path, tmp_path):
    photos = [images.jpeg(i, (120, 90)) for i in range(3)]
    files = {f"cats/{i}.jpg": data for i, data in enumerate(photos + [b"not an image"])}
    location = open_location(_folder(tmp_path / "src", files))
    known = np.array(sorted([sha256_bytes(photos[1]).encode()]), dtype="S64")
    out = _preprocess(_batch(files), location=location, contract=featurizer.contract, max_pixels=10**7,
                      known_ref=known)
    assert list(out["rel_path"]) == [f"cats/{i}.jpg" for i in range(4)]
    assert list(out["sha"])[:3] == [sha256_bytes(p) for p in photos]
    assert list(out["status"])[:3] == [OK, KNOWN, OK] and "not an image" in out["status"][3]
    assert out["input"][1] == b"" and out["input"][3] == b""
    np.testing.assert_array_equal(np.frombuffer(out["input"][0], np.float32).reshape(299, 299, 3),
                                  featurizer.preprocess(photos[0]))
    actor = GraphActor(FeaturizerConfig(legacy_graph_path, precision="fp32"), featurizer.fingerprint)
    result = actor(out)
    assert list(result["status"]) == list(out["status"]) and result["features"].shape == (4, featurizer.dim)
    for i in (0, 2):  # reference: the graph's one-image path
        np.testing.assert_allclose(result["features"][i], featurizer.run(featurizer.preprocess(photos[i])[None])[0],
                                   rtol=1e-4, atol=1e-5)
    assert not result["features"][1].any()  # known bytes: no graph run
    actor.featurizer.close()


def test_an_int8_actor_quantizes_on_the_calibration_the_driver_hands_it(legacy_graph_path, tmp_path):
    """The actors get the driver's calibration (pickled, as Ray ships it) and never read SOURCE for it."""
    import pickle
    import shutil

    from imgclf.featurizer.images.demo import write_demo_images
    from imgclf.featurizer.runtime.featurizer import calibration_for

    pytest.importorskip("openvino", reason="the imgclf[openvino] extra is not installed")
    root = write_demo_images(tmp_path / "src", per_class=3)
    config = FeaturizerConfig(legacy_graph_path, precision="int8", backend="openvino", calibration_images=6,
                              openvino_cache=tmp_path / "ov")
    calibration = calibration_for(config, open_image_source(root))
    with Featurizer(config, calibration) as driver:
        fingerprint = driver.fingerprint
    shutil.rmtree(root)
    actor = GraphActor(config, fingerprint, pickle.loads(pickle.dumps(calibration)))
    try:
        assert actor.featurizer.identity.description["calibration_sha256"] == calibration.sha256
    finally:
        actor.featurizer.close()


def test_decode_tasks_decode_as_the_job_says(legacy_graph_path, tmp_path):
    """--decode fast reaches the Ray decode tasks: they compute what the fast featurizer does, not exact."""
    photo = images.jpeg(7, (1600, 1300))  # 1/2 DCT scaling keeps both sides >= 2 x 299 (800 x 650)
    location, batch = open_location(_folder(tmp_path / "d", {"cats/big.jpg": photo})), _batch(["cats/big.jpg"])
    none_known = np.array([], dtype="S64")
    inputs = {}
    for mode in ("exact", "fast"):
        config = FeaturizerConfig(legacy_graph_path, precision="fp32",
                                  contract=DEFAULT_CONTRACT.with_overrides(decode=mode))
        f = Featurizer(config)
        try:
            out = _preprocess(batch, location=location, contract=f.contract, max_pixels=10**7,
                              known_ref=none_known)
            inputs[mode] = np.frombuffer(out["input"][0], np.float32).reshape(299, 299, 3)
            np.testing.assert_array_equal(inputs[mode], f.preprocess(photo))
        finally:
            f.close()
    assert np.abs(inputs["fast"] - inputs["exact"]).max() > 0  # the two modes really differ on this photo


def test_unreadable_files_are_skipped_with_the_local_engines_reason(featurizer, legacy_graph_path, tmp_path):
    """A broken symlink and a file deleted after the listing cost only themselves, worded as the local engine says."""
    photos = [images.jpeg(20 + i, (100, 80)) for i in range(3)]
    root = _folder(tmp_path / "src", {"cats/a.jpg": photos[0], "cats/gone.jpg": photos[1], "dogs/b.jpg": photos[2]})
    (root / "dogs" / "link.jpg").symlink_to(root / "dogs" / "missing.jpg")  # broken, pointing inside the folder
    source = open_image_source(root)
    rels = [image.rel_path for image in source.entries]
    assert rels == ["cats/a.jpg", "cats/gone.jpg", "dogs/b.jpg", "dogs/link.jpg"]  # both listed
    (root / "cats" / "gone.jpg").unlink()  # deleted between the listing and the read
    out = _preprocess(_batch(rels), location=source.location, contract=featurizer.contract, max_pixels=10**7,
                      known_ref=np.array([], dtype="S64"))
    status = dict(zip(out["rel_path"], out["status"]))
    assert status["cats/a.jpg"] == status["dogs/b.jpg"] == OK
    assert out["sha"][0] == sha256_bytes(photos[0]) and out["sha"][2] == sha256_bytes(photos[2])
    for rel in ("cats/gone.jpg", "dogs/link.jpg"):
        assert status[rel].startswith("cannot read file: ") and "No such file or directory" in status[rel]
        assert out["input"][rels.index(rel)] == b""
    np.testing.assert_array_equal(np.frombuffer(out["input"][2], np.float32).reshape(299, 299, 3),
                                  featurizer.preprocess(photos[2]))
    # the reference: the local engine, on the same folder, reports the broken link with the same reason
    report = tmp_path / "local.json"
    assert main(["featurize", str(root), "--graph", str(legacy_graph_path), "--precision", "fp32", "--quiet",
                 "--output-dataset", str(tmp_path / "ds"), "--report", str(report)]) == 0
    local = {bad["path"]: bad["reason"] for bad in json.loads(report.read_text())["skipped"]}
    assert local == {"dogs/link.jpg": status["dogs/link.jpg"]}


def test_an_actor_whose_featurizer_differs_refuses_to_start(legacy_graph_path, tmp_path):
    with pytest.raises(Exception, match="give --precision explicitly"):
        GraphActor(FeaturizerConfig(legacy_graph_path, precision="fp32"), "0" * 64)
    pytest.importorskip("openvino", reason="int8 needs the imgclf[openvino] extra")
    from imgclf.featurizer.images.demo import write_demo_images

    config = FeaturizerConfig(legacy_graph_path, precision="int8", backend="openvino", calibration_images=4,
                              openvino_cache=tmp_path / "ov")
    calibration = calibration_for(config, write_demo_images(tmp_path / "images", per_class=1))
    with pytest.raises(GraphError, match="int8 is quantized for each CPU's int8 instructions .* one CPU kind"):
        GraphActor(config, "0" * 64, calibration)


@pytest.mark.parametrize("options, pool", [(RayOptions(), 1), (RayOptions(actors=3), 3),
                                           (RayOptions(min_actors=1, max_actors=4), (1, 4))])
def test_pool_sizes(options, pool):
    assert options.concurrency() == pool
    assert ("autoscaling" in options.describe()) == isinstance(pool, tuple)


def test_a_ray_address_that_does_not_answer_is_one_line_and_exit_1(tmp_path, legacy_graph_path, capsys):
    (tmp_path / "p" / "cats").mkdir(parents=True)
    (tmp_path / "p" / "cats" / "a.jpg").write_bytes(images.jpeg(1, (40, 30)))
    started = time.monotonic()
    code = main(["featurize", str(tmp_path / "p"), "--graph", str(legacy_graph_path), "--engine", "ray",
                 "--ray-address", f"127.0.0.1:{free_port()}", "--output-dataset", str(tmp_path / "ds"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "does not answer" in err and len(err.strip().splitlines()) == 1
    assert time.monotonic() - started < 30 and not (tmp_path / "ds").exists()  # nothing written
    with pytest.raises(Exception, match="HOST:PORT"):
        check_address("nonsense")


def test_without_the_ray_extra_the_message_says_how_to_install_it(tmp_path, legacy_graph_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    (tmp_path / "p" / "cats").mkdir(parents=True)
    code = main(["featurize", str(tmp_path / "p"), "--graph", str(legacy_graph_path), "--engine", "ray",
                 "--output-dataset", str(tmp_path / "ds"), "--quiet"])
    assert code == 1 and "pip install 'imgclf[ray]'" in capsys.readouterr().err
