"""Serving in bf16 (CPU) or fp16 (GPU), process-wide switches checked in a fresh process, stays close to fp32."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imgclf.core.precision import native_bf16_flags, onednn_enabled

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = """
import json, sys
from imgclf.service import create_app
app = create_app({"model_repository": sys.argv[1], "load_in_background": False, "precision": sys.argv[2]})
client = app.test_client()
out = {"precision": client.get("/readyz").get_json()["precision"], "predictions": []}
for path in sys.argv[3:]:
    with open(path, "rb") as fh:
        body = client.post("/predict?top_k=4", data=fh.read(), content_type="image/jpeg").get_json()
    out["predictions"].append({p["label"]: p["score"] for p in body["predictions"]})
print(json.dumps(out))
"""


def _serve(model_repo, precision, images, device="/cpu:0"):
    # bf16 is a CPU rewrite: it is compared on the CPU, on a GPU host too. device="" leaves placement to TensorFlow.
    env = {key: value for key, value in os.environ.items() if key != "IMGCLF_DEVICE"}
    if device:
        env["IMGCLF_DEVICE"] = device
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(model_repo), precision, *map(str, images)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not (native_bf16_flags() and onednn_enabled()),
                    reason="this CPU has no native bf16 (AMX_BF16/AVX512_BF16) or oneDNN is off")
def test_bf16_serving_agrees_with_fp32(model_repo):
    images = sorted((model_repo.parent / "images").glob("*/*_00[0-2].jpg"))
    fp32, bf16 = _serve(model_repo, "fp32", images), _serve(model_repo, "bf16", images)
    assert (fp32["precision"], bf16["precision"]) == ("fp32", "bf16")
    for a, b in zip(fp32["predictions"], bf16["predictions"]):
        assert max(a, key=a.get) == max(b, key=b.get)
        assert max(abs(a[label] - b[label]) for label in a) < 0.05


def _fast_fp16_gpu() -> str:
    """Return "" when this host has a GPU that serves in fp16, else why not."""
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        return "no GPU visible to TensorFlow"
    from imgclf.core.devices import ComputeTarget
    from imgclf.core.precision import MIN_FP16_COMPUTE_CAPABILITY

    details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
    target = ComputeTarget("gpu", "/device:GPU:0", details.get("compute_capability"), details.get("device_name", ""))
    if not target.compute_capability or tuple(target.compute_capability) < MIN_FP16_COMPUTE_CAPABILITY:
        return f"no fast fp16 on {target.describe()}"
    return ""


@pytest.mark.skipif(bool(_fast_fp16_gpu()), reason=_fast_fp16_gpu() or "GPU")
def test_fp16_serving_on_a_gpu_agrees_with_fp32(model_repo):
    images = sorted((model_repo.parent / "images").glob("*/*_00[0-2].jpg"))
    fp32, fp16 = _serve(model_repo, "fp32", images, device=""), _serve(model_repo, "auto", images, device="")
    assert (fp32["precision"], fp16["precision"]) == ("fp32", "fp16")
    for a, b in zip(fp32["predictions"], fp16["predictions"]):
        assert max(a, key=a.get) == max(b, key=b.get)
        assert max(abs(a[label] - b[label]) for label in a) < 0.05
