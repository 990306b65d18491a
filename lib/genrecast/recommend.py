"""Recommend job: scores table -> top-k similar tracks per track -> neighbours table.

``--mode full`` (the default): recover an interrupted commit -> read the scores table (track ids,
embeddings, hashes: metadata-sized, ~0.5 KB a track) -> exact search, or build one ANN index ->
ship the unit-vector matrix (and index) as files the executors map -> one Spark task per hash bucket of query tracks
computes its top-k in blocks and writes its Parquet part -> ANN recall@k against exact search on
sampled queries -> genre precision@k vs an MFCC baseline (:mod:`genrecast.recommend_quality`) ->
one journalled commit of the parts, ``_report/`` (quality.json, duplicates.csv,
embedding_map.png) and the state the next nightly run starts from.

``--mode nightly``: only what changed since the last run (:mod:`genrecast.recommend_nightly`):
new and changed tracks get their top k against the whole catalogue, existing lists take the new
tracks that beat their k-th, deleted tracks leave every list; only the buckets that change are
rewritten, with duplicates.csv, in one journalled commit (quality.json and the map stay those of
the last full run: they describe the model, which a nightly run does not change). More changed
tracks than ``recommend.full_recompute_share`` of the catalogue, or no usable state, and it runs
a full recompute instead (logged, and said in the summary).

Layout, exclusions and the scores columns read: :mod:`genrecast.neighbours_table`; look-ups:
:mod:`genrecast.similar`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from genrecast import commit, lease, registry
from genrecast import recommend_nightly as nightly
from genrecast.catalogue import load_labels
from genrecast.config import Config
from genrecast.dataset import neighbours_uri, scores_uri
from genrecast.errors import ConfigError, JobError
from genrecast.neighbours import AnnIndex, ann_topk, build_index, choose_method, exact_topk, group_keys, recall_at_k
from genrecast.neighbours_table import (
    DUPLICATES_FILE,
    MAP_FILE,
    QUALITY_FILE,
    REPORT_DIR,
    BucketJob,
    ScoresFrame,
    bucket_owners,
    catalogue_exclusions,
    duplicate_groups,
    part_name,
    read_scores,
    report_uri,
)
from genrecast.recommend_quality import duplicates_csv, finite, plot_embedding_map, precision_lines, quality
from genrecast.search_files import shipped
from genrecast.storage import Storage, join

log = logging.getLogger(__name__)

QUERIES_PER_PARTITION = 10_000
MODES = ("full", "nightly")


# -- the Spark fan-out (full mode) -------------------------------------------------------------


def _query_bucket(job: BucketJob, bucket: int, rows: np.ndarray) -> tuple[str, str, int]:
    """Executor: top-k of the queries ``rows`` (sorted by track id) -> one tmp Parquet part.
    Returns (tmp uri, final uri, rows written)."""
    from threadpoolctl import threadpool_limits

    vectors, ids = job.files.vectors(), job.files.track_ids()
    exclusions = catalogue_exclusions(rows, job.files.sha_keys())
    # BLAS and hnswlib default to every core; the task owns only spark.task.cpus of them.
    with threadpool_limits(limits=job.cpus):
        index = job.files.index()
        if index is None:
            idx, sim = exact_topk(vectors[rows], vectors, job.k, exclusions)
        else:
            index.threads = job.cpus
            idx, sim = ann_topk(index, vectors[rows], job.k, exclusions)
    table = nightly.neighbours_part(rows, idx, sim, ids, job.model_id)
    name = part_name(job.run_id, bucket, job.buckets)
    tmp = commit.tmp_uri(job.table_uri, job.run_id, name)
    job.storage.write_parquet(tmp, table)
    return tmp, join(job.table_uri, name), table.num_rows


def _fan_out(
    spark: Any, job_args: dict[str, Any], frame: ScoresFrame, sha_keys: np.ndarray, index: AnnIndex | None
) -> tuple[list[tuple[str, str, int]], int]:
    """Stage one part per bucket of query tracks: ``([(tmp, final, rows)], buckets)``. The
    catalogue's arrays (and index) reach the executors as mapped files (:mod:`search_files`)."""
    from genrecast.spark import with_progress

    sc = spark.sparkContext
    n = len(frame.track_ids)
    buckets = max(min(n, 2 * sc.defaultParallelism), math.ceil(n / QUERIES_PER_PARTITION))
    owner = bucket_owners(frame.track_ids, buckets)
    jobs = [(b, rows) for b in range(buckets) if (rows := np.flatnonzero(owner == b)).size]
    log.info("recommend: %d query tracks in %d tasks on %s", n, len(jobs), sc.master)
    with shipped(sc, job_args["run_id"], frame.embeddings, sha_keys, frame.track_ids, index) as files:
        job = BucketJob(files, buckets=buckets, cpus=int(sc.getConf().get("spark.task.cpus", "1")), **job_args)
        rdd = sc.parallelize(jobs, len(jobs)).map(lambda j: _query_bucket(job, j[0], j[1]))
        return with_progress(spark, "recommend", rdd.collect), buckets


