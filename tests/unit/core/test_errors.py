"""The exception tree and the one table of exit statuses."""

import errno
import sqlite3

import pytest

from imgclf.core import errors
from imgclf.core.devices import DeviceError
from imgclf.core.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_REJECTED,
    EXIT_USAGE,
    CandidateRejected,
    DownloadError,
    GraphError,
    ImgclfError,
    InvalidImage,
    ModelNotFound,
    TrainingDiverged,
    UnsafeGraph,
    UsageError,
    exit_status,
)


@pytest.mark.parametrize("exc, status", [
    (UsageError("--epochs must be at least 1"), EXIT_USAGE),
    (DeviceError("IMGCLF_DEVICE='/tpu:0' is not a device"), EXIT_USAGE),  # a setting
    (TrainingDiverged("diverged"), EXIT_FAILED),
    (CandidateRejected("candidate rejected by the publish gate"), EXIT_REJECTED),
    (FloatingPointError("nan"), EXIT_FAILED),
    (ZeroDivisionError(), EXIT_FAILED),
    (ValueError("the split has too few images of class b"), EXIT_FAILED),  # a data fault, not an argument
    (InvalidImage("x"), EXIT_FAILED), (UnsafeGraph("x"), EXIT_FAILED), (GraphError("x"), EXIT_FAILED),
    (DownloadError("offline"), EXIT_FAILED), (ModelNotFound("no model"), EXIT_FAILED),
    (ImgclfError("x"), EXIT_FAILED),
    (PermissionError(errno.EACCES, "Permission denied", "/x"), EXIT_FAILED),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/x"), EXIT_FAILED),
    (KeyboardInterrupt(), EXIT_INTERRUPTED),
    (RuntimeError("bug"), None), (TypeError("bug"), None), (KeyError("bug"), None), (AttributeError(), None),
    (sqlite3.OperationalError("bug"), None),
])
def test_exit_status_table(exc, status):
    assert exit_status(exc) == status


def test_exit_statuses_are_those_the_readme_names():
    assert (errors.EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_REJECTED, EXIT_INTERRUPTED) == (0, 1, 2, 3, 130)


def test_the_tree_keeps_the_builtin_bases_callers_catch():
    assert issubclass(UsageError, ValueError) and issubclass(UsageError, ImgclfError)
    assert issubclass(TrainingDiverged, FloatingPointError) and issubclass(TrainingDiverged, ImgclfError)
    assert issubclass(ModelNotFound, LookupError) and issubclass(DeviceError, UsageError)


def test_tensorflow_file_system_errors_are_a_users_to_act_on():
    tf_errors = pytest.importorskip("tensorflow").errors
    assert exit_status(tf_errors.PermissionDeniedError(None, None, "/x; Operation not permitted")) == EXIT_FAILED
    assert exit_status(tf_errors.NotFoundError(None, None, "/x; No such file")) == EXIT_FAILED
    assert exit_status(tf_errors.ResourceExhaustedError(None, None, "OOM")) == EXIT_FAILED
    assert exit_status(tf_errors.InvalidArgumentError(None, None, "shape mismatch")) is None  # a bug of ours
