"""Storage URIs: one place that turns ``s3://``, ``file://`` and local paths into I/O.

Local paths are normalised to absolute paths; ``s3://bucket/key`` stays as it is. S3 access
uses the boto3 / AWS credential chain only (environment, shared config, instance role): this
module never accepts, logs or writes a credential. Transient errors are retried with backoff.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlparse

from genrecast.errors import InvalidIdentifier

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_ATTEMPTS = 5
RETRY_BASE_SECONDS = 0.2


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


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    try:
        from botocore.exceptions import ClientError, ReadTimeoutError
        from botocore.exceptions import ConnectionError as BotoConnectionError
    except ImportError:  # pragma: no cover - botocore is a hard dependency
        ClientError = BotoConnectionError = ReadTimeoutError = ()  # type: ignore[assignment,misc]
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or status == 429 or code in {"SlowDown", "Throttling", "RequestTimeout"}
    return isinstance(exc, (ConnectionError, TimeoutError, BotoConnectionError, ReadTimeoutError, OSError))


def with_retries(fn: Callable[[], T], what: str, attempts: int = RETRY_ATTEMPTS) -> T:
    """Call ``fn``; on a transient storage error wait (exponential backoff + jitter) and retry."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if attempt == attempts or not _is_transient(exc):
                raise
            delay = RETRY_BASE_SECONDS * 2 ** (attempt - 1) * (1 + random.random())
            log.warning("%s: %s (attempt %d/%d), retrying in %.1fs", what, type(exc).__name__, attempt, attempts, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


@dataclass
class Storage:
    """Reads, writes and lists URIs. Picklable: the S3 clients are created lazily per process."""

    endpoint_url: str | None = None
    region: str | None = None
    _clients: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_config(cls, cfg: Any) -> Storage:
        return cls(endpoint_url=cfg.storage.s3.endpoint_url, region=cfg.storage.s3.region)

    def __getstate__(self) -> dict[str, Any]:
        return {"endpoint_url": self.endpoint_url, "region": self.region}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.endpoint_url, self.region, self._clients = state["endpoint_url"], state["region"], {}

    # -- clients -------------------------------------------------------------------------
    def s3_client(self) -> Any:
        if "boto3" not in self._clients:
            import boto3
            from botocore.config import Config as BotoConfig

            self._clients["boto3"] = boto3.session.Session().client(
                "s3",
                endpoint_url=self.endpoint_url,
                region_name=self.region,
                # One retry policy, ours (with_retries), rather than two nested ones.
                config=BotoConfig(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=10, read_timeout=60),
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

        def factory() -> Any:
            return _legacy_s3_filesystem(options)

        return factory

    def storage_options(self, uri: str) -> dict[str, Any]:
        """fsspec ``storage_options`` for libraries (petastorm, pandas) that open URIs themselves."""
        if not is_s3(uri):
            return {}
        client_kwargs = {k: v for k, v in {"endpoint_url": self.endpoint_url, "region_name": self.region}.items() if v}
        # Fresh listings every time: tables change under a long-lived process (commits, re-runs).
        return {"client_kwargs": client_kwargs, "skip_instance_cache": True, "use_listings_cache": False}

    # -- operations ----------------------------------------------------------------------
    def list_files(self, prefix: str) -> Iterator[tuple[str, int]]:
        """Yield ``(uri, size)`` for every file below ``prefix``, sorted per listing page.

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
                page = with_retries(lambda kw=kwargs: self.s3_client().list_objects_v2(**kw), f"list {prefix}")
                for obj in page.get("Contents", []):
                    if not obj["Key"].endswith("/"):
                        yield f"s3://{parsed.netloc}/{obj['Key']}", int(obj["Size"])
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
                yield path, os.path.getsize(path)

    def exists(self, uri: str) -> bool:
        """True if the file exists (not for S3 "folders")."""
        uri = normalize_uri(uri)
        if not is_s3(uri):
            return os.path.isfile(uri)
        from botocore.exceptions import ClientError

        parsed = urlparse(uri)

        def head() -> bool:
            try:
                self.s3_client().head_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))
                return True
            except ClientError as exc:
                if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                    return False
                raise

        return with_retries(head, f"exists {uri}")

    def read_bytes(self, uri: str) -> bytes:
        uri = normalize_uri(uri)
        if is_s3(uri):
            parsed = urlparse(uri)

            def get() -> bytes:
                client = self.s3_client()
                try:
                    return client.get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))["Body"].read()
                except client.exceptions.NoSuchKey:
                    raise FileNotFoundError(uri) from None

            return with_retries(get, f"read {uri}")
        with open(uri, "rb") as fh:
            return fh.read()

    def write_bytes(self, uri: str, data: bytes) -> None:
        """Write a whole object; atomic (a reader sees the old content or the new, never half)."""
        uri = normalize_uri(uri)
        if is_s3(uri):
            parsed = urlparse(uri)
            with_retries(
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
        import pyarrow.parquet as pq

        return pq.read_table(io.BytesIO(self.read_bytes(uri)), columns=columns)

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

        return with_retries(head, f"size {uri}")

    def read_range(self, uri: str, start: int, length: int) -> bytes:
        """``length`` bytes from offset ``start`` (S3: one ranged GET)."""
        uri = normalize_uri(uri)
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

            return with_retries(get, f"read {uri}")
        with open(uri, "rb") as fh:
            fh.seek(start)
            return fh.read(length)

    def parquet_metadata(self, uri: str, size: int | None = None) -> Any:
        """A Parquet file's footer (``pyarrow.parquet.FileMetaData``) from two range reads,
        without fetching its data."""
        import pyarrow.parquet as pq

        size = self.size(uri) if size is None else size
        tail = self.read_range(uri, size - 8, 8)
        if len(tail) != 8 or tail[4:] != b"PAR1":
            raise ValueError(f"{uri}: not a Parquet file")
        footer_len = int.from_bytes(tail[:4], "little")
        footer = self.read_range(uri, size - 8 - footer_len, footer_len)
        return pq.read_metadata(io.BytesIO(b"PAR1" + footer + tail))

    def move(self, src: str, dst: str) -> None:
        """Move one file. Local: atomic rename. S3: copy then delete (the copy is atomic)."""
        src, dst = normalize_uri(src), normalize_uri(dst)
        if is_s3(src):
            s, d = urlparse(src), urlparse(dst)
            client = self.s3_client()
            with_retries(
                lambda: client.copy_object(
                    Bucket=d.netloc, Key=d.path.lstrip("/"), CopySource={"Bucket": s.netloc, "Key": s.path.lstrip("/")}
                ),
                f"copy {src}",
            )
            with_retries(lambda: client.delete_object(Bucket=s.netloc, Key=s.path.lstrip("/")), f"delete {src}")
            return
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.replace(src, dst)

    def delete(self, uri: str) -> None:
        """Delete a file; deleting one that is already gone is not an error (re-runs)."""
        uri = normalize_uri(uri)
        if is_s3(uri):
            parsed = urlparse(uri)
            with_retries(
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

            return with_retries(put, f"create {uri}")
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

            return with_retries(get, f"read {uri}")
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

            return with_retries(put, f"replace {uri}")
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

            return with_retries(delete, f"delete {uri}")
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


def _legacy_s3_filesystem(options: dict[str, Any]) -> Any:
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
        return LegacyS3FS(s3fs.S3FileSystem(**options))
