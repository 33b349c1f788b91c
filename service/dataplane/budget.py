"""Work budgets per request: decoded pixels counted from image headers, and a gate on decodes in flight.

A small PNG can decode to 7000×7000, and a TF Serving request can carry 64 of
them: megabytes on the wire, a minute of CPU and gigabytes of memory once
decoded. Three limits, beside the per-image pixel limit and the instance limit:

* **per request** (``IMGCLF_MAX_REQUEST_PIXELS``): the pixels of every image of
  a request are summed from the headers (Pillow opens lazily: nothing is
  decoded) before the first image is decoded; over the budget is a 413;
* **per worker** (``IMGCLF_MAX_DECODE_PIXELS_IN_FLIGHT``): a request holds a
  weight of its largest image's pixels (its images are decoded one after the
  other) in a weighted semaphore while it decodes, so concurrent heavy
  requests take turns instead of piling their decoded images up in memory.
  Small requests fit beside a large one and are not queued behind it; a
  decode that waits longer than ``IMGCLF_DECODE_WAIT_SECONDS`` answers 503;
* **per JPEG** (``IMGCLF_MAX_JPEG_SCANS``, ``IMGCLF_MAX_JPEG_SCAN_PIXELS``): a
  progressive JPEG is decoded once per scan, so 1,000 scans of 49 MP cost
  minutes in a few hundred KB; the scans are counted by walking the markers
  (about 6 ms for 11 MB or 1,000 scans), and more scans, or more scans times
  pixels, than allowed is a 413.

The data plane (:mod:`imgclf.service.dataplane.plane`) decodes a request's
encoded images inside :meth:`Budget.admit`, whatever protocol brought them.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Gauge

from imgclf.core.errors import ImageTooLarge, ImgclfError, NotReady, PayloadTooLarge
from imgclf.featurizer.images.decode import (
    DEFAULT_MAX_JPEG_SCAN_PIXELS,
    DEFAULT_MAX_JPEG_SCANS,
    jpeg_scans,
    open_checked,
)

if TYPE_CHECKING:  # the settings tree imports the parsers of this layer: a type only, no cycle
    from imgclf.service.settings import ServingSettings

# After a decode of this many pixels the freed heap goes back to the system at once: Pillow decodes in 16 MB
# blocks, which glibc keeps in each thread's arena, so without it every thread that decoded a large image
# would hold its ~11 bytes per pixel until the worker's periodic malloc_trim (and the gate would bound
# nothing). A trim takes about a millisecond; such a decode a few hundred.
TRIM_PIXELS = 4_000_000


def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_MALLOC_TRIM = _malloc_trim()


def release_freed_memory() -> None:
    """Hand the heap memory freed by this process back to the system (glibc ``malloc_trim``; elsewhere nothing)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


class DecodeBusy(NotReady):
    """The worker's decode gate stayed full for longer than the wait allowed (503, Retry-After)."""


def header_pixels(data: bytes) -> int:
    """Return the pixel count an encoded image's header claims; 0 when it cannot be read (its decode says why)."""
    try:
        image = open_checked(data, max_pixels=sys.maxsize)
    except ImgclfError:
        return 0
    width, height = image.size
    image.close()
    return width * height


class DecodeGate:
    """A weighted semaphore on the pixels being decoded in one worker."""

    def __init__(self, capacity: int, wait_seconds: float, gauge=None):
        self.capacity = int(capacity)  # 0 = no gate
        self.wait_seconds = float(wait_seconds)
        self.in_use = 0  # pixels being decoded now
        self._gauge = gauge
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        """Hold ``pixels`` (at most the capacity: a larger image runs alone) while the block runs.

        Raises:
            DecodeBusy: the gate had no room for ``wait_seconds``.
        """
        weight = min(int(pixels), self.capacity)
        if weight <= 0:
            yield
            return
        deadline = time.monotonic() + self.wait_seconds
        with self._cond:
            while self.in_use and self.in_use + weight > self.capacity:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DecodeBusy(f"the server is decoding other large images; {pixels:,} pixels waited "
                                     f"{self.wait_seconds:g} s for room: try again")
                self._cond.wait(remaining)
            self.in_use += weight
            self._show()
        try:
            yield
        finally:
            if weight >= TRIM_PIXELS:
                release_freed_memory()
            with self._cond:
                self.in_use -= weight
                self._show()
                self._cond.notify_all()

    def _show(self) -> None:
        if self._gauge is not None:
            self._gauge.set(self.in_use)


