"""Decode and validate image bytes, and reproduce the 2015 graph's preprocessing.

The frozen graph decodes a JPEG, resizes it to 299×299 with TensorFlow's legacy
``ResizeBilinear`` (``align_corners=False``, no half-pixel centres: a plain
squash, no crop) and normalises with ``(x - 128) / 128``. Doing the same outside
the graph lets images be decoded in parallel and fed in batches; the numbers
must match or features drift, so the resize here follows the TF kernel exactly.

Decode modes (``decode``): ``exact`` decodes every pixel (the 2015 contract);
``fast`` lets the JPEG decoder scale by DCT (libjpeg's 1/2, 1/4, 1/8 scaled
IDCT) by the largest factor that keeps both sides at least twice the network
input, then resizes the same way. A 12-megapixel phone photo then decodes at
1000×750 in a fraction of the time; the 299×299 network input barely changes
(the bilinear squash samples only a few source pixels anyway). Non-JPEG images
and JPEGs already small decode exactly in both modes.
"""

from __future__ import annotations

import functools
import io
import logging
import threading
import warnings

import numpy as np
from PIL import Image, ImageOps

from imgclf.core.errors import ImageTooLarge, InvalidImage, UnsupportedImageType

try:  # libjpeg-turbo 3 for the JPEGs TensorFlow's decoder would take: the same pixels, less CPU
    import simplejpeg as _simplejpeg
except ImportError:  # pragma: no cover - a dependency; without it TensorFlow decodes them all
    _simplejpeg = None

log = logging.getLogger(__name__)

# Pillow format names accepted, and the file extensions the batch job looks at.
ACCEPTED_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP")
# A multi-picture JPEG (MPO, what many phones write) starts with a plain JPEG: the picture shown.
JPEG_FORMATS = ("JPEG", "MPO")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".png", ".gif", ".bmp", ".webp")
DEFAULT_MAX_PIXELS = 50_000_000  # ~ a 8660×5770 photo; a 3-channel decode is 150 MB
# A progressive JPEG's decoder passes over every coefficient of the picture once per scan: 1,000 scans of 49 MP in
# 360 KB cost minutes of CPU. Encoders write about 10 scans (libjpeg's progressive script), mozjpeg up to about 20.
# Two bounds: scans, and scans times pixels (16 scans of the largest picture allowed: no JPEG costs more to decode
# than a legitimate progressive one of the largest size).
DEFAULT_MAX_JPEG_SCANS = 64
DEFAULT_MAX_JPEG_SCAN_PIXELS = 16 * DEFAULT_MAX_PIXELS
ALPHA_BACKGROUND = (255, 255, 255)  # transparent pixels are shown over white
DECODE_MODES = ("exact", "fast")  # see the module notes
DEFAULT_DECODE = "exact"
DEFAULT_INPUT_SIZE = 299  # the network input side the fast mode keeps twice of
_DCT_SCALES = (8, 4, 2)  # libjpeg's scaled IDCTs, largest first
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")

# imgclf checks the pixel count itself (below) before decoding; Pillow's own
# bomb check would refuse at a different, global limit.
Image.MAX_IMAGE_PIXELS = None


