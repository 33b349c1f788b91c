"""Choose the numeric precision of the featurizer and served models from what the device does natively.

On a CPU: bf16 through oneDNN's auto mixed precision where the CPU has AMX_BF16
or AVX512_BF16, else fp32. On a GPU: fp16 through grappler's auto mixed
precision on cards of compute capability 7.0 or more (tensor cores), else fp32.

Why fp16 and not bf16 on GPUs, even on Ampere and later cards that do bf16 in
hardware: TensorFlow 2.21 has no bf16 *graph rewrite* for GPUs. Its grappler
rewriter has ``auto_mixed_precision`` (CUDA mode: float16 only, and only for
ops placed on a GPU of compute capability >= 7.0) and
``auto_mixed_precision_onednn_bfloat16`` / ``_mkl`` (bfloat16, CPU-placed ops
only); bf16 on a GPU is reachable only by rebuilding a model in Keras under a
``mixed_bfloat16`` policy, which a frozen 2015 GraphDef cannot be. So a GPU gets
fp16, and an explicit ``bf16`` on a GPU is an error rather than a silent fp32
run labelled bf16. (Plain fp32 on Ampere and later cards already runs
convolutions and matrix multiplies as TF32, TensorFlow's default.)
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache

from imgclf.core import tf_private
from imgclf.core.devices import compute_target

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# CPU flags (as /proc/cpuinfo spells them) that give native bfloat16 matrix math.
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
# Grappler's CUDA auto mixed precision leaves GPUs below this compute capability in fp32 (no tensor cores).
MIN_FP16_COMPUTE_CAPABILITY = (7, 0)


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """Return the CPU feature flags of this machine (empty where /proc/cpuinfo is absent)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # int8 dot products beyond AVX2's (OpenVINO's int8 kernels)


def int8_dot_flags() -> list[str]:
    """Return this CPU's flags of :data:`INT8_DOT_FLAGS`, sorted (empty: AVX2's int8 only, or none)."""
    return sorted(cpu_flags() & set(INT8_DOT_FLAGS))


def cpu_model() -> str:
    """Return this machine's CPU model name (/proc/cpuinfo's; the platform's processor where that is absent)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def native_bf16_flags() -> list[str]:
    """Return the flags of this CPU that give native bf16 (empty list when none)."""
    flags = cpu_flags()
    return [flag for flag in NATIVE_BF16_FLAGS if flag in flags]


def onednn_enabled() -> bool:
    """Return whether TensorFlow's oneDNN path (which does the bf16 rewrite) is on."""
    if os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1").strip() in ("0", "false", "False"):
        return False
    return tf_private.onednn_enabled()


def resolve_precision(requested: str, target=None) -> str:
    """Return ``"fp32"``, ``"bf16"`` or ``"fp16"`` for ``requested`` in :data:`PRECISIONS`.

    ``target`` is the :class:`imgclf.core.devices.ComputeTarget` the work runs on;
    by default the pinned device (``IMGCLF_DEVICE``), else the first visible
    GPU, else the CPU (this configures TensorFlow's devices first, see
    :func:`imgclf.core.devices.configure_tensorflow`).

    On a CPU, ``auto`` picks bf16 only where the CPU has native bf16 (AMX or
    AVX512_BF16) and TensorFlow's oneDNN rewrite is available; an explicit
    ``bf16`` on a CPU without it is an error, since the emulated path is slower
    than fp32; ``fp16`` is an error. On a GPU, ``auto`` picks fp16 at compute
    capability 7.0 or more, else fp32; ``fp16`` below 7.0 and ``bf16`` are
    errors (see the module docstring).
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; received {requested!r}")
    if requested == "fp32":
        return "fp32"
    if target is None:
        target = compute_target()
    if target.kind == "gpu":
        return _resolve_on_gpu(requested, target)
    if requested == "fp16":
        raise ValueError(f"fp16 precision needs a GPU of compute capability 7.0 or more; this process computes "
                         f"on {target.describe()}: use --precision auto, fp32 or bf16 (IMGCLF_PRECISION for "
                         "the service)")
    native = native_bf16_flags()
    usable = bool(native) and onednn_enabled()
    if requested == "bf16" and not usable:
        why = "oneDNN is disabled (TF_ENABLE_ONEDNN_OPTS=0)" if native else \
            "this CPU has neither AMX_BF16 nor AVX512_BF16"
        raise ValueError(f"bf16 precision requested but {why}; use --precision fp32 or auto")
    choice = "bf16" if usable else "fp32"
    if requested == "auto":
        log.info("precision auto -> %s (CPU; native bf16 flags: %s)", choice, ", ".join(native) or "none")
    return choice


def _resolve_on_gpu(requested: str, target) -> str:
    capability = target.compute_capability
    fast_fp16 = capability is not None and tuple(capability) >= MIN_FP16_COMPUTE_CAPABILITY
    if requested == "bf16":
        raise ValueError(f"bf16 precision is TensorFlow's oneDNN rewrite for CPUs; TensorFlow has no bf16 graph "
                         f"rewrite for GPUs (its GPU auto mixed precision makes float16), so on "
                         f"{target.describe()} use --precision fp16 or auto, or IMGCLF_DEVICE=/cpu:0 for bf16 "
                         "on the CPU")
    if requested == "fp16" and not fast_fp16:
        raise ValueError(f"fp16 precision needs a GPU of compute capability 7.0 or more (TensorFlow leaves older "
                         f"ones in fp32); this process computes on {target.describe()}: use --precision fp32 "
                         "or auto")
    choice = "fp16" if fast_fp16 else "fp32"
    if requested == "auto":
        log.info("precision auto -> %s (%s)", choice, target.describe())
    return choice
