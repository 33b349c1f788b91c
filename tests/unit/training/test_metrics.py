"""Metrics: checked by hand on small cases and against scikit-learn on random ones."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from imgclf.training.metrics import confusion_image, evaluate


def _one_hot(predicted, k):
    return np.eye(k, dtype=np.float32)[predicted]


def test_small_case_by_hand():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 0, 2])
    m = evaluate(_one_hot(y_pred, 3), y_true, ["a", "b", "c"])
    assert m.confusion == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m.accuracy == pytest.approx(4 / 6)
    # precision = diagonal / column sum, recall = diagonal / row sum
    expected = [("a", 1 / 2, 1 / 2, 1 / 2, 2), ("b", 2 / 3, 1.0, 0.8, 2), ("c", 1.0, 1 / 2, 2 / 3, 2)]
    for row, (label, p, r, f, s) in zip(m.per_class, expected):
        assert row == {"label": label, "precision": pytest.approx(p), "recall": pytest.approx(r),
                       "f1": pytest.approx(f), "support": s}
    assert m.macro["precision"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert m.macro["recall"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert m.macro["f1"] == pytest.approx((1 / 2 + 0.8 + 2 / 3) / 3)
    assert m.weighted["recall"] == pytest.approx(m.accuracy)  # always true of weighted recall
    assert m.num_examples == 6


def test_argmax_of_probabilities_is_the_prediction():
    probabilities = np.array([[0.2, 0.7, 0.1], [0.5, 0.3, 0.2]])
    m = evaluate(probabilities, np.array([1, 2]), ["x", "y", "z"])
    assert m.confusion == [[0, 0, 0], [0, 1, 0], [1, 0, 0]]


def test_empty_classes_give_zero_not_a_crash():
    # class "c" is never true and never predicted; class "b" is never predicted
    y_true = np.array([0, 0, 1])
    y_pred = np.array([0, 0, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = evaluate(_one_hot(y_pred, 3), y_true, ["a", "b", "c"])
    b, c = m.per_class[1], m.per_class[2]
    assert (b["precision"], b["recall"], b["f1"], b["support"]) == (0.0, 0.0, 0.0, 1)
    assert (c["precision"], c["recall"], c["f1"], c["support"]) == (0.0, 0.0, 0.0, 0)
    assert m.per_class[0]["precision"] == pytest.approx(2 / 3)


def test_no_examples_give_zeros():
    m = evaluate(np.zeros((0, 2), np.float32), np.zeros(0), ["a", "b"])
    assert m.accuracy == 0.0 and m.num_examples == 0 and m.confusion == [[0, 0], [0, 0]]
    assert m.macro == {"precision": 0.0, "recall": 0.0, "f1": 0.0} == m.weighted
    assert "on 0 examples" in m.format_table()


def test_matches_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    k = 6
    y_true = rng.integers(0, k - 1, 500)  # the last class never occurs
    probabilities = rng.random((500, k))
    probabilities[np.arange(500), y_true] += rng.random(500)  # better than chance
    y_pred = probabilities.argmax(axis=1)
    m = evaluate(probabilities, y_true, [f"class {i}" for i in range(k)])
    labels = list(range(k))
    assert m.accuracy == pytest.approx(sk.accuracy_score(y_true, y_pred))
    np.testing.assert_array_equal(m.confusion, sk.confusion_matrix(y_true, y_pred, labels=labels))
    p, r, f, s = sk.precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    np.testing.assert_allclose([row["precision"] for row in m.per_class], p)
    np.testing.assert_allclose([row["recall"] for row in m.per_class], r)
    np.testing.assert_allclose([row["f1"] for row in m.per_class], f)
    assert [row["support"] for row in m.per_class] == s.tolist()
    for average, ours in (("macro", m.macro), ("weighted", m.weighted)):
        p, r, f, _ = sk.precision_recall_fscore_support(y_true, y_pred, labels=labels,
                                                        average=average, zero_division=0)
        assert (ours["precision"], ours["recall"], ours["f1"]) == (
            pytest.approx(p), pytest.approx(r), pytest.approx(f))


def test_to_dict_is_json_ready():
    m = evaluate(_one_hot(np.array([0, 1, 1]), 2), np.array([0, 1, 0]), ["cat", "dog"])
    data = json.loads(json.dumps(m.to_dict()))
    assert data["accuracy"] == pytest.approx(2 / 3)
    assert data["confusion"] == [[1, 1], [0, 1]]
    assert data["label_names"] == ["cat", "dog"]
    assert data["per_class"][1]["label"] == "dog"
    assert set(data["macro"]) == {"precision", "recall", "f1"}


def test_format_table_is_aligned_and_truncates_long_names():
    long_name = "an extremely long label name that goes on"
    names = ["daisy", long_name, "tulips"]
    y_true = np.array([0, 1, 2, 2, 1, 0, 0])
    y_pred = np.array([0, 1, 2, 0, 1, 0, 2])
    table = evaluate(_one_hot(y_pred, 3), y_true, names).format_table()
    assert "daisy" in table and "tulips" in table
    assert long_name not in table and "an extremely long l…" in table
    assert "precision" in table and "macro avg" in table
    lines = table.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("confusion matrix"))
    matrix = lines[start + 1:start + 5]
    assert len({len(line) for line in matrix}) == 1  # header and rows line up
    assert matrix[1].split()[-3:] == ["2", "0", "1"]  # daisy row: 2 right, 1 taken for tulips


def test_format_table_aligns_wide_characters():
    names = ["玫瑰", "向日葵向日葵向日葵向日葵", "tulips"]
    y = np.array([0, 1, 2, 1])
    table = evaluate(_one_hot(y, 3), y, names).format_table()
    assert "玫瑰" in table and "向日葵向日葵向日葵…" in table  # cut to fit 20 columns
    lines = table.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("confusion matrix"))
    columns = {sum(2 if ord(c) > 0x2E80 else 1 for c in line) for line in lines[start + 1:start + 5]}
    assert len(columns) == 1


@pytest.mark.parametrize("probabilities, y_true, names, message", [
    (np.zeros((3, 2)), np.array([0, 1, 0]), ["a", "b", "c"], "probabilities must be"),
    (np.zeros(3), np.array([0, 1, 0]), ["a", "b", "c"], "probabilities must be"),
    (np.zeros((3, 2)), np.array([0, 1]), ["a", "b"], "y_true must be"),
    (np.zeros((3, 2)), np.array([0, 1, 2]), ["a", "b"], "labels must be in"),
    (np.zeros((3, 2)), np.array([0, -1, 1]), ["a", "b"], "labels must be in"),
    (np.zeros((3, 2)), np.array([0.0, 1.0, 1.0]), ["a", "b"], "integers"),
])
def test_bad_inputs_raise(probabilities, y_true, names, message):
    with pytest.raises(ValueError, match=message):
        evaluate(probabilities, y_true, names)


def test_confusion_image_is_an_rgb_heatmap():
    names = ["daisy", "dandelion", "roses"]
    confusion = [[40, 1, 0], [3, 30, 7], [0, 0, 12]]
    image = confusion_image(confusion, names)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.shape[0] > 100 and image.shape[1] > 100
    # the diagonal cells are nearly all of their rows: dark blue must be there
    dark_blue = (image[..., 2] > 80) & (image[..., 0] < 60)
    assert dark_blue.sum() > 500
    # more classes, bigger picture; a different matrix, a different picture
    bigger = confusion_image(np.eye(6, dtype=int), [str(i) for i in range(6)])
    assert bigger.shape[0] > image.shape[0] and bigger.shape[1] > image.shape[1]
    other = confusion_image([[0, 41, 0], [3, 30, 7], [0, 0, 12]], names)
    assert other.shape == image.shape and not np.array_equal(other, image)


def test_confusion_image_draws_non_ascii_names():
    image = confusion_image([[3, 1], [0, 2]], ["玫瑰", "Подсолнух"])
    assert image.dtype == np.uint8 and image.shape[2] == 3


def test_confusion_image_checks_its_shape():
    with pytest.raises(ValueError, match="confusion must be"):
        confusion_image([[1, 2], [3, 4]], ["a", "b", "c"])
