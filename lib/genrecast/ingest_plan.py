"""Ingest's planning on Spark: the catalogue listing, labels, mel dataset index, manifest and
earlier rejects meet as DataFrames, and :func:`genrecast.ingest.decide_ingest` (the same
per-track decision as the pure :func:`genrecast.ingest.plan_ingest`) runs row-wise on the
executors. The driver holds counts and rows proportional to the change (tasks' results, rejects,
the files of changed or deleted tracks), never one object per catalogue track:

- the listing is streamed from ``Storage.list_entries`` into Parquet chunks of
  :data:`LISTING_CHUNK` rows under the manifest's ``_tmp/<run_id>/plan/`` (one chunk held at a
  time); duplicate track ids are found on Spark;
- labels.csv is parsed by one executor task, which writes the labels as a Parquet file there;
- the mel index (three columns by range reads), the manifest and ingest's rejects are read by
  executors through :class:`~genrecast.storage.Storage` (local folders and S3 alike: no Hadoop
  S3 connector involved);
- the new manifest is written by executors as parts of :data:`MANIFEST_PART_ROWS` rows, sorted
  by track id, and committed by the driver in one journalled step.

Spark runs this under the ingest's leases; the staged files go with the manifest's tmp folder.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from genrecast import commit
from genrecast.catalogue import Track, check_deletions, duplicate_reject, listed_files, load_labels
from genrecast.config import Config
from genrecast.dataset import _index_file, manifest_uri, mels_uri, rejects_uri
from genrecast.errors import JobError
from genrecast.ingest import FEATURES_KEY, FETCH, KEPT_REJECTED, KEPT_UNCHANGED, decide_ingest, read_labels
from genrecast.manifest import MANIFEST_ARROW_SCHEMA, Entry
from genrecast.storage import Storage, join
from genrecast.tasks import TrackTask

LISTING_CHUNK = 50_000  # listing rows the driver buffers before writing a chunk
MANIFEST_PART_ROWS = 250_000  # rows per manifest part file (~27 MiB)

LISTING_DDL = "track_id string, uri string, size long, version string, seq long"
LABELS_DDL = "track_id string, genre string"
INDEX_DDL = "track_id string, audio_sha256 string, genre string, file string, file_no long, row_no long"
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
DECIDED_DDL = (
    "track_id string, uri string, size long, version string, genre string, rejected_sha string, "
    "kind string, skip_sha string, "
    + ", ".join(f"m_{c} {t}" for c, t in zip(M_COLUMNS, ("string", "long", "string", "string", "string",
                                                          "string", "string", "long"), strict=True))
)  # fmt: skip


def frame_of_files(spark: Any, files: list[str], read_rows: Callable[[int, str], Iterable[tuple]], ddl: str) -> Any:
    """A DataFrame of the rows ``read_rows(file_no, file)`` yields for each file, read by
    executors (one task per file)."""
    if not files:
        return spark.createDataFrame([], ddl)
    rdd = spark.sparkContext.parallelize(list(enumerate(files)), len(files)).flatMap(lambda nf: read_rows(*nf))
    return spark.createDataFrame(rdd, ddl)


def _parquet_rows(storage: Storage, f: str, columns: list[str]) -> Iterator[tuple]:
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
    raw = frame_of_files(spark, parts, lambda _n, f: _parquet_rows(storage, f, names), LISTING_DDL)
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


# ---- labels -----------------------------------------------------------------------------


@dataclass
class StagedLabels:
    """labels.csv parsed on an executor: ``labels`` (a DataFrame, :data:`LABELS_DDL`) and its
    rejects rows; ``error``: why it could not be read (then no labels)."""

    labels: Any
    rejects: list[dict]
    error: str | None = None


def _parse_labels(storage: Storage, uri: str, genres: list[str], out: str) -> tuple[int, list[dict], str | None]:
    try:
        labels, rejects = load_labels(storage, uri, genres)
    except JobError as exc:
        return 0, [], str(exc)
    if labels:
        ids = sorted(labels)
        storage.write_parquet(out, pa.table({"track_id": ids, "genre": [labels[t].genre for t in ids]}))
    return len(labels), rejects, None


def stage_labels(spark: Any, storage: Storage, uri: str, genres: list[str], tmp: str) -> StagedLabels:
    """Parse ``uri`` (which exists) in one executor task; the labels come back as a DataFrame."""
    out = join(tmp, "labels.parquet")
    n, rejects, error = (
        spark.sparkContext.parallelize([0], 1).map(lambda _: _parse_labels(storage, uri, genres, out)).collect()[0]
    )
    files = [out] if n else []
    frame = frame_of_files(spark, files, lambda _n, f: _parquet_rows(storage, f, ["track_id", "genre"]), LABELS_DDL)
    return StagedLabels(frame, rejects, error)


def no_labels(spark: Any) -> Any:
    return spark.createDataFrame([], LABELS_DDL)


# ---- mel dataset index, manifest, rejects -----------------------------------------------


def _index_rows(storage: Storage, file_no: int, f: str) -> Iterator[tuple]:
    for row_no, (track_id, sha, genre, _f) in enumerate(_index_file(f, storage)):
        yield track_id, sha, genre, f, file_no, row_no


def index_frame(spark: Any, storage: Storage, files: list[str]) -> Any:
    """The mel dataset by track, as :func:`genrecast.ingest.track_index`: ``track_id, have_sha,
    have_genre`` (of the track's first row, files in the given order) and ``have_files``
    (array), from three columns of each part (range reads)."""
    from pyspark.sql import functions as F

    rows = frame_of_files(spark, files, lambda n, f: _index_rows(storage, n, f), INDEX_DDL)
    first = F.min(F.struct("file_no", "row_no", "audio_sha256", "genre")).alias("first")
    return (
        rows.groupBy("track_id")
        .agg(first, F.collect_set("file").alias("have_files"))
        .select(
            "track_id",
            F.col("first.audio_sha256").alias("have_sha"),
            F.col("first.genre").alias("have_genre"),
            "have_files",
        )
    )


def _manifest_rows(storage: Storage, f: str) -> Iterator[tuple]:
    table = storage.read_parquet(f)
    table = table.set_column(
        table.schema.get_field_index("updated_at"), "updated_at", table.column("updated_at").cast(pa.int64())
    )
    return zip(*(table.column(c).to_pylist() for c in MANIFEST_ARROW_SCHEMA.names), strict=True)


def manifest_frame(spark: Any, storage: Storage, uri: str) -> Any:
    """The committed manifest (:data:`MANIFEST_DDL`), read by executors."""
    files = commit.table_files(storage, uri)  # ingest holds the manifest's lease: no commit meanwhile
    return frame_of_files(spark, files, lambda _n, f: _manifest_rows(storage, f), MANIFEST_DDL)


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


def _decide_rows(rows: Iterable[Any], fkey: str, ds_key: str | None) -> Iterator[tuple]:
    for r in rows:
        t = Track(r.track_id, r.uri, r.size, r.version)
        have = (r.have_sha, r.have_genre) if r.have_files is not None else None
        m = None
        if r.m_uri is not None:
            m = Entry(r.track_id, r.m_uri, r.m_size, r.m_version, r.m_sha256, r.m_genre, r.m_features_key, r.m_status)
        kind, skip_sha = decide_ingest(t, r.genre, have, m, r.rejected_sha, fkey, ds_key)
        yield (
            r.track_id, r.uri, r.size, r.version, r.genre, r.rejected_sha, kind, skip_sha,
            *(r[f"m_{c}"] for c in M_COLUMNS),
        )  # fmt: skip


def decide(
    spark: Any, listing: Any, labels: Any, index: Any, manifest: Any, rejected: Any, fkey: str, ds_key: str | None
) -> Any:
    """Every listed track with its verdict (:data:`DECIDED_DDL`: ``kind`` FETCH / KEPT_*, the
    task's ``genre``, ``skip_sha``, ``rejected_sha``, and its manifest row as ``m_*``)."""
    from pyspark.sql import functions as F

    m = manifest.select("track_id", *(F.col(c).alias(f"m_{c}") for c in M_COLUMNS))
    joined = (
        listing.join(labels, "track_id", "left")
        .join(index.select("track_id", "have_sha", "have_genre", "have_files"), "track_id", "left")
        .join(m, "track_id", "left")
        .join(rejected, "uri", "left")
    )
    rdd = joined.rdd.mapPartitions(lambda rows: _decide_rows(rows, fkey, ds_key))
    return spark.createDataFrame(rdd, DECIDED_DDL)


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


def index_stats(index: Any, listing: Any) -> tuple[int, int, int]:
    """(tracks in the dataset, of them gone from the listing, of them labelled)."""
    from pyspark.sql import functions as F

    listed = listing.select("track_id", F.lit(1).alias("listed"))
    r = (
        index.join(listed, "track_id", "left")
        .agg(
            F.count(F.lit(1)),
            F.sum(F.when(F.col("listed").isNull(), 1).otherwise(0)),
            F.sum(F.when(F.col("have_genre").isNotNull(), 1).otherwise(0)),
        )
        .collect()[0]
    )
    return tuple(int(v or 0) for v in r)  # type: ignore[return-value]


def stale_files(spark: Any, index: Any, listing: Any, replaced: Iterable[str]) -> dict[str, set[str]]:
    """``{file: track ids}`` of the dataset rows to drop: tracks gone from the listing and the
    ``replaced`` ones (re-ingested or now rejected: the driver's results, proportional to the
    change). Proportional to the change too."""
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


def labels_not_listed(labels: Any, listing: Any) -> list[str]:
    """Track ids labels.csv names that the listing lacks (sorted; a problem's size)."""
    rows = labels.join(listing.select("track_id"), "track_id", "left_anti").select("track_id").collect()
    return sorted(r.track_id for r in rows)


# ---- the new manifest -------------------------------------------------------------------


def _write_manifest_part(storage: Storage, tmp: str, index: int, rows: Iterable[Any]) -> Iterator[str]:
    cols: dict[str, list] = {c: [] for c in MANIFEST_ARROW_SCHEMA.names}
    for r in rows:
        for c in MANIFEST_ARROW_SCHEMA.names:
            cols[c].append(r[c])
    if not cols["track_id"]:
        return
    arrays = [
        pa.array(cols[f.name], pa.int64()).cast(f.type) if f.name == "updated_at" else pa.array(cols[f.name], f.type)
        for f in MANIFEST_ARROW_SCHEMA
    ]
    uri = join(tmp, f"part-{index:05d}.parquet")
    storage.write_parquet(uri, pa.Table.from_arrays(arrays, schema=MANIFEST_ARROW_SCHEMA))
    yield uri


def write_manifest_parts(
    spark: Any, storage: Storage, decided: Any, outcome: dict[str, tuple[str, str]], fkey: str, tmp: str
) -> tuple[list[str], int]:
    """Stage the next manifest on the executors: the kept rows as they are, plus a fresh row
    (listing entry, label, ``outcome``'s sha256 and status, ``fkey``, now) for each fetched
    track with an outcome. Returns (the staged part files, sorted by track id, and the rows)."""
    from pyspark.sql import functions as F

    kept = decided.filter(F.col("kind") != FETCH).select("track_id", *(F.col(f"m_{c}").alias(c) for c in M_COLUMNS))
    rows = kept
    if outcome:
        out = spark.createDataFrame(
            [(t, sha, status) for t, (sha, status) in sorted(outcome.items())],
            "track_id string, out_sha string, out_status string",
        )
        now_us = int(datetime.now(UTC).timestamp() * 1_000_000)
        fresh = (
            decided.filter(F.col("kind") == FETCH)
            .join(out, "track_id")
            .select(
                "track_id",
                "uri",
                "size",
                "version",
                F.col("out_sha").alias("sha256"),
                "genre",
                F.lit(fkey).alias("features_key"),
                F.col("out_status").alias("status"),
                F.lit(now_us).cast("long").alias("updated_at"),
            )
        )
        rows = kept.unionByName(fresh)
    n_rows = rows.count()
    if not n_rows:
        return [], 0
    n_parts = max(1, math.ceil(n_rows / MANIFEST_PART_ROWS))
    ordered = rows.repartitionByRange(n_parts, "track_id").sortWithinPartitions("track_id")
    parts = ordered.rdd.mapPartitionsWithIndex(lambda i, it: _write_manifest_part(storage, tmp, i, it)).collect()
    return sorted(parts), n_rows


# ---- the whole planning step ------------------------------------------------------------


@dataclass
class SparkPlan:
    """What :func:`plan_on_spark` leaves for the run: DataFrames (persisted; the caller
    unpersists the ones it was handed in ``frames``) and driver-sized facts."""

    listing: Any  # track_id, uri, size, version: one row per listed track
    index: Any  # the mel dataset by track (index_frame)
    labels: Any  # track_id, genre
    previous: Any  # ingest's earlier rejects rows (rejects_frame)
    manifest: Any  # the committed manifest (manifest_frame)
    decided: Any  # every listed track with its verdict (decide)
    counts: PlanCounts
    rejects: list[dict]  # catalogue and labels problems found while planning
    known: int  # tracks in the mel dataset
    gone: int  # of them gone from the listing
    old_files: list[str]  # the mel dataset's files
    reject_files: list[str]  # ingest's earlier rejects files


def plan_on_spark(
    spark: Any,
    storage: Storage,
    cfg: Config,
    run_id: str,
    fkey: str,
    full: bool,
    labels_missing_ok: bool,
    allow_mass_delete: bool,
    frames: list[Any],
) -> SparkPlan:
    """Ingest's plan (the semantics of :func:`genrecast.ingest.plan_ingest`), with the deletion
    guard (:func:`~genrecast.catalogue.check_deletions`) and the labels check of
    :func:`genrecast.ingest.read_labels`. Staged files go under the manifest's
    ``_tmp/<run_id>/plan``; persisted DataFrames are appended to ``frames``. Sets
    ``spark.sql.shuffle.partitions`` (:func:`plan_partitions`): run it in :func:`planning_conf`."""
    ds_uri, rj_uri, mf_uri = mels_uri(cfg), rejects_uri(cfg, "ingest"), manifest_uri(cfg)
    tmp = commit.tmp_uri(mf_uri, run_id, "plan")

    def kept(frame: Any) -> Any:
        frames.append(frame.persist())
        return frame

    parts, rows, rejects = write_listing(storage, cfg.catalogue.audio_uri, cfg.ingest.extensions, join(tmp, "listing"))
    spark.conf.set(SHUFFLE_PARTITIONS, str(plan_partitions(rows, spark.sparkContext.defaultParallelism)))
    listing, duplicates = listing_frame(spark, storage, parts)
    frames.append(listing)
    rejects += duplicates
    old_files = commit.table_files(storage, ds_uri)
    index = kept(index_frame(spark, storage, old_files))
    known, gone, labelled = index_stats(index, listing)

    def load(st: Storage, uri: str, genres: list[str]) -> tuple[Any, list[dict]]:
        staged = stage_labels(spark, st, uri, genres, tmp)
        if staged.error:
            raise JobError(staged.error)
        return staged.labels, staged.rejects

    labels, label_rejects = read_labels(storage, cfg, labelled, labels_missing_ok, load)
    labels = kept(labels if labels is not None else no_labels(spark))
    rejects += label_rejects
    for track_id in labels_not_listed(labels, listing):
        rejects.append(
            {
                "source_uri": f"{cfg.catalogue.labels_uri}#track_id={track_id}",
                "stage": "labels",
                "reason": f"labels.csv names track '{track_id}', which is not in {cfg.catalogue.audio_uri}",
            }
        )
    # Tracks gone from the listing lose their rows; a listing that lost too many is refused
    # before anything is read or written.
    check_deletions("ingest", ds_uri, gone, known, cfg.catalogue.max_delete_share, allow_mass_delete)
    reject_files = [f for f in commit.table_files(storage, rj_uri) if f.rsplit("/", 1)[-1].startswith("ingest-")]
    previous = kept(rejects_frame(spark, storage, reject_files))
    ds_key = commit.read_state(storage, ds_uri).get(FEATURES_KEY)
    manifest = manifest_frame(spark, storage, mf_uri)
    if full:  # every track fetched, nothing skipped on the executors either
        plan_index, plan_manifest = index_frame(spark, storage, []), spark.createDataFrame([], MANIFEST_DDL)
        rejected = spark.createDataFrame([], "uri string, rejected_sha string")
    else:
        plan_index, plan_manifest, rejected = index, manifest, rejected_shas_frame(previous, fkey)
    decided = kept(decide(spark, listing, labels, plan_index, plan_manifest, rejected, fkey, ds_key))
    counts = plan_counts(decided)
    return SparkPlan(
        listing, index, labels, previous, manifest, decided, counts, rejects, known, gone, old_files, reject_files
    )
