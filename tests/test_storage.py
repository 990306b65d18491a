import os

import pytest

from genrecast import storage as st
from genrecast.errors import InvalidIdentifier
from genrecast.storage import Storage


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://bucket/a/b/", "s3://bucket/a/b"),
        ("s3a://bucket/a", "s3://bucket/a"),
        ("s3://bucket", "s3://bucket"),
        ("file:///tmp/x", "/tmp/x"),
        ("/tmp/x/../y", "/tmp/y"),
    ],
)
def test_normalize_uri(uri, expected):
    assert st.normalize_uri(uri) == expected


def test_relative_path_becomes_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert st.normalize_uri("data/x") == str(tmp_path / "data" / "x")


@pytest.mark.parametrize("uri", ["", "s3://", "s3://b/a/../../etc", "gs://b/k", "s3://b/a\x00b"])
def test_bad_uris_are_rejected(uri):
    with pytest.raises(InvalidIdentifier):
        st.normalize_uri(uri)


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "..", "a\\b", "a\nb", "a\x7fb"])
def test_validate_key_rejects(key):
    with pytest.raises(InvalidIdentifier):
        st.validate_key(key)


def test_spark_and_petastorm_forms():
    assert st.spark_path("s3://b/k") == "s3a://b/k"
    assert st.spark_path("/tmp/d") == "file:///tmp/d"
    assert st.petastorm_url("/tmp/d") == "file:///tmp/d"
    assert st.petastorm_url("s3a://b/d") == "s3://b/d"
    assert st.join("s3://b/root", "datasets", "mels") == "s3://b/root/datasets/mels"
    with pytest.raises(InvalidIdentifier):
        st.join("/tmp", "../etc")


def test_local_round_trip_and_streamed_listing(tmp_path):
    s = Storage()
    for name in ["b/2.wav", "a/1.mp3", "a/0.ogg"]:
        s.write_bytes(str(tmp_path / name), name.encode())
    listing = s.list_files(str(tmp_path))
    assert not isinstance(listing, list)  # a generator: the catalogue is never held whole
    assert [u for u, _ in listing] == [str(tmp_path / n) for n in ["a/0.ogg", "a/1.mp3", "b/2.wav"]]
    assert s.read_bytes(str(tmp_path / "a/1.mp3")) == b"a/1.mp3"
    assert not [p for p in os.listdir(tmp_path / "a") if ".tmp-" in p]  # atomic write left no temp file
    s.move(str(tmp_path / "a/1.mp3"), str(tmp_path / "c/1.mp3"))
    assert s.exists(str(tmp_path / "c/1.mp3")) and not s.exists(str(tmp_path / "a/1.mp3"))
    s.delete(str(tmp_path / "c/1.mp3"))
    s.delete(str(tmp_path / "c/1.mp3"))  # idempotent
    assert s.delete_prefix(str(tmp_path / "b")) == 1
    assert list(s.list_files(str(tmp_path / "missing"))) == []


def test_transient_errors_are_retried_with_backoff(monkeypatch):
    monkeypatch.setattr(st, "RETRY_BASE_SECONDS", 0.001)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("reset by peer")
        return "ok"

    assert st.with_retries(flaky, "test") == "ok"
    assert len(calls) == 3


@pytest.mark.parametrize("exc", [FileNotFoundError("gone"), PermissionError("no"), ValueError("bug")])
def test_permanent_errors_are_not_retried(exc):
    calls = []

    def broken():
        calls.append(1)
        raise exc

    with pytest.raises(type(exc)):
        st.with_retries(broken, "test")
    assert len(calls) == 1


def test_retries_give_up(monkeypatch):
    monkeypatch.setattr(st, "RETRY_BASE_SECONDS", 0.001)
    calls = []

    def down():
        calls.append(1)
        raise TimeoutError("timeout")

    with pytest.raises(TimeoutError):
        st.with_retries(down, "test", attempts=4)
    assert len(calls) == 4


def test_storage_pickles_without_clients():
    import pickle

    s = Storage(endpoint_url="http://127.0.0.1:1", region="us-east-1")
    s.s3_client()
    clone = pickle.loads(pickle.dumps(s))
    assert clone.endpoint_url == s.endpoint_url and clone._clients == {}
