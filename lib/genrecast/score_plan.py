"""Score's planning on Spark: the catalogue listing, the score table's index, the timelines
index, the catalogue manifest and score's earlier rejects meet as DataFrames (the shared pieces
are in :mod:`genrecast.plan_frames`), and :func:`genrecast.score.decide_score` (the decision of
the pure :func:`genrecast.score.plan_score`) runs row-wise on the executors. The driver holds
counts, the partitions' results and the files of changed or deleted tracks (proportional to the
change), never one object per catalogue track.

The listing's chunks are staged under the score table's ``_tmp/<run_id>/plan/``, which the
table's commit removes: everything that reads the listing runs before that commit.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from genrecast import commit
from genrecast.catalogue import Track, check_deletions
from genrecast.config import Config
from genrecast.dataset import manifest_uri
from genrecast.plan_frames import (
    SHUFFLE_PARTITIONS,
    PlanCounts,
    frame_of_files,
    listing_frame,
    manifest_entry,
    manifest_frame,
    plan_counts,
    plan_partitions,
    rejected_shas_frame,
    rejects_frame,
    with_manifest,
    write_listing,
)
from genrecast.storage import Storage, join
from genrecast.tasks import FETCH

INDEX_DDL = "track_id string, audio_sha256 string, file string"
DECIDED_DDL = "track_id string, uri string, genre string, kind string, skip_sha string, rejected_sha string"


def _index_rows(storage: Storage, f: str) -> Iterator[tuple]:
    table = storage.read_parquet(f, columns=["track_id", "audio_sha256"])  # two small columns only
    return zip(table.column("track_id").to_pylist(), table.column("audio_sha256").to_pylist(), itertools.repeat(f))


def table_index(spark: Any, storage: Storage, files: list[str]) -> Any:
    """A score or timelines table by track: ``track_id``, ``have_sha`` (the audio its rows were
    made from; null where two rows disagree, so the track is scored again and both files are
    rewritten) and ``have_files`` (array), read by executors."""
    from pyspark.sql import functions as F

    rows = frame_of_files(spark, files, lambda _n, f: _index_rows(storage, f), INDEX_DDL)
    shas = F.collect_set("audio_sha256")
    return (
        rows.groupBy("track_id")
        .agg(shas.alias("shas"), F.collect_set("file").alias("have_files"))
        .select("track_id", F.when(F.size("shas") == 1, F.col("shas")[0]).alias("have_sha"), "have_files")
    )


def agreeing(index: Any, timelines: Any) -> Any:
    """``index`` with ``have_sha`` null for every track whose clip rows (``timelines``, a
    :func:`table_index`) are missing or of other audio: such a track is scored again, so the two
    tables agree after the run."""
    from pyspark.sql import functions as F

    tl = timelines.select("track_id", F.col("have_sha").alias("tl_sha"))
    same = F.when(F.col("have_sha") == F.col("tl_sha"), F.col("have_sha"))
    return index.join(tl, "track_id", "left").withColumn("have_sha", same).drop("tl_sha")


def _decide_rows(rows: Iterable[Any]) -> Iterator[tuple]:
    from genrecast.score import decide_score

    for r in rows:
        t = Track(r.track_id, r.uri, r.size, r.version)
        kind = decide_score(t, manifest_entry(r), r.have_sha, r.rejected_sha)
        yield r.track_id, r.uri, None, kind, r.have_sha, r.rejected_sha


def decide(spark: Any, listing: Any, index: Any, manifest: Any, rejected: Any) -> Any:
    """Every listed track with its verdict (:data:`DECIDED_DDL`; ``genre`` is null: score
    needs no label), as :func:`genrecast.score.plan_score` decides it."""
    joined = with_manifest(listing.join(index.select("track_id", "have_sha"), "track_id", "left"), manifest)
    rdd = joined.join(rejected, "uri", "left").rdd.mapPartitions(_decide_rows)
    return spark.createDataFrame(rdd, DECIDED_DDL)


def fetch_all(listing: Any) -> Any:
    """Backfill's plan: every listed track fetched, nothing to skip."""
    from pyspark.sql import functions as F

    none = F.lit(None).cast("string")
    return listing.select(
        "track_id", "uri", none.alias("genre"), F.lit(FETCH).alias("kind"), none.alias("skip_sha"),
        none.alias("rejected_sha"),
    )  # fmt: skip


