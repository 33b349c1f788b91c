"""`imgclf train` and `imgclf predict` end to end on generated images and the tiny 2015-style graph."""

import json
import re
import shutil

import numpy as np
import pytest

from imgclf.core.repository import list_versions
from imgclf.featurizer.images.demo import write_demo_images
from imgclf.featurizer.runtime.featurizer import FeaturizerConfig
from imgclf.service.cli.main import main
from imgclf.training.config import HeadConfig, TrainConfig
from imgclf.training.train_job import TrainJob, run_train
from tests.support import images


@pytest.fixture(scope="module")
def trained(tmp_path_factory, legacy_graph_path):
    """Train once on the demo image set; return (image dir, repository, stdout, arguments).

    10 photos a class leave 5 test photos, too few for the publish gate to ever pass (see GATE_PER_CLASS
    below); these tests are about the export, prediction and feature datasets, so they publish always.
    """
    root = tmp_path_factory.mktemp("train")
    data = write_demo_images(root / "images", per_class=10)
    (data / "stripes" / "broken.jpg").write_text("not an image")
    repo = root / "models"
    args = ["train", str(data), "--graph", str(legacy_graph_path), "--cache", str(root / "c.sqlite"),
            "--model-dir", str(repo), "--name", "demo", "--precision", "fp32", "--quiet", "--seed", "1",
            "--publish", "always"]
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(args) == 0
    return data, repo, out.getvalue(), args


def test_train_exports_a_self_describing_version(trained):
    data, repo, out, _ = trained
    version = repo / "demo" / "1"
    assert (version / "saved_model.pb").is_file()
    card = json.loads((version / "model_card.json").read_text())
    assert (version / "labels.txt").read_text().split() == ["bubbles", "checkers", "stripes", "sunsets"]
    assert card["split_sizes"]["train"] + card["split_sizes"]["validation"] + card["split_sizes"]["test"] == 40
    assert card["training"]["skipped_files"][0]["path"] == "stripes/broken.jpg"
    test_metrics = card["metrics"]["test"]
    assert 0.0 <= test_metrics["accuracy"] <= 1.0 and len(test_metrics["per_class"]) == 4
    assert "stripes/broken.jpg" in out and "exported" in out and "precision" in out.lower()
    assert (repo / "demo" / "runs").is_dir()  # TensorBoard logs under the run directory
    assert card["gate"]["publish"] == "always" and card["gate"]["published"]
    assert card["training"]["optimizer"]["calibration"] == "temperature"  # --calibration's default, recorded


def test_a_second_run_makes_version_two_from_the_cache(trained, capsys):
    _, repo, _, args = trained
    assert main(args) == 0
    assert (repo / "demo" / "1").is_dir() and (repo / "demo" / "2").is_dir()
    card = json.loads((repo / "demo" / "2" / "model_card.json").read_text())
    assert card["split_sizes"] == json.loads((repo / "demo" / "1" / "model_card.json").read_text())["split_sizes"]


def test_predict_prints_top_k_json_and_annotates(trained, tmp_path, capsys):
    data, repo, _, _ = trained
    files = [data / "sunsets" / "sunsets_000.jpg", data / "checkers" / "checkers_001.jpg"]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG broken")
    code = main(["predict", "--model", str(repo / "demo" / "1"), *map(str, files), str(bad), "--json",
                 "--top-k", "3", "--annotate", str(tmp_path / "ann")])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    predicted = [line for line in lines if "predictions" in line]
    assert [line["path"] for line in predicted] == [str(f) for f in files]
    for line in predicted:
        scores = [p["score"] for p in line["predictions"]]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0001
    assert any(line.get("path") == str(bad) and "error" in line for line in lines)
    assert sorted(p.name for p in (tmp_path / "ann").iterdir()) == [
        "checkers_001.annotated.jpg", "sunsets_000.annotated.jpg"]


def test_predict_table_uses_the_newest_version(trained, capsys):
    data, repo, _, _ = trained
    assert main(["predict", "--model", str(repo / "demo"), str(data / "bubbles" / "bubbles_002.jpg")]) == 0
    out = capsys.readouterr().out
    ranks = [line.split()[0] for line in out.splitlines() if line.startswith("  ")]
    assert "bubbles_002.jpg" in out and ranks == ["1.", "2.", "3.", "4."]  # 4 labels: top-5 is cut to 4


