import numpy as np
import pytest

from imgclf.core.errors import BadRequest
from imgclf.service.protocols.tfserving import codec
from imgclf.service.servables.base import Signature, TensorSpec

PICTURES = Signature("serving_default", TensorSpec("image_bytes", "string", (-1,)),
                     (TensorSpec("probabilities", "float32", (-1, 2)), TensorSpec("classes", "int64", (-1,))))


def test_rows_and_columns_follow_tf_serving():
    two = {"probabilities": np.array([[0.25, 0.75], [1.0, 0.0]], np.float32), "classes": np.array([1, 0])}
    assert codec.rows(two) == [{"probabilities": [0.25, 0.75], "classes": 1},
                               {"probabilities": [1.0, 0.0], "classes": 0}]
    assert codec.columns(two) == {"probabilities": [[0.25, 0.75], [1.0, 0.0]], "classes": [1, 0]}
    one = {"y": np.array([[1.5], [-2.0]], np.float32)}  # one output: its values, without the name
    assert codec.rows(one) == codec.columns(one) == [[1.5], [-2.0]]


def test_a_signature_becomes_tf_serving_metadata():
    defs = codec.signature_def(Signature("serving_default", TensorSpec("x", "float32", (-1, 1)),
                                         (TensorSpec("classes", "int64", (-1,)),)))
    assert defs["inputs"]["x"] == {"dtype": "DT_FLOAT", "tensor_shape": {
        "dim": [{"size": "-1", "name": ""}, {"size": "1", "name": ""}], "unknown_rank": False}}
    assert defs["outputs"]["classes"]["dtype"] == "DT_INT64"
    assert defs["method_name"] == "tensorflow/serving/predict"
    assert codec.signature_def(PICTURES)["inputs"]["image_bytes"]["dtype"] == "DT_STRING"


@pytest.mark.parametrize("body, expected", [
    ({"instances": [{"b64": "AA=="}]}, [{"b64": "AA=="}]),
    ({"instances": [{"image_bytes": {"b64": "AA=="}}]}, [{"b64": "AA=="}]),  # row format, named
    ({"inputs": {"image_bytes": [{"b64": "AA=="}]}}, [{"b64": "AA=="}]),  # columnar, named
    ({"inputs": [[1.0]]}, [[1.0]]),
])
def test_instances_unwrap_every_form(body, expected):
    items, where = codec.instances(body, PICTURES)
    assert items == expected and where == ('"instances"' if "instances" in body else '"inputs"')


@pytest.mark.parametrize("body, message", [
    ({}, "exactly one of"),
    ({"instances": [], "inputs": []}, "exactly one of"),
    ({"instances": []}, "must be a non-empty list"),
    ({"inputs": {"x": [1]}}, "must name the one input 'image_bytes'"),
])
def test_bad_bodies_say_what_is_wrong(body, message):
    with pytest.raises(BadRequest, match=message):
        codec.instances(body, PICTURES)


class _Takes:
    def __init__(self, pictures):
        self.takes_pictures = pictures


def test_pictures_become_bytes_only_for_models_that_take_them():
    items = [{"b64": "AAEC"}, [1.0]]
    assert codec.pictures_decoded(items, _Takes(True)) == [b"\x00\x01\x02", [1.0]]
    assert codec.pictures_decoded(items, _Takes(False)) == items  # a regression says what it takes instead
    with pytest.raises(BadRequest, match="instance 1: b64 is not valid base64"):
        codec.pictures_decoded([{"b64": "AAEC"}, {"b64": "A"}], _Takes(True))