class Budget:
    """One worker's limits: pixels per image and per request, and the decode gate."""

    def __init__(self, max_request_pixels: int, gate: DecodeGate, max_pixels: int = sys.maxsize,
                 max_jpeg_scans: int = DEFAULT_MAX_JPEG_SCANS,
                 max_jpeg_scan_pixels: int = DEFAULT_MAX_JPEG_SCAN_PIXELS):
        self.max_request_pixels = int(max_request_pixels)  # 0 = no limit
        self.max_pixels = int(max_pixels)  # per image: an image over it is refused by its own check
        self.max_jpeg_scans = int(max_jpeg_scans)  # 0 = no limit
        self.max_jpeg_scan_pixels = int(max_jpeg_scan_pixels)  # scans × pixels of one JPEG; 0 = no limit
        self.gate = gate

    @classmethod
    def from_config(cls, config: ServingSettings, registry: CollectorRegistry | None) -> Budget:
        """Return the budget ``config`` sets, with a gauge of the gate's use in ``registry`` (None: unregistered,
        as metrics are in multiprocess mode)."""
        gauge = Gauge("imgclf_decode_pixels_in_flight", "Image pixels being decoded now (the decode gate's use).",
                      multiprocess_mode="livesum", registry=registry)
        return cls(config.max_request_pixels,
                   DecodeGate(config.max_decode_pixels_in_flight, config.decode_wait_seconds, gauge),
                   config.max_pixels, config.max_jpeg_scans, config.max_jpeg_scan_pixels)

    def check(self, pixels: list[int]) -> None:
        """Raise PayloadTooLarge (413) when the images' pixels sum to more than the request budget."""
        total = sum(pixels)
        if self.max_request_pixels and total > self.max_request_pixels:
            raise PayloadTooLarge(f"the request's {len(pixels)} image(s) decode to {total:,} pixels; at most "
                                  f"{self.max_request_pixels:,} are allowed per request")

    def check_scans(self, images: list[bytes], pixels: list[int]) -> None:
        """Raise ImageTooLarge (413) for a JPEG with more scans, or scans × pixels, than allowed (naming the instance).

        ``pixels``: each image's pixels from its header (0 when unknown).
        """
        if not (self.max_jpeg_scans or self.max_jpeg_scan_pixels):
            return
        for index, (data, size) in enumerate(zip(images, pixels)):
            scans = jpeg_scans(data)
            where = f"instance {index}: " if len(images) > 1 else ""
            if self.max_jpeg_scans and scans > self.max_jpeg_scans:
                raise ImageTooLarge(f"{where}the JPEG holds {scans:,} scans; at most {self.max_jpeg_scans:,} are "
                                    "decoded (each scan is a pass over every pixel)")
            if self.max_jpeg_scan_pixels and scans * size > self.max_jpeg_scan_pixels:
                raise ImageTooLarge(f"{where}the JPEG holds {scans:,} scans of {size:,} pixels; scans × pixels may "
                                    f"be at most {self.max_jpeg_scan_pixels:,} (each scan is a pass over every pixel)")

    @contextlib.contextmanager
    def admit(self, images: list[bytes]) -> Iterator[None]:
        """Check a request's encoded images against the budget (413), then hold the decode gate while the block runs.

        Raises:
            ImageTooLarge: a JPEG holds more scans (or scans × pixels) than allowed.
            PayloadTooLarge: the images' headers claim more pixels than a request may decode.
            DecodeBusy: no room in the gate within the wait allowed (503).
        """
        if not images:
            yield
            return
        # An image over the per-image limit counts 0 here: its own check refuses it from its header, with its message.
        pixels = [p if p <= self.max_pixels else 0 for p in map(header_pixels, images)]
        self.check_scans(images, pixels)
        self.check(pixels)
        with self.gate.hold(max(pixels, default=0)):
            yield
