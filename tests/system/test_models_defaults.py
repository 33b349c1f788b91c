"""The secondary digit models' defaults train well on a small real digits set, with no tuning flags.

The set is scikit-learn's 1,797 bundled handwritten digits in MNIST's layout
(tests/support/small_digits.py): 1,300 train, 497 test. Each model is trained
by the command line exactly as a user would, with only --data and --model-dir.
"""

from __future__ import annotations

import json

import pytest

from imgclf.core import export_names as names
from imgclf.service.cli.main import main
from tests.support.small_digits import write_small_digits_npz

pytest.importorskip("sklearn", reason="the small digits set comes from scikit-learn's bundled data")

MIN_TEST_ACCURACY = 0.92  # the bar for the defaults on ~1,300 training images


@pytest.mark.system  # about a minute on two CPU cores
@pytest.mark.parametrize("model", ["mnist-mlp", "lenet5"])
def test_defaults_reach_92_percent_on_a_small_digits_set(model, tmp_path, capsys):
    data = write_small_digits_npz(tmp_path / "digits.npz")
    repo = tmp_path / "repo"
    assert main(["models", "train", model, "--data", str(data), "--model-dir", str(repo), "--quiet"]) == 0
    card = json.loads((repo / model / "1" / names.MODEL_CARD_FILE).read_text(encoding="utf-8"))
    accuracy = card["metrics"]["test"]["accuracy"]
    print(f"\n{model} defaults on {card['splits']}: test accuracy {accuracy:.4f}")
    assert card["splits"]["test"] == 1797 - 1300
    assert accuracy >= MIN_TEST_ACCURACY
    assert "test: loss" in capsys.readouterr().out
