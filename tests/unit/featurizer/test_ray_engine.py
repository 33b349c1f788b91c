"""The Ray engine's parts without a cluster: decode tasks and graph actor against the featurizer, options, errors.

The pipeline on a real Ray cluster is tested in tests/system/test_ray_featurize.py.
"""

import sys
import time

import numpy as np
import pytest

from imgclf.core.cli import main
from imgclf.featurizer.contract import DEFAULT_CONTRACT
from imgclf.featurizer.extractor import Featurizer, FeaturizerConfig, sha256_bytes
from imgclf.featurizer.ray_engine import KNOWN, OK, GraphActor, RayOptions, _preprocess, check_address
from tests.support import images
from tests.support.processes import free_port


@pytest.fixture(scope="module")
def featurizer(legacy_graph_path):
    f = Featurizer(FeaturizerConfig(legacy_graph_path, precision="fp32"))
    yield f
    f.close()


def test_decode_task_and_actor_compute_what_the_featurizer_computes(featurizer, legacy_graph_path):
    photos = [images.jpeg(i, (120, 90)) for i in range(3)]
    batch = {"bytes": np.array(photos + [b"not an image"], dtype=object),
             "path": np.array([f"/data/src/cats/{i}.jpg" for i in range(4)], dtype=object)}
    known = np.array(sorted([sha256_bytes(photos[1]).encode()]), dtype="S64")
    out = _preprocess(batch, root="/data/src", contract=featurizer.contract, max_pixels=10**7, known_ref=known)
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


def test_decode_tasks_decode_as_the_job_says(legacy_graph_path):
    """--decode fast reaches the Ray decode tasks: they compute what the fast featurizer does, not exact."""
    photo = images.jpeg(7, (1600, 1300))  # 1/2 DCT scaling keeps both sides >= 2 x 299 (800 x 650)
    batch = {"bytes": np.array([photo], dtype=object), "path": np.array(["/d/cats/big.jpg"], dtype=object)}
    none_known = np.array([], dtype="S64")
    inputs = {}
    for mode in ("exact", "fast"):
        config = FeaturizerConfig(legacy_graph_path, precision="fp32",
                                  contract=DEFAULT_CONTRACT.with_overrides(decode=mode))
        f = Featurizer(config)
        try:
            out = _preprocess(batch, root="/d", contract=f.contract, max_pixels=10**7, known_ref=none_known)
            inputs[mode] = np.frombuffer(out["input"][0], np.float32).reshape(299, 299, 3)
            np.testing.assert_array_equal(inputs[mode], f.preprocess(photo))
        finally:
            f.close()
    assert np.abs(inputs["fast"] - inputs["exact"]).max() > 0  # the two modes really differ on this photo


def test_an_actor_whose_featurizer_differs_refuses_to_start(legacy_graph_path):
    with pytest.raises(Exception, match="give --precision explicitly"):
        GraphActor(FeaturizerConfig(legacy_graph_path, precision="fp32"), "0" * 64)


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
