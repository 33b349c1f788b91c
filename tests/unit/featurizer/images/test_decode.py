"""Decoding, validation and the graph-compatible resize, against references computed another way."""

import functools
import io
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from imgclf.core.errors import ImageTooLarge, InvalidImage, UnsupportedImageType
from imgclf.featurizer.images.decode import (
    decode_input,
    decode_rgb,
    decode_to_input,
    jpeg_scale,
    normalize,
    preprocess,
    resize_bilinear,
)
from tests.support import images


@pytest.mark.parametrize("shape", [(375, 500), (10, 1000), (1, 1), (299, 299), (600, 200), (1000, 10)])
def test_resize_matches_tensorflow_legacy_resize_bilinear(shape):
    rgb = np.random.default_rng(sum(shape)).integers(0, 256, shape + (3,), dtype=np.uint8)
    reference = tf.raw_ops.ResizeBilinear(images=rgb[None].astype(np.float32), size=[299, 299],
                                          align_corners=False, half_pixel_centers=False).numpy()[0]
    np.testing.assert_array_equal(resize_bilinear(rgb, 299), reference)


def test_normalize_is_sub_then_mul():
    x = np.array([0, 128, 255], np.uint8)
    np.testing.assert_array_equal(normalize(x, 128.0, 128.0), np.array([-1.0, 0.0, 127 / 128], np.float32))


def test_jpeg_decodes_like_tensorflow_accurate_dct():
    data = images.jpeg(0)
    reference = tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE").numpy()
    np.testing.assert_array_equal(decode_rgb(data), reference)


def test_jpeg_decodes_like_the_graph_decoder_when_asked():
    data = images.jpeg(1)
    reference = tf.io.decode_jpeg(data, channels=3).numpy()  # what a 2015 DecodeJpeg node gives
    np.testing.assert_array_equal(decode_rgb(data, jpeg_dct_method=""), reference)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_graph_decoder_path_applies_exif_orientation_like_pillow(orientation):
    rgb = images.photo_like(7, (40, 24)).copy()
    rgb[:4, :4] = 255  # a marker in one corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = images.encode(rgb, "JPEG", quality=100, exif=exif.tobytes())
    via_graph_decoder, via_pillow = decode_rgb(data, jpeg_dct_method=""), decode_rgb(data)
    assert via_graph_decoder.shape == via_pillow.shape
    # The two decoders differ by IDCT rounding only; the white marker must land in the same corner.
    assert np.abs(via_graph_decoder.astype(int) - via_pillow.astype(int)).mean() < 6
    corners = lambda a: [a[:4, :4].mean(), a[:4, -4:].mean(), a[-4:, :4].mean(), a[-4:, -4:].mean()]
    assert np.argmax(corners(via_graph_decoder)) == np.argmax(corners(via_pillow))


def test_graph_decoder_path_reports_corrupt_jpegs():
    with pytest.raises(InvalidImage, match="corrupt JPEG"):
        decode_rgb(images.jpeg(4, (160, 120))[:1200], jpeg_dct_method="")


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "WEBP", "GIF"])
def test_lossless_formats_round_trip(fmt):
    rgb = images.photo_like(1, (64, 48))
    params = {"lossless": True} if fmt == "WEBP" else {}
    if fmt == "GIF":  # palette format: compare against Pillow's own palette conversion
        palette_image = Image.fromarray(rgb).quantize(64)
        expected = np.asarray(palette_image.convert("RGB"))
        data = images.encode(palette_image, "GIF")
    else:
        expected = rgb
        data = images.encode(rgb, fmt, **params)
    np.testing.assert_array_equal(decode_rgb(data), expected)


def test_grayscale_becomes_three_equal_channels():
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    out = decode_rgb(images.encode(gray, "PNG"))
    assert out.shape == (16, 16, 3)
    for channel in range(3):
        np.testing.assert_array_equal(out[:, :, channel], gray)


def test_sixteen_bit_png_is_scaled_not_clipped():
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    out = decode_rgb(images.encode(Image.fromarray(values), "PNG"))
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 128, 255])


