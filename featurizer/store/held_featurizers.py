"""The featurizers a feature dataset holds, and the precision and backend `train --features` takes from them.

A feature dataset's rows are usable only by the featurizer that made them (its
fingerprint names the graph, the precision, the backend and more). `--graph` is
always given; `--precision` and `--backend`, when left out, are what DEST holds
for that graph. Only a real ambiguity (this graph's features in more than one
precision or backend, and no flag picks one) or a flag that contradicts DEST is
refused, in one line naming what was asked and what is there, before any graph
is loaded. Whatever is not decided here (the decode mode, the tensors, an
explicit ``auto``) is checked by :func:`imgclf.featurizer.store.dataset.load_features`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from imgclf.core.errors import UsageError
from imgclf.featurizer.store.dataset import read_manifest
from imgclf.featurizer.store.object_store import open_location

LEGACY_BACKEND = "tensorflow"  # descriptions from before backends existed: TensorFlow made them


@dataclass(frozen=True, order=True)
class HeldFeaturizer:
    """One featurizer a feature dataset holds rows of, as far as choosing one goes."""

    graph_sha256: str
    precision: str  # resolved: fp32 | bf16 | fp16 | int8
    backend: str  # tensorflow | openvino

    @classmethod
    def from_description(cls, described: Mapping) -> HeldFeaturizer:
        """Return it from a manifest entry's ``featurizer`` description."""
        return cls(str(described.get("graph_sha256", "?")), str(described.get("precision", "?")),
                   str(described.get("backend") or LEGACY_BACKEND))

    def label(self) -> str:
        """Return "fp32 on tensorflow"."""
        return f"{self.precision} on {self.backend}"


def held_featurizers(dest: str | os.PathLike) -> list[HeldFeaturizer]:
    """Return the featurizers DEST's ``dataset.json`` lists, sorted (empty when it lists none).

    Raises:
        ValueError: DEST is a missing folder or its ``dataset.json`` is not an imgclf feature dataset's.
        StorageError: an object-store DEST that cannot be reached.
    """
    manifest = read_manifest(open_location(dest))
    return sorted({HeldFeaturizer.from_description(entry.get("featurizer") or {})
                   for entry in manifest["featurizers"].values()})


def choose_featurizer(held: list[HeldFeaturizer], graph_sha256: str, precision: str | None, backend: str | None,
                      dest: str) -> tuple[str | None, str | None]:
    """Return the (precision, backend) to train DEST's rows of this graph with: a flag given, else DEST's.

    Args:
        held: what DEST holds (:func:`held_featurizers`); empty: the flags as given (None = not given),
            and loading says what is wrong with DEST.
        precision, backend: the flags, None when not given; ``auto`` is given (the machine chooses) and
            is checked when the featurizer loads.

    Raises:
        UsageError: DEST holds no features of this graph, or none of the given precision/backend (the
            message names both), or this graph's features in more than one precision or backend that
            the flags leave open (it lists them and says which flag picks).
    """
    if not held:
        return precision, backend
    mine = [h for h in held if h.graph_sha256 == graph_sha256]
    if not mine:
        graphs = ", ".join(sorted({h.graph_sha256[:12] for h in held}))
        raise UsageError(f"--graph (sha256 {graph_sha256[:12]}) is not the graph of {dest!r}, which holds "
                         f"features of graph sha256 {graphs} only ({_labels(held)}): give the --graph of the "
                         "featurize run")
    fitting = [h for h in mine if _fits(h.precision, precision) and _fits(h.backend, backend)]
    if not fitting:
        given = " ".join(f"--{name} {value}" for name, value in (("precision", precision), ("backend", backend))
                         if value not in (None, "auto"))
        raise UsageError(f"{given} contradicts {dest!r}, which holds features of this graph in {_labels(mine)}: "
                         f"leave {' and '.join(given.split()[::2])} out to train on those, or featurize with "
                         f"{given} first")
    open_flags = [f"--{name}" for name, value, values in (("precision", precision, {h.precision for h in fitting}),
                                                          ("backend", backend, {h.backend for h in fitting}))
                  if value is None and len(values) > 1]
    if open_flags:
        raise UsageError(f"{dest!r} holds features of this graph in {_labels(fitting)}: pick one with "
                         f"{' and '.join(open_flags)}")
    return (precision if precision is not None else fitting[0].precision,
            backend if backend is not None else fitting[0].backend)


def _fits(held: str, flag: str | None) -> bool:
    return flag in (None, "auto") or flag == held


def _labels(held: list[HeldFeaturizer]) -> str:
    return ", ".join(sorted({h.label() for h in held}))
