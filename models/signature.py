"""The secondary models' serving contract: signature keys, shapes, and input checks, in one place.

* regression (``quadratic``): ``x`` float32 [N, 1] raw x → ``y`` float32 [N, 1] raw y.
* digit classifiers (``mnist-mlp``, ``lenet5``): ``images`` float32 [N, 28, 28],
  pixels in [0, 1], white digit on black (MNIST) → ``probabilities`` float32
  [N, 10] and ``classes`` int64 [N] (the argmax).

Free of TensorFlow: the service can describe and check requests without it.
"""

from __future__ import annotations

import numpy as np

from imgclf.models.config import DIGIT_CLASSIFIER, REGRESSION

SIGNATURE = "serving_default"  # the one SavedModel signature
X_KEY, Y_KEY = "x", "y"  # regression input and output
IMAGES_KEY = "images"  # digit classifier input
PROBABILITIES_KEY, CLASSES_KEY = "probabilities", "classes"  # digit classifier outputs
DIGIT_LABELS = [str(d) for d in range(10)]
IMAGE_SIZE = 28
PIXEL_RANGE = (0.0, 1.0)
KINDS = (REGRESSION, DIGIT_CLASSIFIER)


def signature_description(kind: str) -> dict:
    """Return the model card's ``"signature"`` entry for a model of ``kind``.

    Raises:
        ValueError: ``kind`` is not "regression" or "digit-classifier".
    """
    if kind == REGRESSION:
        return {"name": SIGNATURE,
                "inputs": {X_KEY: {"dtype": "float32", "shape": [-1, 1], "meaning": "raw x"}},
                "outputs": {Y_KEY: {"dtype": "float32", "shape": [-1, 1], "meaning": "raw y"}}}
    if kind == DIGIT_CLASSIFIER:
        return {"name": SIGNATURE,
                "inputs": {IMAGES_KEY: {"dtype": "float32", "shape": [-1, IMAGE_SIZE, IMAGE_SIZE],
                                        "meaning": "grayscale images, pixels in [0, 1], white digit on black "
                                                   "(MNIST convention)"}},
                "outputs": {PROBABILITIES_KEY: {"dtype": "float32", "shape": [-1, len(DIGIT_LABELS)]},
                            CLASSES_KEY: {"dtype": "int64", "shape": [-1], "meaning": "argmax: the digit"}}}
    raise ValueError(f"kind must be one of {KINDS}; received {kind!r}")


def check_input(kind: str, array) -> np.ndarray:
    """Return ``array`` as the float32 batch the signature of ``kind`` takes, or raise ValueError.

    Args:
        kind: "regression" ([N, 1] raw x) or "digit-classifier" ([N, 28, 28] pixels in [0, 1]).
        array: numbers (a numpy array or nested lists) of real, integer or float type.

    Raises:
        ValueError: not numeric, wrong shape, NaN or infinite values, or pixels outside [0, 1];
            the message says what was expected and what was received.
    """
    key, shape = (X_KEY, (1,)) if kind == REGRESSION else (IMAGES_KEY, (IMAGE_SIZE, IMAGE_SIZE))
    expected = "[N, " + ", ".join(map(str, shape)) + "]"
    try:
        values = np.asarray(array)
    except ValueError as exc:  # ragged nested lists
        raise ValueError(f"{key} must be a numeric array of shape {expected}; received ragged data ({exc})") from None
    if values.dtype == bool or not (np.issubdtype(values.dtype, np.integer)
                                    or np.issubdtype(values.dtype, np.floating)):
        raise ValueError(f"{key} must hold real numbers (float32); received dtype {values.dtype}")
    if values.ndim != 1 + len(shape) or tuple(values.shape[1:]) != shape:
        raise ValueError(f"{key} must have shape {expected}; received shape {list(values.shape)}")
    values = values.astype(np.float32)
    if not np.isfinite(values).all():
        raise ValueError(f"{key} holds {int((~np.isfinite(values)).sum())} NaN or infinite value(s)")
    if kind == DIGIT_CLASSIFIER and values.size and (values.min() < PIXEL_RANGE[0] or values.max() > PIXEL_RANGE[1]):
        raise ValueError(f"{key} pixels must be in [0, 1] (divide 0-255 pixels by 255); received values from "
                         f"{float(values.min()):g} to {float(values.max()):g}")
    return values
