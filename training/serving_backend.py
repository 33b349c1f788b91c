"""Serve an exported image classifier on the backend its model card names: the featurizer on OpenVINO, or not.

An export made with ``--backend openvino`` carries the OpenVINO IR its features
were computed with (``openvino/featurizer.xml`` + ``.bin``; for int8 the model
quantized on the training images, which the server does not have). Serving
runs that IR (compiled at the card's precision) on decoded, normalised images
and the SavedModel's ``bottleneck`` signature (the small dense head, on
TensorFlow) on its vectors. Why not convert the whole SavedModel: its
``images`` signature returns string labels too (not an OpenVINO type), the head
is one small dense layer (measured through the ``bottleneck`` signature on the
shared 2-core machine: 0.5 ms for one vector, 1.2 ms for 32, against about 1 s
of int8 featurizer for 32 full-size images, i.e. ~0.1 %), and the IR is then
byte for byte the featurizer training used.

``IMGCLF_BACKEND`` (the service) or ``predict --backend`` chooses:

* ``card`` (default): the card's backend and precision (cards from before
  backends existed: TensorFlow, as always);
* ``tensorflow``: the SavedModel on TensorFlow whatever the card says (an
  OpenVINO-trained model then sees features that differ slightly from its
  training features; logged);
* ``openvino``: the export's IR; an export without one is an error naming
  the way out;
* ``auto``: OpenVINO where :func:`imgclf.featurizer.runtime.backend.resolve_backend`
  picks it and the export carries an IR, else TensorFlow.
"""

from __future__ import annotations

import logging
from pathlib import Path

from imgclf.core import export_names as names
from imgclf.core.errors import ModelNotFound, UsageError
from imgclf.featurizer.graph.contract import DEFAULT_CONTRACT
from imgclf.featurizer.runtime.backend import BACKENDS, INSTALL_HINT, openvino_installed, resolve_backend

log = logging.getLogger(__name__)

SERVING_BACKENDS = ("card", *BACKENDS)


def card_backend(card: dict) -> tuple[str, str]:
    """Return (backend, precision) of the features a model was trained on, as its card records them."""
    featurizer = card.get("featurizer") or {}
    return str(featurizer.get("backend") or "tensorflow"), str(featurizer.get("precision") or "fp32")


def openvino_ir(version_dir: Path) -> Path:
    """Return where an export keeps its OpenVINO featurizer (the .xml; the .bin lies beside it)."""
    return Path(version_dir) / names.OPENVINO_FEATURIZER_FILE


def choose_backend(version_dir: Path, card: dict, requested: str) -> str:
    """Return "tensorflow" or "openvino" for serving this export, or raise saying why it cannot be served so.

    Raises:
        UsageError: ``requested`` is not one of :data:`SERVING_BACKENDS`, or OpenVINO is
            needed and not installed.
        ModelNotFound: OpenVINO was asked for and the export carries no OpenVINO featurizer.
    """
    if requested not in SERVING_BACKENDS:
        raise UsageError(f"backend must be one of {', '.join(SERVING_BACKENDS)}; received {requested!r}")
    trained, precision = card_backend(card)
    has_ir = openvino_ir(version_dir).is_file()
    if requested == "auto":
        return "openvino" if has_ir and resolve_backend("auto") == "openvino" else "tensorflow"
    wanted = trained if requested == "card" else requested
    if wanted == "tensorflow":
        if trained != "tensorflow":
            log.warning("%s was trained on %s %s features; serving it on TensorFlow as asked (its features "
                        "differ slightly from training's)", version_dir, trained, precision)
        return "tensorflow"
    if not openvino_installed():
        raise UsageError(f"{str(version_dir)!r} was trained on OpenVINO {precision} features and is served on "
                         f"OpenVINO, which is not installed: {INSTALL_HINT}, or serve it on TensorFlow "
                         "(IMGCLF_BACKEND=tensorflow / --backend tensorflow)")
    if not has_ir:
        raise ModelNotFound(f"{str(version_dir)!r} has no OpenVINO featurizer ({names.OPENVINO_FEATURIZER_FILE}): "
                            f"it was trained on {trained} features; serve it with backend card or tensorflow, "
                            "or retrain it with --backend openvino")
    return "openvino"


def load_openvino_featurizer(version_dir: Path, card: dict, threads: int = 0):
    """Compile the export's OpenVINO featurizer at the card's precision (auto's for TensorFlow-trained cards)."""
    from imgclf.featurizer.runtime.openvino import OpenVINOGraph, resolve_openvino_precision

    trained, precision = card_backend(card)
    if trained != "openvino":
        precision = resolve_openvino_precision("auto")
    described = (card.get("featurizer") or {}).get("contract") or {}
    contract = DEFAULT_CONTRACT.with_overrides(**{key: described[key] for key in
                                                  ("image_input", "bottleneck", "input_size") if key in described})
    graph = OpenVINOGraph.from_ir(openvino_ir(version_dir), contract, precision, threads=threads)
    dim = int((card.get("featurizer") or {}).get("dim", graph.dim))
    if graph.dim != dim:
        raise ModelNotFound(f"{str(version_dir)!r}: its OpenVINO featurizer gives {graph.dim}-d vectors, its "
                            f"head takes {dim}")
    log.info("%s: featurizer on OpenVINO %s (%s), head on TensorFlow", version_dir, precision,
             graph.inference_precision)
    if precision == "int8":
        check_int8_cpu(version_dir, ((card.get("featurizer") or {}).get("openvino") or {}).get("int8_fidelity"))
    return graph


def check_int8_cpu(version_dir: Path, fidelity: dict | None) -> bool:
    """Return whether this CPU runs int8 as the CPU the export's int8 fidelity was measured on; log it if not.

    The floor (``--int8-floor``) held on the CPU that built the int8 featurizer, with its int8 kernels
    (AVX2, VNNI, AMX compute int8 differently, and not equally faithfully); on a CPU with other int8
    instructions the model is served as built, with a warning naming the way to re-check it.
    """
    from imgclf.core.precision import int8_dot_flags

    if not fidelity or "cpu_int8" not in fidelity:  # built before the CPU was recorded
        return True
    here = int8_dot_flags()
    if here == sorted(fidelity["cpu_int8"]):
        return True
    log.warning("%s: its int8 featurizer was held to cosine %s of fp32 (worst %s) on %s, int8 instructions %s; "
                "this CPU has %s, whose int8 kernels may lose more or less: featurize or train with --precision "
                "int8 on this CPU to check it here", version_dir, fidelity.get("floor"), fidelity.get("worst_cosine"),
                fidelity.get("cpu"), ", ".join(fidelity["cpu_int8"]) or "AVX2 only", ", ".join(here) or "AVX2 only")
    return False
