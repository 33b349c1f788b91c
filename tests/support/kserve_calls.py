"""Run kserve SDK REST client calls against a server; run by the kserve venv's Python, not imgclf's.

Reads ``{"url": ..., "calls": [...]}`` as JSON on stdin, makes each call with
``kserve.InferenceRESTClient`` (``RESTConfig(protocol="v1"|"v2")``) and writes
one JSON result per call on stdout: ``{"ok": value}`` or ``{"error": message,
"status": HTTP status or null}``. Tensors travel as ``{"name", "datatype",
"shape", "data"}`` with ``data`` flat; BYTES input elements as base64 text.
Imports only the SDK, numpy and the standard library (imgclf is not installed
in that venv).

Calls: ``{"op": "is_server_ready"|"is_server_live", "protocol"}``,
``{"op": "is_model_ready", "protocol", "model"}``, ``{"op": "infer_v1", "model",
"body"}`` and ``{"op": "infer_v2", "model", "inputs", "outputs", "binary_input",
"binary_output", "id"}``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys

import httpx
import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput


def _input(spec: dict, binary: bool) -> InferInput:
    tensor = InferInput(spec["name"], spec["shape"], spec["datatype"])
    if spec["datatype"] == "BYTES":
        # binary: the raw bytes; JSON: the base64 text itself (JSON strings must be UTF-8)
        elements = [base64.b64decode(e) if binary else e.encode() for e in spec["data"]]
        array = np.array(elements, dtype=np.object_).reshape(spec["shape"])
    else:
        array = np.array(spec["data"], dtype=np.float32).reshape(spec["shape"])
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def _output(output) -> dict:
    array = output.as_numpy()
    data = [v.decode() if isinstance(v, bytes) else v for v in array.flatten().tolist()]
    return {"name": output.name, "datatype": output.datatype, "shape": list(array.shape), "data": data}


async def _call(url: str, call: dict):
    protocol = call.get("protocol", "v2" if call["op"] == "infer_v2" else "v1")
    async with InferenceRESTClient(RESTConfig(protocol=protocol, timeout=60)) as client:
        op = call["op"]
        if op in ("is_server_ready", "is_server_live"):
            return await getattr(client, op)(url)
        if op == "is_model_ready":
            return await client.is_model_ready(url, call["model"])
        if op == "infer_v1":
            return await client.infer(url, call["body"], model_name=call["model"])
        if op == "infer_v2":
            outputs = None
            if call.get("outputs"):
                parameters = {"binary_data": bool(call.get("binary_output"))}
                outputs = [RequestedOutput(name, parameters) for name in call["outputs"]]
            request = InferRequest(call["model"], [_input(i, call.get("binary_input", False)) for i in call["inputs"]],
                                   request_id=call.get("id"), request_outputs=outputs)
            response = await client.infer(url, request, model_name=call["model"])
            return {"id": response.id, "model_name": response.model_name, "model_version": response.model_version,
                    "outputs": [_output(o) for o in response.outputs]}
        raise ValueError(f"unknown op {op!r}")


async def _run(job: dict) -> list[dict]:
    results = []
    for call in job["calls"]:
        try:
            results.append({"ok": await _call(job["url"], call)})
        except httpx.HTTPStatusError as exc:
            results.append({"error": str(exc), "status": exc.response.status_code})
        except Exception as exc:  # reported to the test, which decides
            results.append({"error": f"{type(exc).__name__}: {exc}", "status": None})
    return results


if __name__ == "__main__":
    json.dump(asyncio.run(_run(json.load(sys.stdin))), sys.stdout)