def test_transparency_is_composited_over_white():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (255, 0, 0, 0)  # fully transparent: white
    rgba[1, 0] = (0, 0, 0, 128)  # half-transparent black: mid grey
    out = decode_rgb(images.encode(rgba, "PNG"))
    assert tuple(out[0, 0]) == (255, 0, 0)
    assert tuple(out[0, 1]) == (255, 255, 255)
    assert all(abs(int(v) - 127) <= 1 for v in out[1, 0])


def test_palette_with_transparency_is_composited():
    image = Image.new("P", (2, 1))
    image.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    image.info["transparency"] = 0
    out = decode_rgb(images.encode(image, "PNG", transparency=0))
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[0, 1]) == (0, 255, 0)


def test_cmyk_jpeg_becomes_rgb():
    rgb = Image.new("RGB", (8, 8), (200, 30, 60))
    out = decode_rgb(images.encode(rgb.convert("CMYK"), "JPEG", quality=100))
    assert out.shape == (8, 8, 3)
    assert np.abs(out.astype(int) - [200, 30, 60]).max() <= 12


def test_exif_orientation_is_applied():
    rgb = np.zeros((20, 40, 3), np.uint8)
    rgb[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    out = decode_rgb(images.encode(rgb, "JPEG", quality=100, exif=exif.tobytes()))
    assert out.shape == (40, 20, 3)
    assert out[:20].mean() > 200 and out[20:].mean() < 50  # the white half is now on top


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (8, 8), color) for color in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    assert tuple(decode_rgb(buf.getvalue())[0, 0]) == (255, 0, 0)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width × height pixels, with a tiny (invalid) body."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) \
        + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_from_the_header():
    with pytest.raises(ImageTooLarge, match="100000×100000"):
        decode_rgb(_png_header_only(100_000, 100_000))


def test_pixel_limit_is_configurable():
    data = images.encode(images.photo_like(2, (100, 50)), "PNG")
    assert decode_rgb(data, max_pixels=5000).shape == (50, 100, 3)
    with pytest.raises(ImageTooLarge, match="limit is 4,999"):
        decode_rgb(data, max_pixels=4999)


def _bad_crc_png() -> bytes:
    data = bytearray(images.encode(images.photo_like(3, (16, 16)), "PNG"))
    idat = data.index(b"IDAT")
    data[idat + 10] ^= 0xFF  # corrupt the compressed data; the CRC no longer matches
    return bytes(data)


@pytest.mark.parametrize("data, error, message", [
    (b"", InvalidImage, "0 bytes"),
    (np.random.default_rng(0).bytes(2000), InvalidImage, "identify"),
    (b"just some text, saved as .jpg", InvalidImage, "identify"),
    (b"<html><body>not an image</body></html>", InvalidImage, "identify"),
    (images.jpeg(4)[:2000], InvalidImage, "corrupt JPEG"),
    (_bad_crc_png(), InvalidImage, "corrupt PNG"),
    (images.encode(images.photo_like(5, (16, 16)), "TIFF"), UnsupportedImageType, "TIFF"),
])
def test_bad_bytes_get_a_clear_error(data, error, message):
    with pytest.raises(error, match=message):
        decode_rgb(data)


def test_preprocess_matches_the_graph_chain_for_png():
    rgb = images.photo_like(6, (123, 77))
    reference = tf.raw_ops.ResizeBilinear(images=rgb[None].astype(np.float32), size=[299, 299],
                                          align_corners=False, half_pixel_centers=False).numpy()[0]
    reference = (reference - 128.0) * (1.0 / 128.0)
    np.testing.assert_allclose(preprocess(images.encode(rgb, "PNG")), reference, atol=1e-6)


def test_multi_picture_jpegs_from_phones_decode_as_their_first_picture():
    first, second = images.photo_like(20, (64, 48)), images.photo_like(21, (64, 48))
    data = images.encode(first, "MPO", quality=95, save_all=True, append_images=[Image.fromarray(second)])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    first_jpeg = images.encode(first, "JPEG", quality=95)
    np.testing.assert_array_equal(decode_rgb(data, jpeg_dct_method=""),  # the graph decoder's path
                                  tf.io.decode_jpeg(first_jpeg, channels=3).numpy())
    np.testing.assert_array_equal(decode_rgb(data), decode_rgb(first_jpeg))


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _exif_jpeg(orientation: int) -> bytes:
    return images.encode(images.photo_like(8, (64, 40)), "JPEG", quality=92, exif=_exif(orientation))


