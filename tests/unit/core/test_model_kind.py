"""imgclf.core.model_kind: the kind a model card names, as a ModelKind member."""

from __future__ import annotations

import json

import pytest

from imgclf.core.errors import ModelNotFound
from imgclf.core.model_kind import SECONDARY_KINDS, ModelKind, kind_of

# What the cards on disk hold (repositories written before ModelKind existed must keep loading).
CARD_VALUES = {"image-classifier": ModelKind.IMAGE_CLASSIFIER, "digit-classifier": ModelKind.DIGIT_CLASSIFIER,
               "regression": ModelKind.REGRESSION}


def test_a_card_without_a_kind_is_an_image_classifier():
    """imgclf's image classifier cards predate ``kind`` and never wrote one."""
    assert kind_of({"name": "flowers", "labels": ["daisy", "rose"]}) is ModelKind.IMAGE_CLASSIFIER


@pytest.mark.parametrize("value, kind", CARD_VALUES.items())
def test_each_card_value_names_its_kind(value, kind):
    assert kind_of({"kind": value}) is kind


def test_the_members_are_exactly_the_card_values():
    assert {k.value: k for k in ModelKind} == CARD_VALUES


def test_a_kind_reads_and_writes_as_its_card_string():
    """StrEnum: a raw card string compares equal and a card written with a member holds the plain string."""
    assert json.dumps({"kind": ModelKind.REGRESSION}) == '{"kind": "regression"}'
    assert "digit-classifier" in SECONDARY_KINDS and "image-classifier" not in SECONDARY_KINDS


def test_the_secondary_kinds_are_all_but_the_image_classifier():
    assert set(SECONDARY_KINDS) == set(ModelKind) - {ModelKind.IMAGE_CLASSIFIER}


@pytest.mark.parametrize("card, received", [
    ({"kind": "Regression"}, "'Regression'"),  # case matters, as in the files
    ({"kind": "segmenter"}, "'segmenter'"),
    ({"kind": None}, "None"),
    ({"kind": ["regression"]}, "['regression']"),
    ({"kind": 3}, "3"),
    (["not", "a", "card"], "None"),
])
def test_an_unknown_kind_is_model_not_found_and_says_what_was_received(card, received):
    with pytest.raises(ModelNotFound) as info:
        kind_of(card)
    message = str(info.value)
    assert f"kind {received} is not one imgclf serves" in message
    assert all(value in message for value in CARD_VALUES)  # and which kinds it does serve
