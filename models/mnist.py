"""Load MNIST from a local ``mnist.npz`` (Keras' layout), check it, and split it as the curriculum did.

The file holds ``x_train`` uint8 [N, 28, 28], ``y_train`` integer [N] (0–9),
``x_test`` and ``y_test`` likewise. It is read with ``allow_pickle=False``, so
a file with pickled objects is refused rather than executed. The last
``validation_size`` training images are the validation set, the rest train,
``x_test`` is the test set; pixels are scaled to [0, 1] (white digit on black).
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np

from imgclf.core.paths import imgclf_home
from imgclf.models.data import Data, Split

KEYS = ("x_train", "y_train", "x_test", "y_test")
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
FILE_NAME = "mnist.npz"


def default_mnist_path() -> Path:
    """Return where `imgclf models fetch-mnist` installs the file: ``$IMGCLF_HOME/data/mnist.npz``."""
    return imgclf_home() / "data" / FILE_NAME


def read_mnist(path: str | Path) -> dict[str, np.ndarray]:
    """Read and check the four arrays of an ``mnist.npz``; return them by key.

    Raises:
        FileNotFoundError: there is no file at ``path``.
        ValueError: the file is not an .npz archive, holds pickled objects, lacks a key,
            or an array has the wrong shape, dtype or label values (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no MNIST file at {str(path)!r}: run `imgclf models fetch-mnist`, or copy "
                                f"mnist.npz there (or pass --data PATH)")
    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError as exc:  # not an archive or array: np.load would have to unpickle it
        raise ValueError(f"{str(path)!r} is not an .npz archive of arrays (loading it would need unpickling, "
                         f"which is refused: allow_pickle=False)") from exc
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ValueError(f"{str(path)!r} is not a readable .npz archive: {exc}") from exc
    if not isinstance(loaded, np.lib.npyio.NpzFile):  # a bad file, not a programming error
        raise ValueError(
            f"{str(path)!r} is a single .npy array, not an .npz archive with {', '.join(KEYS)}")
    arrays = {}
    try:
        with loaded as archive:
            missing = [key for key in KEYS if key not in archive.files]
            if missing:
                raise ValueError(f"{str(path)!r} lacks the array(s) {', '.join(missing)} (it holds: "
                                 f"{', '.join(archive.files) or 'nothing'}); expected Keras' mnist.npz layout "
                                 f"with {', '.join(KEYS)}")
            for key in KEYS:
                try:
                    arrays[key] = archive[key]
                except ValueError as exc:  # object arrays need pickle, which is refused
                    raise ValueError(f"{key} in {str(path)!r} is an object array that only unpickling could "
                                     f"read, which is refused (allow_pickle=False)") from exc
    except (zipfile.BadZipFile, OSError, EOFError) as exc:  # a corrupt member
        raise ValueError(f"{str(path)!r} is a damaged .npz archive: {exc}") from exc
    for part in ("train", "test"):
        check_images(f"x_{part}", arrays[f"x_{part}"], path)
        check_labels(f"y_{part}", arrays[f"y_{part}"], len(arrays[f"x_{part}"]), path)
    return arrays


def check_images(key: str, x: np.ndarray, path: Path) -> None:
    """Raise ValueError unless ``x`` is uint8 [N >= 1, 28, 28]."""
    if x.dtype != np.uint8:
        raise ValueError(f"{key} in {str(path)!r} must be uint8 pixels (0-255); received dtype {x.dtype}")
    if x.ndim != 3 or x.shape[1:] != IMAGE_SHAPE or x.shape[0] == 0:
        raise ValueError(f"{key} in {str(path)!r} must have shape [N, 28, 28] with N >= 1; "
                         f"received shape {list(x.shape)}")


def check_labels(key: str, y: np.ndarray, count: int, path: Path) -> None:
    """Raise ValueError unless ``y`` holds ``count`` integer labels in 0–9."""
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{key} in {str(path)!r} must hold integer labels; received dtype {y.dtype}")
    if y.ndim != 1 or y.shape[0] != count:
        raise ValueError(f"{key} in {str(path)!r} must have shape [{count}] (one label per image); "
                         f"received shape {list(y.shape)}")
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= NUM_CLASSES:
        raise ValueError(f"{key} in {str(path)!r} must hold labels 0-9; received values from {low} to {high}")


DEFAULT_VALIDATION_SIZE = 5000  # the curriculum's: 55,000 of MNIST's 60,000 training images train


def default_validation_size(train_images: int) -> int:
    """Return the default validation split: 5,000 images, or a twelfth of a smaller training set (as MNIST's)."""
    return min(DEFAULT_VALIDATION_SIZE, train_images // 12)


def load_mnist(path: str | Path | None = None, validation_size: int | None = None) -> Data:
    """Load ``path`` (default :func:`default_mnist_path`) as train/validation/test splits.

    Args:
        path: an ``mnist.npz`` in Keras' layout.
        validation_size: the last this many training images form the validation set (0 = none;
            None = :func:`default_validation_size`).

    Returns:
        Splits with images float32 [N, 28, 28] in [0, 1] and labels int32 [N].

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is malformed (see :func:`read_mnist`) or ``validation_size``
            leaves no training images.
    """
    path = Path(path) if path is not None else default_mnist_path()
    arrays = read_mnist(path)
    x_train, y_train = arrays["x_train"], arrays["y_train"]
    if validation_size is None:
        validation_size = default_validation_size(len(x_train))
    if isinstance(validation_size, bool) or not isinstance(validation_size, int) \
            or not 0 <= validation_size < len(x_train):
        raise ValueError(f"validation_size must be an integer in [0, {len(x_train)}) for {str(path)!r} "
                         f"({len(x_train)} training images); received {validation_size!r}")
    cut = len(x_train) - validation_size
    validation = _split(x_train[cut:], y_train[cut:]) if validation_size else None
    return Data(train=_split(x_train[:cut], y_train[:cut]), validation=validation,
                test=_split(arrays["x_test"], arrays["y_test"]),
                source={"file": str(path.resolve()), "sha256": file_sha256(path),
                        "validation": f"last {validation_size} of x_train"})


def _split(x: np.ndarray, y: np.ndarray) -> Split:
    return Split(x.astype(np.float32) / np.float32(255.0), y.astype(np.int32))


def file_sha256(path: Path) -> str:
    """Return the hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