def _mpo() -> bytes:
    first, second = images.photo_like(22, (64, 48)), images.photo_like(23, (64, 48))
    return images.encode(first, "MPO", quality=95, save_all=True, append_images=[Image.fromarray(second)])


@pytest.mark.parametrize("make", [
    lambda: images.jpeg(30, (800, 600)),  # the fused TensorFlow path
    lambda: images.encode(np.asarray(Image.fromarray(images.photo_like(31, (320, 200))).convert("L")), "JPEG"),
    lambda: images.jpeg(32, (5, 3)),
    _mpo,
    lambda: _exif_jpeg(6),  # rotated: the fused path turns it upright too
    lambda: images.encode(images.photo_like(33, (120, 90)), "PNG"),
    lambda: images.encode(Image.fromarray(images.photo_like(34, (64, 48))).convert("CMYK"), "JPEG"),
], ids=["rgb-jpeg", "gray-jpeg", "tiny-jpeg", "mpo", "exif-rotated", "png", "cmyk-jpeg"])
@pytest.mark.parametrize("dct_method", ["", "INTEGER_ACCURATE", None])
def test_decode_to_input_equals_decode_then_resize_then_normalize(make, dct_method, jpeg_decoder):
    data = make()
    rgb, x = decode_to_input(data, 299, 128.0, 128.0, jpeg_dct_method=dct_method)
    reference_rgb = decode_rgb(data, jpeg_dct_method=dct_method)
    np.testing.assert_array_equal(rgb, reference_rgb)
    np.testing.assert_array_equal(x, normalize(resize_bilinear(reference_rgb, 299), 128.0, 128.0))
    assert x.dtype == np.float32 and x.shape == (299, 299, 3)


@pytest.mark.parametrize("make, fused", [
    (lambda: images.jpeg(37, (640, 480)), True),
    (lambda: images.encode(np.asarray(Image.fromarray(images.photo_like(38, (64, 48))).convert("L")), "JPEG"), True),
    (_mpo, True),
    (lambda: _exif_jpeg(6), True),
    (lambda: _exif_jpeg(3), True),
    (lambda: images.encode(Image.fromarray(images.photo_like(39, (64, 48))).convert("CMYK"), "JPEG"), False),
    (lambda: images.encode(Image.fromarray(images.photo_like(39, (64, 48))).convert("CMYK"), "JPEG",
                           exif=_exif(6)), False),
    (lambda: images.encode(images.photo_like(40, (64, 48)), "PNG"), False),
], ids=["rgb-jpeg", "gray-jpeg", "mpo", "exif-rotated", "exif-rotated-180", "cmyk-jpeg", "cmyk-rotated", "png"])
def test_the_fused_path_takes_plain_jpegs_and_only_those(make, fused, monkeypatch, jpeg_decoder):
    calls = _count_fused_calls(monkeypatch)
    decode_to_input(make(), jpeg_dct_method="")
    assert len(calls) == int(fused)
    calls.clear()
    decode_to_input(make(), jpeg_dct_method=None)  # Pillow decoding asked for: never the TensorFlow path
    assert not calls


def _count_fused_calls(monkeypatch) -> list:
    """Count calls of the fused path: TensorFlow's decode-resize function, or the one after libjpeg-turbo."""
    from imgclf.featurizer.images import decode as image_io

    calls = []
    for name in ("_fused_jpeg_function", "_upright_resize_function"):
        real = getattr(image_io, name)
        monkeypatch.setattr(image_io, name, lambda *args, real=real: calls.append(args) or real(*args))
    return calls


@pytest.fixture(params=["turbo", "tensorflow"])
def jpeg_decoder(request, monkeypatch):
    """Decode JPEGs with libjpeg-turbo through simplejpeg (the default), or with TensorFlow (without simplejpeg)."""
    from imgclf.featurizer.images import decode as image_io

    if request.param == "turbo":
        assert image_io._simplejpeg is not None, "simplejpeg is a dependency of imgclf"
    else:
        monkeypatch.setattr(image_io, "_simplejpeg", None)
    return request.param


