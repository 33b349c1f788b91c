"""The model card of an export: what the model is, how to call it, how it was made.

An export is self-describing: the card carries the labels, the featurizer's
fingerprint and tensor names, the preprocessing, the input contract of every
signature and frozen graph, the caller's training config, metrics and split
sizes, and the library versions — no second source of truth is needed.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from imgclf.core import export_names as names
from imgclf.core.model_card import CARD_FORMAT, library_versions
from imgclf.featurizer.runtime.featurizer import Featurizer
from imgclf.training.serving_preprocess import dct_method

# Keys export_model writes itself; a caller's card may not set them.
GENERATED_KEYS = ("calibration", "unfamiliar", "format", "name", "version", "created_utc", "labels",
                  "num_classes", "featurizer", "training_features_precision", "serving_precision",
                  "preprocessing", "input_contract", "files", "library_versions")
# What the caller is expected to pass (each a JSON-ready dict); other keys are kept as given.
CALLER_KEYS = ("training", "metrics", "splits")
# What the export adds to the caller's card from the head it exports (figures may come from the caller).
HEAD_KEYS = ("calibration", "unfamiliar")


def check_caller_card(card: dict) -> dict:
    """Return the caller's part of the card, refusing reserved keys and values JSON cannot hold."""
    if not isinstance(card, dict):
        raise ValueError(f"card must be a dict (e.g. {{'training': ..., 'metrics': ..., 'splits': ...}}); "
                         f"received {type(card).__name__}")
    reserved = sorted(set(card) & set(GENERATED_KEYS))
    if reserved:
        raise ValueError(f"card keys {reserved} are written by the export itself; received them in the card")
    try:
        json.dumps(card, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"card must be JSON-serialisable (plain dicts, lists, str, finite numbers): {exc}") from exc
    return dict(card)


def preprocessing(featurizer: Featurizer) -> dict:
    """Describe how the SavedModel and end_to_end.pb turn image bytes into the network input."""
    c = featurizer.contract
    return {
        "decode": {
            "jpeg": f"tf.io.decode_jpeg(channels=3, dct_method={dct_method(c)!r})",
            "jpeg_decode_mode": c.decode if c.decode == "exact" else
            f"{c.decode}: DCT-scaled by the largest of 8, 4, 2 keeping both sides >= {2 * c.input_size} "
            "(tf.io.decode_jpeg ratio=...), else 1",
            "png_gif_bmp_webp": "tf.io.decode_image(expand_animations=False); GIF: first frame",
            "grayscale": "repeated to 3 channels",
            "alpha": "composited over white (Pillow's integer alpha_composite); a BMP's 4th channel is ignored",
            "sixteen_bit_png": "grayscale: round(v * 255 / 65535); colour: high byte (as Pillow reads it)",
        },
        "resize": f"ResizeBilinear(align_corners=False, half_pixel_centers=False) to "
                  f"{c.input_size}x{c.input_size} (a plain squash, no crop)",
        "normalize": f"(x - {c.input_mean}) * (1 / {c.input_std})",
        "differences_from_python_featurizer": [
            "EXIF orientation is not applied (TensorFlow ops cannot read it); "
            "the Python featurizer turns photos upright",
            "transparent GIF pixels decode black, not white",
            "CMYK/YCCK JPEG colours may differ by up to 2/255",
        ],
        "python_featurizer_preprocessing": featurizer.identity.description["preprocessing"],
    }


def input_contract(dim: int, num_classes: int, size: int) -> dict:
    """Describe what each SavedModel signature and frozen graph accepts and returns."""
    outputs = {
        names.PROBABILITIES_KEY: {"dtype": "float32", "shape": [-1, num_classes]},
        names.CLASSES_KEY: {"dtype": "int64", "shape": [-1], "meaning": "top-1 class id"},
        names.LABELS_KEY: {"dtype": "string", "shape": [-1], "meaning": "top-1 label"},
        names.UNFAMILIAR_KEY: {"dtype": "bool", "shape": [-1],
                               "meaning": "unfamiliar_score above the export's threshold (see the card's unfamiliar)"},
        names.UNFAMILIAR_SCORE_KEY: {"dtype": "float32", "shape": [-1],
                                     "meaning": "higher = less like the training images (the energy score)"},
    }
    return {
        "saved_model": {
            names.SERVING_SIGNATURE: {
                "inputs": {names.IMAGE_BYTES_KEY: {
                    "dtype": "string", "shape": [-1],
                    "meaning": "encoded images: JPEG, PNG, GIF, BMP or WebP; REST clients send {\"b64\": ...}"}},
                "outputs": outputs},
            names.BOTTLENECK_SIGNATURE: {
                "inputs": {names.BOTTLENECK_KEY: {"dtype": "float32", "shape": [-1, dim],
                                                  "meaning": "featurizer bottleneck vectors"}},
                "outputs": outputs},
            names.IMAGES_SIGNATURE: {
                "inputs": {names.IMAGES_KEY: {"dtype": "float32", "shape": [-1, size, size, 3],
                                              "meaning": "images decoded, resized and normalised as the "
                                                         "featurizer does (imgclf's own path; EXIF applied)"}},
                "outputs": outputs},
        },
        names.HEAD_GRAPH_FILE: {"input": names.HEAD_INPUT, "input_shape": [-1, dim],
                                "output": names.HEAD_OUTPUT, "output_shape": [-1, num_classes],
                                "unfamiliar_score": names.HEAD_UNFAMILIAR_SCORE, "unfamiliar": names.HEAD_UNFAMILIAR},
        names.END_TO_END_GRAPH_FILE: {"input": names.END_TO_END_INPUT, "input_shape": [],
                                      "input_meaning": "one encoded image (scalar string)",
                                      "output": names.END_TO_END_OUTPUT, "output_shape": [1, num_classes],
                                      "unfamiliar_score": names.HEAD_UNFAMILIAR_SCORE,
                                      "unfamiliar": names.HEAD_UNFAMILIAR},
    }


def build_card(name: str, version: int, labels: list[str], featurizer: Featurizer, caller: dict,
               files: dict) -> dict:
    """Return the full model card of an export."""
    return {
        "format": CARD_FORMAT,
        "name": name,
        "version": version,
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "labels": list(labels),
        "num_classes": len(labels),
        "featurizer": featurizer.identity.describe(),
        "training_features_precision": featurizer.precision,
        "serving_precision": "fp32",
        "preprocessing": preprocessing(featurizer),
        "input_contract": input_contract(featurizer.dim, len(labels), featurizer.contract.input_size),
        "files": files,
        "library_versions": library_versions(),
        **caller,
    }
