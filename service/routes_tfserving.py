"""TensorFlow-Serving-compatible REST routes: predict, model status, metadata, and the model list.

Request and response bodies follow TF Serving's REST API (row format
``{"instances": [...]}`` and columnar format ``{"inputs": ...}``, binary
values as ``{"b64": ...}``), so a TF Serving client works against imgclf
unchanged. Images are decoded in Python as training decoded them (EXIF
applied), then predicted in one batched model call per request; signature
``bottleneck`` takes featurizer vectors. Model names from URLs are only ever
looked up in the registry, never joined into paths.
"""

from __future__ import annotations

import json
import re

import numpy as np
from flask import Blueprint, current_app, jsonify, request
from werkzeug.routing import BaseConverter

from imgclf.core import export_names as names
from imgclf.core.errors import InvalidImage
from imgclf.service.app import config_of, registry_of
from imgclf.service.errors import BadRequest
from imgclf.service.registry import IMAGE_CLASSIFIER, ModelRegistry, ServedModel
from imgclf.service.request_input import decode_b64

bp = Blueprint("tfserving", __name__)

_VERSION = re.compile(r"[0-9]{1,18}")  # an int64, as TF Serving parses it
METHOD_NAME = "tensorflow/serving/predict"
SIGNATURES = (names.SERVING_SIGNATURE, names.BOTTLENECK_SIGNATURE)  # the ones REST clients may call
_DTYPES = {"float32": "DT_FLOAT", "int64": "DT_INT64", "string": "DT_STRING"}
DIGITS_KEY = "images"  # the MNIST models' input: float32 [None, 28, 28] in [0, 1]
REGRESSION_KEY = "x"  # the quadratic model's input: float32 [None, 1], raw x


class SegmentConverter(BaseConverter):
    """One path segment without ':' — so ``NAME:predict`` never matches the plain ``NAME`` routes."""

    regex = r"[^/:]+"


# Runs when the blueprint is registered, before the rules below are added (deferred functions run in order).
bp.record_once(lambda state: state.app.url_map.converters.setdefault("segment", SegmentConverter))


def _registry() -> ModelRegistry:
    return registry_of(current_app)


def _served(name: str, version: str | None = None) -> ServedModel:
    """Return the served model for URL segments ``name`` and ``version`` (400 for a non-integer version)."""
    if version is not None and not _VERSION.fullmatch(version):
        raise BadRequest(f"model version must be a non-negative integer (at most 18 digits); received {version!r}")
    return _registry().get(name, None if version is None else int(version))


# --- status, metadata, list -------------------------------------------------------------------------------------


@bp.get("/v1/models/<segment:name>")
@bp.get("/v1/models/<segment:name>/versions/<segment:version>")
def model_status(name: str, version: str | None = None):
    """Answer TF Serving's model status: the served version, AVAILABLE."""
    served = _served(name, version)
    return jsonify(model_version_status=[{
        "version": str(served.version), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""},
    }])


@bp.get("/v1/models/<segment:name>/metadata")
@bp.get("/v1/models/<segment:name>/versions/<segment:version>/metadata")
def model_metadata(name: str, version: str | None = None):
    """Answer TF Serving's model metadata (signature defs), plus the labels and the model card."""
    served = _served(name, version)
    if served.kind == IMAGE_CLASSIFIER:
        defs = signature_defs(served.model.bottleneck_dim, len(served.labels))
    else:
        defs = {names.SERVING_SIGNATURE: _card_signature(served.model.card)}
    body = {
        "model_spec": {"name": served.name, "signature_name": "", "version": str(served.version)},
        "metadata": {"signature_def": {"signature_def": defs}},
        "labels": served.labels,
        "model_card": served.model.card,
    }
    if served.kind in INPUT_NOTES:
        body["input"] = INPUT_NOTES[served.kind]
    return jsonify(body)


# What the secondary models accept beyond their SavedModel signature, said in their metadata.
INPUT_NOTES = {
    "digit-classifier": {
        "key": DIGITS_KEY,
        "accepts": ["a 28x28 array of numbers (a trailing channel of 1 is allowed)",
                    '{"b64": "<base64 image>"}: a picture of one digit, any size and mode'],
        "range": "an array whose values all lie in [0, 1] is taken as 0-1; otherwise values are 0-255 and "
                 "divided by 255",
        "convention": "white digit on black like MNIST; pictures with a light background are inverted, "
                      "cropped to the digit, scaled to 20 px and centred by mass",
    },
    "regression": {
        "key": REGRESSION_KEY,
        "accepts": ["a number x", "[x]"],
        "range": "raw x (the model was trained on [-20, 20]; outside it extrapolates)",
    },
}


