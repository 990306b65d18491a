"""Planning on Spark, shared by ingest (:mod:`genrecast.ingest_plan`) and score
(:mod:`genrecast.score_plan`): the catalogue listing, the manifest and a job's earlier rejects
as DataFrames read by executors through :class:`~genrecast.storage.Storage` (local folders and
S3 alike: no Hadoop S3 connector involved), the plan's counts, the tasks built on the executors
and the files holding rows to drop. The driver holds counts and rows proportional to the change,
never one object per catalogue track:

- the listing is streamed from ``Storage.list_entries`` into Parquet chunks of
  :data:`LISTING_CHUNK` rows under the job's ``_tmp/<run_id>/plan/`` (one chunk held at a time);
  duplicate track ids are found on Spark;
- a plan is a DataFrame of every listed track with its verdict in a ``kind`` column
  (:data:`~genrecast.tasks.FETCH` / ``KEPT_*``) and the fields of its
  :class:`~genrecast.tasks.TrackTask`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from genrecast import commit
from genrecast.catalogue import Track, duplicate_reject, listed_files
from genrecast.manifest import MANIFEST_ARROW_SCHEMA, Entry
from genrecast.storage import Storage, join
from genrecast.tasks import FETCH, KEPT_REJECTED, KEPT_UNCHANGED, TrackTask

log = logging.getLogger(__name__)

LISTING_CHUNK = 50_000  # listing rows the driver buffers before writing a chunk
LISTING_DDL = "track_id string, uri string, size long, version string, seq long"
# The manifest's columns; updated_at as microseconds since the epoch (UTC), so that it
# round-trips exactly (no session time zone involved).
MANIFEST_DDL = (
    "track_id string, uri string, size long, version string, sha256 string, genre string, "
    "features_key string, status string, updated_at long"
)
REJECTS_DDL = (
    "source_uri string, stage string, reason string, features_key string, audio_sha256 string, "
    "file_no long, row_no long"
)
REJECT_KEY_COLUMNS = ("source_uri", "stage", "reason", "features_key")
M_COLUMNS = ("uri", "size", "version", "sha256", "genre", "features_key", "status", "updated_at")


def frame_of_files(spark: Any, files: list[str], read_rows: Callable[[int, str], Iterable[tuple]], ddl: str) -> Any:
    """A DataFrame of the rows ``read_rows(file_no, file)`` yields for each file, read by
    executors (one task per file)."""
    if not files:
        return spark.createDataFrame([], ddl)
    rdd = spark.sparkContext.parallelize(list(enumerate(files)), len(files)).flatMap(lambda nf: read_rows(*nf))
    return spark.createDataFrame(rdd, ddl)


def parquet_rows(storage: Storage, f: str, columns: list[str]) -> Iterator[tuple]:
    table = storage.read_parquet(f, columns=columns)
    return zip(*(table.column(c).to_pylist() for c in columns), strict=True)


# ---- listing ----------------------------------------------------------------------------


def write_listing(
    storage: Storage, audio_uri: str, extensions: Iterable[str], tmp: str, chunk: int = LISTING_CHUNK
) -> tuple[list[str], int, list[dict]]:
    """Stream the catalogue listing into Parquet chunks of ``chunk`` rows under ``tmp`` (the
    driver holds one chunk): (the chunk files, the files listed as tracks, the rejects rows of
    files that cannot be tracks)."""
    rejects: list[dict] = []
    parts: list[str] = []
    cols: dict[str, list] = {c: [] for c in ("track_id", "uri", "size", "version", "seq")}
    seq = 0

    def flush() -> None:
        if cols["seq"]:
            part = join(tmp, f"listing-{len(parts):05d}.parquet")
            storage.write_parquet(part, pa.table(cols))
            parts.append(part)
            for v in cols.values():
                v.clear()

    for item in listed_files(storage, audio_uri, extensions):
        if not isinstance(item, Track):
            rejects.append(item)
            continue
        for c, v in (("track_id", item.track_id), ("uri", item.uri), ("size", item.size), ("version", item.version)):
            cols[c].append(v)
        cols["seq"].append(seq)
        seq += 1
        if len(cols["seq"]) >= chunk:
            flush()
    flush()
    return parts, seq, rejects


def listing_frame(spark: Any, storage: Storage, parts: list[str]) -> tuple[Any, list[dict]]:
    """The listing's chunks as a DataFrame (persisted) of one row per track id, the first
    listed of duplicates (``track_id, uri, size, version``), and the rejects rows of the other
    duplicates (a problem's size)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    names = ["track_id", "uri", "size", "version", "seq"]
    raw = frame_of_files(spark, parts, lambda _n, f: parquet_rows(storage, f, names), LISTING_DDL)
    w = Window.partitionBy("track_id").orderBy("seq")
    ranked = raw.withColumn("rank", F.row_number().over(w)).withColumn("first_uri", F.first("uri").over(w))
    ranked = ranked.persist()
    dups = ranked.filter("rank > 1").select("uri", "track_id", "first_uri", "seq").orderBy("seq").collect()
    listing = ranked.filter("rank = 1").select("track_id", "uri", "size", "version").persist()
    listing.count()  # materialise before the window's cache goes
    ranked.unpersist()
    return listing, [duplicate_reject(r.uri, r.track_id, r.first_uri) for r in dups]


PLAN_PART_ROWS = 100_000  # listed tracks per shuffle partition while planning
SHUFFLE_PARTITIONS = "spark.sql.shuffle.partitions"


def plan_partitions(rows: int, parallelism: int) -> int:
    """Shuffle partitions for planning ``rows`` listed tracks: ~:data:`PLAN_PART_ROWS` rows
    each, one per core up to 10k rows each; 1 for a small catalogue (Spark's default of 200
    costs a Python task each: ~40 s for a 1000-track plan on 2 cores)."""
    return max(1, min(parallelism, math.ceil(rows / 10_000)), math.ceil(rows / PLAN_PART_ROWS))


@contextmanager
def planning_conf(spark: Any) -> Iterator[None]:
    """Restore ``spark.sql.shuffle.partitions`` (which :func:`plan_on_spark` sets) on exit."""
    before = spark.conf.get(SHUFFLE_PARTITIONS)
    try:
        yield
    finally:
        spark.conf.set(SHUFFLE_PARTITIONS, before)


@contextmanager
def planning(spark: Any, storage: Storage, tmp: str) -> Iterator[list[Any]]:
    """A run's planning scope: yields the list its persisted DataFrames go in; on exit they are
    unpersisted, the files staged under ``tmp`` deleted and ``spark.sql.shuffle.partitions``
    restored (:func:`planning_conf`)."""
    frames: list[Any] = []
    try:
        with planning_conf(spark):
            yield frames
    finally:
        for frame in frames:
            frame.unpersist()
        storage.delete_prefix(tmp)


# ---- manifest and rejects --------------------------------------------------------------


def _manifest_rows(storage: Storage, f: str) -> Iterator[tuple]:
    table = storage.read_parquet(f)
    table = table.set_column(
        table.schema.get_field_index("updated_at"), "updated_at", table.column("updated_at").cast(pa.int64())
    )
    return zip(*(table.column(c).to_pylist() for c in MANIFEST_ARROW_SCHEMA.names), strict=True)


def manifest_frame(spark: Any, storage: Storage, uri: str) -> Any:
    """One committed version of the manifest (:data:`MANIFEST_DDL`), read by executors and
    persisted (the caller unpersists it). Score reads it while ingest may commit: a part file
    removed by a commit during the read (FileNotFoundError on an executor) means read the new
    version, as :func:`genrecast.commit.read_snapshot` does on the driver."""
    for attempt in range(1, commit.SNAPSHOT_ATTEMPTS + 1):
        files = commit.snapshot(storage, uri)
        frame = frame_of_files(spark, files, lambda _n, f: _manifest_rows(storage, f), MANIFEST_DDL).persist()
        try:
            frame.count()
            return frame
        except Exception as exc:  # a Py4JJavaError carrying the executor's traceback
            frame.unpersist()
            if "FileNotFoundError" not in str(exc) or attempt == commit.SNAPSHOT_ATTEMPTS:
                raise
            log.info("%s: changed by a commit while reading; reading the new version", uri)
    raise AssertionError("unreachable")


def with_manifest(frame: Any, manifest: Any) -> Any:
    """``frame`` left-joined on ``track_id`` with the manifest's columns as ``m_<column>``."""
    from pyspark.sql import functions as F

    return frame.join(manifest.select("track_id", *(F.col(c).alias(f"m_{c}") for c in M_COLUMNS)), "track_id", "left")


def manifest_entry(r: Any) -> Entry | None:
    """The manifest row of a :func:`with_manifest` row (None where the manifest has none)."""
    if r.m_uri is None:
        return None
    return Entry(r.track_id, r.m_uri, r.m_size, r.m_version, r.m_sha256, r.m_genre, r.m_features_key, r.m_status)


def _reject_rows(storage: Storage, file_no: int, f: str) -> Iterator[tuple]:
    rows = storage.read_parquet(f).to_pylist()
    for row_no, r in enumerate(rows):
        yield (
            r["source_uri"],
            r["stage"],
            r["reason"],
            r.get("features_key"),
            r.get("audio_sha256"),
            file_no,
            row_no,
        )


def rejects_frame(spark: Any, storage: Storage, files: list[str]) -> Any:
    """Earlier rejects rows (:data:`REJECTS_DDL`; features_key null in files written before it)."""
    return frame_of_files(spark, files, lambda n, f: _reject_rows(storage, n, f), REJECTS_DDL)


def rejected_shas_frame(rejects: Any, fkey: str) -> Any:
    """``uri, rejected_sha``: the sha256 of each source rejected under ``fkey`` (the last row
    of the last file, as :func:`genrecast.dataset.previous_rejects`)."""
    from pyspark.sql import functions as F

    usable = rejects.filter((F.col("audio_sha256") != "") & (F.col("features_key") == fkey))
    last = F.max(F.struct("file_no", "row_no", "audio_sha256")).alias("last")
    return (
        usable.groupBy("source_uri")
        .agg(last)
        .select(F.col("source_uri").alias("uri"), F.col("last.audio_sha256").alias("rejected_sha"))
    )


def known_reject_keys(spark: Any, rejects: Any, keys: list[tuple]) -> set[tuple]:
    """Which of ``keys`` ((source_uri, stage, reason, features_key), a run's new rejects) the
    earlier rejects already hold."""
    if not keys:
        return set()
    ddl = ", ".join(f"{c} string" for c in REJECT_KEY_COLUMNS)
    wanted = spark.createDataFrame(list(set(keys)), ddl)
    cond = [rejects[c].eqNullSafe(wanted[c]) for c in REJECT_KEY_COLUMNS]
    found = rejects.join(wanted, cond, "left_semi").select(*REJECT_KEY_COLUMNS).distinct().collect()
    return {tuple(r) for r in found}


# ---- the plan ---------------------------------------------------------------------------


@dataclass
class PlanCounts:
    listed: int = 0
    labelled: int = 0  # listed tracks with a label
    fetch: int = 0
    skipped_unchanged: int = 0
    skipped_rejected: int = 0


def plan_counts(decided: Any) -> PlanCounts:
    from pyspark.sql import functions as F

    def n(cond: Any) -> Any:
        return F.sum(F.when(cond, 1).otherwise(0))

    kind = F.col("kind")
    r = decided.agg(
        F.count(F.lit(1)),
        n(F.col("genre").isNotNull()),
        n(kind == FETCH),
        n(kind == KEPT_UNCHANGED),
        n(kind == KEPT_REJECTED),
    ).collect()[0]
    return PlanCounts(*(int(v or 0) for v in r))


def task_rdd(decided: Any, n_parts: int) -> Any:
    """The FETCH rows as :class:`~genrecast.tasks.TrackTask`s in ``n_parts`` partitions, in the
    order of :func:`genrecast.tasks.spread` (sha256 of the track id), built on the executors."""
    from pyspark.sql import functions as F

    fetch = decided.filter(F.col("kind") == FETCH).withColumn("h", F.sha2(F.col("track_id"), 256))
    ordered = fetch.repartitionByRange(n_parts, "h").sortWithinPartitions("h")
    return ordered.rdd.map(lambda r: TrackTask(r.track_id, r.uri, r.genre, r.skip_sha, r.rejected_sha))


def stale_files(spark: Any, index: Any, listing: Any, replaced: Iterable[str]) -> dict[str, set[str]]:
    """``{file: track ids}`` of a table's rows to drop, from its ``index`` (``track_id``,
    ``have_files``): tracks gone from the listing and the ``replaced`` ones (processed again or
    now rejected: the driver's results, proportional to the change). Proportional to the
    change too."""
    from pyspark.sql import functions as F

    ids = sorted(set(replaced))
    gone = index.join(listing.select("track_id"), "track_id", "left_anti")
    if ids:
        changed = index.join(spark.createDataFrame([(t,) for t in ids], "track_id string"), "track_id", "left_semi")
        gone = gone.unionByName(changed)
    pairs = gone.select("track_id", F.explode("have_files").alias("file")).collect()
    stale: dict[str, set[str]] = {}
    for r in pairs:
        stale.setdefault(r.file, set()).add(r.track_id)
    return stale