@pytest.mark.parametrize("extra, message", [
    (["--name", "../evil"], "name"),
    (["--train-percent", "90"], "sum to 100"),
    (["--decode-threads", "-1"], "--decode-threads must be 0"),
])
def test_bad_train_arguments_fail_before_work(trained, tmp_path, extra, message, capsys):
    data, _, _, args = trained
    args = [a for a in args]
    args[args.index("--model-dir") + 1] = str(tmp_path / "repo")
    assert main(args + extra) != 0
    assert message in capsys.readouterr().err
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").rglob("saved_model.pb"))


def test_too_small_class_is_refused_before_featurizing(tmp_path, legacy_graph_path, capsys):
    for label, count in (("a", 5), ("b", 2)):
        (tmp_path / "p" / label).mkdir(parents=True)
        for i in range(count):
            (tmp_path / "p" / label / f"{i}.jpg").write_bytes(images.jpeg(i, (40, 30)))
    code = main(["train", str(tmp_path / "p"), "--graph", str(legacy_graph_path), "--cache",
                 str(tmp_path / "c.sqlite"), "--model-dir", str(tmp_path / "m"), "--name", "x", "--quiet"])
    assert code != 0 and "too few in: b (2)" in capsys.readouterr().err


@pytest.mark.parametrize("settings, message", [
    ({"head": HeadConfig(dropout=1.5)}, "dropout must be"),
    ({"train": TrainConfig(learning_rate=0)}, "learning_rate must be"),
])
def test_bad_head_or_optimiser_settings_fail_before_featurizing(tmp_path, legacy_graph_path, settings, message):
    job = TrainJob(image_dir=write_demo_images(tmp_path / "images", per_class=10),
                   featurizer=FeaturizerConfig(legacy_graph_path, precision="fp32"), cache=tmp_path / "c.sqlite",
                   model_dir=tmp_path / "models", name="demo", progress=False, **settings)
    with pytest.raises(ValueError, match=message):
        run_train(job)
    assert not (tmp_path / "c.sqlite").exists()  # nothing was featurized


