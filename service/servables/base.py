"""What every served model is to the data plane: one small base class, :class:`Servable`, with no wire format.

A servable says what it takes and answers (:class:`Signature`: named tensors
with a dtype and a shape), decodes one instance (an encoded picture as bytes, or
numbers as nested lists), and predicts a decoded batch into named numpy arrays.
How those travel — TF Serving's JSON rows, v2 tensors, ``/predict``'s top-k — is
each protocol's business (:mod:`imgclf.service.protocols`). What a kind of
model takes is its servable's: :mod:`imgclf.service.servables.image`,
:mod:`imgclf.service.servables.secondary`; :mod:`imgclf.service.servables.loader`
picks the class from a model card's kind.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from imgclf.core import export_names as names
from imgclf.core.errors import BadRequest, InvalidImage
from imgclf.core.model_kind import ModelKind
from imgclf.service.servables.batching import Batcher

if TYPE_CHECKING:  # the settings tree imports the parsers of this layer: a type only, no cycle
    from imgclf.service.settings import ServingSettings

STRING = "string"  # the dtype of encoded pictures and labels (bytes in, str out)


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output: numpy dtype name (or "string") and shape (-1: any size; the first is the batch)."""

    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Signature:
    """What one way of calling a model takes and answers: one input, named outputs."""

    name: str
    input: TensorSpec
    outputs: tuple[TensorSpec, ...]

    @property
    def takes_pictures(self) -> bool:
        """Return whether the input is encoded pictures (bytes per instance)."""
        return self.input.dtype == STRING


def card_signature(card: dict) -> Signature:
    """Return the ``serving_default`` signature a model card describes (its ``"signature"`` entry)."""
    described = card.get("signature") or {}

    def specs(entries: dict | None) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(key, str(spec.get("dtype", "float32")), tuple(int(s) for s in spec.get("shape", [-1])))
                     for key, spec in (entries or {}).items())

    inputs = specs(described.get("inputs")) or (TensorSpec("input", "float32", (-1,)),)
    return Signature(names.SERVING_SIGNATURE, inputs[0], specs(described.get("outputs")))


@dataclass
class LoadContext:
    """What a servable needs from its worker to load: the config and the metrics/in-flight callbacks."""

    config: ServingSettings
    on_batch: Callable[[str], Callable[[int, float], None]] | None = None  # (model) -> callback(images, seconds)
    expected: Callable[[str], int] | None = None  # (model) -> its prediction requests in flight in this worker

    def batcher(self, name: str, run: Callable[[np.ndarray], np.ndarray], lanes: int = 1) -> Batcher:
        """Return a batcher of ``run`` for model ``name``, configured and observed for this worker.

        ``lanes``: batches that may run at once (one per independent executor of the model).
        """
        config = self.config
        expected = self.expected
        return Batcher(run, config.batch_max_size, config.batch_max_wait_ms / 1000.0, enabled=config.batching,
                       on_batch=self.on_batch(name) if self.on_batch else None, name=name,
                       expected=(lambda: expected(name)) if expected else None, lanes=lanes)


class Servable(ABC):
    """One loaded model version as the data plane sees it: signatures, decode, predict."""

    kind: ClassVar[ModelKind]
    input_notes: ClassVar[dict | None] = None  # what it accepts beyond its signature, said in its metadata
    # Models that answer an unfamiliar_score flag the inputs whose score is above it (None: no such output).
    unfamiliar_threshold: float | None = None

    def __init__(self, name: str, version: int, labels: list[str], card: dict):
        self.name, self.version, self.labels, self.card = name, version, list(labels), card
        self.batcher: Batcher | None = None  # image classifiers gather concurrent requests; the others need none
        self.load_seconds = 0.0  # loading and warm-up, set by the version manager
        self._signatures: dict[str, Signature] | None = None

    @classmethod
    @abstractmethod
    def load(cls, path: Path, name: str, version: int, context: LoadContext) -> Servable:
        """Load version directory ``path`` of model ``name``."""

    @abstractmethod
    def warm_up(self) -> None:
        """Run one prediction so the first request does not pay for graph optimisation and kernels."""

    @abstractmethod
    def make_signatures(self) -> dict[str, Signature]:
        """Return every way of calling this model, by signature name (``serving_default`` first)."""

    def signatures(self) -> dict[str, Signature]:
        """Return every way of calling this model, by signature name (made once: requests ask for it)."""
        if self._signatures is None:
            self._signatures = self.make_signatures()
        return self._signatures

    def signature(self, name: str | None = None) -> Signature:
        """Return the signature ``name`` (None: ``serving_default``).

        Raises:
            BadRequest: the model has no such signature.
        """
        signatures = self.signatures()
        found = signatures.get(name or names.SERVING_SIGNATURE)
        if found is None:
            raise BadRequest(f"unknown signature_name {name!r}; model {self.name!r} serves {', '.join(signatures)}")
        return found

    def reliability_diagram(self) -> bytes | None:
        """Return the PNG of the model's calibration reliability diagram, or None when it has none."""
        return None

    @property
    def takes_pictures(self) -> bool:
        """Return whether one encoded picture is a valid instance (POST /predict); classifiers take them."""
        return True

    @abstractmethod
    def decode_picture(self, data: bytes) -> tuple[np.ndarray, np.ndarray]:
        """Decode and validate one encoded picture; return (uint8 RGB, model input)."""

    @abstractmethod
    def decode_instance(self, value, index: int, signature: Signature) -> np.ndarray:
        """Return the model input of one instance (bytes: an encoded picture; else numbers), or raise naming ``index``.

        Raises:
            BadRequest: a value the signature does not take.
            InvalidImage and its kinds: a picture that cannot be served.
        """

    def decode_input(self, data: bytes) -> np.ndarray:
        """Decode and validate one encoded picture; return its model input only (no RGB copy where it can)."""
        return self.decode_picture(data)[1]

    def picture_input(self, data: bytes, index: int) -> np.ndarray:
        """Return the model input of the picture of instance ``index``; errors keep their class and name it."""
        try:
            return self.decode_input(data)
        except (BadRequest, InvalidImage) as exc:  # same error class (same status), naming the instance
            raise type(exc)(f"instance {index}: {exc}") from exc

    def decode_batch(self, values: list, signature: Signature) -> np.ndarray:
        """Return the model inputs of a request's instances, stacked."""
        return np.stack([self.decode_instance(value, index, signature) for index, value in enumerate(values)])

    @abstractmethod
    def predict(self, batch: np.ndarray, signature: Signature) -> dict[str, np.ndarray]:
        """Return the named outputs (numpy arrays, one row per input) of a decoded batch."""

    def close(self) -> None:
        """Stop the batcher, if any."""
        if self.batcher is not None:
            self.batcher.close()