def _card_signature(card: dict) -> dict:
    """Return a secondary model's signature, from its model card, in TF Serving's metadata shape."""
    signature = card.get("signature") or {}

    def tensors(specs: dict) -> dict:
        out = {}
        for key, spec in (specs or {}).items():
            dtype = _DTYPES.get(str(spec.get("dtype", "float32")), "DT_FLOAT")
            shape = [int(d) for d in spec.get("shape", [-1])]
            out[key] = {"dtype": dtype, "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in shape],
                                                         "unknown_rank": False}}
        return out

    return {"inputs": tensors(signature.get("inputs")), "outputs": tensors(signature.get("outputs")),
            "method_name": METHOD_NAME}


@bp.get("/v1/models")
def list_models():
    """List the served models with their version and labels."""
    registry = _registry()
    if not registry.ready:
        registry.get()  # raises NotReady with the reason
    return jsonify(models=[{"name": s.name, "version": s.version, "labels": s.labels, "kind": s.kind}
                           for _, s in sorted(registry.models.items())])


def signature_defs(dim: int, num_classes: int) -> dict:
    """Describe the REST-callable signatures as TF Serving's metadata does (dtype names, -1 for any size)."""

    def tensor(dtype: str, shape: list[int]) -> dict:
        return {"dtype": _DTYPES[dtype], "tensor_shape": {"dim": [{"size": str(s), "name": ""} for s in shape],
                                                          "unknown_rank": False}}

    outputs = {names.PROBABILITIES_KEY: tensor("float32", [-1, num_classes]),
               names.CLASSES_KEY: tensor("int64", [-1]),
               names.LABELS_KEY: tensor("string", [-1])}
    return {
        names.SERVING_SIGNATURE: {"inputs": {names.IMAGE_BYTES_KEY: tensor("string", [-1])},
                                  "outputs": outputs, "method_name": METHOD_NAME},
        names.BOTTLENECK_SIGNATURE: {"inputs": {names.BOTTLENECK_KEY: tensor("float32", [-1, dim])},
                                     "outputs": outputs, "method_name": METHOD_NAME},
    }


# --- predict ------------------------------------------------------------------------------------------------------


@bp.post("/v1/models/<segment:name>:predict")
@bp.post("/v1/models/<segment:name>/versions/<segment:version>:predict")
def predict(name: str, version: str | None = None):
    """Predict a TF Serving request: row format answers ``predictions``, columnar format ``outputs``."""
    served = _served(name, version)
    body = _json_body()
    if served.kind != IMAGE_CLASSIFIER:
        return _predict_secondary(served, body)
    signature = body.get("signature_name") or names.SERVING_SIGNATURE
    if signature not in SIGNATURES:
        raise BadRequest(f"unknown signature_name {signature!r}; this model serves {', '.join(SIGNATURES)}")
    if ("instances" in body) == ("inputs" in body):
        raise BadRequest('the request must hold exactly one of "instances" (row format) or "inputs" '
                         f"(columnar format); received keys {sorted(body)}")
    row_format = "instances" in body
    input_key = names.IMAGE_BYTES_KEY if signature == names.SERVING_SIGNATURE else names.BOTTLENECK_KEY
    items = _items(body["instances"] if row_format else body["inputs"], input_key, row_format)
    if signature == names.SERVING_SIGNATURE:
        probabilities = _predict_images(served, items)
    else:
        probabilities = served.model.predict_bottlenecks(_bottlenecks(items, served.model.bottleneck_dim))
    probabilities = np.asarray(probabilities, dtype=np.float32)
    classes = np.argmax(probabilities, axis=1)  # as the SavedModel's tf.argmax: the first of equal maxima
    labels = [served.labels[c] for c in classes]
    if row_format:
        return jsonify(predictions=[{names.PROBABILITIES_KEY: p, names.CLASSES_KEY: int(c), names.LABELS_KEY: label}
                                    for p, c, label in zip(probabilities.tolist(), classes, labels)])
    return jsonify(outputs={names.PROBABILITIES_KEY: probabilities.tolist(),
                            names.CLASSES_KEY: [int(c) for c in classes], names.LABELS_KEY: labels})