def _predictions(model_dir, files, capsys):
    capsys.readouterr()
    assert main(["predict", "--model", str(model_dir), *map(str, files), "--json", "--top-k", "4"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    return [{p["label"]: p["score"] for p in line["predictions"]} for line in lines]


def test_train_from_a_feature_dataset_exports_the_model_the_images_give(trained, tmp_path, capsys):
    data, repo, _, args = trained
    dest = tmp_path / "features"
    assert main(["featurize", str(data), "--graph", args[args.index("--graph") + 1], "--precision", "fp32",
                 "--output-dataset", str(dest), "--quiet"]) == 0
    features_args = [a for a in args if a != str(data)]
    cache_at = features_args.index("--cache")
    del features_args[cache_at:cache_at + 2]
    features_args[features_args.index("--name") + 1] = "from-features"
    assert main([*features_args, "--features", str(dest)]) == 0
    out = capsys.readouterr().out
    assert "skipped 1 file(s)" in out and "stripes/broken.jpg" in out  # the dataset's bad files are reported
    first = json.loads((repo / "demo" / "1" / "model_card.json").read_text())
    card = json.loads((repo / "from-features" / "1" / "model_card.json").read_text())
    assert card["split_sizes"] == first["split_sizes"] and card["training"]["features"] == str(dest)
    files = [data / "sunsets" / "sunsets_000.jpg", data / "checkers" / "checkers_001.jpg",
             data / "bubbles" / "bubbles_002.jpg"]
    expected = _predictions(repo / "demo" / "1", files, capsys)
    for got, want in zip(_predictions(repo / "from-features" / "1", files, capsys), expected):
        assert got.keys() == want.keys()
        assert all(abs(got[k] - want[k]) < 1e-5 for k in want)  # same split, same vectors, same seed


def test_train_from_features_takes_the_backend_and_precision_the_dataset_holds(trained, tmp_path):
    pytest.importorskip("openvino", reason="the imgclf[openvino] extra is not installed")
    data, _, _, args = trained
    graph, ov = args[args.index("--graph") + 1], str(tmp_path / "ov")
    dest, repo = tmp_path / "features", tmp_path / "models"
    assert main(["featurize", str(data), "--graph", graph, "--backend", "openvino", "--precision", "fp32",
                 "--openvino-cache", ov, "--output-dataset", str(dest), "--quiet"]) == 0
    # Neither --precision nor --backend: the defaults (TensorFlow, auto) would find no rows of theirs in DEST.
    assert main(["train", "--features", str(dest), "--graph", graph, "--openvino-cache", ov, "--model-dir", str(repo),
                 "--name", "ov", "--quiet", "--seed", "1", "--publish", "always"]) == 0
    card = json.loads((repo / "ov" / "1" / "model_card.json").read_text())
    assert (card["featurizer"]["backend"], card["featurizer"]["precision"]) == ("openvino", "fp32")
    assert list(json.loads((dest / "dataset.json").read_text())["featurizers"]) == [card["featurizer"]["fingerprint"]]


@pytest.mark.parametrize("extra, message", [
    (["--features", "ds", "--augment", "2"], "--augment cannot be used with --features"),
    (["--features", "ds", "--cache", "c.sqlite"], "--cache is for IMAGE_DIR"),
    ([], "give IMAGE_DIR"),
])
def test_bad_features_arguments_are_usage_errors(tmp_path, extra, message, capsys):
    code = main(["train", "--graph", "g.pb", "--model-dir", str(tmp_path / "m"), "--name", "x", *extra])
    assert code == 2 and message in capsys.readouterr().err


# --- the publish gate, end to end ------------------------------------------------------------------------------

# 24 demo photos a class split into 13 test photos, 6 of them sunsets: the gate asks for 11 of 13 right
# (p < 0.01 against always answering "sunsets"). The 10-a-class set above (5 test photos, 2 of a class) cannot
# pass it at all: 5 of 5 is p = 0.0102; its fixture publishes with --publish always.
GATE_PER_CLASS = 24


@pytest.fixture(scope="module")
def gate_data(tmp_path_factory, legacy_graph_path):
    """(demo photos, the same photos under shuffled labels, the shared feature cache)."""
    root = tmp_path_factory.mktemp("gate")
    data = write_demo_images(root / "images", per_class=GATE_PER_CLASS)
    photos = sorted(data.glob("*/*.jpg"))
    labels = [p.parent.name for p in photos]
    shuffled = root / "shuffled"
    for photo, label in zip(photos, np.random.default_rng(7).permutation(labels)):
        (shuffled / label).mkdir(parents=True, exist_ok=True)
        (shuffled / label / photo.name).write_bytes(photo.read_bytes())  # same bytes: the cache serves them
    return data, shuffled, root / "c.sqlite"


def _gate_args(images, graph, cache, repo, *extra):
    return ["train", str(images), "--graph", str(graph), "--cache", str(cache), "--model-dir", str(repo),
            "--name", "demo", "--precision", "fp32", "--quiet", "--seed", "1", *extra]


def test_the_gate_publishes_a_good_run_and_keeps_a_shuffled_one_aside(gate_data, legacy_graph_path, tmp_path,
                                                                       capsys):
    data, shuffled, cache = gate_data
    repo = tmp_path / "models"
    assert main(_gate_args(data, legacy_graph_path, cache, repo)) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    card = json.loads((repo / "demo" / "1" / "model_card.json").read_text())
    gate = card["gate"]
    assert gate["passed"] and gate["published"] and gate["binomial_test"]["p_value"] < 0.01, gate
    assert gate["candidate"]["accuracy"] == card["metrics"]["test"]["accuracy"]
    assert gate["baseline"]["rate"] == 6 / 13 and gate["current_version"]["version"] is None
    assert "candidate passed the publish gate" in out and "publish gate on the test split" in out

    # The same photos under shuffled labels: chance on the test split. Rejected, kept aside, exit 3.
    assert main(_gate_args(shuffled, legacy_graph_path, cache, repo)) == 3
    out = capsys.readouterr().out
    lines = out.splitlines()
    reason = next(i for i, line in enumerate(lines) if line.startswith("candidate rejected by the publish gate: "))
    assert lines[reason + 1].startswith("publish gate on the test split"), out
    assert "beats majority class" in out and "current (version 1)" in out
    assert list_versions(repo, "demo") == [1] and not (repo / "demo" / "2").exists()
    kept = sorted((repo / "demo" / "rejected").iterdir())
    assert len(kept) == 1 and re.fullmatch(r"\d{8}T\d{6}Z", kept[0].name), kept
    assert f"kept {kept[0]}" in out
    report = json.loads((kept[0] / "gate.json").read_text())
    assert not report["passed"] and not report["published"] and report["checks"][0]["status"] == "fail"
    assert report["current_version"]["version"] == 1 and report["current_version"]["accuracy"] is not None
    rejected_card = json.loads((kept[0] / "model_card.json").read_text())
    assert rejected_card["gate"] == report and (kept[0] / "saved_model.pb").is_file()
    assert [p.name for p in (repo / "demo").iterdir() if p.name.startswith(".")] == []  # no work dir left

    # --publish always overrides the gate: version 2, its card says it failed.
    assert main(_gate_args(shuffled, legacy_graph_path, cache, repo, "--publish", "always")) == 0
    out = capsys.readouterr().out
    assert "published anyway (--publish always)" in out
    assert list_versions(repo, "demo") == [1, 2]
    card = json.loads((repo / "demo" / "2" / "model_card.json").read_text())
    assert card["gate"]["published"] and not card["gate"]["passed"] and card["gate"]["publish"] == "always"


def test_a_diverged_run_exits_1_and_writes_nothing(gate_data, legacy_graph_path, tmp_path, capsys):
    data, _, cache = gate_data
    repo = tmp_path / "models"
    assert main(_gate_args(data, legacy_graph_path, cache, repo, "--learning-rate", "1e30")) == 1
    err = capsys.readouterr().err
    assert "training diverged" in err and "nothing is exported" in err
    assert not any(repo.rglob("saved_model.pb")) and not (repo / "demo" / "rejected").exists()
    assert list_versions(repo, "demo") == []


def test_a_version_with_other_labels_is_not_compared(gate_data, legacy_graph_path, tmp_path, capsys):
    data, _, cache = gate_data
    repo = tmp_path / "models"
    fewer = tmp_path / "three"
    for label in ("bubbles", "checkers", "stripes"):
        shutil.copytree(data / label, fewer / label)
    assert main(_gate_args(fewer, legacy_graph_path, cache, repo, "--publish", "always")) == 0
    assert main(_gate_args(data, legacy_graph_path, cache, repo)) == 0
    card = json.loads((repo / "demo" / "2" / "model_card.json").read_text())
    current = card["gate"]["current_version"]
    assert current["version"] == 1 and current["accuracy"] is None and "other labels" in current["skipped"]
    assert card["gate"]["checks"][2]["status"] == "skipped"


def test_the_version_carries_its_calibration_and_unfamiliar_input_detector(trained):
    from imgclf.training.calibration import ECE_BINS
    from imgclf.training.classifier import load_model

    _, repo, out, _ = trained
    version = repo / "demo" / "1"
    card = json.loads((version / "model_card.json").read_text())
    calibration, unfamiliar = card["calibration"], card["unfamiliar"]
    assert calibration["bins"] == ECE_BINS and set(calibration["validation"]) >= {"nll_before", "ece_after"}
    # 10 photos a class leave a validation split below the fit's minimum: said, not failed
    assert (calibration["method"], calibration["temperature"]) == ("none", 1.0) and "fewer than" in calibration["note"]
    assert calibration["reliability_diagram"]["split"] == "test"
    assert (version / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {"calibration.json", "reliability.png"} <= set(card["files"])
    statistics = json.loads((version / "calibration.json").read_text())
    assert statistics["unfamiliar"]["threshold"] == unfamiliar["threshold"] and unfamiliar["method"] == "mahalanobis"
    assert set(unfamiliar["sets"]) == {"noise", "flat", "textures"}
    for row in unfamiliar["sets"].values():
        assert row["images"] == 24 and 0 <= row["auroc"] <= 1 and 0 <= row["fpr_at_95_tpr"] <= 1
    assert len(unfamiliar["left_out_classes"]) == 3  # 4 classes: the detector refitted without 3 of them, in turn
    assert "calibration: none" in out and "unfamiliar inputs (mahalanobis" in out and "left out:" in out
    model = load_model(version)
    assert (model.temperature, model.detector.threshold) == (1.0, pytest.approx(unfamiliar["threshold"]))


@pytest.mark.parametrize("damage, message", [
    ("delete", "calibration.json is missing"),
    ("edit", "differs from the sha256"),
    ("unlist", "not in the model card"),
])
def test_missing_or_corrupt_statistics_fail_the_load_with_invalid_argument(trained, tmp_path, damage, message):
    from imgclf.service.lifecycle.versions import error_code
    from imgclf.training.classifier import load_model

    _, repo, _, _ = trained
    version = shutil.copytree(repo / "demo" / "1", tmp_path / "demo" / "1")
    statistics = version / "calibration.json"
    if damage == "delete":
        statistics.unlink()
    elif damage == "edit":
        statistics.write_text(statistics.read_text().replace('"temperature": 1.0', '"temperature": 0.5'))
    else:
        card = json.loads((version / "model_card.json").read_text())
        del card["files"]["calibration.json"]
        (version / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match=message) as raised:
        load_model(version)
    assert error_code(raised.value) == "INVALID_ARGUMENT"
    assert str(tmp_path) not in str(raised.value).split(":", 1)[1]  # the path leads; the reason names no path