@functools.lru_cache(maxsize=8)
def _rotated_photo(orientation: int) -> bytes:
    """A 1400×1300 JPEG (DCT-scaled by 2 in the fast mode) tagged with EXIF ``orientation``."""
    rgb = images.photo_like(50, (1400, 1300)).copy()
    rgb[:64, :96] = 255  # a marker in the top-left corner, wider than high: every turn and flip moves it
    return images.encode(rgb, "JPEG", quality=92, exif=_exif(orientation))


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("decode", ["exact", "fast"])
@pytest.mark.parametrize("dct_method", ["", "INTEGER_ACCURATE"])
def test_the_fused_path_turns_every_exif_orientation_upright_like_the_general_path(orientation, decode, dct_method,
                                                                                  monkeypatch, jpeg_decoder):
    assert jpeg_scale(1400, 1300, 299) == 2  # so "fast" really decodes DCT-scaled
    data = _rotated_photo(orientation)
    calls = _count_fused_calls(monkeypatch)
    rgb, x = decode_to_input(data, 299, 128.0, 128.0, jpeg_dct_method=dct_method, decode=decode)
    assert len(calls) == 1  # the fused path, not the general one
    reference_rgb = decode_rgb(data, jpeg_dct_method=dct_method, decode=decode)  # TF decode, then Pillow's transpose
    np.testing.assert_array_equal(rgb, reference_rgb)
    np.testing.assert_array_equal(x, normalize(resize_bilinear(reference_rgb, 299), 128.0, 128.0))
    height, width = (1300, 1400) if decode == "exact" else (650, 700)  # stored sideways for orientations 5-8
    assert rgb.shape == ((width, height, 3) if orientation >= 5 else (height, width, 3))


def test_one_traced_function_serves_all_eight_orientations(jpeg_decoder):
    from imgclf.featurizer.images import decode as image_io

    size = 97 if jpeg_decoder == "turbo" else 98  # sizes no other test uses: fresh functions
    # photos of two sizes, every orientation; large enough for the fast mode's DCT scale 2 at this size
    data = [images.encode(images.photo_like(41, (420, 400)), "JPEG", exif=_exif(orientation))
            for orientation in range(1, 9)] + [images.jpeg(42, (500, 450))]
    for jpeg in data + data:
        decode_to_input(jpeg, size, 128.0, 128.0, jpeg_dct_method="", decode="fast")
    prefix = ("decoded", size) if jpeg_decoder == "turbo" else (size,)
    traced = [key for key in image_io._FUSED if key[:len(prefix)] == prefix]
    assert traced == [(*prefix, 128.0, 128.0, *(() if jpeg_decoder == "turbo" else ("", 2)), True)]


def _jpeg_corpus() -> dict[str, bytes]:
    """JPEGs of the kinds libjpeg decodes differently: subsampling, progressive, restarts, gray, odd sizes."""
    photo = images.photo_like(60, (1237, 931))
    gray = np.asarray(Image.fromarray(photo).convert("L"))
    corpus = {
        "420": images.encode(photo, "JPEG", quality=90, subsampling=2),
        "422": images.encode(photo, "JPEG", quality=90, subsampling=1),
        "444": images.encode(photo, "JPEG", quality=95, subsampling=0),
        "progressive": images.encode(photo, "JPEG", quality=85, progressive=True),
        "restarts": images.encode(photo, "JPEG", quality=90, restart_marker_rows=1),
        "gray": images.encode(gray, "JPEG", quality=90),
        "odd-small": images.encode(images.photo_like(61, (33, 17)), "JPEG", quality=75),
        "low-quality": images.encode(photo, "JPEG", quality=20),
        "mpo": _mpo(),
    }
    return corpus


@pytest.mark.parametrize("kind", list(_jpeg_corpus()))
@pytest.mark.parametrize("dct_method", ["", "INTEGER_FAST", "INTEGER_ACCURATE"])
@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_libjpeg_turbo_gives_tensorflows_decode_jpeg_pixels(kind, dct_method, scale):
    """simplejpeg stands in for TensorFlow's DecodeJpeg only because the pixels are the same, bit for bit."""
    from imgclf.featurizer.images import decode as image_io

    data = _jpeg_corpus()[kind]
    header = Image.open(io.BytesIO(data))
    turbo = image_io._decode_jpeg_turbo(data, dct_method, scale, header.size)
    assert turbo is not None
    np.testing.assert_array_equal(turbo, tf.io.decode_jpeg(data, channels=3, dct_method=dct_method,
                                                           ratio=scale).numpy())