def _predict_secondary(served, body: dict):
    """Predict with a secondary model: digits (28×28 arrays or b64 pictures) or the quadratic (x values)."""
    signature = body.get("signature_name") or names.SERVING_SIGNATURE
    if signature != names.SERVING_SIGNATURE:
        raise BadRequest(f"unknown signature_name {signature!r}; model {served.name!r} serves "
                         f"{names.SERVING_SIGNATURE}")
    if ("instances" in body) == ("inputs" in body):
        raise BadRequest('the request must hold exactly one of "instances" (row format) or "inputs" '
                         f"(columnar format); received keys {sorted(body)}")
    row_format = "instances" in body
    if served.kind == "digit-classifier":
        items = _items(body["instances"] if row_format else body["inputs"], DIGITS_KEY, row_format)
        outputs = served.model.predict(np.stack([_digit(served, item, index) for index, item in enumerate(items)]))
        probabilities = np.asarray(outputs["probabilities"], dtype=np.float32)
        classes = [int(c) for c in np.asarray(outputs["classes"]).reshape(-1)]
        if row_format:
            return jsonify(predictions=[{names.PROBABILITIES_KEY: p, names.CLASSES_KEY: c}
                                        for p, c in zip(probabilities.tolist(), classes)])
        return jsonify(outputs={names.PROBABILITIES_KEY: probabilities.tolist(), names.CLASSES_KEY: classes})
    items = _items(body["instances"] if row_format else body["inputs"], REGRESSION_KEY, row_format)
    x = np.array([[_x_value(item, index)] for index, item in enumerate(items)], dtype=np.float64)
    with np.errstate(over="ignore"):
        x32 = x.astype(np.float32)
    if not np.isfinite(x32).all():
        raise BadRequest(f"x values must be finite float32 numbers; instance {int(np.argmin(np.isfinite(x32)))} "
                         "is not")
    y = np.asarray(served.predict_values(x32), dtype=np.float32).reshape(-1, 1).tolist()
    # One output: TF Serving answers its values without the output's name.
    return jsonify(predictions=y) if row_format else jsonify(outputs=y)


def _number(value) -> bool:
    return type(value) in (int, float)  # not bool, str, None or a list


def _x_value(item, index: int) -> float:
    """Return one x of a quadratic request: a number or [number]."""
    if isinstance(item, list) and len(item) == 1:
        item = item[0]
    if not _number(item):
        raise BadRequest(f"instance {index} must be a number x or [x]; received {_kind(item)}")
    try:
        return float(item)
    except OverflowError as exc:  # an integer beyond float range
        raise BadRequest(f"instance {index}: x must be a finite float32 number; received a huge integer") from exc


def _digit(served, item, index: int) -> np.ndarray:
    """Return one MNIST-style input [28, 28] in [0, 1]: from a 28×28 array (0-1 or 0-255) or a b64 picture."""
    if isinstance(item, dict):
        if set(item) != {"b64"}:
            raise BadRequest(f'instance {index} must be a 28x28 array or {{"b64": "<base64 image>"}}; '
                             f"received {_kind(item)}")
        try:
            return served.preprocess(decode_b64(item["b64"]))[1]
        except (BadRequest, InvalidImage) as exc:
            raise type(exc)(f"instance {index}: {exc}") from exc
    shape_error = BadRequest(f"instance {index} must be a 28x28 array of numbers (or 28x28x1) or "
                             f'{{"b64": ...}}; received {_kind(item)}')
    if not isinstance(item, list) or len(item) != 28:
        raise shape_error
    rows = []
    for row in item:
        if not isinstance(row, list) or len(row) != 28:
            raise shape_error
        if all(isinstance(v, list) and len(v) == 1 for v in row):  # [28, 28, 1]
            row = [v[0] for v in row]
        if not all(_number(v) for v in row):
            raise BadRequest(f"instance {index} must hold only numbers (pixel values 0-1 or 0-255)")
        rows.append(row)
    try:
        pixels = np.asarray(rows, dtype=np.float64)
    except OverflowError as exc:
        raise BadRequest(f"instance {index}: pixel values must lie in 0-255; received a huge integer") from exc
    if not np.isfinite(pixels).all():
        raise BadRequest(f"instance {index}: pixel values must be finite numbers (no NaN or Infinity)")
    if pixels.min() < 0 or pixels.max() > 255:
        raise BadRequest(f"instance {index}: pixel values must lie in 0-1 or 0-255; received "
                         f"{pixels.min():g}..{pixels.max():g}")
    if pixels.max() > 1:
        pixels = pixels / 255.0
    return pixels.astype(np.float32)


