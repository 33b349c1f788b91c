"""The int8 calibration set: N of the user's own images, chosen reproducibly, with an identity for cache keys.

Post-training quantization (:mod:`imgclf.featurizer.runtime.openvino`) measures
the activation ranges of the graph on real inputs. imgclf takes them from the
folder being featurized: the ``N`` images whose relative paths have the
smallest sha256 (a fixed pseudo-random order that spreads over the class
folders and does not depend on how the file system lists them). `featurize`
and `train` on the same folder therefore calibrate identically and share the
feature cache.

The identity of a calibration is the sha256 over the chosen images' own
sha256s (sorted) and the preprocessing: the same pictures under other names
are the same calibration; one changed picture is another. It is part of the
int8 featurizer's fingerprint (so features of different calibrations never
mix) and recorded in the model card.

The job that featurizes or trains on the folder chooses the calibration from
its own scan of it (:func:`imgclf.featurizer.runtime.featurizer.calibration_for`)
and hands it to the featurizer: the identity needs the images' bytes, so they
are read up front; they are decoded only when a quantized model is not cached.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from imgclf.core.errors import ImgclfError, UsageError

if TYPE_CHECKING:
    from imgclf.featurizer.images.folders import ImageDirectory

log = logging.getLogger(__name__)

DEFAULT_CALIBRATION_IMAGES = 300
SELECTION = "the N images with the smallest sha256 of their relative path"


@dataclass
class Calibration:
    """Encoded calibration images and their identity; they are decoded only when a model is quantized.

    Made by whoever holds the image folder (:func:`choose_calibration`) and handed to the
    featurizer, which never reads a folder itself.
    """

    names: list[str]  # relative paths, in selection order
    images: list[bytes]  # encoded images
    preprocessing: str  # names the preprocessing (part of the identity)
    requested: int  # N asked for (the folder may hold fewer)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason): unreadable or undecodable

    @cached_property
    def sha256(self) -> str:
        """Return the calibration's identity (see the module docstring); hashed once."""
        digest = hashlib.sha256(f"{self.preprocessing}\n".encode())
        for image_sha in sorted(hashlib.sha256(data).hexdigest() for data in self.images):
            digest.update(f"{image_sha}\n".encode())
        return digest.hexdigest()

    def inputs(self, preprocess: Callable[[bytes], np.ndarray]) -> list[np.ndarray]:
        """Return the network inputs [S, S, 3] (``preprocess`` of each image) of the images that decode.

        The others are added to ``skipped``.
        """
        arrays = []
        for name, data in zip(self.names, self.images):
            try:
                arrays.append(preprocess(data))
            except ImgclfError as exc:
                self.skipped.append((name, str(exc)))
        if not arrays:
            raise UsageError(f"int8 calibration: none of the {len(self.images)} chosen images decodes "
                             f"({self.skipped[0][0]}: {self.skipped[0][1]})")
        if self.skipped:
            log.warning("int8 calibration: skipped %d image(s) that do not decode", len(self.skipped))
        return arrays

    def describe(self) -> dict:
        """Return what the calibration is, JSON-ready (for fingerprints, reports and model cards)."""
        return {"sha256": self.sha256, "images": len(self.images), "requested": self.requested,
                "selection": SELECTION}


def choose(names: Sequence[str], n: int) -> list[int]:
    """Return the indices of the ``n`` names with the smallest sha256 (all of them when there are fewer)."""
    order = sorted(range(len(names)), key=lambda i: hashlib.sha256(names[i].encode("utf-8")).hexdigest())
    return order[:n]


def choose_calibration(images: ImageDirectory, n: int, preprocessing: str) -> Calibration:
    """Choose and read ``n`` calibration images of a labelled image folder, scanned or listed by the caller.

    Raises:
        UsageError: ``n`` is below 1, or none of the chosen images can be read.
    """
    if n < 1:
        raise UsageError(f"--calibration-images must be at least 1; received {n}")
    entries = images.entries
    names, data, skipped = [], [], []
    for index in choose([e.rel_path for e in entries], n):
        rel_path = entries[index].rel_path
        try:
            data.append(images.read(rel_path))
            names.append(rel_path)
        except OSError as exc:
            skipped.append((rel_path, f"cannot read file: {exc.strerror or exc}"))
    if not data:
        raise UsageError(f"int8 calibration: no readable image in {str(images.root)!r}")
    log.info("int8 calibration: %d image(s) of %s", len(data), images.root)
    return Calibration(names, data, preprocessing, n, skipped)