@dataclass
class RecommendSummary:
    model_id: str
    run_id: str
    mode: str = "full"  # what ran: "full" or "nightly" (a nightly request can fall back to full)
    tracks: int = 0
    k: int = 10
    method: str = "exact"
    seconds: float = 0.0
    build_seconds: float = 0.0
    query_seconds: float = 0.0
    tasks: int = 0
    rows: int = 0  # rows in the table after the run
    changed: int = 0  # nightly: tracks new or changed since the last run
    deleted: int = 0  # nightly: tracks gone since the last run
    recomputed: int = 0  # nightly: lists searched again against the whole catalogue
    updated: int = 0  # nightly: kept lists that a changed track entered
    buckets_rewritten: int = 0  # nightly: part files replaced (of ``tasks`` buckets)
    fallback: str | None = None  # why a nightly request ran a full recompute
    recall: float | None = None  # ANN recall@k against exact search
    recall_queries: int = 0
    quality: dict[str, Any] = field(default_factory=dict)
    duplicates: list[list[str]] = field(default_factory=list)
    table_uri: str = ""
    report_uri: str = ""

    def lines(self) -> list[str]:
        if self.mode == "nightly":
            out = [
                f"recommend {self.run_id}: model {self.model_id}, {self.tracks} tracks, k={self.k}, nightly: "
                f"{self.changed} new or changed, {self.deleted} deleted; {self.recomputed} lists searched again, "
                f"{self.updated} updated; {self.buckets_rewritten} of {self.tasks} buckets rewritten in "
                f"{self.seconds:.1f}s, {self.rows} rows",
            ]
        else:
            out = [
                f"recommend {self.run_id}: model {self.model_id}, {self.tracks} tracks, k={self.k}, "
                f"{self.method} search in {self.seconds:.1f}s (index {self.build_seconds:.1f}s, "
                f"queries {self.query_seconds:.1f}s in {self.tasks} tasks), {self.rows} rows",
            ]
        if self.fallback:
            out.append(f"  full recompute instead of nightly: {self.fallback}")
        if self.recall is not None:
            out.append(f"  recall@{self.k} {self.recall:.3f} ({self.method} vs exact, {self.recall_queries} queries)")
        q = self.quality
        out += precision_lines(q, self.k)
        if q.get("note"):
            out.append(f"  quality: {q['note']}")
        groups, dup_tracks = len(self.duplicates), sum(len(g) for g in self.duplicates)
        out.append(
            f"  duplicates: {groups} group{'' if groups == 1 else 's'} of identical audio ({dup_tracks} tracks), "
            "never recommended to each other"
        )
        kept = " (from the last full run)" if self.mode == "nightly" else ""
        out += [
            f"  table   {self.table_uri}",
            f"  report  {join(self.report_uri, QUALITY_FILE)}{kept}",
            f"          {join(self.report_uri, DUPLICATES_FILE)}",
            f"          {join(self.report_uri, MAP_FILE)}{kept}",
        ]
        return out


