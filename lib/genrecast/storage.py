"""Storage URIs: one place that turns ``s3://``, ``file://`` and local paths into I/O.

Local paths are normalised to absolute paths; ``s3://bucket/key`` stays as it is. S3 access
uses the boto3 / AWS credential chain only (environment, shared config, instance role): this
module never accepts, logs or writes a credential. Transient errors are retried with backoff.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import random
import time
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlparse

from genrecast.errors import InvalidIdentifier

log = logging.getLogger(__name__)
T = TypeVar("T")

# One retry policy for every S3 path (boto3 calls here, s3fs inside petastorm / pandas):
# attempts per operation in all, first backoff, backoff cap; timeouts per request. The config's
# storage.s3.{retry_attempts, connect_timeout_s, read_timeout_s} default to these.
RETRY_ATTEMPTS = 5
RETRY_BASE_SECONDS = 0.2
RETRY_MAX_SECONDS = 10.0
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0


def is_s3(uri: str) -> bool:
    return uri.startswith(("s3://", "s3a://"))


def normalize_uri(uri: str) -> str:
    """``s3a://`` -> ``s3://``; ``file:///x`` and relative paths -> absolute local paths."""
    uri = uri.strip()
    if not uri:
        raise InvalidIdentifier("empty storage URI")
    if uri.startswith("s3a://"):
        uri = "s3://" + uri[len("s3a://") :]
    if uri.startswith("s3://"):
        parsed = urlparse(uri)
        if not parsed.netloc:
            raise InvalidIdentifier(f"S3 URI without a bucket: {uri}")
        validate_key(parsed.path.lstrip("/"), allow_empty=True)
        return uri.rstrip("/") if parsed.path not in ("", "/") else f"s3://{parsed.netloc}"
    if "://" in uri and not uri.startswith("file://"):
        raise InvalidIdentifier(f"unsupported URI scheme: {uri.split('://')[0]}:// ({uri})")
    if uri.startswith("file://"):
        uri = urlparse(uri).path
    return os.path.abspath(os.path.expanduser(uri))


def validate_key(key: str, allow_empty: bool = False) -> str:
    """Reject object keys / relative paths that could escape their prefix or confuse a log."""
    if not key and allow_empty:
        return key
    if not key:
        raise InvalidIdentifier("empty object key")
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise InvalidIdentifier(f"control character in key {key!r}")
    if key.startswith("/") or "\\" in key:
        raise InvalidIdentifier(f"absolute or backslashed key {key!r}")
    if any(part == ".." for part in key.split("/")):
        raise InvalidIdentifier(f"'..' in key {key!r}")
    return key


def join(base: str, *parts: str) -> str:
    """Join a base URI with relative, validated parts using ``/``."""
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{validate_key(part.strip('/'))}"
    return out


def relative_to(uri: str, base: str) -> str:
    """The ``/``-separated path of ``uri`` below ``base`` (both normalised)."""
    base = base.rstrip("/") + "/"
    if not uri.startswith(base):
        raise InvalidIdentifier(f"{uri} is not below {base}")
    return uri[len(base) :]


def spark_path(uri: str) -> str:
    """The form Spark's Hadoop filesystems want: ``s3a://`` for S3, ``file://`` for local."""
    uri = normalize_uri(uri)
    return "s3a://" + uri[len("s3://") :] if is_s3(uri) else "file://" + uri


def petastorm_url(uri: str) -> str:
    """The dataset URL form petastorm resolves: ``s3://...`` or ``file:///abs/path``."""
    uri = normalize_uri(uri)
    return uri if is_s3(uri) else "file://" + uri


# Error codes S3 (and S3-compatible stores) answer when the request may succeed if repeated:
# server-side trouble, throttling, a request the server gave up reading. Anything else that the
# server answered (403 AccessDenied, 404 NoSuchKey / NoSuchBucket, 400) is permanent.
TRANSIENT_CODES = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
    }
)
TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})


