"""Feature datasets: Parquet shards + dataset.json, atomic per shard, resume by sha256, identities never mix."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imgclf.featurizer.runtime.featurizer import Featurizer, FeaturizerConfig
from imgclf.featurizer.store.dataset import (
    FeatureDatasetWriter,
    load_features,
    read_manifest,
    read_rows,
    shard_names,
)
from imgclf.featurizer.store.identity import FeaturizerIdentity
from imgclf.featurizer.store.object_store import open_location
from imgclf.service.cli.main import main
from tests.support import images

DIM = 8


def _identity(fingerprint="f" * 64, precision="fp32"):
    return FeaturizerIdentity.from_description({"fingerprint": fingerprint, "precision": precision, "dim": DIM,
                                                "graph_sha256": "a" * 64, "graph": "/local/path.pb"})


def _vec(seed):
    return np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)


def test_rows_round_trip_through_shards_with_the_documented_schema(tmp_path):
    identity = _identity()
    writer = FeatureDatasetWriter(tmp_path / "ds", identity, ["cats", "dogs"], "photos/", shard_rows=2)
    rows = [(f"{'cats' if i < 3 else 'dogs'}/{i}.jpg", "cats" if i < 3 else "dogs", f"{i:064x}", _vec(i))
            for i in range(5)]
    for row in rows:
        writer.add(*row)
    writer.flush([("dogs/bad.jpg", "not an image")])
    location = open_location(tmp_path / "ds")
    shards = shard_names(location, identity.folder)
    assert len(shards) == 3 and writer.shards == 3  # 2 + 2 + 1 rows
    table = pq.read_table(tmp_path / "ds" / shards[0])
    assert table.column_names == ["path", "label", "label_name", "image_sha256", "featurizer_sha256", "precision",
                                  "features"]
    assert table.schema.field("features").type == pa.list_(pa.float32(), DIM)
    assert table.column("label").to_pylist() == [0, 0] and table.column("precision").to_pylist() == ["fp32"] * 2
    back = read_rows(location, identity)
    assert back.paths == sorted(r[0] for r in rows)
    np.testing.assert_array_equal(back.features, np.stack([r[3] for r in sorted(rows)]))
    entry = read_manifest(location)["featurizers"][identity.fingerprint]
    assert entry["rows"] == 5 and entry["rows_per_class"] == {"cats": 3, "dogs": 2}
    assert entry["label_names"] == ["cats", "dogs"] and entry["folder"] == identity.folder
    assert entry["bad_files"] == [{"path": "dogs/bad.jpg", "reason": "not an image"}]
    assert "graph" not in entry["featurizer"]  # a local path is no identity


def test_a_reader_takes_only_complete_shards_and_the_newest_row_per_path(tmp_path):
    identity = _identity()
    writer = FeatureDatasetWriter(tmp_path / "ds", identity, ["cats"], "src")
    writer.add("cats/a.jpg", "cats", "1" * 64, _vec(1))
    writer.flush()
    folder = tmp_path / "ds" / identity.folder
    (folder / ".part-99999999999999999999-dead.parquet.tmp").write_bytes(b"PAR1 half a shard")  # a killed write
    (folder / "notes.txt").write_text("not a shard")
    writer = FeatureDatasetWriter(tmp_path / "ds", identity, ["cats"], "src")
    assert writer.has("cats/a.jpg", "1" * 64) and not writer.has("cats/a.jpg", "2" * 64)
    writer.add("cats/a.jpg", "cats", "2" * 64, _vec(2))  # the image changed: a new row, newer shard
    writer.add("cats/a.jpg", "cats", "2" * 64, _vec(3))  # the same (path, bytes) again: ignored
    writer.flush()
    back = read_rows(open_location(tmp_path / "ds"), identity)
    assert back.paths == ["cats/a.jpg"] and back.image_sha256 == ["2" * 64]
    np.testing.assert_array_equal(back.features[0], _vec(2))


def test_identities_never_mix_and_a_wrong_one_is_named(tmp_path):
    fp32, bf16 = _identity("1" * 64, "fp32"), _identity("2" * 64, "bf16")
    for identity, seed in ((fp32, 1), (bf16, 2)):
        writer = FeatureDatasetWriter(tmp_path / "ds", identity, ["cats"], "src")
        writer.add("cats/a.jpg", "cats", "a" * 64, _vec(seed))
        writer.flush()
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == sorted(["dataset.json", fp32.folder, bf16.folder])
    np.testing.assert_array_equal(load_features(tmp_path / "ds", bf16)[0].features[0], _vec(2))
    with pytest.raises(ValueError, match="holds no features of this featurizer.*bf16.*fp32|fp32.*bf16"):
        load_features(tmp_path / "ds", _identity("3" * 64, "fp16"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is empty"):
        load_features(tmp_path / "empty", fp32)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "dataset.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not an imgclf feature dataset"):
        load_features(tmp_path / "other", fp32)


def test_bad_vectors_are_refused(tmp_path):
    writer = FeatureDatasetWriter(tmp_path / "ds", _identity(), ["cats"], "src")
    with pytest.raises(ValueError, match="non-finite"):
        writer.add("cats/a.jpg", "cats", "a" * 64, np.full(DIM, np.nan, np.float32))
    with pytest.raises(ValueError, match="expected 8"):
        writer.add("cats/a.jpg", "cats", "a" * 64, np.zeros(3, np.float32))


def _photos(root, per_class=3):
    for label, offset in (("cats", 0), ("dogs", 100)):
        for i in range(per_class):
            path = root / label / f"{label}_{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(images.jpeg(offset + i, (120, 90)))
    return root


def _featurize(data, graph, dest, *extra):
    return main(["featurize", str(data), "--graph", str(graph), "--output-dataset", str(dest), "--precision", "fp32",
                 "--quiet", *extra])


def test_local_engine_writes_the_dataset_and_a_rerun_computes_only_what_is_new(tmp_path, legacy_graph_path):
    data, dest, report = _photos(tmp_path / "photos"), tmp_path / "ds", tmp_path / "r.json"
    (data / "dogs" / "broken.jpg").write_text("not a picture")
    assert _featurize(data, legacy_graph_path, dest, "--shard-rows", "4", "--report", str(report),
                      "--output", str(tmp_path / "f.npz")) == 0
    featurizer = Featurizer(FeaturizerConfig(legacy_graph_path, precision="fp32"))
    identity = featurizer.identity
    table, entry = load_features(dest, identity)
    assert table.paths == [f"cats/cats_{i}.jpg" for i in range(3)] + [f"dogs/dogs_{i}.jpg" for i in range(3)]
    assert table.label_names == ["cats"] * 3 + ["dogs"] * 3
    for path, vector in zip(table.paths, table.features):  # reference: the graph's one-image path
        np.testing.assert_allclose(vector, featurizer.run(featurizer.preprocess((data / path).read_bytes())[None])[0],
                                   rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(np.load(tmp_path / "f.npz", allow_pickle=False)["features"], table.features)
    featurizer.close()
    assert [b["path"] for b in entry["bad_files"]] == ["dogs/broken.jpg"]
    assert len(shard_names(open_location(dest), identity.folder)) == 2  # 4 + 2 rows
    # A rename is a new path for known bytes (a row, no graph run); a changed file is computed again.
    (data / "cats" / "cats_0.jpg").rename(data / "cats" / "renamed.jpg")
    (data / "dogs" / "dogs_1.jpg").write_bytes(images.jpeg(999, (120, 90)))
    assert _featurize(data, legacy_graph_path, dest, "--report", str(report)) == 0
    second = json.loads(report.read_text())
    assert (second["computed"], second["from_cache"]) == (1, 5)
    assert second["dataset"]["written"] == 2  # renamed.jpg (stored vector) + the changed dogs_1.jpg
    table2, _ = load_features(dest, identity)
    assert "cats/renamed.jpg" in table2.paths and len(table2.paths) == 7  # the old path stays (documented)
    np.testing.assert_array_equal(table2.features[table2.paths.index("cats/renamed.jpg")], table.features[0])


def test_an_interrupted_local_run_keeps_its_shards_and_the_rerun_does_the_rest(tmp_path, legacy_graph_path,
                                                                                monkeypatch):
    from imgclf.featurizer.store import dataset as feature_dataset

    data, dest = _photos(tmp_path / "photos", per_class=5), tmp_path / "ds"
    real_flush, flushes = feature_dataset.FeatureDatasetWriter.flush, []

    def flush_then_die(self, bad_files=None):
        real_flush(self, bad_files)
        flushes.append(self.written)
        if len(flushes) == 2:
            raise KeyboardInterrupt  # Ctrl-C right after the second shard
    monkeypatch.setattr(feature_dataset.FeatureDatasetWriter, "flush", flush_then_die)
    assert _featurize(data, legacy_graph_path, dest, "--shard-rows", "3", "--batch-size", "1") == 130
    monkeypatch.setattr(feature_dataset.FeatureDatasetWriter, "flush", real_flush)
    report = tmp_path / "r.json"
    assert _featurize(data, legacy_graph_path, dest, "--report", str(report)) == 0
    result = json.loads(report.read_text())
    assert (result["from_cache"], result["computed"]) == (6, 4)
    identity = FeaturizerIdentity.from_description(
        next(iter(read_manifest(open_location(dest))["featurizers"].values()))["featurizer"])
    assert len(load_features(dest, identity)[0].paths) == 10


@pytest.mark.parametrize("source, extra, message", [
    (None, [], "--cache"),
    (None, ["--cache", "c.sqlite", "--output-dataset", "ds"], "exclude each other"),
    (None, ["--cache", "c.sqlite", "--engine", "ray"], "--output-dataset"),
    (None, ["--output-dataset", "ds", "--actors", "2"], "need --engine ray"),
    (None, ["--output-dataset", "ds", "--engine", "ray", "--actors", "2", "--min-actors", "1", "--max-actors", "2"],
     "exclude each other"),
    (None, ["--output-dataset", "ds", "--engine", "ray", "--min-actors", "3", "--max-actors", "2"], "more than"),
    (None, ["--output-dataset", "ds", "--shard-rows", "0"], "--shard-rows"),
    ("s3://bucket/photos", ["--cache", "c.sqlite"], "needs --output-dataset"),
])
def test_bad_dataset_options_are_usage_errors(tmp_path, source, extra, message, capsys):
    assert main(["featurize", source or str(tmp_path), "--graph", "g.pb", *extra]) == 2
    assert message in capsys.readouterr().err
