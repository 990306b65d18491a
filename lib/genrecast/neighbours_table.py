"""The neighbours table's layout and the scores columns it is built from: shared by the recommend
job (:mod:`genrecast.recommend`), its quality report (:mod:`genrecast.recommend_quality`), the
nightly update (:mod:`genrecast.recommend_nightly`) and the look-ups (:mod:`genrecast.similar`).

Parts are named ``part-<run>-<bucket>-of-<buckets>.parquet`` with ``bucket = crc32(track_id) %
buckets`` of the query track, so a look-up reads one file, not the table. A track is never its
own neighbour, and tracks with the same ``audio_sha256`` (duplicates) are never each other's.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from genrecast import commit
from genrecast.config import Config
from genrecast.dataset import neighbours_uri
from genrecast.errors import JobError
from genrecast.neighbours import Exclusion, l2_normalise
from genrecast.search_files import SearchFiles
from genrecast.storage import Storage, join

REPORT_DIR = "_report"  # beside the parts; "_" keeps it out of every table reader
QUALITY_FILE = "quality.json"
DUPLICATES_FILE = "duplicates.csv"
MAP_FILE = "embedding_map.png"
SCORE_COLUMNS = ["track_id", "embedding", "audio_sha256", "genre", "model_id", "scored_at"]
PART = re.compile(r"-(\d+)-of-(\d+)\.parquet$")  # a part's bucket and bucket count

NEIGHBOURS_SCHEMA = pa.schema(
    [
        pa.field("track_id", pa.string(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),
        pa.field("neighbour_id", pa.string(), nullable=False),
        pa.field("similarity", pa.float32(), nullable=False),
        pa.field("model_id", pa.string(), nullable=False),
    ]
)


def report_uri(cfg: Config, model_id: str) -> str:
    return join(neighbours_uri(cfg, model_id), REPORT_DIR)


def bucket_of(track_id: str, buckets: int) -> int:
    """Stable across processes and runs (unlike ``hash``): which part file holds a track."""
    return zlib.crc32(track_id.encode()) % buckets


def bucket_owners(track_ids: list[str], buckets: int) -> np.ndarray:
    """(n,) int64: :func:`bucket_of` each track id."""
    return np.fromiter((bucket_of(t, buckets) for t in track_ids), np.int64, len(track_ids))


@dataclass(frozen=True)
class BucketJob:
    """What every per-bucket recommend task needs (nightly adds the changed rows); the
    catalogue's vectors, audio keys, ids and index travel as mapped files (``files``)."""

    files: SearchFiles
    k: int
    model_id: str
    table_uri: str
    run_id: str
    buckets: int
    cpus: int
    storage: Storage


def part_name(run_id: str, bucket: int, buckets: int) -> str:
    return f"part-{run_id}-{bucket:05d}-of-{buckets:05d}.parquet"


def part_bucket(uri: str) -> tuple[int, int] | None:
    """``(bucket, buckets)`` of a part file's name; None for a name without one."""
    m = PART.search(uri)
    return (int(m.group(1)), int(m.group(2))) if m else None


# -- reading the scores table ------------------------------------------------------------------


@dataclass
class ScoresFrame:
    """The scores table's search columns, sorted by track_id."""

    track_ids: list[str]
    embeddings: np.ndarray  # (n, d) float32, unit rows
    shas: list[str | None]
    genres: list[str | None]  # predicted by the model
    versions: np.ndarray  # (n,) int64: fingerprint of (model_id, scored_at, audio_sha256) per row


def version_key(model_id: str | None, scored_at: object, sha: str | None) -> int:
    """int64 fingerprint of what makes a scores row new: a re-scored or re-hashed track differs."""
    text = f"{model_id}\0{scored_at}\0{sha}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little", signed=True)


def _list_matrix(column: pa.ChunkedArray, ids: list[str], source: str) -> np.ndarray:
    """A list<float> column of equal-length lists -> (rows, d) float32."""
    import pyarrow.compute as pc

    arr = column.combine_chunks()
    lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(np.isnan(lengths.astype(float)) | (lengths != lengths[0]) | (lengths == 0))
    if bad.size:
        raise JobError(f"{source}: track {ids[bad[0]]!r} has a missing or differently sized embedding")
    x = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(arr), int(lengths[0]))
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if bad.size:
        raise JobError(f"{source}: track {ids[bad[0]]!r} has a non-finite embedding")
    return x