@functools.cache
def _transient_classes() -> tuple[type[BaseException], ...]:
    """Exception classes a reset, stalled or truncated connection raises, through boto3
    (botocore, urllib3, http.client) or s3fs (aiobotocore, aiohttp)."""
    import http.client

    import urllib3.exceptions as u3
    from botocore import exceptions as be
    from botocore.parsers import ResponseParserError

    classes: list[type[BaseException]] = [
        ConnectionError,  # builtins: reset, refused, aborted, broken pipe (OSError subclasses)
        TimeoutError,  # builtins; also asyncio's and fsspec's FSTimeoutError
        be.ConnectionError,  # EndpointConnectionError, ConnectTimeoutError, ProxyConnectionError
        be.HTTPClientError,  # ConnectionClosedError, ReadTimeoutError, ResponseStreamingError
        be.IncompleteReadError,  # body shorter than its Content-Length
        ResponseParserError,  # a truncated or garbled answer (stores that throttle with bad XML)
        u3.ProtocolError,  # urllib3: connection broken mid-response
        u3.TimeoutError,  # urllib3: read / connect timeouts, NewConnectionError
        u3.IncompleteRead,
        http.client.IncompleteRead,
    ]
    try:
        import aiohttp

        classes += [aiohttp.ClientPayloadError, aiohttp.ClientConnectionError]
    except ImportError:  # pragma: no cover - s3fs brings aiohttp
        pass
    return tuple(classes)


@functools.cache
def _permanent_classes() -> tuple[type[BaseException], ...]:
    """Checked first: subclasses of the transient ones that repeating cannot fix."""
    import ssl

    from botocore.exceptions import SSLError

    # A certificate the client refuses stays refused; a missing key or bucket stays missing.
    return (
        FileNotFoundError,
        PermissionError,
        IsADirectoryError,
        NotADirectoryError,
        SSLError,
        ssl.SSLCertVerificationError,
    )


def _is_transient(exc: BaseException) -> bool:
    """True when repeating the storage call may succeed: connection reset or closed, connect
    or read timeout, a truncated body, HTTP 429/500/502/503/504, throttling (SlowDown...),
    RequestTimeout. False for everything else (403, 404, NoSuchBucket, bad parameters, bugs)."""
    from botocore.exceptions import ClientError

    if isinstance(exc, _permanent_classes()):
        return False
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return status in TRANSIENT_STATUS or code in TRANSIENT_CODES
    # Other OSErrors (disk full, a socket error botocore did not wrap) are worth one more try;
    # the attempts are bounded either way.
    return isinstance(exc, (*_transient_classes(), OSError))


