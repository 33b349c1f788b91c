"""Which precision and backend `train --features` takes from what a feature dataset holds."""

import json

import numpy as np
import pytest

from imgclf.core.errors import UsageError
from imgclf.featurizer.store.dataset import FeatureDatasetWriter
from imgclf.featurizer.store.held_featurizers import HeldFeaturizer, choose_featurizer, held_featurizers
from imgclf.featurizer.store.identity import FeaturizerIdentity

G, OTHER = "a" * 64, "b" * 64
FP32_TF, BF16_TF = HeldFeaturizer(G, "fp32", "tensorflow"), HeldFeaturizer(G, "bf16", "tensorflow")
FP32_OV, INT8_OV = HeldFeaturizer(G, "fp32", "openvino"), HeldFeaturizer(G, "int8", "openvino")


@pytest.mark.parametrize("held, precision, backend, expected", [
    ([FP32_TF], None, None, ("fp32", "tensorflow")),  # the case: no --precision, the dataset's fp32
    ([INT8_OV], None, None, ("int8", "openvino")),
    ([BF16_TF, HeldFeaturizer(OTHER, "fp32", "openvino")], None, None, ("bf16", "tensorflow")),  # another graph
    ([FP32_TF, INT8_OV], "int8", None, ("int8", "openvino")),  # a flag picks, the other follows
    ([FP32_TF, INT8_OV], None, "tensorflow", ("fp32", "tensorflow")),
    ([FP32_TF, FP32_OV], None, "openvino", ("fp32", "openvino")),
    ([FP32_TF, BF16_TF], "bf16", "tensorflow", ("bf16", "tensorflow")),  # both given and held
    ([FP32_TF], "auto", None, ("auto", "tensorflow")),  # auto is given: the machine chooses, loading checks it
    ([FP32_TF, FP32_OV], None, "auto", ("fp32", "auto")),
    ([], None, None, (None, None)),  # nothing listed: loading says what DEST is
])
def test_flags_left_out_take_what_the_dataset_holds_for_this_graph(held, precision, backend, expected):
    assert choose_featurizer(held, G, precision, backend, "ds") == expected


@pytest.mark.parametrize("held, precision, backend, message", [
    ([FP32_TF, BF16_TF], None, None,
     "'ds' holds features of this graph in bf16 on tensorflow, fp32 on tensorflow: pick one with --precision"),
    ([FP32_TF, FP32_OV], None, None,
     "'ds' holds features of this graph in fp32 on openvino, fp32 on tensorflow: pick one with --backend"),
    ([FP32_TF, INT8_OV], None, None, "'ds' holds features of this graph in fp32 on tensorflow, int8 on openvino: "
                                     "pick one with --precision and --backend"),
    ([FP32_TF, INT8_OV], "auto", None, "'ds' holds features of this graph in fp32 on tensorflow, int8 on openvino: "
                                       "pick one with --backend"),
])
def test_a_real_ambiguity_is_refused_listing_what_is_there_and_which_flag_picks(held, precision, backend, message):
    with pytest.raises(UsageError) as info:
        choose_featurizer(held, G, precision, backend, "ds")
    assert str(info.value) == message


@pytest.mark.parametrize("held, precision, backend, message", [
    ([FP32_TF], "bf16", None, "--precision bf16 contradicts 'ds', which holds features of this graph in fp32 on "
                              "tensorflow: leave --precision out to train on those, or featurize with "
                              "--precision bf16 first"),
    ([FP32_TF], None, "openvino", "--backend openvino contradicts 'ds', which holds features of this graph in fp32 "
                                  "on tensorflow: leave --backend out to train on those, or featurize with "
                                  "--backend openvino first"),
    ([FP32_TF, INT8_OV], "fp32", "openvino", "--precision fp32 --backend openvino contradicts 'ds', which holds "
                                             "features of this graph in fp32 on tensorflow, int8 on openvino: leave "
                                             "--precision and --backend out to train on those, or featurize with "
                                             "--precision fp32 --backend openvino first"),
    ([HeldFeaturizer(OTHER, "fp32", "tensorflow")], None, None,
     "--graph (sha256 aaaaaaaaaaaa) is not the graph of 'ds', which holds features of graph sha256 bbbbbbbbbbbb only "
     "(fp32 on tensorflow): give the --graph of the featurize run"),
])
def test_a_flag_that_contradicts_the_dataset_is_one_line_naming_both(held, precision, backend, message):
    with pytest.raises(UsageError) as info:
        choose_featurizer(held, G, precision, backend, "ds")
    assert str(info.value) == message and "\n" not in message


def _write(dest, description):
    identity = FeaturizerIdentity.from_description({"dim": 4, "graph": "/local/g.pb", **description})
    writer = FeatureDatasetWriter(dest, identity, ["cats"], "photos/")
    writer.add("cats/a.jpg", "cats", "1" * 64, np.ones(4, np.float32))
    writer.flush()


def test_held_featurizers_reads_the_manifest_and_older_entries_are_tensorflow(tmp_path):
    dest = tmp_path / "ds"
    _write(dest, {"fingerprint": "1" * 64, "precision": "fp32", "graph_sha256": G})  # before backends: no key
    _write(dest, {"fingerprint": "2" * 64, "precision": "int8", "graph_sha256": G, "backend": "openvino"})
    _write(dest, {"fingerprint": "3" * 64, "precision": "fp32", "graph_sha256": G, "backend": "tensorflow",
                  "decode": "fast"})  # another decode mode: the same (graph, precision, backend), listed once
    manifest = json.loads((dest / "dataset.json").read_text())
    assert len(manifest["featurizers"]) == 3
    assert held_featurizers(dest) == [FP32_TF, INT8_OV]
    (tmp_path / "empty").mkdir()
    assert held_featurizers(tmp_path / "empty") == []
    with pytest.raises(ValueError, match="does not exist"):
        held_featurizers(tmp_path / "missing")