def open_checked(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open image bytes lazily and check format and pixel count before decoding.

    Raises:
        InvalidImage: empty or unreadable bytes.
        UnsupportedImageType: an image in a format not in ACCEPTED_FORMATS.
        ImageTooLarge: more than ``max_pixels`` pixels (from the header).
    """
    if not data:
        raise InvalidImage("empty image: received 0 bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError as exc:
        claimed = _claimed_format(data)
        if claimed:  # say "a damaged PNG", not "not an image", for a PNG whose header checksum is wrong
            raise InvalidImage(f"corrupt {claimed} image: its header cannot be read "
                               f"({_header_error(data, claimed)})") from exc
        raise InvalidImage(f"not an image Pillow can identify ({len(data)} bytes)") from exc
    except Exception as exc:  # Pillow raises many types on malformed headers
        raise InvalidImage(f"unreadable image header: {exc}") from exc
    fmt = image.format or "unknown"
    if fmt not in ACCEPTED_FORMATS:
        raise UnsupportedImageType(f"unsupported image type {fmt}; accepted: {', '.join(ACCEPTED_FORMATS)}")
    width, height = image.size
    if width <= 0 or height <= 0:
        raise InvalidImage(f"image has no pixels: {width}×{height}")
    if width * height > max_pixels:
        raise ImageTooLarge(f"image is {width}×{height} = {width * height:,} pixels; "
                            f"the limit is {max_pixels:,}")
    return image


def jpeg_scans(data: bytes) -> int:
    """Return the scans (start-of-scan segments) of a JPEG's first picture, from its markers; 0 for other formats.

    Walks the segments from SOI to EOI: each marker segment is skipped by its length (an ICC profile or an
    EXIF thumbnail in an APPn segment may hold the bytes FF DA anywhere), and after each SOS the entropy-coded
    data up to the next marker (0xFF followed by neither 0x00 nor RSTn) is skipped. An MPO's later pictures,
    after the first EOI, are not decoded and not counted. A few milliseconds for 10 MB; a damaged stream is
    counted up to where it breaks (its decode says why).
    """
    if not data.startswith(b"\xff\xd8\xff"):
        return 0
    at, end, scans = 2, len(data), 0
    while at + 1 < end:
        if data[at] != 0xFF:
            return scans
        marker = data[at + 1]
        if marker == 0xFF:  # a fill byte before a marker
            at += 1
            continue
        if marker == 0xD9:  # EOI
            return scans
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # TEM, RSTn: no length
            at += 2
            continue
        if at + 4 > end:
            return scans
        at += 2 + int.from_bytes(data[at + 2:at + 4], "big")
        if marker == 0xDA:  # SOS: its entropy-coded data runs to the next marker
            scans += 1
            at = _next_marker(data, at)
    return scans


def _next_marker(data: bytes, at: int) -> int:
    """Return where the marker after entropy-coded data starting at ``at`` is (``len(data)`` when there is none).

    In entropy-coded data a 0xFF byte is followed by 0x00 (a stuffed data byte) or RST0-RST7; any other byte
    after it makes a marker. ``bytes.find`` jumps from one 0xFF to the next (about one byte in 256 of data).
    """
    end = len(data)
    while True:
        at = data.find(b"\xff", at)
        if at < 0 or at + 1 >= end:
            return end
        following = data[at + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7:
            at += 2
        elif following == 0xFF:  # a fill byte: the marker starts at the next one
            at += 1
        else:
            return at


# How files of the accepted formats begin: bytes that begin so but do not open are a damaged image.
_SIGNATURES = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"))


def _claimed_format(data: bytes) -> str | None:
    """Return the accepted format whose signature ``data`` starts with (None when none)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((fmt for signature, fmt in _SIGNATURES if data.startswith(signature)), None)


def _header_error(data: bytes, fmt: str) -> str:
    """Return why Pillow's ``fmt`` plugin cannot read the header of ``data`` (Image.open keeps it to itself)."""
    plugin = Image.OPEN.get(fmt)
    if plugin is None:
        return "unreadable header"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plugin[0](io.BytesIO(data), "").close()
    except Exception as exc:
        return str(exc) or type(exc).__name__
    return "unreadable header"


def check_decode(decode: str) -> str:
    """Return ``decode`` if it is a decode mode, else raise ValueError naming the modes."""
    if decode not in DECODE_MODES:
        raise ValueError(f"decode must be one of {', '.join(DECODE_MODES)}; received {decode!r}")
    return decode


def jpeg_scale(width: int, height: int, input_size: int) -> int:
    """Return the DCT scale-down (1, 2, 4 or 8) of the fast mode for a JPEG of ``width``×``height``.

    The largest factor ``s`` with both ``width`` and ``height`` at least ``2 · input_size · s``, so
    the decoded image keeps both sides at least twice the network input: what Pillow's
    ``Image.draft(mode, (2·S, 2·S))`` picks and what ``tf.io.decode_jpeg(ratio=s)`` is given.
    """
    floor = 2 * input_size
    return next((s for s in _DCT_SCALES if width >= floor * s and height >= floor * s), 1)


def _dct_scale(image: Image.Image, decode: str, input_size: int) -> int:
    """Return the DCT scale-down for an opened image in ``decode`` mode (1 unless a large JPEG in fast mode)."""
    if check_decode(decode) == "exact" or image.format not in JPEG_FORMATS:
        return 1
    return jpeg_scale(*image.size, input_size)


def decode_rgb(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, jpeg_dct_method: str | None = None,
               decode: str = DEFAULT_DECODE, input_size: int = DEFAULT_INPUT_SIZE) -> np.ndarray:
    """Decode image bytes to an upright uint8 RGB array [H, W, 3].

    EXIF orientation is applied; grayscale, palette, CMYK and 16-bit images are
    converted to 8-bit RGB (16-bit scaled, not clipped); transparency is
    composited over white; GIFs and other animations give their first frame.

    Args:
        jpeg_dct_method: when not None, RGB and grayscale JPEGs are decoded by
            TensorFlow's ``DecodeJpeg`` with this ``dct_method`` ("" is TF's
            default, the fast integer IDCT) so the pixels equal what a graph's
            own ``DecodeJpeg`` node produces; None decodes with Pillow (the
            accurate integer IDCT).
        decode: "exact", or "fast": a large JPEG is DCT-scaled by
            :func:`jpeg_scale` while it is decoded (the array is smaller).
        input_size: the network input side the fast mode keeps twice of.
    """
    image = open_checked(data, max_pixels)
    scale = _dct_scale(image, decode, input_size)
    if jpeg_dct_method is not None and image.format in JPEG_FORMATS and image.mode in ("RGB", "L"):
        rgb = _decode_jpeg_like_graph(data, image, jpeg_dct_method, scale)
        if rgb is not None:
            return rgb
        # TensorFlow refused it: let Pillow try, and say precisely what is wrong if it fails too.
    try:
        image.seek(0)
        if scale > 1:  # the same reduction through Pillow's libjpeg (draft picks `scale` for this request)
            image.draft(image.mode, (2 * input_size, 2 * input_size))
        image.load()
        image = _upright(image)
        return _to_rgb_array(image)
    except (InvalidImage, MemoryError):
        raise
    except Exception as exc:  # truncated data, bad CRC, corrupt Huffman tables, ...
        raise InvalidImage(f"corrupt {image.format} image: {exc}") from exc


# EXIF orientation tag value → the transpose that makes the image upright (as ImageOps.exif_transpose).
_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}
_EXIF_ORIENTATION_TAG = 0x0112


