"""Choose the numeric precision of the featurizer from what the CPU can do natively."""

from __future__ import annotations

import logging
import os
from functools import lru_cache

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")
# CPU flags (as /proc/cpuinfo spells them) that give native bfloat16 matrix math.
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


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


def native_bf16_flags() -> list[str]:
    """Return the flags of this CPU that give native bf16 (empty list when none)."""
    flags = cpu_flags()
    return [flag for flag in NATIVE_BF16_FLAGS if flag in flags]


def onednn_enabled() -> bool:
    """Return whether TensorFlow's oneDNN path (which does the bf16 rewrite) is on."""
    if os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1").strip() in ("0", "false", "False"):
        return False
    try:
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):  # pragma: no cover - depends on the TF build
        return False


def resolve_precision(requested: str) -> str:
    """Return ``"fp32"`` or ``"bf16"`` for ``requested`` in :data:`PRECISIONS`.

    ``auto`` picks bf16 only where the CPU has native bf16 (AMX or AVX512_BF16)
    and TensorFlow's oneDNN rewrite is available; an explicit ``bf16`` on a CPU
    without it is an error, since the emulated path is slower than fp32.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; received {requested!r}")
    if requested == "fp32":
        return "fp32"
    native = native_bf16_flags()
    usable = bool(native) and onednn_enabled()
    if requested == "bf16" and not usable:
        why = "oneDNN is disabled (TF_ENABLE_ONEDNN_OPTS=0)" if native else \
            "this CPU has neither AMX_BF16 nor AVX512_BF16"
        raise ValueError(f"bf16 precision requested but {why}; use --precision fp32 or auto")
    choice = "bf16" if usable else "fp32"
    if requested == "auto":
        log.info("precision auto -> %s (native bf16 flags: %s)", choice, ", ".join(native) or "none")
    return choice
