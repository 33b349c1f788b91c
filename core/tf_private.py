"""The few private TensorFlow APIs imgclf relies on, behind one module.

TensorFlow has no public way to do these; each wrapper says what it needs and
why, and degrades to a safe answer where the internals moved. A TensorFlow
upgrade that breaks one breaks it here, where the tests of this module look.
TensorFlow is imported when a wrapper is called, never at import.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

# Grappler rewrites that lower float32 to bf16/fp16; full_precision() switches them off for a call.
MIXED_PRECISION_REWRITES = ("auto_mixed_precision", "auto_mixed_precision_mkl",
                            "auto_mixed_precision_onednn_bfloat16", "auto_mixed_precision_cpu")


def eager_runtime_started() -> bool:
    """Return whether TensorFlow's eager runtime already exists (its first op or device listing has run)."""
    try:
        from tensorflow.python.eager import context

        return getattr(context.context(), "_context_handle", None) is not None
    except (ImportError, AttributeError):  # pragma: no cover - TensorFlow internals moved
        return False


def eager_gpu_options():
    """Return the eager context's GPUOptions (memory growth, per-process limits) as TensorFlow applied them."""
    from tensorflow.python.eager import context

    return context.context().config.gpu_options


def onednn_enabled() -> bool:
    """Return whether this TensorFlow build runs oneDNN (MKL) kernels, as its own tests ask."""
    try:
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):  # pragma: no cover - depends on the TF build
        return False


def op_def(name: str):
    """Return the registered OpDef of op ``name`` in this TensorFlow, or None when it has no such op."""
    from tensorflow.python.framework import op_def_registry

    return op_def_registry.get(name)


def convert_variables_to_constants(concrete_function):
    """Return ``concrete_function`` with its variables frozen into constants (a frozen graph's function)."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    return convert_variables_to_constants_v2(concrete_function)


@contextlib.contextmanager
def full_precision() -> Iterator[None]:
    """Run this thread's function calls in float32 even when the process has mixed precision on.

    A service worker turns on a process-wide bf16 (CPU) or fp16 (GPU) graph
    rewrite for the featurizer (``IMGCLF_PRECISION``); the secondary models are
    tiny and precise arithmetic is their point (the quadratic's y lost a factor
    of two in RMSE to bf16), so their calls switch those rewrites off. TensorFlow
    takes the rewrite options of a function call from the calling thread's
    function-call options, which are set here for the duration of the call.
    """
    from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2
    from tensorflow.python.eager import context  # no public per-call switch exists

    ctx = context.context()
    saved = ctx.function_call_options
    config = config_pb2.ConfigProto.FromString(saved.config_proto_serialized)
    for option in MIXED_PRECISION_REWRITES:
        setattr(config.graph_options.rewrite_options, option, rewriter_config_pb2.RewriterConfig.OFF)
    ctx.function_call_options = context.FunctionCallOptions(executor_type=saved.executor_type,
                                                           config_proto=config)
    try:
        yield
    finally:
        ctx.function_call_options = saved
