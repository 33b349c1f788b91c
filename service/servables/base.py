"""What every served model is to the routes: one small base class, :class:`Servable`.

The routes only translate HTTP: they parse a request, ask the servable to
decode each instance and predict the batch, and format its outputs. What a kind
of model takes and answers (image bytes, 28x28 digits, raw x; labels or values)
is its servable's business: :mod:`imgclf.service.servables.image`,
:mod:`imgclf.service.servables.secondary`. :mod:`imgclf.service.servables.loader` picks
the class from a model card's kind.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from imgclf.core import export_names as names
from imgclf.core.errors import InvalidImage
from imgclf.core.model_kind import ModelKind
from imgclf.service.dataplane.batching import Batcher
from imgclf.service.dataplane.errors import BadRequest
from imgclf.service.dataplane.postprocess import top_k
from imgclf.service.protocols.predict.request import decode_b64
from imgclf.service.settings import ServiceConfig

METHOD_NAME = "tensorflow/serving/predict"
DTYPES = {"float32": "DT_FLOAT", "int64": "DT_INT64", "string": "DT_STRING"}  # TF Serving's dtype names


@dataclass
class LoadContext:
    """What a servable needs from its worker to load: the config and the metrics/in-flight callbacks."""

    config: ServiceConfig
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
    """One loaded model version as the routes see it: metadata, decode, predict, format."""

    kind: ClassVar[ModelKind]
    signatures: ClassVar[tuple[str, ...]] = (names.SERVING_SIGNATURE,)  # what REST clients may call
    input_notes: ClassVar[dict | None] = None  # what it accepts beyond its signature, said in its metadata

    def __init__(self, name: str, version: int, labels: list[str], card: dict):
        self.name, self.version, self.labels, self.card = name, version, list(labels), card
        self.batcher: Batcher | None = None  # image classifiers gather concurrent requests; the others need none
        self.load_seconds = 0.0  # loading and warm-up, set by the registry

    @classmethod
    @abstractmethod
    def load(cls, path: Path, name: str, version: int, context: LoadContext) -> Servable:
        """Load version directory ``path`` of model ``name``."""

    @abstractmethod
    def warm_up(self) -> None:
        """Run one prediction so the first request does not pay for graph optimisation and kernels."""

    # --- metadata ---------------------------------------------------------------------------------------------

    @abstractmethod
    def signature_defs(self) -> dict:
        """Return the REST-callable signatures in TF Serving's metadata shape."""

    # --- the TF Serving REST protocol ---------------------------------------------------------------------------

    def check_signature(self, signature: str | None) -> str:
        """Return the signature a request names (None: serving_default), or raise BadRequest."""
        signature = signature or names.SERVING_SIGNATURE
        if signature not in self.signatures:
            raise BadRequest(f"unknown signature_name {signature!r}; model {self.name!r} serves "
                             f"{', '.join(self.signatures)}")
        return signature

    @abstractmethod
    def input_key(self, signature: str) -> str:
        """Return the name of the one input of ``signature`` (what a named request must call it)."""

    @abstractmethod
    def decode_instance(self, item, index: int, signature: str) -> np.ndarray:
        """Return the model input of one request instance (a JSON value), or raise BadRequest naming ``index``."""

    def decode_batch(self, items: list, signature: str) -> np.ndarray:
        """Return the model inputs of a request's instances, stacked."""
        return np.stack([self.decode_instance(item, index, signature) for index, item in enumerate(items)])

    @abstractmethod
    def predict(self, batch: np.ndarray, signature: str = names.SERVING_SIGNATURE) -> dict[str, list]:
        """Return the named outputs (plain lists, one row per input) of a decoded batch."""

    @staticmethod
    def rows(outputs: dict[str, list]) -> list:
        """Format outputs in TF Serving's row format (one output: its values without the name)."""
        if len(outputs) == 1:
            return next(iter(outputs.values()))
        return [dict(zip(outputs, values)) for values in zip(*outputs.values())]

    @staticmethod
    def columns(outputs: dict[str, list]):
        """Format outputs in TF Serving's columnar format (one output: its values without the name)."""
        return next(iter(outputs.values())) if len(outputs) == 1 else outputs

    # --- POST /predict ------------------------------------------------------------------------------------------

    def check_image_input(self) -> None:
        """Raise BadRequest when this model takes no pictures (POST /predict); classifiers take them."""
        return None

    def decode_image(self, data: bytes) -> tuple[np.ndarray, np.ndarray]:
        """Decode and validate one encoded picture; return (uint8 RGB, model input)."""
        self.check_image_input()
        raise NotImplementedError(f"{type(self).__name__} takes no pictures")

    def top_k(self, outputs: dict[str, list], k: int) -> list[list[dict]]:
        """Return each row's ``k`` best ``{"label", "score"}``, best first."""
        return [top_k(row, self.labels, k) for row in outputs[names.PROBABILITIES_KEY]]

    def decode_b64_instance(self, item: dict, index: int) -> np.ndarray:
        """Return the model input of a ``{"b64": ...}`` picture instance; errors keep their class and name ``index``."""
        try:
            return self.decode_image(decode_b64(item["b64"]))[1]
        except (BadRequest, InvalidImage) as exc:  # same error class (same status), naming the instance
            raise type(exc)(f"instance {index}: {exc}") from exc

    def close(self) -> None:
        """Stop the batcher, if any."""
        if self.batcher is not None:
            self.batcher.close()


def describe(value) -> str:
    """Describe a JSON value briefly for an error message (never echo a whole payload)."""
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if isinstance(value, dict):
        return f"an object with keys {sorted(value)[:5]}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def is_number(value) -> bool:
    """Return whether a JSON value is a number (not a bool, string, null or list)."""
    return type(value) in (int, float)


def tensor_def(dtype: str, shape: list[int]) -> dict:
    """Describe one tensor as TF Serving's metadata does (dtype names, -1 for any size)."""
    return {"dtype": DTYPES.get(dtype, "DT_FLOAT"),
            "tensor_shape": {"dim": [{"size": str(int(s)), "name": ""} for s in shape], "unknown_rank": False}}


def card_signature_def(card: dict) -> dict:
    """Return the signature a model card describes (its ``"signature"`` entry) in TF Serving's metadata shape."""
    signature = card.get("signature") or {}

    def tensors(specs: dict) -> dict:
        return {key: tensor_def(str(spec.get("dtype", "float32")), spec.get("shape", [-1]))
                for key, spec in (specs or {}).items()}

    return {"inputs": tensors(signature.get("inputs")), "outputs": tensors(signature.get("outputs")),
            "method_name": METHOD_NAME}
