"""What kind of model an exported version is, read from its model card's ``kind``.

imgclf's own image classifiers write no ``kind`` (their cards predate the
secondary models); the secondary models write ``regression`` or
``digit-classifier``. Code compares :class:`ModelKind` members, never strings.
"""

from __future__ import annotations

import enum

from imgclf.core.errors import ModelNotFound


class ModelKind(enum.StrEnum):
    """A model card's kind; the value is what the card holds."""

    IMAGE_CLASSIFIER = "image-classifier"  # Inception-v3 bottlenecks + a dense head: images in, labels out
    DIGIT_CLASSIFIER = "digit-classifier"  # mnist-mlp, lenet5: 28x28 digits in, ten probabilities out
    REGRESSION = "regression"  # quadratic: raw x in, raw y out


SECONDARY_KINDS = (ModelKind.DIGIT_CLASSIFIER, ModelKind.REGRESSION)


def kind_of(card: dict) -> ModelKind:
    """Return the kind a model card names (no ``kind``: an image classifier).

    Raises:
        ModelNotFound: the card names a kind imgclf does not know.
    """
    raw = card.get("kind", ModelKind.IMAGE_CLASSIFIER.value) if isinstance(card, dict) else None
    try:
        return ModelKind(raw)
    except ValueError:
        known = ", ".join(k.value for k in ModelKind)
        raise ModelNotFound(f"model card kind {raw!r} is not one imgclf serves ({known})") from None