def _describe(exc: BaseException) -> str:
    """The error's type, and for an S3 answer its code and HTTP status (``ClientError SlowDown
    503``): never its message, which may quote request details."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:
        code = str(response["Error"].get("Code", ""))[:64]
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
        return f"{type(exc).__name__} {code} {status}".rstrip()
    return type(exc).__name__


def with_retries(fn: Callable[[], T], what: str, attempts: int = RETRY_ATTEMPTS) -> T:
    """Call ``fn`` up to ``attempts`` times in all; after a transient storage error wait
    (exponential backoff with jitter, capped at RETRY_MAX_SECONDS) and call it again.

    ``what`` names the operation and URI for the log line, which shows the exception's type
    (and an S3 error code) only: its message may quote request details, never worth a leak.
    """
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if attempt >= attempts or not _is_transient(exc):
                raise
            delay = min(RETRY_MAX_SECONDS, RETRY_BASE_SECONDS * 2 ** (attempt - 1)) * (1 + random.random())
            log.warning("%s: %s (attempt %d/%d), retrying in %.1fs", what, _describe(exc), attempt, attempts, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


FETCH_LOG_ENV = "GENRECAST_FETCH_LOG"


def _log_fetch(op: str, uri: str, nbytes: int | None = None) -> None:
    """With ``GENRECAST_FETCH_LOG=<file>`` in the environment (of the driver and, through the
    Spark JVM's environment, of every Python worker), append ``<op> <uri>`` per object read
    (``<op> <uri>\t<bytes>`` for range reads): an audit of what a job fetched, across processes
    (one short ``O_APPEND`` write a line)."""
    path = os.environ.get(FETCH_LOG_ENV)
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (f"{op} {uri}" + ("" if nbytes is None else f"\t{nbytes}") + "\n").encode())
        finally:
            os.close(fd)


@dataclass(frozen=True)
class FileEntry:
    """One file of a listing. ``version`` changes when the file is rewritten: ``etag:<ETag>``
    (S3) or ``mtime_ns:<st_mtime_ns>`` (local); equal entries are taken to hold equal bytes."""

    uri: str
    size: int
    version: str


@dataclass
class Storage:
    """Reads, writes and lists URIs. Picklable: the S3 clients are created lazily per process."""

    endpoint_url: str | None = None
    region: str | None = None
    retry_attempts: int = RETRY_ATTEMPTS  # per operation, in all
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    read_timeout_s: float = READ_TIMEOUT_S  # longest wait for the next bytes of an answer
    _clients: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    _STATE = ("endpoint_url", "region", "retry_attempts", "connect_timeout_s", "read_timeout_s")

    @classmethod
    def from_config(cls, cfg: Any) -> Storage:
        s3 = cfg.storage.s3
        return cls(
            endpoint_url=s3.endpoint_url,
            region=s3.region,
            retry_attempts=s3.retry_attempts,
            connect_timeout_s=s3.connect_timeout_s,
            read_timeout_s=s3.read_timeout_s,
        )

    def __getstate__(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._STATE}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for k in self._STATE:
            setattr(self, k, state[k])
        self._clients = {}

    def _retry(self, fn: Callable[[], T], what: str) -> T:
        return with_retries(fn, what, self.retry_attempts)

    def _botocore_config(self) -> dict[str, Any]:
        """botocore ``Config`` arguments, for boto3 here and aiobotocore inside s3fs.

        botocore's own retries stay off: ours (:func:`with_retries`, and s3fs's loop given the
        same classifier and bound) are the only ones. botocore's would nest inside them (5 x 5
        attempts), and would not cover an answer whose body breaks off while it is read, which
        happens after botocore has returned. ``total_max_attempts`` 1 is one attempt; botocore's
        ``max_attempts`` counts retries (``max_attempts: 1`` is two attempts).
        """
        return {
            "retries": {"total_max_attempts": 1, "mode": "standard"},
            "connect_timeout": self.connect_timeout_s,
            "read_timeout": self.read_timeout_s,
        }

    # -- clients -------------------------------------------------------------------------
    def s3_client(self) -> Any:
        if "boto3" not in self._clients:
            import boto3
            from botocore.config import Config as BotoConfig

            self._clients["boto3"] = boto3.session.Session().client(
                "s3",
                endpoint_url=self.endpoint_url,
                region_name=self.region,
                config=BotoConfig(**self._botocore_config()),
            )
        return self._clients["boto3"]

    def petastorm_filesystem_factory(self, uri: str) -> Callable[[], Any] | None:
        """A picklable factory for petastorm's ``filesystem_factory`` (None: petastorm's default).

        petastorm resolves ``s3://`` with a bare s3fs client that knows no endpoint; this one
        carries ours, wrapped in pyarrow's legacy ``S3FSWrapper``: petastorm 0.12 passes
        ``validate_schema`` to ``ParquetDataset``, which pyarrow 14 only accepts on the legacy
        code path, chosen only for legacy filesystem objects. (pyarrow's own S3FSWrapper calls
        an s3fs method that is a coroutine in s3fs 2026, hence :func:`_legacy_s3_filesystem`.)
        """
        if not is_s3(uri):
            return None
        options = self.storage_options(uri)
        attempts = self.retry_attempts

        def factory() -> Any:
            return _legacy_s3_filesystem(options, attempts)

        return factory

    def storage_options(self, uri: str) -> dict[str, Any]:
        """fsspec ``storage_options`` for libraries (petastorm, pandas) that open URIs themselves.

        s3fs retries in its own loop (``S3FileSystem.retries`` attempts, 5 by default, which is
        also RETRY_ATTEMPTS; :meth:`petastorm_filesystem_factory` sets it to ours): this installs
        our classification of transient errors into that loop, and the same timeouts.
        """
        if not is_s3(uri):
            return {}
        install_s3fs_retry_policy()
        client_kwargs = {k: v for k, v in {"endpoint_url": self.endpoint_url, "region_name": self.region}.items() if v}
        # Fresh listings every time: tables change under a long-lived process (commits, re-runs).
        return {
            "client_kwargs": client_kwargs,
            "config_kwargs": self._botocore_config(),
            "skip_instance_cache": True,
            "use_listings_cache": False,
        }

    # -- operations ----------------------------------------------------------------------
    def list_entries(self, prefix: str) -> Iterator[FileEntry]:
        """Yield a :class:`FileEntry` (uri, size, version) for every file below ``prefix``,
        sorted per listing page, from the listing alone (no request per file): the version is the
        S3 ETag, or a local file's ``st_mtime_ns``.

        Streams: S3 is paged (1000 keys a request), local folders are walked lazily; neither
        holds the whole catalogue in memory.
        """
        prefix = normalize_uri(prefix)
        if is_s3(prefix):
            parsed = urlparse(prefix)
            key_prefix = parsed.path.lstrip("/")
            key_prefix = key_prefix + "/" if key_prefix else ""
            token: str | None = None
            while True:
                kwargs = {
                    "Bucket": parsed.netloc,
                    "Prefix": key_prefix,
                    **({"ContinuationToken": token} if token else {}),
                }
                page = self._retry(lambda kw=kwargs: self.s3_client().list_objects_v2(**kw), f"list {prefix}")
                for obj in page.get("Contents", []):
                    if not obj["Key"].endswith("/"):
                        etag = str(obj.get("ETag", "")).strip('"')
                        yield FileEntry(f"s3://{parsed.netloc}/{obj['Key']}", int(obj["Size"]), f"etag:{etag}")
                token = page.get("NextContinuationToken")
                if not page.get("IsTruncated") or not token:
                    break
            return
        if not os.path.isdir(prefix):
            return
        for dirpath, dirnames, filenames in os.walk(prefix):
            dirnames.sort()
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                st = os.stat(path)
                yield FileEntry(path, st.st_size, f"mtime_ns:{st.st_mtime_ns}")

    def list_files(self, prefix: str) -> Iterator[tuple[str, int]]:
        """Yield ``(uri, size)`` for every file below ``prefix`` (see :meth:`list_entries`)."""
        for entry in self.list_entries(prefix):
            yield entry.uri, entry.size

    def exists(self, uri: str) -> bool:
        """True if the file exists (not for S3 "folders")."""
        uri = normalize_uri(uri)
        if not is_s3(uri):
            return os.path.isfile(uri)
        try:
            self.size(uri)  # one HEAD, retried like every S3 call
        except FileNotFoundError:
            return False
        return True

    def read_bytes(self, uri: str) -> bytes:
        uri = normalize_uri(uri)
        _log_fetch("read", uri)
        if is_s3(uri):
            parsed = urlparse(uri)

            def get() -> bytes:
                client = self.s3_client()
                try:
                    return client.get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))["Body"].read()
                except client.exceptions.NoSuchKey:
                    raise FileNotFoundError(uri) from None

            return self._retry(get, f"read {uri}")
        with open(uri, "rb") as fh:
            return fh.read()

    def write_bytes(self, uri: str, data: bytes) -> None:
        """Write a whole object; atomic (a reader sees the old content or the new, never half)."""
        uri = normalize_uri(uri)
        if is_s3(uri):
            parsed = urlparse(uri)
            self._retry(
                lambda: self.s3_client().put_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"), Body=data),
                f"write {uri}",
            )
            return
        os.makedirs(os.path.dirname(uri), exist_ok=True)
        tmp = f"{uri}.tmp-{os.getpid()}-{random.getrandbits(32):08x}"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, uri)

    def write_parquet(self, uri: str, table: Any, row_group_size: int | None = None) -> None:
        """Write a pyarrow Table as one Parquet object (buffered, then one atomic write)."""
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(table, buf, row_group_size=row_group_size, compression="snappy")
        self.write_bytes(uri, buf.getvalue())

    def read_parquet(self, uri: str, columns: list[str] | None = None) -> Any:
        """A Parquet file as a ``pyarrow.Table``. With ``columns``, only the footer and those
        columns' chunks are read (range reads; on S3 one ranged GET each), never the whole
        file: indexing a mel part for its ids costs kilobytes, not its mels."""
        import pyarrow.parquet as pq

        # One thread: pyarrow's decode threads (read_table's scanner, or ParquetFile.read's
        # use_threads) can still be alive at interpreter exit and abort the process
        # ("terminate called without an active exception", apache/arrow#34314): a short
        # `similar` did in 51 of 300 runs, a script reading 4 mel parts in 10 of 15; with
        # use_threads=False 0 of 15. Jobs parallelise over files (tasks), not inside one.
        if columns is None:
            return pq.ParquetFile(io.BytesIO(self.read_bytes(uri))).read(use_threads=False)
        with _RangeFile(self, normalize_uri(uri)) as fh:
            return pq.ParquetFile(fh).read(columns=columns, use_threads=False)

    def iter_row_groups(
        self, uri: str, columns: list[str], where: tuple[str, Container[str]] | None = None
    ) -> Iterator[Any]:
        """``columns`` of a Parquet file one row group at a time (``pyarrow.Table`` each), by
        range reads: a reader holds one row group, not the file (a mel part of many tracks).
        With ``where=(column, values)``, only the rows whose ``column`` is in ``values``: that
        column is read first, and a row group without such rows costs no other read."""
        import pyarrow.parquet as pq

        with _RangeFile(self, normalize_uri(uri)) as fh:
            pf = pq.ParquetFile(fh)
            for i in range(pf.num_row_groups):
                if where is None:
                    yield pf.read_row_group(i, columns=columns, use_threads=False)
                    continue
                column, values = where
                keys = pf.read_row_group(i, columns=[column], use_threads=False).column(column).to_pylist()
                rows = [k for k, key in enumerate(keys) if key in values]
                if rows:
                    yield pf.read_row_group(i, columns=columns, use_threads=False).take(rows)

    def size(self, uri: str) -> int:
        """Bytes in one file (FileNotFoundError if there is none)."""
        uri = normalize_uri(uri)
        if not is_s3(uri):
            return os.path.getsize(uri)
        from botocore.exceptions import ClientError

        parsed = urlparse(uri)

        def head() -> int:
            try:
                return int(
                    self.s3_client().head_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))["ContentLength"]
                )
            except ClientError as exc:
                if _not_found(exc):
                    raise FileNotFoundError(uri) from None
                raise

        return self._retry(head, f"size {uri}")

    def read_range(self, uri: str, start: int, length: int) -> bytes:
        """``length`` bytes from offset ``start`` (S3: one ranged GET)."""
        uri = normalize_uri(uri)
        _log_fetch("range", uri, length)
        if is_s3(uri):
            parsed = urlparse(uri)

            def get() -> bytes:
                client = self.s3_client()
                try:
                    resp = client.get_object(
                        Bucket=parsed.netloc, Key=parsed.path.lstrip("/"), Range=f"bytes={start}-{start + length - 1}"
                    )
                except client.exceptions.NoSuchKey:
                    raise FileNotFoundError(uri) from None
                return resp["Body"].read()

            return self._retry(get, f"read {uri}")
        with open(uri, "rb") as fh:
            fh.seek(start)
            return fh.read(length)

    def parquet_metadata(self, uri: str, size: int | None = None) -> Any:
        """A Parquet file's footer (``pyarrow.parquet.FileMetaData``) by range reads of its tail,
        without fetching its data; ``size`` (bytes) saves the HEAD / stat when known."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        uri = normalize_uri(uri)
        with _RangeFile(self, uri, size) as fh:
            try:
                return pq.ParquetFile(fh).metadata
            except pa.ArrowInvalid:
                raise ValueError(f"{uri}: not a Parquet file") from None

    def move(self, src: str, dst: str) -> None:
        """Move one file. Local: atomic rename. S3: copy then delete (the copy is atomic)."""
        src, dst = normalize_uri(src), normalize_uri(dst)
        if is_s3(src):
            s, d = urlparse(src), urlparse(dst)
            client = self.s3_client()
            self._retry(
                lambda: client.copy_object(
                    Bucket=d.netloc, Key=d.path.lstrip("/"), CopySource={"Bucket": s.netloc, "Key": s.path.lstrip("/")}
                ),
                f"copy {src}",
            )
            self._retry(lambda: client.delete_object(Bucket=s.netloc, Key=s.path.lstrip("/")), f"delete {src}")
            return
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.replace(src, dst)

    def delete(self, uri: str) -> None:
        """Delete a file; deleting one that is already gone is not an error (re-runs)."""
        uri = normalize_uri(uri)
        if is_s3(uri):
            parsed = urlparse(uri)
            self._retry(
                lambda: self.s3_client().delete_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/")),
                f"delete {uri}",
            )
            return
        try:
            os.remove(uri)
        except FileNotFoundError:
            pass

    def delete_prefix(self, prefix: str) -> int:
        """Delete every file below ``prefix``; returns how many."""
        uris = [u for u, _ in self.list_files(prefix)]
        for uri in uris:
            self.delete(uri)
        if not is_s3(prefix):
            for dirpath, _dirs, _files in sorted(os.walk(normalize_uri(prefix)), reverse=True):
                try:
                    os.rmdir(dirpath)
                except OSError:
                    pass
        return len(uris)

    # -- compare-and-swap objects (table leases) --------------------------------------------
    # A "version" is the S3 ETag, or the sha256 of a local file's bytes. Local operations hold an
    # flock on ``<uri>.lock`` so that read-compare-write is one step for every process on this
    # host (and on NFS v4, which maps flock to byte-range locks); S3 uses conditional requests
    # (If-None-Match / If-Match), which the server checks atomically.

    def create_exclusive(self, uri: str, data: bytes) -> str | None:
        """Write ``data`` to ``uri`` only if nothing is there: its version, or None if taken."""
        uri = normalize_uri(uri)
        if is_s3(uri):
            parsed = urlparse(uri)

            def put() -> str | None:
                try:
                    resp = self.s3_client().put_object(
                        Bucket=parsed.netloc, Key=parsed.path.lstrip("/"), Body=data, IfNoneMatch="*"
                    )
                except Exception as exc:
                    if _precondition_failed(exc):
                        return None
                    raise
                return str(resp["ETag"])

            return self._retry(put, f"create {uri}")
        with _local_lock(uri):
            if os.path.exists(uri):
                return None
            tmp = f"{uri}.tmp-{os.getpid()}-{random.getrandbits(32):08x}"
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, uri)  # fails if the name exists: an exclusive create with its content
            except FileExistsError:
                return None
            finally:
                os.remove(tmp)
            return _digest(data)

    def read_versioned(self, uri: str) -> tuple[bytes, str] | None:
        """``(bytes, version)`` of ``uri``, or None if it does not exist."""
        uri = normalize_uri(uri)
        if is_s3(uri):
            parsed = urlparse(uri)

            def get() -> tuple[bytes, str] | None:
                client = self.s3_client()
                try:
                    resp = client.get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))
                except client.exceptions.NoSuchKey:
                    return None
                return resp["Body"].read(), str(resp["ETag"])

            return self._retry(get, f"read {uri}")
        try:
            with open(uri, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return None
        return data, _digest(data)

    def replace_if(self, uri: str, data: bytes, version: str) -> str | None:
        """Overwrite ``uri`` with ``data`` if it is still at ``version``: the new version, or None."""
        uri = normalize_uri(uri)
        if is_s3(uri):
            parsed = urlparse(uri)

            def put() -> str | None:
                try:
                    resp = self.s3_client().put_object(
                        Bucket=parsed.netloc, Key=parsed.path.lstrip("/"), Body=data, IfMatch=version
                    )
                except Exception as exc:
                    if _precondition_failed(exc):
                        return None
                    raise
                return str(resp["ETag"])

            return self._retry(put, f"replace {uri}")
        with _local_lock(uri):
            current = self.read_versioned(uri)
            if current is None or current[1] != version:
                return None
            self.write_bytes(uri, data)
            return _digest(data)

    def delete_if(self, uri: str, version: str) -> bool:
        """Delete ``uri`` if it is still at ``version``; False if it changed or is gone."""
        uri = normalize_uri(uri)
        if is_s3(uri):
            parsed = urlparse(uri)

            def delete() -> bool:
                try:
                    self.s3_client().delete_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"), IfMatch=version)
                except Exception as exc:
                    if _precondition_failed(exc) or _not_found(exc):
                        return False
                    raise
                return True

            return self._retry(delete, f"delete {uri}")
        with _local_lock(uri):
            current = self.read_versioned(uri)
            if current is None or current[1] != version:
                return False
            os.remove(uri)
            return True


def _digest(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _precondition_failed(exc: BaseException) -> bool:
    response = getattr(exc, "response", None) or {}
    return response.get("Error", {}).get("Code") in {
        "PreconditionFailed",
        "ConditionalRequestConflict",
    } or response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (409, 412)


def _not_found(exc: BaseException) -> bool:
    response = getattr(exc, "response", None) or {}
    return response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404


@contextlib.contextmanager
def _local_lock(uri: str) -> Iterator[None]:
    """An exclusive flock on ``<uri>.lock`` (created beside it), released on exit or death."""
    import fcntl

    os.makedirs(os.path.dirname(uri), exist_ok=True)
    fd = os.open(f"{uri}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class _RangeFile(io.RawIOBase):
    """A read-only, seekable view of one stored file whose reads are :meth:`Storage.read_range`
    calls (retried like every storage call), for readers that seek (Parquet footers and column
    chunks). The size comes from one HEAD / stat unless the caller knows it."""

    def __init__(self, storage: Storage, uri: str, size: int | None = None) -> None:
        super().__init__()
        self._storage, self._uri = storage, uri
        self._size = storage.size(uri) if size is None else size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self._size - self._pos)
        if n <= 0:
            return 0
        data = self._storage.read_range(self._uri, self._pos, n)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


def install_s3fs_retry_policy() -> None:
    """Make s3fs retry exactly what :func:`_is_transient` calls transient. s3fs already repeats
    resets, timeouts and truncated bodies, but not 500/502/503/504, 429 or a refused or timed-out
    connect, and it asks this process-wide hook about the rest (permanent errors: no)."""
    import s3fs.core

    s3fs.core.set_custom_error_handler(_is_transient)


def _legacy_s3_filesystem(options: dict[str, Any], attempts: int = RETRY_ATTEMPTS) -> Any:
    """An s3fs client behind pyarrow's legacy ``FileSystem`` interface (see
    :meth:`Storage.petastorm_filesystem_factory`)."""
    import warnings

    import s3fs
    from pyarrow.filesystem import DaskFileSystem

    class LegacyS3FS(DaskFileSystem):
        def isdir(self, path: str) -> bool:
            return self.fs.isdir(path)

        def isfile(self, path: str) -> bool:
            return self.fs.isfile(path)

        def walk(self, path: str) -> Iterator[tuple[str, list[str], list[str]]]:
            for root, dirs, files in self.fs.walk(path):
                yield root, sorted(dirs), sorted(files)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        fs = s3fs.S3FileSystem(**options)
        fs.retries = attempts  # s3fs's loop: attempts per call in all (a class attribute, no argument)
        install_s3fs_retry_policy()  # this process may be an executor that never called storage_options
        return LegacyS3FS(fs)