def _json_body() -> dict:
    """Return the request's JSON object, whatever its content type (TF Serving's clients often send none)."""
    try:
        body = json.loads(request.get_data(cache=True))
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested arrays
        raise BadRequest(f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest(f"the request body must be a JSON object; received {type(body).__name__}")
    if "signature_name" in body and not isinstance(body["signature_name"], str):
        raise BadRequest(f"signature_name must be a string; received {body['signature_name']!r}")
    return body


def _items(value, input_key: str, row_format: bool) -> list:
    """Return the per-instance values of ``instances`` or ``inputs``, unwrapping the named-input forms."""
    where = "instances" if row_format else "inputs"
    if not row_format and isinstance(value, dict):  # columnar, named: {"image_bytes": [...]}
        if set(value) != {input_key}:
            raise BadRequest(f'"inputs" must name the one input {input_key!r}; received {sorted(value)}')
        value = value[input_key]
    if not isinstance(value, list) or not value:
        raise BadRequest(f'"{where}" must be a non-empty list; received {_kind(value)}')
    limit = int(config_of(current_app).max_instances)
    if len(value) > limit:
        raise BadRequest(f'"{where}" holds {len(value)} items; at most {limit} are allowed per request')
    if row_format:  # row format, named: [{"image_bytes": {"b64": ...}}, ...]
        value = [item[input_key] if isinstance(item, dict) and set(item) == {input_key} else item for item in value]
    return value


def _predict_images(served: ServedModel, items: list) -> np.ndarray:
    """Decode each {"b64": ...} image as training did, then predict them all in one batched model call."""
    inputs = []
    for index, item in enumerate(items):
        if not isinstance(item, dict) or set(item) != {"b64"}:
            raise BadRequest(f'instance {index} must be {{"b64": "<base64 image>"}} or '
                             f'{{"{names.IMAGE_BYTES_KEY}": {{"b64": "<base64 image>"}}}}; received {_kind(item)}')
        try:
            _, x = served.preprocess(decode_b64(item["b64"]))
        except (BadRequest, InvalidImage) as exc:  # same error class (same status), naming the instance
            raise type(exc)(f"instance {index}: {exc}") from exc
        inputs.append(x)
    return served.predict_inputs(np.stack(inputs))


def _bottlenecks(items: list, dim: int) -> np.ndarray:
    """Return bottleneck rows [N, dim] as float32, refusing non-numbers and non-finite values."""
    rows = []
    for index, row in enumerate(items):
        if not isinstance(row, list) or len(row) != dim:
            raise BadRequest(f"instance {index} must be a list of {dim} numbers; received {_kind(row)}")
        if not set(map(type, row)) <= {int, float}:  # no strings, booleans or nested lists
            raise BadRequest(f"instance {index} must hold only numbers; received "
                             f"{sorted(t.__name__ for t in set(map(type, row)) - {int, float})}")
        rows.append(row)
    try:
        vectors = np.asarray(rows, dtype=np.float64)
    except OverflowError as exc:  # an integer beyond float range
        raise BadRequest(f"bottleneck values must be finite float32 numbers: {exc}") from exc
    with np.errstate(over="ignore"):
        vectors = vectors.astype(np.float32)
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        raise BadRequest(f"bottleneck values must be finite float32 numbers (no NaN or Infinity); "
                         f"instance {int(np.argmax(bad))} is not")
    return vectors


def _kind(value) -> str:
    """Describe a JSON value briefly for an error message (never echo a whole payload)."""
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if isinstance(value, dict):
        return f"an object with keys {sorted(value)[:5]}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# --- the API description ------------------------------------------------------------------------------------------


@bp.get("/openapi.json")
def openapi_json():
    """Answer the OpenAPI 3 description of the whole service."""
    from imgclf.service.openapi import document

    registry = _registry()
    return jsonify(document(sorted(registry.models) if registry.ready else [],
                            max_instances=int(config_of(current_app).max_instances)))
