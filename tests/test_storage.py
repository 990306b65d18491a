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


def _client_error(status: int, code: str) -> Exception:
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op")


def _transient_errors() -> list[Exception]:
    """Real instances of what a reset, stalled, truncated or overloaded S3 answer raises."""
    import http.client

    import aiohttp
    import urllib3.exceptions as u3
    from botocore import exceptions as be
    from botocore.parsers import ResponseParserError

    url = "http://127.0.0.1:1/b/k"
    return [
        be.ConnectionClosedError(endpoint_url=url),
        be.ResponseStreamingError(error=u3.ProtocolError("Connection broken: IncompleteRead")),
        be.IncompleteReadError(actual_bytes=10, expected_bytes=20),
        be.ReadTimeoutError(endpoint_url=url),
        be.ConnectTimeoutError(endpoint_url=url),
        be.EndpointConnectionError(endpoint_url=url),
        ResponseParserError("Unable to parse response"),
        u3.ProtocolError("Connection aborted.", ConnectionResetError(104, "reset")),
        u3.ReadTimeoutError(None, "/b/k", "Read timed out."),
        u3.IncompleteRead(10, 20),
        http.client.IncompleteRead(b"partial"),
        http.client.RemoteDisconnected("Remote end closed connection without response"),
        ConnectionResetError(104, "Connection reset by peer"),
        TimeoutError("timed out"),
        aiohttp.ClientPayloadError("Response payload is not completed"),
        aiohttp.ServerDisconnectedError(),
        _client_error(500, "InternalError"),
        _client_error(502, "BadGateway"),
        _client_error(503, "SlowDown"),
        _client_error(503, "ServiceUnavailable"),
        _client_error(504, "GatewayTimeout"),
        _client_error(429, "TooManyRequests"),
        _client_error(400, "RequestTimeout"),
        _client_error(400, "Throttling"),
        _client_error(400, "ThrottlingException"),
    ]


def _permanent_errors() -> list[Exception]:
    import ssl

    from botocore import exceptions as be

    return [
        _client_error(403, "AccessDenied"),
        _client_error(404, "NoSuchKey"),
        _client_error(404, "NoSuchBucket"),
        _client_error(400, "InvalidArgument"),
        _client_error(301, "PermanentRedirect"),
        be.NoCredentialsError(),
        be.ParamValidationError(report="Invalid bucket name"),
        be.SSLError(endpoint_url="https://x", error=ssl.SSLCertVerificationError("certificate verify failed")),
        FileNotFoundError("gone"),
        PermissionError("no"),
        ValueError("bug"),
        KeyError("bug"),
    ]


@pytest.mark.parametrize(
    "exc", _transient_errors(), ids=lambda e: f"{type(e).__name__}-{getattr(e, 'response', '')}"[:60]
)
def test_each_transient_error_is_retried(exc, monkeypatch):
    monkeypatch.setattr(st, "RETRY_BASE_SECONDS", 0.001)
    assert st._is_transient(exc)
    calls = []

    def once_broken():
        calls.append(1)
        if len(calls) == 1:
            raise exc
        return "ok"

    assert st.with_retries(once_broken, "test") == "ok"
    assert len(calls) == 2


@pytest.mark.parametrize(
    "exc", _permanent_errors(), ids=lambda e: f"{type(e).__name__}-{getattr(e, 'response', '')}"[:60]
)
def test_each_permanent_error_fails_at_once(exc):
    assert not st._is_transient(exc)
    calls = []

    def broken():
        calls.append(1)
        raise exc

    with pytest.raises(type(exc)):
        st.with_retries(broken, "test")
    assert len(calls) == 1


def test_retry_warning_names_type_and_target_only(monkeypatch, caplog):
    from botocore.exceptions import EndpointConnectionError

    monkeypatch.setattr(st, "RETRY_BASE_SECONDS", 0.001)
    secret_url = "http://user:s3cret@10.0.0.1:9000/b/k"  # what an exception message may quote
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 2:
            raise EndpointConnectionError(endpoint_url=secret_url)
        return 1

    st.with_retries(flaky, "read s3://b/k")
    assert "read s3://b/k: EndpointConnectionError (attempt 1/5), retrying in" in caplog.text
    assert "s3cret" not in caplog.text and "10.0.0.1" not in caplog.text
    assert st._describe(_client_error(503, "SlowDown")) == "ClientError SlowDown 503"


def test_s3_clients_take_the_configured_bound_and_timeouts(tmp_path):
    from conftest import write_config

    cfg = write_config(
        tmp_path,
        f"storage: {{root: {tmp_path / 'out'}, s3: {{endpoint_url: 'http://127.0.0.1:1', retry_attempts: 3, "
        "read_timeout_s: 2.5, connect_timeout_s: 0.5}}\n",
    )
    s = Storage.from_config(cfg)
    assert (s.retry_attempts, s.read_timeout_s, s.connect_timeout_s) == (3, 2.5, 0.5)
    config = s.s3_client().meta.config
    # botocore's own loop off: one attempt each, ours the only retries.
    assert config.retries["total_max_attempts"] == 1
    assert (config.read_timeout, config.connect_timeout) == (2.5, 0.5)
    fs = s.petastorm_filesystem_factory("s3://b/d")().fs
    assert fs.retries == 3
    assert fs.config_kwargs["retries"] == {"total_max_attempts": 1, "mode": "standard"}
    assert fs.config_kwargs["read_timeout"] == 2.5
    clone = __import__("pickle").loads(__import__("pickle").dumps(s))
    assert (clone.retry_attempts, clone.read_timeout_s, clone.connect_timeout_s) == (3, 2.5, 0.5)


@pytest.mark.parametrize(
    ("exc", "calls_expected"), [(_client_error(503, "ServiceUnavailable"), 3), (_client_error(403, "AccessDenied"), 1)]
)
def test_s3fs_loop_uses_our_classification(exc, calls_expected):
    """s3fs (petastorm's and pandas' S3 client) retries a 503 it would not retry by itself, and
    still not a 403: its loop asks :func:`storage._is_transient`."""
    import asyncio

    import s3fs.core

    Storage(endpoint_url="http://127.0.0.1:1").storage_options("s3://b/k")  # installs the policy
    calls = []

    async def call():
        calls.append(1)
        raise exc

    with pytest.raises(OSError):  # s3fs translates what it finally raises
        asyncio.run(s3fs.core._error_wrapper(call, retries=3))
    assert len(calls) == calls_expected
