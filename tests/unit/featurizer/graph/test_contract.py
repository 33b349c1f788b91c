"""The 2015 tensor names live in one module; this test pins them."""

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
