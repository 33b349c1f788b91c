"""What every model card shares, whatever the model: the card format and the library versions.

The image classifiers' cards (:mod:`imgclf.training.model_card`) and the
secondary models' cards (:mod:`imgclf.models.export`) both start from these.
"""

from __future__ import annotations

import platform
from importlib import metadata

CARD_FORMAT = "imgclf-model-card/1"


def library_versions() -> dict:
    """Return the versions of the libraries an export depends on."""
    # Deferred: reading a card's format must not start TensorFlow.
    import keras
    import numpy
    import PIL
    import tensorflow as tf

    try:
        imgclf = metadata.version("imgclf")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a plain checkout
        imgclf = "unknown"
    return {"imgclf": imgclf, "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": numpy.__version__, "pillow": PIL.__version__, "python": platform.python_version()}
