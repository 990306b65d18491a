"""Ingest's planning on Spark: the catalogue listing, labels, mel dataset index, manifest and
earlier rejects meet as DataFrames (:mod:`genrecast.plan_frames` holds the pieces score shares),
and :func:`genrecast.ingest.decide_ingest` (the same per-track decision as the pure
:func:`genrecast.ingest.plan_ingest`) runs row-wise on the executors. The driver holds counts
and rows proportional to the change (tasks' results, rejects, the files of changed or deleted
tracks), never one object per catalogue track:

- the listing is streamed into Parquet chunks under the manifest's ``_tmp/<run_id>/plan/``;
- labels.csv is parsed by one executor task, which writes the labels as a Parquet file there;
- the mel index (three columns by range reads), the manifest and ingest's rejects are read by
  executors;
- the new manifest is written by executors as parts of :data:`MANIFEST_PART_ROWS` rows, sorted
  by track id, and committed by the driver in one journalled step.

Spark runs this under the ingest's leases; the staged files go with the manifest's tmp folder.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from genrecast import commit
from genrecast.catalogue import Track, check_deletions, load_labels
from genrecast.config import Config
from genrecast.dataset import _index_file, manifest_uri, mels_uri, rejects_uri
from genrecast.errors import JobError
from genrecast.ingest import FEATURES_KEY, decide_ingest, read_labels
from genrecast.manifest import MANIFEST_ARROW_SCHEMA
from genrecast.plan_frames import (
    M_COLUMNS,
    MANIFEST_DDL,
    SHUFFLE_PARTITIONS,
    PlanCounts,
    frame_of_files,
    listing_frame,
    manifest_entry,
    manifest_frame,
    parquet_rows,
    plan_counts,
    plan_partitions,
    rejected_shas_frame,
    rejects_frame,
    with_manifest,
    write_listing,
)
from genrecast.storage import Storage, join
from genrecast.tasks import FETCH

MANIFEST_PART_ROWS = 250_000  # rows per manifest part file (~27 MiB)

LABELS_DDL = "track_id string, genre string"
INDEX_DDL = "track_id string, audio_sha256 string, genre string, file string, file_no long, row_no long"
DECIDED_DDL = (
    "track_id string, uri string, size long, version string, genre string, rejected_sha string, "
    "kind string, skip_sha string, "
    + ", ".join(f"m_{c} {t}" for c, t in zip(M_COLUMNS, ("string", "long", "string", "string", "string",
                                                          "string", "string", "long"), strict=True))
)  # fmt: skip


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
    frame = frame_of_files(spark, files, lambda _n, f: parquet_rows(storage, f, ["track_id", "genre"]), LABELS_DDL)
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


# ---- the plan ---------------------------------------------------------------------------


def _decide_rows(rows: Iterable[Any], fkey: str, ds_key: str | None) -> Iterator[tuple]:
    for r in rows:
        t = Track(r.track_id, r.uri, r.size, r.version)
        have = (r.have_sha, r.have_genre) if r.have_files is not None else None
        kind, skip_sha = decide_ingest(t, r.genre, have, manifest_entry(r), r.rejected_sha, fkey, ds_key)
        yield (
            r.track_id, r.uri, r.size, r.version, r.genre, r.rejected_sha, kind, skip_sha,
            *(r[f"m_{c}"] for c in M_COLUMNS),
        )  # fmt: skip


def decide(
    spark: Any, listing: Any, labels: Any, index: Any, manifest: Any, rejected: Any, fkey: str, ds_key: str | None
) -> Any:
    """Every listed track with its verdict (:data:`DECIDED_DDL`: ``kind`` FETCH / KEPT_*, the
    task's ``genre``, ``skip_sha``, ``rejected_sha``, and its manifest row as ``m_*``)."""

    joined = with_manifest(
        listing.join(labels, "track_id", "left").join(
            index.select("track_id", "have_sha", "have_genre", "have_files"), "track_id", "left"
        ),
        manifest,
    ).join(rejected, "uri", "left")
    rdd = joined.rdd.mapPartitions(lambda rows: _decide_rows(rows, fkey, ds_key))
    return spark.createDataFrame(rdd, DECIDED_DDL)


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
    manifest = manifest_frame(spark, storage, mf_uri)  # persisted
    frames.append(manifest)
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
