"""A featurizer's identity: made once at load, fingerprint over the key parts, the local path no identity."""

import hashlib
import json

from imgclf.featurizer.runtime.featurizer import Featurizer, FeaturizerConfig
from imgclf.featurizer.store.identity import FeaturizerIdentity, fingerprint_of


def test_the_fingerprint_is_the_sha256_of_the_sorted_key_parts():
    parts = {"precision": "fp32", "graph_sha256": "a" * 64}
    assert fingerprint_of(parts) == hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def test_the_local_graph_path_is_shown_but_no_identity():
    described = {"graph_sha256": "a" * 64, "fingerprint": "f" * 64, "precision": "fp32", "dim": 8,
                 "graph": "/here/graph.pb", "contract": {"decode": "exact"}}
    here = FeaturizerIdentity.from_description(described)
    there = FeaturizerIdentity.from_description({**described, "graph": "/there/graph.pb"})
    assert here == there and here.folder == "featurizer-" + "f" * 16
    assert here.describe() == described and "graph" not in here.to_dict() and "graph" not in here.parts
    assert here.to_dict() == {k: v for k, v in described.items() if k != "graph"}
    here.describe()["contract"]["decode"] = "changed"  # a copy: the identity stays as it was made
    assert here.description["contract"]["decode"] == "exact"


def test_the_summary_names_precision_backend_and_decode():
    described = {"graph_sha256": "a" * 64, "fingerprint": "f" * 64, "precision": "fp32", "dim": 8}
    assert FeaturizerIdentity.from_description(described).summary() == (  # before backends: TensorFlow
        "fp32 on tensorflow, 8-d, graph sha256 aaaaaaaaaaaa, fingerprint ffffffffffff")
    openvino = FeaturizerIdentity.from_description({**described, "precision": "int8", "backend": "openvino",
                                                    "decode": "fast"})
    assert openvino.summary() == ("int8 on openvino, decode fast, 8-d, graph sha256 aaaaaaaaaaaa, "
                                  "fingerprint ffffffffffff")


def test_a_featurizer_makes_its_identity_once_at_load(legacy_graph_path, monkeypatch):
    featurizer = Featurizer(FeaturizerConfig(legacy_graph_path, precision="fp32"))
    try:
        parts = featurizer._key_parts()
        identity = featurizer.identity
        monkeypatch.setattr(featurizer, "_key_parts", lambda: (_ for _ in ()).throw(AssertionError("recomputed")))
        assert featurizer.fingerprint == identity.fingerprint == fingerprint_of(parts)
        assert featurizer.describe() == identity.describe() and featurizer.identity is identity
        assert (identity.precision, identity.dim) == ("fp32", featurizer.dim)
        assert identity.description["graph"] == str(legacy_graph_path)
    finally:
        featurizer.close()