@functools.lru_cache(maxsize=1)
def _large_jpeg() -> bytes:
    return images.jpeg(62, (1300, 1250))  # DCT-scaled by 2 in the fast mode


@pytest.mark.parametrize("damage", ["truncated", "damaged"])
def test_jpegs_libjpeg_turbo_refuses_are_left_to_tensorflow_and_pillow_as_before(damage, monkeypatch):
    """A JPEG libjpeg only recovers from (with a warning) is not decoded by simplejpeg: the old path decides."""
    from imgclf.featurizer.images import decode as image_io

    good = _large_jpeg()
    data = good[:-3000] if damage == "truncated" else good[:2000] + bytes(3000) + good[5000:]
    header = Image.open(io.BytesIO(data))
    assert image_io._decode_jpeg_turbo(data, "", 2, header.size) is None
    outcome = {}
    for decoder in ("turbo", "tensorflow"):
        if decoder == "tensorflow":
            monkeypatch.setattr(image_io, "_simplejpeg", None)
        try:
            outcome[decoder] = decode_to_input(data, jpeg_dct_method="", decode="fast")
        except InvalidImage as exc:
            outcome[decoder] = str(exc)
    if isinstance(outcome["turbo"], str):
        assert outcome["turbo"] == outcome["tensorflow"]
    else:
        for a, b in zip(outcome["turbo"], outcome["tensorflow"]):
            np.testing.assert_array_equal(a, b)


def test_a_dct_method_libjpeg_turbo_has_no_match_for_is_left_to_tensorflow():
    from imgclf.featurizer.images import decode as image_io

    assert image_io._decode_jpeg_turbo(images.jpeg(64, (64, 48)), "INTEGER_EXOTIC", 1, (64, 48)) is None


