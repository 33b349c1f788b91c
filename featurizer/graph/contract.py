"""The Inception-v3 (2015) graph contract: every tensor name imgclf relies on.

The rest of the code speaks of "image bytes", "normalised image" and
"bottleneck"; only this module knows what those are called inside a frozen
graph. Other frozen graphs can be used by overriding the names.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# Names in the real `tensorflow_inception_graph.pb` / `classify_image_graph_def.pb`.
JPEG_INPUT = "DecodeJpeg/contents:0"  # scalar string: encoded JPEG bytes
DECODED_IMAGE = "DecodeJpeg:0"  # uint8 [H, W, 3]
RESIZED_IMAGE = "ResizeBilinear:0"  # float [1, 299, 299, 3], before normalisation
NORMALIZED_IMAGE = "Mul:0"  # float [1, 299, 299, 3], (x - 128) / 128
BOTTLENECK = "pool_3:0"  # float [N, 1, 1, 2048]
BOTTLENECK_SINGLE = "pool_3/_reshape:0"  # float [1, 2048], constant shape: one image only
SOFTMAX = "softmax:0"  # float [1, 1008]

INPUT_SIZE = 299
INPUT_MEAN = 128.0
INPUT_STD = 128.0
BOTTLENECK_DIM = 2048

# Node names of the preprocessing chain, in order (DecodeJpeg → … → Mul).
DECODE_NODE = "DecodeJpeg"
RESIZE_NODE = "ResizeBilinear"
SUB_NODE = "Sub"
MUL_NODE = "Mul"


@dataclass(frozen=True)
class GraphContract:
    """Where a frozen graph takes its inputs and gives its bottleneck."""

    jpeg_input: str = JPEG_INPUT  # scalar string tensor fed with encoded JPEG bytes
    image_input: str = NORMALIZED_IMAGE  # 4-D float tensor after resize and normalisation
    bottleneck: str = BOTTLENECK  # batched bottleneck ([N, 1, 1, D] or [N, D])
    bottleneck_single: str = BOTTLENECK_SINGLE  # the graph's own one-image bottleneck
    softmax: str = SOFTMAX  # class probabilities of the original network
    input_size: int = INPUT_SIZE  # height = width of the network input
    input_mean: float = INPUT_MEAN  # subtracted from every 0..255 pixel value
    input_std: float = INPUT_STD  # the difference is divided by this
    # How the graph's own DecodeJpeg decodes ("" = TF's default fast IDCT); None = no such node,
    # decode with Pillow. Read from the graph by imgclf.featurizer.graph.load.contract_from_graph.
    jpeg_dct_method: str | None = None
    # "exact" decodes every pixel; "fast" lets the JPEG decoder scale large photos down by DCT first
    # (see imgclf.featurizer.images.decode). Not read from the graph: chosen at featurize/train time, recorded.
    decode: str = "exact"

    def with_overrides(self, **names: str | int | float | None) -> GraphContract:
        """Return a copy with the non-None fields of ``names`` replaced."""
        return replace(self, **{k: v for k, v in names.items() if v is not None})

    def check_images(self, images) -> None:
        """Raise ValueError unless ``images`` (an array) is a batch of network inputs [N, S, S, 3]."""
        size = self.input_size
        if images.ndim != 4 or images.shape[1:] != (size, size, 3):
            raise ValueError(f"images must be [N, {size}, {size}, 3]; received shape {images.shape}")

    def describe(self) -> dict:
        """Return the contract as a JSON-ready dict (for model cards and caches)."""
        return {
            "jpeg_input": self.jpeg_input,
            "image_input": self.image_input,
            "bottleneck": self.bottleneck,
            "bottleneck_single": self.bottleneck_single,
            "softmax": self.softmax,
            "input_size": self.input_size,
            "input_mean": self.input_mean,
            "input_std": self.input_std,
            "jpeg_dct_method": self.jpeg_dct_method,
            "decode": self.decode,
        }


DEFAULT_CONTRACT = GraphContract()


def node_name(tensor_name: str) -> str:
    """Return the node name of ``"node:0"`` (or of a bare node name)."""
    return tensor_name.split(":", 1)[0].lstrip("^")