def read_scores(storage: Storage, uri: str, model_id: str) -> ScoresFrame:
    """Read ``track_id, embedding, audio_sha256, genre`` (and the row's version) of one committed
    version of the scores table (a concurrent score commit is either wholly in it or not at all)."""
    return commit.read_snapshot(storage, uri, lambda files: _read_scores_files(storage, uri, model_id, files))


def _read_scores_files(storage: Storage, uri: str, model_id: str, files: list[str]) -> ScoresFrame:
    if not files:
        raise JobError(f"no scores for model {model_id} at {uri}: run genrecast score --model {model_id}")

    def read(f: str) -> tuple[list[str], np.ndarray, list, list, list]:
        try:
            t = storage.read_parquet(f, columns=SCORE_COLUMNS)
        except pa.ArrowInvalid:
            raise JobError(f"{f}: not a scores file (needs columns {', '.join(SCORE_COLUMNS)})") from None
        ids = t.column("track_id").to_pylist()
        if not ids:
            return [], np.zeros((0, 0), np.float32), [], [], []
        shas = t.column("audio_sha256").to_pylist()
        versions = [
            version_key(m, s, h)
            for m, s, h in zip(t.column("model_id").to_pylist(), t.column("scored_at").to_pylist(), shas, strict=True)
        ]
        return ids, _list_matrix(t.column("embedding"), ids, f), shas, t.column("genre").to_pylist(), versions

    with ThreadPoolExecutor(8) as pool:  # I/O bound on S3
        parts = [p for p in pool.map(read, files) if p[0]]
    if not parts:
        raise JobError(f"scores table {uri} is empty")
    dims = {p[1].shape[1] for p in parts}
    if len(dims) > 1:
        raise JobError(f"scores table {uri} mixes embedding sizes {sorted(dims)}")
    ids = [t for p in parts for t in p[0]]
    order = np.argsort(np.asarray(ids, dtype=object), kind="stable")
    ids = [ids[i] for i in order]
    for a, b in zip(ids, ids[1:], strict=False):
        if a == b:
            raise JobError(f"scores table {uri} has two rows for track {a!r} (re-run genrecast score)")
    shas = [s for p in parts for s in p[2]]
    genres = [g for p in parts for g in p[3]]
    versions = np.asarray([v for p in parts for v in p[4]], np.int64)
    matrices = [p[1] for p in parts]
    del parts
    # One (n, d) matrix on the driver: each part's rows are normalised into their sorted place
    # and the part let go, instead of concatenate + reorder + normalise (three more copies).
    embeddings = np.empty((len(ids), dims.pop()), np.float32)
    sorted_at = np.empty(len(order), np.int64)
    sorted_at[order] = np.arange(len(order))
    start = 0
    for i in range(len(matrices)):
        m, matrices[i] = matrices[i], None
        embeddings[sorted_at[start : start + len(m)]] = l2_normalise(m)
        start += len(m)
        del m
    return ScoresFrame(ids, embeddings, [shas[i] for i in order], [genres[i] for i in order], versions[order])


def duplicate_groups(track_ids: list[str], shas: list[str | None]) -> list[list[str]]:
    """Tracks sharing an ``audio_sha256``, one sorted list per hash held by two or more tracks."""
    by_sha: dict[str, list[str]] = {}
    for t, s in zip(track_ids, shas, strict=True):
        if s:
            by_sha.setdefault(s, []).append(t)
    return sorted(sorted(g) for g in by_sha.values() if len(g) > 1)


def catalogue_exclusions(rows: np.ndarray, sha_keys: np.ndarray) -> list[Exclusion]:
    """For queries ``rows`` of the catalogue: not itself, not a track with the same audio."""
    return [Exclusion(rows, np.arange(len(sha_keys))), Exclusion(sha_keys[rows], sha_keys)]
