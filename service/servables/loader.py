"""One loader for every kind of model: the model card's kind picks the :class:`Servable` class."""

from __future__ import annotations

from pathlib import Path

from imgclf.core.errors import ModelNotFound
from imgclf.core.model_kind import ModelKind, kind_of
from imgclf.core.repository import read_card
from imgclf.service.servables.base import LoadContext, Servable
from imgclf.service.servables.image import ImageClassifierServable
from imgclf.service.servables.secondary import DigitClassifierServable, RegressionServable

SERVABLES: dict[ModelKind, type[Servable]] = {
    ModelKind.IMAGE_CLASSIFIER: ImageClassifierServable,
    ModelKind.DIGIT_CLASSIFIER: DigitClassifierServable,
    ModelKind.REGRESSION: RegressionServable,
}


def load_servable(path: Path, name: str, version: int, context: LoadContext) -> Servable:
    """Load version directory ``path`` of model ``name`` as the servable of its card's kind (not warmed up).

    Raises:
        ModelNotFound: not a complete export, or a card of a kind imgclf does not serve.
        UnsafeGraph, GraphError, ValueError: as the kind's loader says.
    """
    try:
        card = read_card(path)
    except ModelNotFound:
        card = {}  # an image classifier's loader says what is wrong with the directory
    return SERVABLES[kind_of(card)].load(path, name, version, context)