def run_recommend(
    cfg: Config,
    spark: Any,
    model: str = "latest",
    k: int | None = None,
    method: str | None = None,
    mode: str = "full",
) -> RecommendSummary:
    """Write the neighbours table of ``model`` (and its ``_report/``); safe to kill and re-run.

    ``k`` and ``method`` default to the ``recommend:`` config section (10, ``auto``). ``mode``:
    ``full`` recomputes every list; ``nightly`` updates the stored table for what changed since
    the last run (exact search), or runs ``full`` when it cannot (see the module docstring).
    """
    started = time.monotonic()
    settings = cfg.recommend
    k = k or settings.k
    if k < 1:
        raise ConfigError(f"k must be at least 1, not {k}")
    if mode not in MODES:
        raise ConfigError(f"unknown recommend mode {mode!r} ({' or '.join(MODES)})")
    storage = Storage.from_config(cfg)
    model_id = registry.resolve_model_id(cfg, model)
    meta = registry.read_model_json(cfg, model_id)
    table_uri, rep_uri = neighbours_uri(cfg, model_id), report_uri(cfg, model_id)
    run_id = commit.new_run_id()
    summary = RecommendSummary(model_id, run_id, k=k, table_uri=table_uri, report_uri=rep_uri)
    with lease.hold(storage, cfg, run_id, "recommend", table_uri) as leases:
        commit.recover(storage, table_uri, leases[table_uri])
        frame = read_scores(storage, scores_uri(cfg, model_id), model_id)
        n = summary.tracks = len(frame.track_ids)
        if n < 2:
            raise JobError(f"scores for model {model_id} hold {n} track: nothing to compare with")
        sha_keys = group_keys(frame.shas)
        summary.duplicates = duplicate_groups(frame.track_ids, frame.shas)
        if mode == "nightly" and _nightly(
            spark, storage, summary, frame, sha_keys, settings.full_recompute_share, leases[table_uri]
        ):
            summary.seconds = time.monotonic() - started
            return summary
        _full(cfg, spark, storage, summary, frame, sha_keys, meta, method, started, leases[table_uri])
    summary.seconds = time.monotonic() - started
    return summary


def _state(summary: RecommendSummary, buckets: int) -> dict[str, Any]:
    """What ``_table.json`` keeps for the next nightly run."""
    return {"recommend": {"k": summary.k, "buckets": buckets, "rows": summary.rows, "method": summary.method}}


def _stage_common(storage: Storage, summary: RecommendSummary, frame: ScoresFrame) -> list[tuple[str, str]]:
    """Staged duplicates.csv and the tracks state: written by every run that commits."""
    table_uri, run_id = summary.table_uri, summary.run_id
    dup_tmp = commit.tmp_uri(table_uri, run_id, f"{REPORT_DIR}/{DUPLICATES_FILE}")
    storage.write_bytes(dup_tmp, duplicates_csv(summary.duplicates, frame))
    state_tmp = commit.tmp_uri(table_uri, run_id, nightly.STATE_FILE)
    storage.write_parquet(state_tmp, nightly.state_table(frame.track_ids, frame.versions))
    return [(dup_tmp, join(summary.report_uri, DUPLICATES_FILE)), (state_tmp, join(table_uri, nightly.STATE_FILE))]


def _nightly(
    spark: Any,
    storage: Storage,
    summary: RecommendSummary,
    frame: ScoresFrame,
    sha_keys: np.ndarray,
    share: float,
    table_lease: lease.TableLease,
) -> bool:
    """Update the stored table for what changed; False (nothing written) if a full run is due."""
    table_uri = summary.table_uri
    state = commit.read_state(storage, table_uri)
    seen = nightly.read_seen(storage, table_uri)
    layout = nightly.bucket_files(commit.table_files(storage, table_uri))
    reason = nightly.full_reason(state, seen, layout, summary.k)
    changes = None
    if reason is None and seen is not None:
        changes = nightly.find_changes(seen, frame.track_ids, frame.versions)
        if changes.count > share * max(len(frame.track_ids), len(seen)):
            reason = (
                f"{changes.count} tracks new, changed or deleted, over recommend.full_recompute_share "
                f"({share:g}) of {max(len(frame.track_ids), len(seen))}"
            )
    if reason is not None or changes is None or isinstance(layout, str):
        summary.fallback = reason
        log.warning("recommend: nightly mode runs a full recompute: %s", reason)
        return False
    summary.mode, summary.method = "nightly", "exact"
    summary.changed, summary.deleted = len(changes.changed_rows), len(changes.deleted)
    log.info("recommend: nightly, %d new or changed and %d deleted tracks", summary.changed, summary.deleted)
    if not changes.count:
        summary.rows = int(state["recommend"].get("rows", 0))
        return True  # nothing to write: the table is what a run now would make
    t0 = time.monotonic()
    job_args = {
        "k": summary.k,
        "model_id": summary.model_id,
        "table_uri": table_uri,
        "run_id": summary.run_id,
        "storage": storage,
    }
    results = nightly.fan_out(spark, job_args, frame.track_ids, frame.embeddings, sha_keys, changes, layout)
    summary.query_seconds = time.monotonic() - t0
    summary.tasks, summary.rows = len(results), sum(r.rows for r in results)
    rewritten = [r for r in results if r.rewritten]
    summary.buckets_rewritten = len(rewritten)
    summary.recomputed = sum(r.recomputed for r in results)
    summary.updated = sum(r.updated for r in results)
    add = [(r.tmp, r.final) for r in rewritten if r.tmp] + _stage_common(storage, summary, frame)
    remove = [f for r in rewritten for f in layout[1].get(r.bucket, [])]
    commit.commit(storage, table_uri, summary.run_id, add, remove, table_lease, _state(summary, layout[0]))
    return True