@dataclass
class ScorePlan:
    """What :func:`plan_on_spark` leaves for the run: DataFrames (persisted and appended to the
    caller's ``frames``, which it unpersists) and driver-sized facts."""

    listing: Any  # track_id, uri, size, version: one row per listed track (first of duplicates)
    index: Any  # the score table by track (table_index; have_sha null where timelines disagree)
    timelines: Any | None  # the timelines table by track, with score.keep_timeline
    previous: Any  # score's earlier rejects rows (plan_frames.rejects_frame)
    decided: Any  # every listed track with its verdict (decide / fetch_all)
    counts: PlanCounts
    known: int  # tracks in the score table
    gone: int  # of them gone from the listing
    old_files: list[str]  # the score table's files
    timeline_files: list[str]  # the timelines table's files (with score.keep_timeline)
    reject_files: list[str]  # score's earlier rejects files


def plan_on_spark(
    spark: Any,
    storage: Storage,
    cfg: Config,
    table_uri: str,
    rejects_uri: str,
    timelines_uri: str | None,
    run_id: str,
    fkey: str,
    backfill: bool,
    allow_mass_delete: bool,
    frames: list[Any],
) -> ScorePlan:
    """Score's plan (the semantics of :func:`genrecast.score.plan_score`), with the deletion
    guard (:func:`~genrecast.catalogue.check_deletions`) before anything is read or written.
    ``timelines_uri``: the timelines table, with ``score.keep_timeline`` (recovered by the
    caller). Sets ``spark.sql.shuffle.partitions``: run it in
    :func:`~genrecast.plan_frames.planning_conf`."""
    from genrecast.score import REJECT_PREFIX

    def kept(frame: Any) -> Any:
        frames.append(frame.persist())
        return frame

    tmp = commit.tmp_uri(table_uri, run_id, "plan")
    # Catalogue-stage problems (bad ids, odd extensions, duplicates) are ingest's to report.
    audio_uri, extensions = cfg.catalogue.audio_uri, cfg.ingest.extensions
    parts, rows, _problems = write_listing(storage, audio_uri, extensions, join(tmp, "listing"))
    spark.conf.set(SHUFFLE_PARTITIONS, str(plan_partitions(rows, spark.sparkContext.defaultParallelism)))
    listing, _duplicates = listing_frame(spark, storage, parts)
    frames.append(listing)

    old_files = commit.table_files(storage, table_uri)
    index = kept(table_index(spark, storage, old_files))
    known = index.count()
    gone = index.join(listing.select("track_id"), "track_id", "left_anti").count() if known else 0
    check_deletions(f"score {'backfill' if backfill else 'nightly'}", table_uri, gone, known,
                    cfg.catalogue.max_delete_share, allow_mass_delete)  # fmt: skip

    timelines, timeline_files = None, []
    if timelines_uri:
        timeline_files = commit.table_files(storage, timelines_uri)
        timelines = kept(table_index(spark, storage, timeline_files))
    reject_files = [
        f for f in commit.table_files(storage, rejects_uri) if f.rsplit("/", 1)[-1].startswith(REJECT_PREFIX)
    ]
    previous = kept(rejects_frame(spark, storage, reject_files))
    if backfill:
        decided = kept(fetch_all(listing))
    else:
        if timelines is not None:
            index = kept(agreeing(index, timelines))
        manifest = manifest_frame(spark, storage, manifest_uri(cfg))  # persisted
        frames.append(manifest)
        decided = kept(decide(spark, listing, index, manifest, rejected_shas_frame(previous, fkey)))
    counts = plan_counts(decided)
    return ScorePlan(
        listing, index, timelines, previous, decided, counts, known, gone, old_files, timeline_files, reject_files
    )


def table_tracks(spark: Any, plan: ScorePlan, written: Iterable[str], rejected: Iterable[str]) -> int:
    """Tracks the score table holds after a nightly run: the listed tracks it held, less those
    now rejected, plus those written (the driver's results: proportional to the change)."""
    ids = plan.index.join(plan.listing.select("track_id"), "track_id", "left_semi").select("track_id")
    if rejected := sorted(set(rejected)):
        ids = ids.join(spark.createDataFrame([(t,) for t in rejected], "track_id string"), "track_id", "left_anti")
    if written := sorted(set(written)):
        ids = ids.unionByName(spark.createDataFrame([(t,) for t in written], "track_id string"))
    return ids.distinct().count()

