"""What made a vector: a featurizer's fingerprint and description, computed once when it loads.

The fingerprint is the sha256 over the featurizer's key parts (graph sha256,
tensors, input size and normalisation, precision, preprocessing, decode mode,
and for OpenVINO the backend and the int8 calibration). It keys the feature
cache and names a feature dataset's rows, so vectors of different featurizers
never mix. The description adds what is shown but is no identity (the local
graph path, the whole contract, how OpenVINO runs). :class:`FeaturizerIdentity`
holds both; the featurizer makes it at construction and the cache, the feature
datasets, the reports and the model card take it from there.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

GRAPH_PATH = "graph"  # the description's key of the local graph path: shown, no identity


def fingerprint_of(key_parts: Mapping) -> str:
    """Return the fingerprint of a featurizer's key parts: the sha256 of their sorted JSON."""
    return hashlib.sha256(json.dumps(dict(key_parts), sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class FeaturizerIdentity:
    """What made a vector: the one key deciding which vectors may mix (the feature cache's and datasets' key).

    ``description`` is the featurizer's whole description: whatever its fingerprint
    hashes (graph, tensors, precision, preprocessing, and fields such as a backend or
    a decoder as they are added there) rides along without a change here.
    """

    fingerprint: str  # sha256 over the key parts; the feature cache's featurizer key
    precision: str  # fp32 | bf16 | fp16 | int8, resolved
    dim: int  # length of the vectors
    description: Mapping = field(default_factory=dict, compare=False)  # treat as read-only

    @classmethod
    def from_description(cls, description: Mapping) -> FeaturizerIdentity:
        """Return the identity of a featurizer from its description (``Featurizer.describe()``, a manifest's)."""
        return cls(str(description["fingerprint"]), str(description["precision"]), int(description["dim"]),
                   dict(description))

    @property
    def parts(self) -> dict:
        """Return the description without the local graph path (a path is no identity)."""
        return {k: v for k, v in self.description.items() if k != GRAPH_PATH}

    @property
    def folder(self) -> str:
        """Return the sub-folder of a feature dataset that holds this identity's shards."""
        return f"featurizer-{self.fingerprint[:16]}"

    def describe(self) -> dict:
        """Return the whole description, JSON-ready (a copy: for caches, reports and model cards)."""
        return copy.deepcopy(dict(self.description))

    def to_dict(self) -> dict:
        """Return the identity JSON-ready, without the local graph path (a feature dataset's manifest)."""
        return {**copy.deepcopy(self.parts), "fingerprint": self.fingerprint, "precision": self.precision,
                "dim": self.dim}

    def summary(self) -> str:
        """Return a short human description."""
        graph = str(self.description.get("graph_sha256", "?"))[:12]
        backend = self.description.get("backend") or "tensorflow"  # descriptions from before backends: TensorFlow
        decode = f", decode {self.description['decode']}" if self.description.get("decode") else ""
        return (f"{self.precision} on {backend}{decode}, {self.dim}-d, graph sha256 {graph}, "
                f"fingerprint {self.fingerprint[:12]}")


def sha256_bytes(data: bytes) -> str:
    """Return the hex sha256 of ``data`` (the image part of a cache key)."""
    return hashlib.sha256(data).hexdigest()
