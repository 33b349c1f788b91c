"""The exception tree shared by every part of imgclf.

Each error carries a message that says what was received; the service maps
the classes to HTTP statuses in one place.
"""


class ImgclfError(Exception):
    """Base class of every error imgclf raises on purpose."""


class InvalidImage(ImgclfError):
    """The bytes are not a decodable image (corrupt, truncated, not an image)."""


class UnsupportedImageType(InvalidImage):
    """The bytes are an image, but of a format imgclf does not accept."""


class ImageTooLarge(InvalidImage):
    """The image has more pixels (or bytes) than the configured limit."""


class GraphError(ImgclfError):
    """A frozen graph cannot be loaded or lacks the tensors it should have."""


class UnsafeGraph(GraphError):
    """A graph contains ops that are not allowed without an explicit opt-in."""


class DownloadError(ImgclfError):
    """A download failed (offline, bad status, corrupt archive)."""
