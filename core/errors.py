"""The exception tree shared by every part of imgclf, and the exit status of each error.

Each error carries a message that says what was received. The service's protocols
map the classes to their statuses (HTTP: :mod:`imgclf.service.protocols.rest`); the
command line maps them to exit statuses here, with :func:`exit_status`.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1  # the job failed: bad data, a missing file, a diverged training, a download that failed
EXIT_USAGE = 2  # bad arguments or settings (argparse exits with it too)
# `imgclf train`: the candidate failed the publish gate (training.gate); it is kept under NAME/rejected/<time>/,
# no version is published. Its own status, so a pipeline can tell "not good enough" from "broken".
EXIT_REJECTED = 3
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


class ImgclfError(Exception):
    """Base class of every error imgclf raises on purpose."""


class UsageError(ImgclfError, ValueError):
    """A command-line argument or an ``IMGCLF_*`` setting has a value imgclf cannot use (exit status 2)."""


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


class ModelNotFound(ImgclfError, LookupError):
    """No model, or no such version of it, in the repository."""


class TrainingDiverged(ImgclfError, FloatingPointError):
    """The training loss became NaN or infinite."""


class CandidateRejected(ImgclfError):
    """A trained candidate failed the publish gate and was not published (exit status 3).

    ``report`` is the gate's report (:class:`imgclf.training.gate.GateReport`), ``kept_at`` the
    directory the candidate was kept in (``NAME/rejected/<UTC time>/``), ``outcome`` the training
    job's result, each None when not known.
    """

    def __init__(self, message: str, report=None, kept_at=None, outcome=None):
        super().__init__(message)
        self.report, self.kept_at, self.outcome = report, kept_at, outcome


# --- what a request to the service can be refused with (each protocol maps them to its own statuses) -----------


class BadRequest(ImgclfError):
    """Malformed input: missing field, bad JSON, wrong shape, bad parameter (HTTP 400)."""


class PayloadTooLarge(ImgclfError):
    """A body or a request over a size limit (HTTP 413)."""


class UnsupportedMediaType(ImgclfError):
    """A content type the route does not take (HTTP 415)."""


class NotReady(ImgclfError):
    """Models are still loading or warming up, or the worker is busy (HTTP 503, retry later)."""


# TensorFlow's own errors about files and memory (tf.errors.*, raised by its C++ file system, e.g. a
# TensorBoard writer in an unwritable folder): a user can act on them like on an OSError. Matched by
# name so that this module never imports TensorFlow.
TF_ERRORS_MODULE = "tensorflow.python.framework.errors_impl"
TF_USER_ERRORS = ("PermissionDeniedError", "NotFoundError", "AlreadyExistsError", "ResourceExhaustedError",
                  "DataLossError")


def exit_status(exc: BaseException) -> int | None:
    """Return the command-line exit status for ``exc``, or None for an error that is a bug (a traceback).

    Bad arguments and settings give 2; a candidate the publish gate rejected gives 3; every other error
    a user can act on — imgclf's own, a bad value in the data (ValueError), a file that is missing or
    cannot be read or written (OSError, and TensorFlow's file-system and out-of-memory errors),
    arithmetic that failed (FloatingPointError, ZeroDivisionError) — gives 1; Ctrl-C gives 130.
    """
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, UsageError):
        return EXIT_USAGE
    if isinstance(exc, CandidateRejected):
        return EXIT_REJECTED
    if isinstance(exc, (ImgclfError, ValueError, OSError, ArithmeticError)) or is_tf_user_error(exc):
        return EXIT_FAILED
    return None


def is_tf_user_error(exc: BaseException) -> bool:
    """Return whether ``exc`` is one of TensorFlow's file-system or memory errors (:data:`TF_USER_ERRORS`)."""
    return any(cls.__module__ == TF_ERRORS_MODULE and cls.__name__ in TF_USER_ERRORS for cls in type(exc).__mro__)
