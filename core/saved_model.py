"""Load one exported version's SavedModel: the steps every model kind shares.

Read and check the model card and labels, check the SavedModel's ops against
the inference allow-list (:mod:`imgclf.core.op_policy`) before TensorFlow reads
anything of it, configure the process's devices, and load it on the pinned
device. What a kind does with the loaded signatures is its own module's
(:mod:`imgclf.training.classifier`, :mod:`imgclf.models.serving`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from imgclf.core import export_names as names
from imgclf.core.devices import configure_tensorflow, device_scope
from imgclf.core.errors import ModelNotFound
from imgclf.core.model_kind import ModelKind, kind_of
from imgclf.core.op_policy import allow_unsafe_ops_from_env, check_saved_model
from imgclf.core.repository import VERSION_PATTERN, read_card

log = logging.getLogger(__name__)


@dataclass
class LoadedVersion:
    """One version directory, loaded: its card, labels, kind and TensorFlow SavedModel."""

    path: Path  # the version directory
    name: str
    version: int
    kind: ModelKind
    card: dict
    labels: list[str]
    device: str  # every call runs under tf.device(device); "" = TensorFlow's placement
    saved_model: object = field(repr=False)


def load_version(version_dir: str | Path, *, device: str | None = None, allow_unsafe_ops: bool | None = None,
                 labels_required: bool = False) -> LoadedVersion:
    """Load one complete version directory (see :func:`imgclf.core.repository.resolve`).

    Args:
        version_dir: ``REPO/NAME/<version>``.
        device: pin the variables and calls ("/device:GPU:0", "/device:CPU:0", "" for TensorFlow's
            placement); by default ``IMGCLF_DEVICE`` (:func:`imgclf.core.devices.configure_tensorflow`).
        allow_unsafe_ops: load even when the SavedModel holds ops outside the inference allow-list
            (with a logged warning); None reads ``IMGCLF_ALLOW_UNSAFE_OPS``.
        labels_required: the card must list the labels (image classifiers).

    Raises:
        ModelNotFound: not a complete export, an unreadable card, or (``labels_required``) no labels.
        UnsafeGraph: the SavedModel holds ops outside the allow-list and unsafe ops are not allowed.
        GraphError: saved_model.pb cannot be parsed.
        ValueError: labels.txt and the model card disagree, or IMGCLF_ALLOW_UNSAFE_OPS is not a yes or a no.
    """
    import tensorflow as tf

    path = Path(version_dir)
    card = read_card(path)
    labels = card.get("labels", None if labels_required else [])
    if not isinstance(labels, list):
        raise ModelNotFound(f"{str(path / names.MODEL_CARD_FILE)!r} is not a readable model card with labels "
                            f"(labels: {type(labels).__name__})")
    labels_file = path / names.LABELS_FILE
    if labels_file.is_file() and labels_file.read_text(encoding="utf-8").splitlines() != labels:
        raise ValueError(f"{str(labels_file)!r} disagrees with the labels in {names.MODEL_CARD_FILE}")
    version = int(path.name) if VERSION_PATTERN.fullmatch(path.name) else int(card.get("version", 0))
    check_saved_model(path, allow_unsafe_ops=allow_unsafe_ops_from_env() if allow_unsafe_ops is None
                      else bool(allow_unsafe_ops))  # before TensorFlow reads anything of it
    device = configure_tensorflow().device if device is None else device
    with device_scope(device):  # the variables are created on the pinned device
        saved_model = tf.saved_model.load(str(path))
    name = card.get("name", path.parent.name)
    kind = kind_of(card)
    log.info("loaded %s %s version %d (%d labels) from %s", kind.value, name, version, len(labels), path)
    return LoadedVersion(path=path, name=name, version=version, kind=kind, card=card, labels=list(labels),
                         device=device, saved_model=saved_model)
