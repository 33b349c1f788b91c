"""The SQLite feature cache: keys, isolation between featurizers, readers beside a writer."""

import sqlite3

import numpy as np
import pytest

from imgclf.featurizer.store.cache import FeatureCache


def _vec(seed, dim=8):
    return np.random.default_rng(seed).normal(size=dim).astype(np.float32)


def test_round_trip_and_isolation_by_fingerprint(tmp_path):
    with FeatureCache(tmp_path / "c.sqlite") as cache:
        cache.put_many("fp-a", {"img1": _vec(1), "img2": _vec(2)})
        np.testing.assert_array_equal(cache.get("fp-a", "img1"), _vec(1))
        assert cache.get("fp-b", "img1") is None  # another graph or precision: a miss
        assert cache.get("fp-a", "img3") is None
        assert set(cache.get_many("fp-a", ["img1", "img2", "img3"])) == {"img1", "img2"}
        assert cache.keys("fp-a") == {"img1", "img2"}
        assert cache.count("fp-a") == 2 and cache.count() == 2


def test_lookup_of_many_keys_is_chunked(tmp_path):
    with FeatureCache(tmp_path / "c.sqlite") as cache:
        items = {f"k{i}": _vec(i, 4) for i in range(1200)}
        cache.put_many("fp", items)
        found = cache.get_many("fp", list(items))
        assert len(found) == 1200
        np.testing.assert_array_equal(found["k777"], items["k777"])


def test_non_finite_vectors_are_refused_and_nothing_is_written(tmp_path):
    with FeatureCache(tmp_path / "c.sqlite") as cache:
        bad = _vec(1)
        bad[3] = np.nan
        with pytest.raises(ValueError, match="non-finite"):
            cache.put_many("fp", {"good": _vec(2), "bad": bad})
        assert cache.count() == 0


def test_reader_sees_committed_rows_while_a_writer_holds_a_transaction(tmp_path):
    path = tmp_path / "c.sqlite"
    writer = FeatureCache(path)
    writer.put_many("fp", {"a": _vec(1)})
    reader = FeatureCache(path, readonly=True)
    with writer.transaction() as conn:
        conn.execute("INSERT INTO features VALUES ('fp', 'b', 8, ?, 0)", (_vec(2).tobytes(),))
        assert reader.get("fp", "b") is None  # uncommitted: invisible
        np.testing.assert_array_equal(reader.get("fp", "a"), _vec(1))  # WAL: readers are not blocked
    np.testing.assert_array_equal(reader.get("fp", "b"), _vec(2))
    assert writer.integrity_check() == "ok"
    reader.close()
    writer.close()


def test_a_file_that_is_not_a_cache_is_refused(tmp_path):
    path = tmp_path / "notes.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ValueError, match="not a usable imgclf feature cache"):
        FeatureCache(path)
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)").connection.commit()
    sqlite3.connect(other).execute("INSERT INTO meta VALUES ('schema_version', '99')").connection.commit()
    with pytest.raises(ValueError, match="schema version 99"):
        FeatureCache(other)


def test_featurizer_description_is_recorded(tmp_path):
    with FeatureCache(tmp_path / "c.sqlite") as cache:
        cache.register_featurizer("fp", {"precision": "fp32"})
        cache.register_featurizer("fp", {"precision": "fp32"})
        rows = cache.conn.execute("SELECT fingerprint, description FROM featurizers").fetchall()
        assert rows == [("fp", '{"precision": "fp32"}')]


@pytest.mark.parametrize("name", ["we#ird.sqlite", "what?.sqlite", "100%25.sqlite", "sp ace.sqlite"])
def test_paths_with_uri_characters_open_that_very_file(tmp_path, name):
    path = tmp_path / "dir#1" / name
    with FeatureCache(path) as cache:
        cache.put_many("fp", {"a": _vec(1)})
    assert path.is_file()
    assert sorted(p.name for p in tmp_path.rglob("*.sqlite")) == [name]
    with FeatureCache(path, readonly=True) as reader:
        np.testing.assert_array_equal(reader.get("fp", "a"), _vec(1))


def test_a_refused_file_leaves_no_open_connection(tmp_path, monkeypatch):
    opened, connect = [], sqlite3.connect

    def recording_connect(*args, **kwargs):
        opened.append(connect(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(sqlite3, "connect", recording_connect)
    path = tmp_path / "notes.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ValueError, match="not a usable imgclf feature cache"):
        FeatureCache(path)
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        opened[0].execute("SELECT 1")


def test_an_error_after_sqlite_rolled_back_is_not_masked(tmp_path):
    with FeatureCache(tmp_path / "c.sqlite") as cache:
        with pytest.raises(RuntimeError, match="the caller's error"):
            with cache.transaction() as conn:
                conn.execute("ROLLBACK")  # as SQLite itself does on some errors (disk full, ...)
                raise RuntimeError("the caller's error")
        cache.put_many("fp", {"a": _vec(1)})  # the connection is still usable
        assert cache.count() == 1


@pytest.mark.parametrize("blob", [b"\x00" * 7, b"\x00" * 12, b"\x00" * 40, "text, not bytes"])
def test_a_blob_of_the_wrong_length_is_a_miss(tmp_path, blob):
    with FeatureCache(tmp_path / "c.sqlite") as cache:
        cache.put_many("fp", {"good": _vec(1)})
        cache.conn.execute("INSERT INTO features VALUES ('fp', 'bad', 8, ?, 0)", (blob,))
        assert set(cache.get_many("fp", ["good", "bad"])) == {"good"}
