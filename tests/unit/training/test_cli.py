"""`imgclf train`'s command line: the --json summary, the decay options, the model repository's default."""

import json
from pathlib import Path

import pytest

from imgclf.core import export_names as names
from imgclf.featurizer.images.demo import write_demo_images
from imgclf.service.cli.main import main


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    return write_demo_images(tmp_path_factory.mktemp("train-cli") / "images", per_class=10)


def test_train_json_is_what_the_model_card_records(image_dir, legacy_graph_path, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no --model-dir, no IMGCLF_MODEL_REPOSITORY: ./models
    monkeypatch.delenv("IMGCLF_MODEL_REPOSITORY", raising=False)
    assert main(["train", str(image_dir), "--graph", str(legacy_graph_path), "--cache", "c.sqlite", "--name", "demo",
                 "--precision", "fp32", "--epochs", "20", "--decay-epochs", "2", "--publish", "always",
                 "--json"]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)  # stdout is one JSON object: no progress bar, no tables
    version_dir = tmp_path / "models" / "demo" / "1"
    assert summary["published"] is True and summary["version_dir"] == str(Path("models", "demo", "1"))
    card = json.loads((version_dir / names.MODEL_CARD_FILE).read_text())
    assert card["training"]["optimizer"]["decay_epochs"] == 2.0  # --decay-epochs reached the loop's config
    assert summary["split"] == card["split_sizes"]
    assert summary["metrics"] == {k: v for k, v in card["metrics"]["test"].items() if k != "probabilities"}
    assert summary["gate"] == card["gate"] and summary["gate"]["reason"].startswith("candidate")
    for entry in ("calibration", "unfamiliar"):  # the card adds what it says of the exported head itself
        assert summary[entry].items() <= card[entry].items(), entry
    assert "method" in summary["calibration"] and "threshold" in summary["unfamiliar"]
    assert summary["labels"] == sorted(p.name for p in image_dir.iterdir())
    assert summary["epochs"] >= 1 and summary["kept_at"] is None and err == ""


def test_decay_steps_and_decay_epochs_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "d", "--graph", "g.pb", "--cache", "c", "--name", "n", "--decay-steps", "5",
              "--decay-epochs", "1"])
    assert info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
