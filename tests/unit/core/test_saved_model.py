"""imgclf.core.saved_model.load_version: the loading steps every model kind shares, on SavedModels written here."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from imgclf.core import export_names as names
from imgclf.core.errors import ModelNotFound, UnsafeGraph
from imgclf.core.model_kind import ModelKind
from imgclf.core.op_policy import ENV_ALLOW_UNSAFE_OPS
from imgclf.core.saved_model import LoadedVersion, load_version

CPU = "/device:CPU:0"


class _Affine(tf.Module):
    """y = 2x + 1, with its weights in variables (restored by the SavedModel's saver)."""

    def __init__(self):
        super().__init__()
        self.w = tf.Variable(2.0)
        self.b = tf.Variable(1.0)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def __call__(self, x):
        return {"y": self.w * x + self.b}


class _ReadsFiles(tf.Module):
    """A model that reads a file when called: ReadFile is outside the inference allow-list."""

    @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
    def __call__(self, path):
        return {"contents": tf.io.read_file(path)}


def write_version(version_dir: Path, card: dict | None, module: tf.Module | None = None,
                  labels_txt: str | None = None) -> Path:
    """Save ``module`` (default: the affine map) as a SavedModel in ``version_dir`` with ``card`` beside it."""
    module = module or _Affine()
    tf.saved_model.save(module, str(version_dir), signatures={names.SERVING_SIGNATURE: module.__call__})
    if card is not None:
        (version_dir / names.MODEL_CARD_FILE).write_text(json.dumps(card), encoding="utf-8")
    if labels_txt is not None:
        (version_dir / names.LABELS_FILE).write_text(labels_txt, encoding="utf-8")
    return version_dir


@pytest.fixture(scope="module")
def affine_dir(tmp_path_factory) -> Path:
    """A complete regression export, REPO/tiny/3."""
    return write_version(tmp_path_factory.mktemp("repo") / "tiny" / "3",
                         {"name": "tiny", "kind": "regression", "version": 3})


@pytest.fixture(scope="module")
def unsafe_dir(tmp_path_factory) -> Path:
    return write_version(tmp_path_factory.mktemp("repo") / "reader" / "1", {"name": "reader", "kind": "regression"},
                         module=_ReadsFiles())


def test_a_version_loads_with_its_card_kind_and_device(affine_dir):
    loaded = load_version(affine_dir, device=CPU, allow_unsafe_ops=False)

    assert isinstance(loaded, LoadedVersion)
    assert (loaded.path, loaded.name, loaded.version, loaded.kind) == (affine_dir, "tiny", 3, ModelKind.REGRESSION)
    assert loaded.card == {"name": "tiny", "kind": "regression", "version": 3}
    assert loaded.labels == [] and loaded.device == CPU
    serve = loaded.saved_model.signatures[names.SERVING_SIGNATURE]
    np.testing.assert_allclose(serve(tf.constant([0.0, 1.5, -2.0]))["y"].numpy(), [1.0, 4.0, -3.0])


def test_the_version_comes_from_the_directory_name_or_else_the_card(affine_dir, tmp_path):
    copy = tmp_path / "tiny" / "export-copy"
    shutil.copytree(affine_dir, copy)
    assert load_version(copy, device="", allow_unsafe_ops=False).version == 3  # the card's
    renamed = tmp_path / "tiny" / "12"
    copy.rename(renamed)
    assert load_version(renamed, device="", allow_unsafe_ops=False).version == 12


def test_a_card_without_a_name_takes_the_model_directory_name(tmp_path):
    version = write_version(tmp_path / "quad" / "1", {"kind": "regression"})
    assert load_version(version, device="", allow_unsafe_ops=False).name == "quad"


def test_labels_come_from_the_card_and_must_match_labels_txt(tmp_path):
    good = write_version(tmp_path / "digits" / "1", {"kind": "digit-classifier", "labels": ["zero", "one"]},
                         labels_txt="zero\none\n")
    loaded = load_version(good, device="", allow_unsafe_ops=False, labels_required=True)
    assert loaded.labels == ["zero", "one"] and loaded.kind is ModelKind.DIGIT_CLASSIFIER


@pytest.mark.parametrize("labels_txt", ["one\nzero\n", "zero\n", "zero\none\ntwo\n"])
def test_labels_txt_that_disagrees_with_the_card_is_a_value_error(tmp_path, labels_txt):
    version = write_version(tmp_path / "digits" / "1", {"kind": "digit-classifier", "labels": ["zero", "one"]},
                            labels_txt=labels_txt)
    with pytest.raises(ValueError, match="labels.txt' disagrees with the labels in model_card.json"):
        load_version(version, device="", allow_unsafe_ops=False)


def test_labels_required_but_missing_is_model_not_found(affine_dir):
    with pytest.raises(ModelNotFound, match=r"model card with labels \(labels: NoneType\)"):
        load_version(affine_dir, device="", allow_unsafe_ops=False, labels_required=True)


def test_labels_that_are_not_a_list_are_model_not_found(tmp_path):
    version = write_version(tmp_path / "m" / "1", {"labels": "cat,dog"})
    with pytest.raises(ModelNotFound, match=r"labels: str"):
        load_version(version, device="", allow_unsafe_ops=False)


def test_an_unknown_kind_is_model_not_found(tmp_path):
    version = write_version(tmp_path / "m" / "1", {"kind": "segmenter"})
    with pytest.raises(ModelNotFound, match="model card kind 'segmenter' is not one imgclf serves"):
        load_version(version, device="", allow_unsafe_ops=False)


def test_a_directory_without_a_card_is_model_not_found(tmp_path):
    version = write_version(tmp_path / "m" / "1", card=None)
    with pytest.raises(ModelNotFound, match="missing model_card.json"):
        load_version(version, device="", allow_unsafe_ops=False)


def test_ops_outside_the_allow_list_are_refused_before_loading(unsafe_dir, monkeypatch):
    loads = []
    monkeypatch.setattr(tf.saved_model, "load", lambda *a, **k: loads.append(a))
    monkeypatch.delenv(ENV_ALLOW_UNSAFE_OPS, raising=False)

    with pytest.raises(UnsafeGraph, match="ReadFile"):
        load_version(unsafe_dir, device="")
    with pytest.raises(UnsafeGraph, match="ReadFile"):
        load_version(unsafe_dir, device="", allow_unsafe_ops=False)
    assert loads == []  # TensorFlow never read it


def test_unsafe_ops_load_when_allowed_with_a_warning(unsafe_dir, tmp_path, monkeypatch, caplog):
    secret = tmp_path / "file.txt"
    secret.write_bytes(b"read by the model")
    with caplog.at_level(logging.WARNING):
        loaded = load_version(unsafe_dir, device="", allow_unsafe_ops=True)
    assert "ReadFile" in caplog.text
    serve = loaded.saved_model.signatures[names.SERVING_SIGNATURE]
    assert serve(tf.constant(str(secret)))["contents"].numpy() == b"read by the model"

    monkeypatch.setenv(ENV_ALLOW_UNSAFE_OPS, "1")  # the service's opt-in
    assert load_version(unsafe_dir, device="").kind is ModelKind.REGRESSION


def test_a_bad_allow_unsafe_ops_setting_is_a_value_error(affine_dir, monkeypatch):
    monkeypatch.setenv(ENV_ALLOW_UNSAFE_OPS, "maybe")
    with pytest.raises(ValueError, match=f"{ENV_ALLOW_UNSAFE_OPS}.*'maybe'"):
        load_version(affine_dir, device="")