def _decode_jpeg_like_graph(data: bytes, header: Image.Image, dct_method: str, scale: int = 1
                            ) -> np.ndarray | None:
    """Decode a JPEG as TensorFlow's DecodeJpeg (the graph's own decoder) does and apply EXIF orientation.

    libjpeg-turbo through simplejpeg where it stands in for TensorFlow (see
    :func:`_decode_jpeg_turbo`), else TensorFlow itself. ``scale`` > 1
    DCT-scales it down by that factor. Returns None when TensorFlow cannot decode it.
    """
    rgb = _decode_jpeg_turbo(data, dct_method, scale, header.size) if scale > 1 else None
    if rgb is None:
        import tensorflow as tf

        try:
            rgb = tf.io.decode_jpeg(data, channels=3, dct_method=dct_method, ratio=scale).numpy()
        except tf.errors.OpError:
            return None
    orientation = _orientation(header)
    if orientation in _ORIENTATION:
        rgb = np.asarray(Image.fromarray(rgb).transpose(_ORIENTATION[orientation]))
    return rgb


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag; a malformed EXIF block leaves the image as it is."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception as exc:
        log.debug("ignoring unreadable EXIF orientation: %s", exc)
        return image


def _to_rgb_array(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        # 16-bit grayscale (I;16*, or I from PNG): scale 0..65535 to 0..255, never clip.
        values = np.asarray(image, dtype=np.float64)
        gray = np.clip(np.rint(values * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "F":
        raise UnsupportedImageType("floating-point images are not supported")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    elif mode == "P":
        image = image.convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        image = Image.alpha_composite(background, rgba)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)


@functools.lru_cache(maxsize=64)  # a service sees the same few photo sizes over and over
def _legacy_axis(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (lower index, upper index, fraction) of TF's legacy bilinear resize along one axis."""
    scale = np.float32(in_size) / np.float32(out_size)
    pos = np.arange(out_size, dtype=np.float32) * scale
    lower = np.floor(pos).astype(np.int64)
    upper = np.minimum(lower + 1, in_size - 1)
    return lower, upper, (pos - lower.astype(np.float32)).astype(np.float32)


def resize_bilinear(image: np.ndarray, size: int) -> np.ndarray:
    """Resize [H, W, C] to float32 [size, size, C] as TF's ``ResizeBilinear`` (align_corners=False) does."""
    height, width = image.shape[:2]
    y0, y1, fy = _legacy_axis(height, size)
    x0, x1, fx = _legacy_axis(width, size)
    # Gather the source rows, then the source columns, still in the source dtype (so only the
    # (2·size)² needed pixels are converted), then interpolate along x and along y in the TF
    # kernel's order so the results match it exactly.
    rows = np.take(image, np.concatenate([y0, y1]), axis=0)
    pixels = np.take(rows, np.concatenate([x0, x1]), axis=1).astype(np.float32)
    top_left, top_right = pixels[:size, :size], pixels[:size, size:]
    bottom_left, bottom_right = pixels[size:, :size], pixels[size:, size:]
    fx = fx[None, :, None]
    top = top_left + (top_right - top_left) * fx
    bottom = bottom_left + (bottom_right - bottom_left) * fx
    return top + (bottom - top) * fy[:, None, None]


def normalize(image: np.ndarray, mean: float, std: float) -> np.ndarray:
    """Return ``(image - mean) * (1 / std)`` in float32, the graph's ``Sub`` then ``Mul``."""
    return (image.astype(np.float32) - np.float32(mean)) * np.float32(1.0 / std)


def decode_to_input(data: bytes, size: int = 299, mean: float = 128.0, std: float = 128.0,
                    max_pixels: int = DEFAULT_MAX_PIXELS, jpeg_dct_method: str | None = None,
                    decode: str = DEFAULT_DECODE, with_rgb: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
    """Return (upright uint8 RGB [H, W, 3], network input [size, size, 3]) for image bytes.

    ``with_rgb`` False: (None, network input), and a JPEG's fused call hands over no RGB copy (a 12-megapixel
    photo's is 36 MB): what only the network input is wanted for (:func:`decode_input`).

    The same numbers as :func:`decode_rgb` then :func:`resize_bilinear` and
    :func:`normalize` (tested bit for bit), faster for the commonest case: an
    RGB or grayscale JPEG decoded like the graph (a ``jpeg_dct_method`` is
    given), EXIF-rotated or not, goes through one TensorFlow call that decodes,
    turns it upright by its EXIF orientation (the same transpose as
    :func:`decode_rgb`, before the resize), resizes with the legacy
    ``ResizeBilinear`` kernel the numpy resize reproduces, and normalises — in
    C++, outside the GIL, with no float copy of the full-size photo. A JPEG the
    fast mode DCT-scales is decoded by libjpeg-turbo first
    (:func:`_decode_jpeg_turbo`, the same pixels) and the TensorFlow call does
    the rest. Every other
    image (CMYK JPEGs, other formats, Pillow decoding) takes the general path.
    With ``decode="fast"`` the returned RGB is the DCT-scaled one (upright).

    Raises:
        InvalidImage, UnsupportedImageType, ImageTooLarge: as :func:`decode_rgb`.
    """
    image = open_checked(data, max_pixels)
    if jpeg_dct_method is not None and image.format in JPEG_FORMATS and image.mode in ("RGB", "L"):
        import tensorflow as tf

        scale = _dct_scale(image, decode, size)  # from the stored size; symmetric in width and height anyway
        orientation = tf.constant(_upright_orientation(image), tf.int32)
        decoded = _decode_jpeg_turbo(data, jpeg_dct_method, scale, image.size) if scale > 1 else None
        if decoded is not None:  # the same pixels, decoded faster: upright, resize and normalise in TensorFlow
            out = _upright_resize_function(size, float(mean), float(std), with_rgb)(decoded, orientation)
            return (out[0].numpy() if with_rgb else None), out[-1].numpy()
        try:
            out = _fused_jpeg_function(size, float(mean), float(std), jpeg_dct_method, scale, with_rgb)(
                tf.constant(data), orientation)
            return (out[0].numpy() if with_rgb else None), out[-1].numpy()
        except tf.errors.OpError:
            jpeg_dct_method = None  # TensorFlow refused it: Pillow tries (not TensorFlow again), says what is wrong
    rgb = decode_rgb(data, max_pixels, jpeg_dct_method, decode, size)
    return (rgb if with_rgb else None), normalize(resize_bilinear(rgb, size), mean, std)


def decode_input(data: bytes, size: int = 299, mean: float = 128.0, std: float = 128.0,
                 max_pixels: int = DEFAULT_MAX_PIXELS, jpeg_dct_method: str | None = None,
                 decode: str = DEFAULT_DECODE) -> np.ndarray:
    """Return the network input [size, size, 3] of image bytes: :func:`decode_to_input` without the RGB copy.

    Raises:
        InvalidImage, UnsupportedImageType, ImageTooLarge: as :func:`decode_rgb`.
    """
    return decode_to_input(data, size, mean, std, max_pixels, jpeg_dct_method, decode, with_rgb=False)[1]


def _orientation(header: Image.Image):
    """Return the EXIF orientation tag of an opened image (None when absent or unreadable)."""
    try:
        return header.getexif().get(_EXIF_ORIENTATION_TAG)
    except Exception:
        return None


def _upright_orientation(header: Image.Image) -> int:
    """Return the EXIF orientation 1-8 that :func:`_decode_jpeg_like_graph` applies (1: none, as for an
    absent, unreadable or unknown tag)."""
    orientation = _orientation(header)
    try:
        return int(orientation) if orientation in _ORIENTATION else 1
    except TypeError:  # an unhashable value from a malformed EXIF block
        return 1


# The traced functions, made and traced under one lock. Decode threads and request threads call them at
# once; traced lazily, several threads traced the same function side by side, and Python 3.11's AST
# construction is not safe across threads (CPython gh-106905: "SystemError: AST constructor recursion
# depth mismatch"). So each is traced once, here, without autograph (they hold no Python control flow
# for it to convert, so nothing parses source at all).
_FUSED_LOCK = threading.Lock()
_FUSED: dict = {}


def _fused_jpeg_function(size: int, mean: float, std: float, dct_method: str, scale: int = 1,
                         with_rgb: bool = True):
    """Return the traced TensorFlow function (JPEG bytes, EXIF orientation 1-8) → (upright RGB,
    normalised input) for these settings (``with_rgb`` False: (normalised input,))."""
    key = (size, mean, std, dct_method, scale, with_rgb)
    with _FUSED_LOCK:
        function = _FUSED.get(key)
        if function is None:
            import tensorflow as tf

            # The orientation is an int32 argument picking a branch of tf.switch_case, not part of the
            # key: one traced function per setting serves all eight orientations (a key per orientation
            # would trace up to 8× as many, each at the first photo turned that way, mid-request), and
            # a tensor argument under the input signature never retraces. Only the branch taken runs.
            @tf.function(input_signature=[tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.int32)],
                         autograph=False)
            def decode_resize_normalize(contents, orientation):
                rgb = tf.io.decode_jpeg(contents, channels=3, dct_method=dct_method, ratio=scale)
                rgb = _tf_upright(rgb, orientation)
                resized = tf.raw_ops.ResizeBilinear(images=rgb[None], size=[size, size], align_corners=False,
                                                    half_pixel_centers=False)[0]
                x = (resized - np.float32(mean)) * np.float32(1.0 / std)  # the graph's Sub, then Mul
                return (rgb, x) if with_rgb else (x,)

            # Traced here, under the lock (see _FUSED_LOCK); requests call the concrete function itself, which
            # skips tf.function's per-call argument binding and cache lookup.
            function = _FUSED[key] = decode_resize_normalize.get_concrete_function()
    return function


def _upright_resize_function(size: int, mean: float, std: float, with_rgb: bool = True):
    """Return the traced TensorFlow function (decoded uint8 RGB [H, W, 3], EXIF orientation 1-8) → (upright
    RGB, normalised input): the fused function's steps after decoding, for a JPEG decoded by libjpeg-turbo
    (``with_rgb`` False: (normalised input,))."""
    key = ("decoded", size, mean, std, with_rgb)
    with _FUSED_LOCK:
        function = _FUSED.get(key)
        if function is None:
            import tensorflow as tf

            @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([], tf.int32)],
                         autograph=False)
            def upright_resize_normalize(rgb, orientation):
                rgb = _tf_upright(rgb, orientation)
                resized = tf.raw_ops.ResizeBilinear(images=rgb[None], size=[size, size], align_corners=False,
                                                    half_pixel_centers=False)[0]
                x = (resized - np.float32(mean)) * np.float32(1.0 / std)
                return (rgb, x) if with_rgb else (x,)

            function = _FUSED[key] = upright_resize_normalize.get_concrete_function()  # traced under the lock
    return function


# TensorFlow's DecodeJpeg dct_method → libjpeg's: "" is TensorFlow's default, the fast integer IDCT.
_TURBO_FASTDCT = {"": True, "INTEGER_FAST": True, "INTEGER_ACCURATE": False}


def _decode_jpeg_turbo(data: bytes, dct_method: str, scale: int, size: tuple[int, int]) -> np.ndarray | None:
    """Decode an RGB or grayscale JPEG to the pixels TensorFlow's ``decode_jpeg`` gives, with simplejpeg.

    simplejpeg runs libjpeg-turbo 3 with the same settings as TensorFlow's
    decoder (``dct_method``, fancy upsampling, the DCT ``scale``), so the pixels
    are the same (tested bit for bit). Callers use it for DCT-scaled decodes
    (``--decode fast`` on large JPEGs) only: there it decodes a 12-megapixel
    photo with about 1.2× less CPU (12 MP ``fast`` end to end: 25.5 → 28.8
    img/s on a 2-core machine); at full size the array it hands over costs a
    copy into TensorFlow that TensorFlow's own decoder does not (12 MP
    ``exact``: 14.6–18.1 img/s with TensorFlow's decoder, 14.4–15.3 with it),
    and small photos gained nothing end to end. Returns None where it cannot
    stand in for TensorFlow: simplejpeg not installed, a dct_method it has no
    match for, or a JPEG it refuses (it raises even on the warnings libjpeg
    recovers from; TensorFlow then decides, as before).
    """
    if _simplejpeg is None or dct_method not in _TURBO_FASTDCT or not _turbo_agrees_with_tensorflow():
        return None
    width, height = size
    want = (-(-height // scale), -(-width // scale))  # libjpeg's scaled size: ceil(side / scale)
    try:
        rgb = _simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=_TURBO_FASTDCT[dct_method],
                                      fastupsample=False, min_height=want[0], min_width=want[1],
                                      min_factor=float(scale), strict=True)
    except (ValueError, RuntimeError, MemoryError) as exc:  # corrupt or unusual: TensorFlow decides
        log.debug("simplejpeg refused a JPEG (%s); decoding it with TensorFlow", exc)
        return None
    return rgb if rgb.shape[:2] == want else None


@functools.lru_cache(maxsize=1)
def _turbo_agrees_with_tensorflow() -> bool:
    """Return whether simplejpeg's scaled decodes equal TensorFlow's here, checked once per process.

    The features' cache keys promise TensorFlow's pixels; the two libraries
    bundle their own libjpeg-turbo, and a new wheel of either could decode
    differently. On a difference libjpeg-turbo is not used (and that is logged).
    """
    import tensorflow as tf

    rng = np.random.default_rng(0)
    field = np.asarray(Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).resize((1280, 1216)))
    pixels = np.clip(field.astype(np.int16) + rng.integers(-8, 9, field.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    for dct_method, fastdct in _TURBO_FASTDCT.items():
        for scale in (2, 4):
            ours = _simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=fastdct, fastupsample=False,
                                           min_height=-(-1216 // scale), min_width=-(-1280 // scale),
                                           min_factor=float(scale))
            theirs = tf.io.decode_jpeg(data, channels=3, dct_method=dct_method, ratio=scale).numpy()
            if ours.shape != theirs.shape or not np.array_equal(ours, theirs):
                log.warning("simplejpeg %s decodes JPEGs differently from TensorFlow here (dct_method %r, "
                            "scale 1/%d); decoding them all with TensorFlow", _simplejpeg.__version__, dct_method,
                            scale)
                return False
    return True


def _tf_upright(rgb, orientation):
    """Turn a decoded [H, W, C] tensor upright by EXIF ``orientation`` (an int32 scalar tensor, 1-8) in TensorFlow.

    Each branch does what ``_ORIENTATION``'s Pillow transpose does (axis 0: rows, top to bottom; axis 1:
    columns, left to right); the tests compare all eight with :func:`decode_rgb` bit for bit.
    """
    import tensorflow as tf

    def flip(image, axes):  # [1]: left-right, [0]: top-bottom, [0, 1]: both (180°), one copy
        return tf.reverse(image, axis=axes)

    def swap_axes(image):
        return tf.transpose(image, perm=[1, 0, 2])

    branches = [
        lambda: rgb,                           # 1: upright already (no copy)
        lambda: flip(rgb, [1]),                # 2: FLIP_LEFT_RIGHT
        lambda: flip(rgb, [0, 1]),             # 3: ROTATE_180
        lambda: flip(rgb, [0]),                # 4: FLIP_TOP_BOTTOM
        lambda: swap_axes(rgb),                # 5: TRANSPOSE
        lambda: flip(swap_axes(rgb), [1]),     # 6: ROTATE_270 (90° clockwise)
        lambda: flip(swap_axes(rgb), [0, 1]),  # 7: TRANSVERSE (TRANSPOSE, then 180°)
        lambda: flip(swap_axes(rgb), [0]),     # 8: ROTATE_90 (90° counter-clockwise)
    ]
    # 5-8: the transpose dominates (about 90 ms of CPU for a 12-megapixel decode, close to numpy's rot90
    # copy); flipping after it rather than before measured no slower (one run on a busy 2-core machine).
    return tf.switch_case(orientation - 1, branches, default=branches[0])


def preprocess(data: bytes, size: int = 299, mean: float = 128.0, std: float = 128.0,
               max_pixels: int = DEFAULT_MAX_PIXELS, jpeg_dct_method: str | None = None,
               decode: str = DEFAULT_DECODE) -> np.ndarray:
    """Decode, resize and normalise image bytes to the network input [size, size, 3]."""
    return normalize(resize_bilinear(decode_rgb(data, max_pixels, jpeg_dct_method, decode, size), size), mean, std)
