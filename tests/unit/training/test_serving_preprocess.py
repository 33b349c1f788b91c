"""The SavedModel's TensorFlow preprocessing against the featurizer's Python preprocessing, decode modes included."""

import numpy as np
import pytest
import tensorflow as tf

from imgclf.featurizer.graph.contract import DEFAULT_CONTRACT
from imgclf.featurizer.images.decode import decode_to_input
from imgclf.training.serving_preprocess import batch_to_input
from tests.support import images


@pytest.mark.parametrize("decode", ["exact", "fast"])
@pytest.mark.parametrize("dct_method", ["", None])
def test_batch_to_input_equals_the_python_featurizer(decode, dct_method):
    contract = DEFAULT_CONTRACT.with_overrides(jpeg_dct_method=dct_method, decode=decode)
    # scales 1, 2 and 4 (fast); a PNG and a small JPEG are never scaled
    batch = [images.jpeg(70, (500, 375)), images.jpeg(71, (1300, 1250)), images.jpeg(72, (2500, 2400)),
             images.encode(images.photo_like(73, (1400, 1300)), "PNG")]
    got = tf.function(lambda contents: batch_to_input(contents, contract))(tf.constant(batch)).numpy()
    for data, x in zip(batch, got):
        expected = decode_to_input(data, jpeg_dct_method=dct_method, decode=decode)[1]
        if dct_method is None and data[:2] == b"\xff\xd8" and decode == "exact":  # TF's accurate IDCT vs Pillow's
            np.testing.assert_allclose(x, expected, atol=2 / 128)
        else:
            np.testing.assert_array_equal(x, expected)
