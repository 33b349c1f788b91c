"""TensorBoard logs of a training run, written with TensorFlow's own summary writer.

Summaries go through ``tf.summary.write`` with the plugin metadata TensorBoard
expects, so writing logs does not need the ``tensorboard`` package (TF 2.21 no
longer installs it); viewing them does (``pip install tensorboard``).
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from imgclf.training.metrics import Metrics, confusion_image


def _metadata(plugin: str, data_class: int, description: str = ""):
    """Return the SummaryMetadata that tells TensorBoard which plugin shows a summary."""
    from tensorflow.core.framework import summary_pb2

    # content b"" is the plugin's data proto at version 0, as TensorBoard writes it.
    return summary_pb2.SummaryMetadata(
        summary_description=description, data_class=data_class,
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin, content=b""))


def write_scalar(tag: str, value: float, step: int) -> None:
    """Write a scalar summary to the default writer, as ``tensorboard.summary.scalar`` does."""
    from tensorflow.core.framework import summary_pb2

    tf.summary.write(tag, tf.constant(float(value), tf.float32), step=step,
                     metadata=_metadata("scalars", summary_pb2.DATA_CLASS_SCALAR))


def write_image(tag: str, rgb: np.ndarray, step: int, description: str = "") -> None:
    """Write one uint8 ``[H, W, 3]`` image summary, as ``tensorboard.summary.image`` does."""
    from tensorflow.core.framework import summary_pb2

    # The images plugin reads a string vector: width, height, then the encoded images.
    tensor = tf.stack([tf.as_string(rgb.shape[1]), tf.as_string(rgb.shape[0]),
                       tf.io.encode_png(rgb)])
    tf.summary.write(tag, tensor, step=step,
                     metadata=_metadata("images", summary_pb2.DATA_CLASS_BLOB_SEQUENCE, description))


def encode_png(rgb: np.ndarray) -> bytes:
    """Return uint8 RGB [H, W, 3] encoded as PNG."""
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.asarray(rgb, np.uint8)).save(out, "PNG")
    return out.getvalue()


def write_tensorboard_image(logdir: Path | None, tag: str, rgb: np.ndarray, description: str = "") -> None:
    """Write one image summary (step 0) under ``logdir/validation`` (nothing when ``logdir`` is None)."""
    if logdir is None:
        return
    writer = tf.summary.create_file_writer(str(Path(logdir) / "validation"))
    try:
        with writer.as_default():
            write_image(tag, rgb, 0, description)
    finally:
        writer.flush()
        writer.close()


class RunWriters:
    """TensorBoard summary writers for the train and validation curves of one run (step = epoch).

    Summaries go through TensorFlow's own writer (``tf.summary.write`` with the
    plugin metadata TensorBoard expects), so writing logs does not need the
    ``tensorboard`` package; viewing them does (``tensorboard --logdir``).
    """

    def __init__(self, logdir: Path, validation: bool = True):
        logdir = Path(logdir)
        self.train = tf.summary.create_file_writer(str(logdir / "train"))
        self.validation = tf.summary.create_file_writer(str(logdir / "validation")) if validation else None

    def epoch(self, row: dict) -> None:
        """Write one epoch's scalars: ``train_*`` and the learning rate under train/, ``val_*`` under validation/."""
        step = row["epoch"]
        with self.train.as_default():
            for key in row:
                if key.startswith("train_"):
                    write_scalar(key.removeprefix("train_"), row[key], step)
            write_scalar("learning_rate", row["learning_rate"], step)
        if self.validation is not None:
            with self.validation.as_default():
                for key in row:
                    if key.startswith("val_"):
                        write_scalar(key.removeprefix("val_"), row[key], step)

    def finish(self, model: keras.Model, input_dim: int, metrics: Metrics, step: int) -> None:
        """Write the validation confusion matrix as an image and the head's graph."""
        with self.validation.as_default():
            write_image("confusion_matrix", confusion_image(metrics.confusion, metrics.label_names),
                        step, description="validation set at the best epoch; rows = true labels")
        forward = tf.function(lambda x: model(x, training=False))
        graph = forward.get_concrete_function(tf.TensorSpec([None, input_dim], tf.float32)).graph
        with self.train.as_default():
            tf.summary.graph(graph)

    def close(self) -> None:
        """Flush and close the writers."""
        for writer in (self.train, self.validation):
            if writer is None:
                continue
            writer.flush()
            writer.close()
