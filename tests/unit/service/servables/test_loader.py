"""The servables: one class per model kind, picked by the card's kind; the shapes they answer in."""

from __future__ import annotations

import ast
import inspect
import json
import shutil

import numpy as np
import pytest

from imgclf.core.errors import BadRequest, ModelNotFound
from imgclf.core.model_kind import ModelKind, kind_of
from imgclf.core.repository import read_card
from imgclf.featurizer.images import decode as image_io
from imgclf.service.dataplane import plane
from imgclf.service.protocols import health as routes_health
from imgclf.service.protocols.predict import routes as routes_predict
from imgclf.service.protocols.tfserving import routes as routes_tfserving
from imgclf.service.protocols.v2 import routes as routes_v2
from imgclf.service.servables.base import LoadContext, Servable, TensorSpec, card_signature
from imgclf.service.servables.loader import SERVABLES, load_servable
from imgclf.service.servables.secondary import DigitClassifierServable, RegressionServable
from imgclf.service.settings import ServingSettings
from imgclf.service.web import routes as routes_web
from tests.support.images import encode, jpeg, photo_like
from tests.support.source_ast import parse_source


@pytest.fixture(scope="module")
def repo(secondary_repo, model_repo, tmp_path_factory):
    """The three secondary models plus the "shapes" image classifier, in one repository."""
    combined = tmp_path_factory.mktemp("servables") / "models"
    shutil.copytree(secondary_repo, combined)
    shutil.copytree(model_repo / "shapes", combined / "shapes")
    return combined


def test_every_kind_has_one_servable_class_of_that_kind():
    assert set(SERVABLES) == set(ModelKind)
    for kind, cls in SERVABLES.items():
        assert issubclass(cls, Servable) and cls.kind is kind


@pytest.mark.parametrize("name", ["shapes", "quadratic", "mnist-mlp", "lenet5"])
def test_the_loader_picks_the_class_of_the_cards_kind(repo, name):
    path = repo / name / "1"
    served = load_servable(path, name, 1, LoadContext(ServingSettings(batching=False)))
    try:
        assert type(served) is SERVABLES[kind_of(read_card(path))]
        assert (served.name, served.version, served.card) == (name, 1, read_card(path))
        served.warm_up()
    finally:
        served.close()


@pytest.mark.parametrize("decode", ["exact", "fast"])
def test_warm_up_traces_every_decode_function_a_first_request_would(repo, monkeypatch, decode):
    monkeypatch.setattr(image_io, "_FUSED", {})  # nothing traced yet, as in a fresh worker
    served = load_servable(repo / "shapes" / "1", "shapes", 1, LoadContext(ServingSettings(batching=False)))
    try:
        monkeypatch.setitem(served.model.card["featurizer"]["contract"], "decode", decode)
        served.warm_up()
        traced = dict(image_io._FUSED)
        assert traced, "warm-up traced no decode function"
        photos = [jpeg(41), jpeg(42, (2500, 2400)), encode(photo_like(43, (64, 48)), "PNG")]
        for photo in photos:  # a small photo, a phone-size one (DCT-scaled in fast mode), a PNG
            served.decode_picture(photo)  # annotated requests keep the RGB
            served.decode_input(photo)  # the others do not
        assert image_io._FUSED == traced, f"requests traced {sorted(set(image_io._FUSED) - set(traced))}"
    finally:
        served.close()


def test_a_card_of_an_unknown_kind_is_refused_naming_it(tmp_path):
    version = tmp_path / "chat" / "1"
    version.mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"")
    (version / "model_card.json").write_text(json.dumps({"kind": "llm", "labels": []}))
    with pytest.raises(ModelNotFound, match="model card kind 'llm' is not one imgclf serves"):
        load_servable(version, "chat", 1, LoadContext(ServingSettings()))


def test_a_regression_takes_no_pictures_and_a_digit_classifier_does(repo):
    context = LoadContext(ServingSettings())
    quadratic = RegressionServable.load(repo / "quadratic" / "1", "quadratic", 1, context)
    assert not quadratic.takes_pictures
    with pytest.raises(BadRequest, match="regression model"):
        quadratic.decode_picture(b"anything")
    digits = DigitClassifierServable.load(repo / "lenet5" / "1", "lenet5", 1, context)
    assert digits.takes_pictures
    picture = np.zeros((40, 30, 3), np.uint8)
    picture[10:30, 12:18] = 255  # a white stroke on black: a "1"
    rgb, x = digits.decode_picture(encode(picture, "PNG"))
    assert rgb.shape == (40, 30, 3) and x.shape == (28, 28) and 0 <= x.min() and x.max() <= 1


def test_a_card_signature_names_its_one_input_and_its_outputs():
    card = {"signature": {"inputs": {"x": {"dtype": "float32", "shape": [-1, 1]}},
                          "outputs": {"classes": {"dtype": "int64", "shape": [-1]}}}}
    signature = card_signature(card)
    assert signature.name == "serving_default" and not signature.takes_pictures
    assert signature.input == TensorSpec("x", "float32", (-1, 1))
    assert signature.outputs == (TensorSpec("classes", "int64", (-1,)),)


@pytest.mark.parametrize("module", [routes_health, routes_predict, routes_tfserving, routes_v2, routes_web, plane])
def test_routes_do_not_branch_on_the_model_kind(module):
    """Routes translate HTTP and the data plane is neutral; what a kind takes and answers is its servable's."""
    tree = parse_source(inspect.getsource(module))
    tests = [node.test for node in ast.walk(tree) if isinstance(node, (ast.If, ast.IfExp, ast.While))]
    tests += [node for node in ast.walk(tree) if isinstance(node, ast.Compare)]
    for test in tests:
        kinds = [n for n in ast.walk(test) if isinstance(n, ast.Attribute) and n.attr == "kind"]
        assert not kinds, f"{module.__name__} line {test.lineno}: branches on a model's kind"
