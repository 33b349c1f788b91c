"""The featurizer's preprocessing as TensorFlow ops, for graphs that take encoded image bytes.

An exported model must turn bytes into the same network input as
:mod:`imgclf.featurizer.images.decode` did when the training features were made, or its
predictions drift. Decoding follows Pillow's conversions as that module
applies them:

* JPEG: ``DecodeJpeg`` (channels=3, the graph's ``dct_method``) — the decoder the
  featurizer itself uses; grayscale JPEGs become three equal channels. With the
  contract's ``decode`` "fast", a large JPEG is DCT-scaled by the factor
  :func:`imgclf.featurizer.images.decode.jpeg_scale` picks from its header
  (``ExtractJpegShape``), ``DecodeJpeg(ratio=...)``: the featurizer's own numbers.
* PNG, GIF (first frame), BMP, WebP: ``DecodeImage``. Grayscale is repeated
  to three channels; an alpha channel is composited over white with Pillow's
  integer arithmetic; 16-bit grayscale PNGs are scaled to 8 bits with rounding
  (Pillow's ``I;16`` path), 16-bit colour PNGs keep their high byte (as Pillow
  reads them); a BMP's fourth channel is ignored (Pillow reads such BMPs as RGB).
* Resize: ``ResizeBilinear`` with ``align_corners=False`` and no half-pixel
  centres (a plain squash to S×S), then ``(x - mean) * (1 / std)``.

What TensorFlow ops cannot reproduce (the Python path does):

* EXIF orientation: the pixels are used as stored, not turned upright.
* Transparent GIF pixels: TensorFlow's GIF decoder gives them black, not white.
* CMYK/YCCK JPEGs: TensorFlow converts the colours slightly differently
  (up to ±2 per channel).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from imgclf.featurizer.graph.contract import GraphContract

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_HEADER_BYTES = 26  # PNG signature (8) + IHDR length and type (8) + width, height (8) + bit depth, colour type
# The featurizer decodes JPEGs with Pillow (libjpeg's accurate integer IDCT) when the graph has no
# DecodeJpeg node; TensorFlow's name for that IDCT.
_PILLOW_DCT_METHOD = "INTEGER_ACCURATE"


def dct_method(contract: GraphContract) -> str:
    """Return the ``dct_method`` that decodes JPEGs as the featurizer does for ``contract``."""
    return _PILLOW_DCT_METHOD if contract.jpeg_dct_method is None else contract.jpeg_dct_method


def decode_rgb(contents: tf.Tensor, jpeg_dct_method: str = "", decode: str = "exact",
               input_size: int = 299) -> tf.Tensor:
    """Decode one scalar string of image bytes to uint8 RGB [H, W, 3] (see the module notes)."""
    header = tf.strings.substr(tf.strings.join([contents, "\0" * _HEADER_BYTES]), 0, _HEADER_BYTES)
    is_png = tf.equal(tf.strings.substr(header, 0, 8), _PNG_SIGNATURE)
    is_gray16_png = (is_png & tf.equal(tf.strings.substr(header, 24, 1), b"\x10")
                     & tf.equal(tf.strings.substr(header, 25, 1), b"\x00"))
    is_bmp = tf.equal(tf.strings.substr(header, 0, 2), b"BM")

    def gray16():
        values = tf.cast(tf.io.decode_png(contents, channels=1, dtype=tf.uint16), tf.float32)
        return tf.cast(tf.round(values * (255.0 / 65535.0)), tf.uint8)

    def jpeg_at(ratio: int):
        return lambda: tf.io.decode_jpeg(contents, channels=3, dct_method=jpeg_dct_method, ratio=ratio)

    def jpeg():
        if decode == "exact":
            return jpeg_at(1)()
        # As image_io.jpeg_scale: the largest of 8, 4, 2 with both sides >= 2 * input_size * ratio, else 1.
        shape = tf.io.extract_jpeg_shape(contents)
        short_side = tf.minimum(shape[0], shape[1])
        decoded = jpeg_at(1)
        for ratio in (2, 4, 8):  # nested conds, innermost first: the largest factor that fits wins
            decoded = (lambda r, smaller: lambda: tf.cond(short_side >= 2 * input_size * r, jpeg_at(r), smaller)
                       )(ratio, decoded)
        return decoded()

    def other():
        return tf.io.decode_image(contents, expand_animations=False)

    image = tf.cond(is_gray16_png, gray16, lambda: tf.cond(tf.io.is_jpeg(contents), jpeg, other))
    channels = tf.shape(image)[2]
    color = tf.gather(image, tf.where(channels >= 3, [0, 1, 2], [0, 0, 0]), axis=2)
    has_alpha = (tf.equal(channels, 2) | tf.equal(channels, 4)) & tf.logical_not(is_bmp)
    return tf.cond(has_alpha, lambda: _over_white(color, tf.gather(image, [channels - 1], axis=2)),
                   lambda: color)


def _over_white(color: tf.Tensor, alpha: tf.Tensor) -> tf.Tensor:
    """Composite uint8 colour [H, W, 3] with alpha [H, W, 1] over opaque white, as Pillow's alpha_composite."""
    # Pillow (AlphaComposite.c) with an opaque destination reduces to: blend = 128·(c·a + 255·(255 − a)),
    # then (SHIFTFORDIV255(blend + 128·128)) >> 7, where SHIFTFORDIV255(x) = ((x >> 8) + x) >> 8.
    c = tf.cast(color, tf.int32)
    a = tf.cast(alpha, tf.int32)
    blend = 128 * (c * a + 255 * (255 - a)) + 128 * 128
    divided = tf.bitwise.right_shift(tf.bitwise.right_shift(blend, 8) + blend, 8)
    return tf.cast(tf.bitwise.right_shift(divided, 7), tf.uint8)


def to_network_input(rgb: tf.Tensor, contract: GraphContract) -> tf.Tensor:
    """Resize uint8 RGB [H, W, 3] and normalise it to the network input float32 [S, S, 3]."""
    size = contract.input_size
    pixels = tf.expand_dims(tf.cast(rgb, tf.float32), 0)
    resized = tf.raw_ops.ResizeBilinear(images=pixels, size=tf.constant([size, size], tf.int32),
                                        align_corners=False, half_pixel_centers=False)
    normalised = (resized - tf.constant(np.float32(contract.input_mean))) * \
        tf.constant(np.float32(1.0 / contract.input_std))
    return tf.reshape(normalised, [size, size, 3])


def image_bytes_to_input(contents: tf.Tensor, contract: GraphContract) -> tf.Tensor:
    """Decode, resize and normalise one scalar string of image bytes to float32 [S, S, 3]."""
    return to_network_input(decode_rgb(contents, dct_method(contract), contract.decode,
                                       contract.input_size), contract)


def batch_to_input(image_bytes: tf.Tensor, contract: GraphContract) -> tf.Tensor:
    """Preprocess a batch of encoded images (string [N]) to float32 [N, S, S, 3], one image at a time."""
    size = contract.input_size
    return tf.map_fn(lambda contents: image_bytes_to_input(contents, contract), image_bytes,
                     fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
