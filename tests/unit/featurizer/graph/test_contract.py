"""The 2015 tensor names live in one module; this test pins them."""

import numpy as np
import pytest

from imgclf.featurizer.graph import contract


def test_2015_tensor_names_are_pinned():
    assert contract.JPEG_INPUT == "DecodeJpeg/contents:0"
    assert contract.NORMALIZED_IMAGE == "Mul:0"
    assert contract.BOTTLENECK == "pool_3:0"
    assert contract.BOTTLENECK_SINGLE == "pool_3/_reshape:0"
    assert contract.SOFTMAX == "softmax:0"
    assert (contract.INPUT_SIZE, contract.INPUT_MEAN, contract.INPUT_STD) == (299, 128.0, 128.0)
    assert contract.DEFAULT_CONTRACT.bottleneck == contract.BOTTLENECK


def test_overrides_keep_unset_fields():
    custom = contract.DEFAULT_CONTRACT.with_overrides(bottleneck="avg_pool:0", image_input=None)
    assert custom.bottleneck == "avg_pool:0"
    assert custom.image_input == "Mul:0"
    assert contract.node_name("pool_3/_reshape:0") == "pool_3/_reshape"
    assert contract.node_name("^ctrl") == "ctrl"


@pytest.mark.parametrize("shape", [(299, 299, 3), (2, 299, 299), (2, 224, 224, 3), (2, 299, 299, 1)])
def test_a_batch_of_the_wrong_shape_is_refused(shape):
    with pytest.raises(ValueError, match=r"images must be \[N, 299, 299, 3\]; received shape"):
        contract.DEFAULT_CONTRACT.check_images(np.zeros(shape, np.float32))
    contract.DEFAULT_CONTRACT.check_images(np.zeros((2, 299, 299, 3), np.float32))
