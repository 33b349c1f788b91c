"""Every name an exported model is known by: files, signatures, tensor names.

The model repository follows TensorFlow Serving's layout; a server (ours or
``tensorflow_model_server``) finds a model by these names only, so they are
written down here once and pinned by a test. The rest of the code speaks of
"image bytes", "bottleneck" and "probabilities".
"""

from __future__ import annotations

# Files inside REPO/NAME/<version>/.
SAVED_MODEL_FILE = "saved_model.pb"  # written by tf.saved_model.save (fixed by TensorFlow)
HEAD_GRAPH_FILE = "head.pb"  # frozen head: bottleneck → probabilities
END_TO_END_GRAPH_FILE = "end_to_end.pb"  # frozen featurizer + head: one encoded image → probabilities
LABELS_FILE = "labels.txt"  # one label per line, in class-id order
MODEL_CARD_FILE = "model_card.json"  # what the model is, how it was made, how to call it
# Exports trained with --backend openvino: the OpenVINO IR (+ featurizer.bin) their features came from.
OPENVINO_FEATURIZER_FILE = "openvino/featurizer.xml"
# A version directory is complete (servable) when it holds these; the rename makes both appear at once.
REQUIRED_FILES = (SAVED_MODEL_FILE, MODEL_CARD_FILE)
TEMP_PREFIX = ".export-"  # hidden work directory inside REPO/NAME; TF Serving skips non-integer names
# A candidate the publish gate rejected is kept in REPO/NAME/rejected/<UTC time>/ (not an integer: no server
# lists it), with its model card and the gate's report.
REJECTED_DIR = "rejected"
GATE_REPORT_FILE = "gate.json"
# Image classifiers: the calibration temperature and the unfamiliar-input detector (method, threshold) the
# head graphs were built with, checked against its sha256 in the card when a version loads; the reliability
# diagram of the calibration.
CALIBRATION_FILE = "calibration.json"
RELIABILITY_DIAGRAM_FILE = "reliability.png"

# SavedModel signatures and their input and output keys.
SERVING_SIGNATURE = "serving_default"  # encoded image bytes → outputs
BOTTLENECK_SIGNATURE = "bottleneck"  # bottleneck vectors → outputs
IMAGES_SIGNATURE = "images"  # decoded, resized, normalised images → outputs (imgclf's own path)
# TF Serving's REST API base64-decodes {"b64": ...} for inputs whose key ends in "_bytes".
IMAGE_BYTES_KEY = "image_bytes"  # tf.string [None]
BOTTLENECK_KEY = "bottleneck"  # tf.float32 [None, D]
IMAGES_KEY = "images"  # tf.float32 [None, S, S, 3], (x - mean) / std
PROBABILITIES_KEY = "probabilities"  # tf.float32 [None, C]
CLASSES_KEY = "classes"  # tf.int64 [None]: top-1 class id
LABELS_KEY = "labels"  # tf.string [None]: top-1 label
UNFAMILIAR_SCORE_KEY = "unfamiliar_score"  # tf.float32 [None]: higher = less like the training images
UNFAMILIAR_KEY = "unfamiliar"  # tf.bool [None]: unfamiliar_score above the export's threshold
OUTPUT_KEYS = (PROBABILITIES_KEY, CLASSES_KEY, LABELS_KEY, UNFAMILIAR_KEY, UNFAMILIAR_SCORE_KEY)

# Tensor names of the frozen graphs, as the 2016 retraining tutorial named them.
HEAD_INPUT = "input/BottleneckInputPlaceholder:0"  # float32 [None, D]
HEAD_OUTPUT = "final_result:0"  # float32 [None, C]: calibrated probabilities
HEAD_UNFAMILIAR_SCORE = "unfamiliar_score:0"  # float32 [None]
HEAD_UNFAMILIAR = "unfamiliar:0"  # bool [None]
HEAD_OUTPUTS = (HEAD_OUTPUT, HEAD_UNFAMILIAR_SCORE, HEAD_UNFAMILIAR)
# Scalar string of encoded image bytes: the 2015 graph's own input name (imgclf.featurizer.graph.contract.JPEG_INPUT,
# pinned equal by a test), so the end-to-end graph is fed as the tutorial's retrained graphs were.
END_TO_END_INPUT = "DecodeJpeg/contents:0"
END_TO_END_OUTPUT = "final_result:0"  # float32 [1, C]
END_TO_END_OUTPUTS = HEAD_OUTPUTS  # the same three names: [1, C], [1], [1]