def _exif_ifd(entries, count=None) -> bytes:
    """An EXIF block with one little-endian IFD of (tag, type, count, value) entries, claiming ``count`` of them."""
    body = struct.pack("<H", len(entries) if count is None else count)
    for tag, kind, n, value in entries:
        body += struct.pack("<HHI", tag, kind, n) + value.ljust(4, b"\0")
    return b"Exif\x00\x00II\x2a\x00\x08\x00\x00\x00" + body


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns of the corrupt EXIF data
@pytest.mark.parametrize("exif, upright_shape", [
    (b"Exif\x00\x00" + bytes(range(40)), (24, 40, 3)),  # not TIFF at all
    (b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\xff\xff", (24, 40, 3)),  # 65535 entries claimed, none there
    (_exif_ifd([(0x0112, 3, 1, struct.pack("<H", 6))], count=5), (40, 24, 3)),  # orientation 6, then truncated
    (_exif_ifd([(0x0112, 2, 2, b"6\0")]), (24, 40, 3)),  # orientation as the text "6": ignored
    (_exif_ifd([(0x0112, 3, 1, struct.pack("<H", 9))]), (24, 40, 3)),  # no such orientation: ignored
    (_exif_ifd([(0x0112, 5, 1, struct.pack("<I", 9999))]), (24, 40, 3)),  # value offset past the end
], ids=["garbage", "truncated-ifd", "orientation-then-truncated", "text-orientation", "orientation-9",
        "offset-past-end"])
@pytest.mark.parametrize("dct_method", ["", None])
def test_a_malformed_exif_block_still_decodes_like_the_general_path(exif, upright_shape, dct_method):
    data = images.encode(images.photo_like(51, (40, 24)), "JPEG", quality=95, exif=exif)
    rgb, x = decode_to_input(data, jpeg_dct_method=dct_method)
    reference_rgb = decode_rgb(data, jpeg_dct_method=dct_method)
    assert rgb.shape == upright_shape
    np.testing.assert_array_equal(rgb, reference_rgb)
    np.testing.assert_array_equal(x, normalize(resize_bilinear(reference_rgb, 299), 128.0, 128.0))


def test_decode_to_input_other_sizes_and_normalisation():
    data = images.jpeg(35, (211, 97))
    rgb, x = decode_to_input(data, 224, 127.5, 127.5, jpeg_dct_method="")
    np.testing.assert_array_equal(x, normalize(resize_bilinear(rgb, 224), 127.5, 127.5))


@pytest.mark.parametrize("data, error, message", [
    (images.jpeg(4)[:2000], InvalidImage, "corrupt JPEG"),
    (b"", InvalidImage, "0 bytes"),
    (images.encode(images.photo_like(5, (16, 16)), "TIFF"), UnsupportedImageType, "TIFF"),
])
def test_decode_to_input_refuses_bad_images_like_decode_rgb(data, error, message):
    with pytest.raises(error, match=message):
        decode_to_input(data, jpeg_dct_method="")


def test_decode_to_input_checks_the_pixel_limit_before_decoding():
    with pytest.raises(ImageTooLarge):
        decode_to_input(images.jpeg(36, (200, 100)), max_pixels=19_999, jpeg_dct_method="")


# --- decode "fast": DCT-scaled JPEG decoding -------------------------------------------------------------

@pytest.mark.parametrize("width, height, scale", [
    (4000, 3000, 4), (3000, 4000, 4), (598 * 2, 598 * 2, 2), (1195, 2000, 1), (4784, 4784, 8), (4783, 6000, 4),
    (500, 375, 1), (10000, 600, 1)])
def test_jpeg_scale_keeps_both_sides_at_least_twice_the_input(width, height, scale):
    assert jpeg_scale(width, height, 299) == scale
    assert -(-min(width, height) // scale) >= 598 or scale == 1  # both sides stay >= 2 * 299


def _box_average(rgb: np.ndarray, scale: int) -> np.ndarray:
    """Average ``scale``×``scale`` blocks (what a DCT-scaled decode approximates), edge blocks partial."""
    h, w = rgb.shape[:2]
    out_h, out_w = -(-h // scale), -(-w // scale)
    padded = np.pad(rgb.astype(np.float64), ((0, out_h * scale - h), (0, out_w * scale - w), (0, 0)), mode="edge")
    return padded.reshape(out_h, scale, out_w, scale, 3).mean(axis=(1, 3))


@pytest.mark.parametrize("size, scale", [((1400, 1250), 2), ((2500, 2400), 4)])
@pytest.mark.parametrize("dct_method", ["", None])
def test_fast_decode_is_the_exact_decode_box_averaged(size, scale, dct_method):
    data = images.jpeg(41, size, quality=95)
    exact = decode_rgb(data, jpeg_dct_method=dct_method)
    fast = decode_rgb(data, jpeg_dct_method=dct_method, decode="fast")
    assert fast.shape == (-(-size[1] // scale), -(-size[0] // scale), 3)
    error = np.abs(fast - _box_average(exact, scale))
    assert error.mean() < 1.0 and np.percentile(error, 99.9) < 6  # measured: mean ~0.4, p99.9 ~3


def test_fast_decode_through_pillow_equals_the_graph_decoder_scaled():
    data = images.jpeg(42, (2500, 2400))
    via_pillow = decode_rgb(data, decode="fast")  # Image.draft
    np.testing.assert_array_equal(via_pillow, tf.io.decode_jpeg(data, channels=3, ratio=4).numpy())
    np.testing.assert_array_equal(decode_rgb(data, jpeg_dct_method="", decode="fast"), via_pillow)


@pytest.mark.parametrize("dct_method", ["", None])
def test_fast_network_input_stays_close_to_exact(dct_method):
    data = images.jpeg(43, (2500, 2400))
    _, exact = decode_to_input(data, jpeg_dct_method=dct_method)
    rgb, fast = decode_to_input(data, jpeg_dct_method=dct_method, decode="fast")
    assert rgb.shape == (600, 625, 3)
    np.testing.assert_array_equal(fast, preprocess(data, jpeg_dct_method=dct_method, decode="fast"))
    difference = np.abs(fast - exact) * 128  # in 0..255 pixel units
    assert difference.mean() < 2.0 and difference.max() < 16  # measured: mean 1.2, max 6.4 (JPEG noise averaged)


@pytest.mark.parametrize("make", [
    lambda: images.encode(images.photo_like(44, (1400, 1300)), "PNG"),
    lambda: images.encode(images.photo_like(45, (1400, 1300)), "WEBP", quality=90),
    lambda: images.jpeg(46, (1100, 1400)),  # a JPEG too small to scale: 1100 < 2 * 2 * 299
    lambda: images.jpeg(47, (500, 375)),
])
@pytest.mark.parametrize("dct_method", ["", None])
def test_fast_leaves_other_images_exactly_as_exact(make, dct_method):
    data = make()
    np.testing.assert_array_equal(decode_rgb(data, jpeg_dct_method=dct_method, decode="fast"),
                                  decode_rgb(data, jpeg_dct_method=dct_method))
    exact, fast = (decode_to_input(data, jpeg_dct_method=dct_method, decode=mode) for mode in ("exact", "fast"))
    np.testing.assert_array_equal(fast[1], exact[1])


@pytest.mark.parametrize("dct_method", ["", None])
def test_fast_decode_applies_exif_orientation(dct_method):
    rgb = images.photo_like(48, (2500, 1250)).copy()
    rgb[:64, :64] = 255  # a marker in the top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: turn 90° clockwise to view
    data = images.encode(rgb, "JPEG", quality=95, exif=exif.tobytes())
    fast = decode_rgb(data, jpeg_dct_method=dct_method, decode="fast")
    exact = decode_rgb(data, jpeg_dct_method=dct_method)
    assert exact.shape == (2500, 1250, 3) and fast.shape == (1250, 625, 3)
    assert np.abs(fast - _box_average(exact, 2)).mean() < 1.0  # turned the same way as the exact decode
    assert fast[:16, -16:].mean() > 250  # the marker went to the top-right corner in both


def test_an_unknown_decode_mode_is_refused():
    with pytest.raises(ValueError, match="decode must be one of exact, fast; received 'quick'"):
        decode_rgb(images.jpeg(49, (64, 48)), decode="quick")


def test_libjpeg_turbo_is_not_used_where_it_decodes_differently_from_tensorflow(monkeypatch):
    """A simplejpeg whose pixels differ from TensorFlow's (another libjpeg build) is found once and left out."""
    import types

    from imgclf.featurizer.images import decode as image_io

    real = image_io._simplejpeg

    def off_by_one(data, **options):
        return np.minimum(real.decode_jpeg(data, **options), 254) + 1

    monkeypatch.setattr(image_io, "_simplejpeg", types.SimpleNamespace(decode_jpeg=off_by_one, __version__="x"))
    image_io._turbo_agrees_with_tensorflow.cache_clear()
    try:
        assert image_io._turbo_agrees_with_tensorflow() is False
        data = _large_jpeg()
        assert image_io._decode_jpeg_turbo(data, "", 2, (1300, 1250)) is None
        rgb, x = decode_to_input(data, jpeg_dct_method="", decode="fast")
        np.testing.assert_array_equal(rgb, tf.io.decode_jpeg(data, channels=3, ratio=2).numpy())
    finally:
        image_io._turbo_agrees_with_tensorflow.cache_clear()
    monkeypatch.setattr(image_io, "_simplejpeg", real)
    assert image_io._turbo_agrees_with_tensorflow() is True


@pytest.mark.parametrize("decode", ["exact", "fast"])
def test_decode_input_is_the_network_input_of_decode_to_input_without_the_rgb(decode, jpeg_decoder):
    photos = [_rotated_photo(6), images.jpeg(44, (500, 375)), images.encode(images.photo_like(45, (64, 48)), "PNG")]
    for data in photos:  # the fused JPEG path (turned, DCT-scaled in fast mode) and the general path
        rgb, x = decode_to_input(data, 299, 128.0, 128.0, jpeg_dct_method="", decode=decode)
        assert rgb is not None
        x_only = decode_input(data, 299, 128.0, 128.0, jpeg_dct_method="", decode=decode)
        assert x_only.dtype == np.float32 and x_only.shape == (299, 299, 3)
        np.testing.assert_array_equal(x_only, x)
    assert decode_to_input(photos[1], 299, jpeg_dct_method="", with_rgb=False)[0] is None
