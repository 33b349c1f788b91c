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


def require_openvino(wanted_by: str = "--backend openvino (IMGCLF_BACKEND=openvino)"):
    """Import and return the ``openvino`` module, or raise UsageError saying how to install it.

    Args:
        wanted_by: what asked for OpenVINO, as the error names it.
    """
    try:
        import openvino
    except ImportError as exc:
        raise UsageError(f"{wanted_by} needs OpenVINO, which is not installed ({exc}): {INSTALL_HINT}") from None
    return openvino


def requested_backend(precision: str, backend: str | None) -> str:
    """Return the backend to ask for: ``backend`` as given, else OpenVINO for int8 and :data:`DEFAULT_BACKEND`.

    int8 is OpenVINO's post-training quantization, so ``--precision int8`` alone implies ``--backend openvino``.

    Raises:
        UsageError: ``--precision int8`` with ``--backend tensorflow``.
    """
    if backend is None:
        return "openvino" if precision == "int8" else DEFAULT_BACKEND
    if precision == "int8" and backend == "tensorflow":
        raise UsageError("--precision int8 runs on OpenVINO only (its post-training quantization), not on "
                         "--backend tensorflow: leave --backend out (int8 implies openvino) or use fp32/bf16 "
                         "on TensorFlow")
    return backend


def is_x86() -> bool:
    """Return whether this machine's CPU is x86 (where OpenVINO's CPU plugin is at its best)."""
    return platform.machine().lower() in X86_MACHINES


def resolve_backend(requested: str, target=None, precision: str | None = None) -> str:
    """Return ``"tensorflow"`` or ``"openvino"`` for ``requested`` in :data:`BACKENDS`.

    ``auto``: OpenVINO for ``precision`` int8 (only OpenVINO runs it), or when the
    work runs on a CPU (``target``, by default the pinned or first visible device,
    :func:`imgclf.core.devices.compute_target`), the CPU is x86 and OpenVINO is
    installed; TensorFlow otherwise (on a GPU, TensorFlow's fp16 path is what
    the device does best).

    Raises:
        UsageError: ``requested`` is not a backend, or is ``openvino`` (or ``auto`` for int8) without
            OpenVINO installed.
    """
    if requested not in BACKENDS:
        raise UsageError(f"backend must be one of {', '.join(BACKENDS)}; received {requested!r}")
    if requested == "openvino":
        require_openvino()
        return "openvino"
    if requested == "tensorflow":
        return "tensorflow"
    if precision == "int8":
        require_openvino("--precision int8 (OpenVINO's post-training quantization)")
        log.info("backend auto -> openvino (int8 runs only there)")
        return "openvino"
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
