"""Process-wide TensorFlow setup for serving: devices first, then the precision rewrite every loaded graph gets."""

from __future__ import annotations

import logging

from imgclf.core.devices import configure_tensorflow
from imgclf.core.precision import resolve_precision

log = logging.getLogger(__name__)


def prepare_tensorflow(requested_precision: str) -> str:
    """Configure TensorFlow's devices (IMGCLF_DEVICE checked, GPU memory) and its precision; return the precision."""
    configure_tensorflow()
    return apply_precision(requested_precision)


def apply_precision(requested: str) -> str:
    """Resolve ``requested`` for this process's device and turn on the matching rewrite for this process.

    bf16 (CPU): oneDNN's bfloat16 rewrite; fp16 (GPU of compute capability >= 7.0):
    grappler's auto mixed precision, which makes float16 (TensorFlow has no bf16
    rewrite for GPUs; see :mod:`imgclf.core.precision`). The rewrite is a
    process-wide grappler option that applies to every graph the process runs
    afterwards, the loaded SavedModels included; a worker serves in one precision.
    """
    precision = resolve_precision(requested)
    option = {"bf16": "auto_mixed_precision_onednn_bfloat16", "fp16": "auto_mixed_precision"}.get(precision)
    if option:
        import tensorflow as tf

        tf.config.optimizer.set_experimental_options({option: True})
    log.info("serving precision: %s (requested %s)", precision, requested)
    return precision
