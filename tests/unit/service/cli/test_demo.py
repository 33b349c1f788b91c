"""`imgclf demo`: the main job on its built-in default, end to end, offline."""

import os

import numpy as np

from imgclf.featurizer.images.demo import DEMO_CLASSES, make_demo_image, write_demo_images
from imgclf.service.cli import demo
from imgclf.service.cli.main import main


def test_demo_images_are_seeded_and_classes_differ_visibly(tmp_path):
    a = write_demo_images(tmp_path / "a", per_class=3)
    b = write_demo_images(tmp_path / "b", per_class=3)
    for label in DEMO_CLASSES:
        assert (a / label / f"{label}_002.jpg").read_bytes() == (b / label / f"{label}_002.jpg").read_bytes()
    # A nearest-centroid classifier on 8x8 thumbnails (a reference far simpler than the network)
    # tells the classes apart: they differ visibly.
    rng = np.random.default_rng(5)

    def thumb(label):
        return np.asarray(make_demo_image(label, rng).resize((8, 8)), np.float32).ravel()

    centroids = {label: np.mean([thumb(label) for _ in range(20)], axis=0) for label in DEMO_CLASSES}
    hits = sum(min(centroids, key=lambda c: np.linalg.norm(thumb(label) - centroids[c])) == label
               for label in DEMO_CLASSES for _ in range(10))
    assert hits >= 30  # of 40


def test_demo_featurizes_trains_and_predicts_new_pictures(tmp_path, full_graph_path, monkeypatch, capsys):
    monkeypatch.setenv("IMGCLF_HOME", str(tmp_path / "home"))  # no fetched real graph here
    workdir = tmp_path / "demo"
    workdir.mkdir()
    os.symlink(full_graph_path, workdir / demo.RANDOM_GRAPH_NAME)  # skip the one-time export
    assert main(["demo", "--workdir", str(workdir), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "RANDOM-WEIGHT" in out and "featurized 96 of 96" in out
    verdicts = [line for line in out.splitlines() if "picture ->" in line]
    assert len(verdicts) == 4 and all(line.endswith("ok") for line in verdicts), verdicts
    assert (workdir / "models" / "demo" / "1" / "saved_model.pb").is_file()
    # The quadratic is trained beside it (no data needed); the digit models need mnist.npz, absent here.
    assert (workdir / "models" / "quadratic" / "1" / "saved_model.pb").is_file()
    assert "quadratic: test RMSE" in out and "fetch-mnist" in out
    assert not (workdir / "models" / "mnist-mlp").exists()
    assert main(["demo", "--workdir", str(workdir), "--quiet"]) == 0  # second run: cached, no retraining
    out = capsys.readouterr().out
    assert "96 from cache" in out and not (workdir / "models" / "demo" / "2").exists()
    assert not (workdir / "models" / "quadratic" / "2").exists()
