"""OpenVINO Model Server's spelling of TF Serving's model metadata answer, beside TF Serving's own.

TF Serving writes its REST metadata with the protobuf field names
(``model_spec``, ``signature_def``, ``tensor_shape``); OpenVINO Model Server
writes the same messages with protobuf's JSON names (``modelSpec``,
``signatureDef``, ``tensorShape``), and its client, ``ovmsclient``, reads only
those. Protobuf's own JSON parser accepts both spellings, so a metadata answer
that carries both keeps every TF Serving client working and lets
``ovmsclient`` parse it too.
"""

from __future__ import annotations


def json_name(field: str) -> str:
    """Return protobuf's JSON name of a field: ``tensor_shape`` -> ``tensorShape``."""
    head, *rest = field.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _tensor_info(info: dict) -> dict:
    """Return one TensorInfo with JSON names (its shape's fields too)."""
    out = {json_name(key): value for key, value in info.items()}
    if isinstance(out.get("tensorShape"), dict):
        out["tensorShape"] = {json_name(key): value for key, value in out["tensorShape"].items()}
    return out


def signature_def_map(signature_defs: dict) -> dict:
    """Return TF Serving's signature defs (``{name: {inputs, outputs, method_name}}``) with JSON names.

    Signature and tensor names are the model's own and are kept as they are.
    """
    converted = {}
    for signature, definition in signature_defs.items():
        entry = {json_name(key): value for key, value in definition.items() if key not in ("inputs", "outputs")}
        for side in ("inputs", "outputs"):
            entry[side] = {name: _tensor_info(info) for name, info in definition.get(side, {}).items()}
        converted[signature] = entry
    return converted


def with_json_names(body: dict) -> dict:
    """Add OpenVINO Model Server's ``modelSpec`` and ``metadata.signature_def.signatureDef`` to a metadata body.

    ``body`` is TF Serving's GetModelMetadata answer; it is changed in place and returned.
    """
    body["modelSpec"] = {json_name(key): value for key, value in body["model_spec"].items()}
    signature_def = body["metadata"]["signature_def"]
    signature_def["signatureDef"] = signature_def_map(signature_def["signature_def"])
    return body
