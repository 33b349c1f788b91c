"""Choose the runtime that runs the featurizer graph: TensorFlow or OpenVINO, and the precisions each offers.

``tensorflow`` runs the graph in a TensorFlow v1 session (fp32, or bf16/fp16
through TensorFlow's rewrites, :mod:`imgclf.core.precision`). ``openvino``
converts the same rewritten graph with OpenVINO and runs it in fp32, bf16 or
int8 (NNCF post-training quantization, calibrated on the user's own images;
:mod:`imgclf.featurizer.runtime.openvino`). ``auto`` picks OpenVINO on an x86 CPU
when the ``imgclf[openvino]`` extra is installed, TensorFlow on a GPU or otherwise.

This module imports neither TensorFlow nor OpenVINO (``imgclf --help`` reads its
choices); OpenVINO is imported only where a model is converted or run.
"""

from __future__ import annotations

import importlib.util
import logging
import platform

from imgclf.core.errors import UsageError
from imgclf.core.precision import PRECISIONS

log = logging.getLogger(__name__)

BACKENDS = ("tensorflow", "openvino", "auto")
DEFAULT_BACKEND = "tensorflow"  # what existing caches and models were made with; `auto` is opt-in
# Every precision a featurizer can be asked for: TensorFlow's, plus int8 (OpenVINO only).
FEATURIZER_PRECISIONS = (*PRECISIONS, "int8")
OPENVINO_PRECISIONS = ("fp32", "bf16", "int8")
INSTALL_HINT = "pip install 'imgclf[openvino]'"
X86_MACHINES = ("x86_64", "amd64", "i386", "i686")


def openvino_installed() -> bool:
    """Return whether the ``openvino`` package can be imported (without importing it)."""
    return importlib.util.find_spec("openvino") is not None


def require_openvino():
    """Import and return the ``openvino`` module, or raise UsageError saying how to install it."""
    try:
        import openvino
    except ImportError as exc:
        raise UsageError(f"--backend openvino (IMGCLF_BACKEND=openvino) needs OpenVINO, which is not installed "
                         f"({exc}): {INSTALL_HINT}") from None
    return openvino


def is_x86() -> bool:
    """Return whether this machine's CPU is x86 (where OpenVINO's CPU plugin is at its best)."""
    return platform.machine().lower() in X86_MACHINES


def resolve_backend(requested: str, target=None) -> str:
    """Return ``"tensorflow"`` or ``"openvino"`` for ``requested`` in :data:`BACKENDS`.

    ``auto``: OpenVINO when the work runs on a CPU (``target``, by default the
    pinned or first visible device, :func:`imgclf.core.devices.compute_target`),
    the CPU is x86 and OpenVINO is installed; TensorFlow otherwise (on a GPU,
    TensorFlow's fp16 path is what the device does best).

    Raises:
        UsageError: ``requested`` is not a backend, or is ``openvino`` without OpenVINO installed.
    """
    if requested not in BACKENDS:
        raise UsageError(f"backend must be one of {', '.join(BACKENDS)}; received {requested!r}")
    if requested == "openvino":
        require_openvino()
        return "openvino"
    if requested == "tensorflow":
        return "tensorflow"
    if target is None:
        from imgclf.core.devices import compute_target

        target = compute_target()
    choice = "openvino" if target.kind == "cpu" and is_x86() and openvino_installed() else "tensorflow"
    log.info("backend auto -> %s (%s; x86: %s; OpenVINO installed: %s)", choice, target.describe(),
             is_x86(), openvino_installed())
    return choice


def check_backend_precision(backend: str, precision: str) -> None:
    """Raise UsageError when ``precision`` (as requested) cannot run on the resolved ``backend``."""
    if precision not in FEATURIZER_PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(FEATURIZER_PRECISIONS)}; received {precision!r}")
    if backend == "tensorflow" and precision == "int8":
        raise UsageError("int8 precision is OpenVINO's post-training quantization: use --backend openvino "
                         "(or auto) with --precision int8, or --precision fp32/bf16 on TensorFlow")
    if backend == "openvino" and precision == "fp16":
        raise UsageError("fp16 is TensorFlow's GPU precision; the OpenVINO backend runs on the CPU in "
                         f"{', '.join(OPENVINO_PRECISIONS)} (or auto)")