def _full(
    cfg: Config,
    spark: Any,
    storage: Storage,
    summary: RecommendSummary,
    frame: ScoresFrame,
    sha_keys: np.ndarray,
    meta: dict[str, Any],
    method: str | None,
    started: float,
    table_lease: lease.TableLease,
) -> None:
    settings, k, model_id, run_id = cfg.recommend, summary.k, summary.model_id, summary.run_id
    table_uri, rep_uri = summary.table_uri, summary.report_uri
    n = summary.tracks
    summary.mode = "full"
    try:
        chosen = summary.method = choose_method(n, method or settings.method, settings.exact_max_tracks)
    except ValueError as exc:
        raise ConfigError(f"recommend.method: {exc}") from None
    log.info("recommend: %d tracks, %s search, %d duplicate groups", n, chosen, len(summary.duplicates))

    index: AnnIndex | None = None
    t0 = time.monotonic()
    if chosen == "hnsw":
        hnsw = {"m": settings.hnsw_m, "ef_construction": settings.hnsw_ef_construction, "ef": settings.hnsw_ef}
        index = build_index(frame.embeddings, "hnsw", **hnsw)
    elif chosen == "ivf":
        index = build_index(frame.embeddings, "ivf", nprobe=settings.ivf_nprobe)
    summary.build_seconds = time.monotonic() - t0

    t0 = time.monotonic()
    job_args = {"k": k, "model_id": model_id, "table_uri": table_uri, "run_id": run_id, "storage": storage}
    parts, buckets = _fan_out(spark, job_args, frame, sha_keys, index)
    summary.query_seconds = time.monotonic() - t0
    summary.tasks, summary.rows = len(parts), sum(p[2] for p in parts)

    if index is not None:
        sample = np.sort(np.random.default_rng(0).choice(n, min(n, settings.recall_queries), replace=False))
        ex = catalogue_exclusions(sample, sha_keys)
        exact_idx, _ = exact_topk(frame.embeddings[sample], frame.embeddings, k, ex)
        index.threads = -1
        approx_idx, _ = ann_topk(index, frame.embeddings[sample], k, ex)
        summary.recall, summary.recall_queries = finite(recall_at_k(approx_idx, exact_idx)), len(sample)
        log.info("recommend: %s recall@%d %.3f on %d queries", chosen, k, summary.recall, len(sample))

    labels, _ = load_labels(storage, cfg.catalogue.labels_uri, cfg.genres)
    summary.quality = quality(spark, cfg, frame, labels, registry.read_split(cfg, model_id, meta), k, settings)
    summary.seconds = time.monotonic() - started

    report = {
        "model_id": model_id,
        "run_id": run_id,
        "tracks": n,
        "method": chosen,
        "seconds": {"total": summary.seconds, "index": summary.build_seconds, "queries": summary.query_seconds},
        "recall_at_k": summary.recall,
        "recall_queries": summary.recall_queries,
        "precision_at_k": summary.quality,
        "duplicates": {"groups": len(summary.duplicates), "tracks": sum(map(len, summary.duplicates))},
    }
    add = [(tmp, final) for tmp, final, _rows in parts] + _stage_common(storage, summary, frame)
    with tempfile.TemporaryDirectory() as tmp_dir:
        plot_embedding_map(frame, labels, list(meta.get("genres", [])), os.path.join(tmp_dir, MAP_FILE))
        with open(os.path.join(tmp_dir, MAP_FILE), "rb") as fh:
            files = {MAP_FILE: fh.read(), QUALITY_FILE: json.dumps(report, indent=2).encode()}
    for name, data in files.items():
        tmp = commit.tmp_uri(table_uri, run_id, f"{REPORT_DIR}/{name}")
        storage.write_bytes(tmp, data)
        add.append((tmp, join(rep_uri, name)))
    new = {final for _tmp, final in add}
    old = commit.table_files(storage, table_uri) + [u for u, _ in storage.list_files(rep_uri) if u not in new]
    commit.commit(storage, table_uri, run_id, add, old, table_lease, _state(summary, buckets))
