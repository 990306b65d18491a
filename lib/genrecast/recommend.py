"""Recommend job: scores table -> top-k similar tracks per track -> neighbours table, with
quality figures, a duplicates list and a 2-D embedding map; plus the ``similar`` look-ups.

Flow (driver): recover an interrupted commit -> read the scores table (track ids, embeddings,
hashes: metadata-sized, ~0.5 KB a track) -> exact search, or build one ANN index -> broadcast
the unit-vector matrix (and index) -> one Spark task per hash bucket of query tracks computes
its top-k in blocks and writes its Parquet part -> ANN recall@k against exact search on sampled
queries -> genre precision@k of the embedding vs an MFCC-statistics baseline -> one journalled
commit of the parts and ``_report/`` (quality.json, duplicates.csv, embedding_map.png).

A track is never its own neighbour, and tracks with the same ``audio_sha256`` (duplicates) are
never each other's. Parts are named ``part-<run>-<bucket>-of-<buckets>.parquet`` with
``bucket = crc32(track_id) % buckets``, so a look-up reads one file, not the table.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from genrecast import commit, lease, registry
from genrecast.catalogue import Label, load_labels, validate_track_id
from genrecast.config import Config, RecommendConf
from genrecast.dataset import neighbours_uri, scores_uri
from genrecast.errors import ConfigError, JobError
from genrecast.neighbours import (
    AnnIndex,
    Exclusion,
    ann_topk,
    build_index,
    choose_method,
    exact_topk,
    group_keys,
    l2_normalise,
    precision_at_k,
    recall_at_k,
)
from genrecast.storage import Storage, join, normalize_uri

log = logging.getLogger(__name__)

REPORT_DIR = "_report"  # beside the parts; "_" keeps it out of every table reader
QUALITY_FILE = "quality.json"
DUPLICATES_FILE = "duplicates.csv"
MAP_FILE = "embedding_map.png"
QUERIES_PER_PARTITION = 10_000
MAP_POINTS = 20_000
SCORE_COLUMNS = ["track_id", "embedding", "audio_sha256", "genre"]
_PART = re.compile(r"-(\d+)-of-(\d+)\.parquet$")

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


# -- reading the scores table ------------------------------------------------------------------


@dataclass
class ScoresFrame:
    """The scores table's search columns, sorted by track_id."""

    track_ids: list[str]
    embeddings: np.ndarray  # (n, d) float32, unit rows
    shas: list[str | None]
    genres: list[str | None]  # predicted by the model


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
    """Read ``track_id, embedding, audio_sha256, genre`` of one committed version of the scores
    table (a concurrent score commit is either wholly in it or not at all)."""
    return commit.read_snapshot(storage, uri, lambda files: _read_scores_files(storage, uri, model_id, files))


def _read_scores_files(storage: Storage, uri: str, model_id: str, files: list[str]) -> ScoresFrame:
    if not files:
        raise JobError(f"no scores for model {model_id} at {uri}: run genrecast score --model {model_id}")

    def read(f: str) -> tuple[list[str], np.ndarray, list, list]:
        try:
            t = storage.read_parquet(f, columns=SCORE_COLUMNS)
        except pa.ArrowInvalid:
            raise JobError(f"{f}: not a scores file (needs columns {', '.join(SCORE_COLUMNS)})") from None
        ids = t.column("track_id").to_pylist()
        if not ids:
            return [], np.zeros((0, 0), np.float32), [], []
        return ids, _list_matrix(t.column("embedding"), ids, f), *(t.column(c).to_pylist() for c in SCORE_COLUMNS[2:])

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
    return ScoresFrame(
        ids,
        l2_normalise(np.concatenate([p[1] for p in parts])[order]),
        [shas[i] for i in order],
        [genres[i] for i in order],
    )


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


# -- the Spark fan-out -------------------------------------------------------------------------


def bucket_of(track_id: str, buckets: int) -> int:
    """Stable across processes and runs (unlike ``hash``): which part file holds a track."""
    return zlib.crc32(track_id.encode()) % buckets


@dataclass(frozen=True)
class _FanOut:
    """What every query task needs; the large parts travel as Spark broadcasts."""

    vectors: Any  # Broadcast of (n, d) float32 unit rows
    sha_keys: Any  # Broadcast of (n,) int64
    track_ids: Any  # Broadcast of (n,) object array of str
    index: Any  # Broadcast of an AnnIndex, or None for exact search
    k: int
    model_id: str
    table_uri: str
    run_id: str
    buckets: int
    cpus: int
    storage: Storage


def _query_bucket(job: _FanOut, bucket: int, rows: np.ndarray) -> tuple[str, str, int]:
    """Executor: top-k of the queries ``rows`` (sorted by track id) -> one tmp Parquet part.
    Returns (tmp uri, final uri, rows written)."""
    from threadpoolctl import threadpool_limits

    vectors, ids = job.vectors.value, job.track_ids.value
    exclusions = catalogue_exclusions(rows, job.sha_keys.value)
    # BLAS and hnswlib default to every core; the task owns only spark.task.cpus of them.
    with threadpool_limits(limits=job.cpus):
        if job.index is None:
            idx, sim = exact_topk(vectors[rows], vectors, job.k, exclusions)
        else:
            index = job.index.value
            index.threads = job.cpus
            idx, sim = ann_topk(index, vectors[rows], job.k, exclusions)
    qi, kj = np.nonzero(idx >= 0)  # row-major: by query, then rank
    table = pa.table(
        [
            pa.array(ids[rows[qi]], pa.string()),
            pa.array(kj + 1, pa.int32()),
            pa.array(ids[idx[qi, kj]], pa.string()),
            pa.array(sim[qi, kj], pa.float32()),
            pa.array([job.model_id] * len(qi), pa.string()),
        ],
        schema=NEIGHBOURS_SCHEMA,
    )
    name = f"part-{job.run_id}-{bucket:05d}-of-{job.buckets:05d}.parquet"
    tmp = commit.tmp_uri(job.table_uri, job.run_id, name)
    job.storage.write_parquet(tmp, table)
    return tmp, join(job.table_uri, name), len(qi)


def _fan_out(spark: Any, job_args: dict[str, Any], frame: ScoresFrame, sha_keys: np.ndarray, index: Any) -> list:
    sc = spark.sparkContext
    n = len(frame.track_ids)
    buckets = max(min(n, 2 * sc.defaultParallelism), math.ceil(n / QUERIES_PER_PARTITION))
    owner = np.fromiter((bucket_of(t, buckets) for t in frame.track_ids), np.int64, n)
    jobs = [(b, rows) for b in range(buckets) if (rows := np.flatnonzero(owner == b)).size]
    broadcasts = [
        sc.broadcast(frame.embeddings),
        sc.broadcast(sha_keys),
        sc.broadcast(np.asarray(frame.track_ids, dtype=object)),
    ]
    if index is not None:
        broadcasts.append(sc.broadcast(index))
    job = _FanOut(
        *broadcasts[:3],
        index=broadcasts[3] if index is not None else None,
        buckets=buckets,
        cpus=int(sc.getConf().get("spark.task.cpus", "1")),
        **job_args,
    )
    from genrecast.spark import with_progress

    log.info("recommend: %d query tracks in %d tasks on %s", n, len(jobs), sc.master)
    try:
        rdd = sc.parallelize(jobs, len(jobs)).map(lambda j: _query_bucket(job, j[0], j[1]))
        return with_progress(spark, "recommend", rdd.collect)
    finally:
        for b in broadcasts:
            b.destroy()


# -- quality -----------------------------------------------------------------------------------


def _finite(x: float) -> float | None:
    """NaN (nothing to measure) -> None, so quality.json stays strict JSON."""
    return None if math.isnan(x) else x


def genre_precision(
    vectors: np.ndarray,
    genres: list[str],
    artists: list[str | None],
    dup_keys: np.ndarray,
    k: int,
    query_sets: dict[str, np.ndarray],
) -> dict[str, dict[str, float | int | None]]:
    """Genre precision@k among a labelled pool, with and without the artist filter.

    ``vectors`` (n, d) unit rows of the pool: every row is a candidate, never itself or a
    duplicate (same ``dup_keys``). ``query_sets`` name boolean (n,) masks of which rows count as
    queries. ``artist_filtered``: tracks by the query's artist are removed before taking the top k.
    Returns ``{set: {"queries", "plain", "artist_filtered"}}``.
    """
    rows = np.arange(len(vectors))
    labels, artist_keys = group_keys(genres), group_keys(artists)
    base = [Exclusion(rows, rows), Exclusion(dup_keys, dup_keys)]
    plain, _ = exact_topk(vectors, vectors, k, base)
    filtered, _ = exact_topk(vectors, vectors, k, [*base, Exclusion(artist_keys, artist_keys)])
    out: dict[str, dict[str, float | int | None]] = {}
    for name, mask in query_sets.items():
        out[name] = {
            "queries": int(mask.sum()),
            "plain": _finite(precision_at_k(plain[mask], labels[mask], labels)),
            "artist_filtered": _finite(precision_at_k(filtered[mask], labels[mask], labels)),
        }
    return out


def _mfcc_file(uri: str, storage: Storage, wanted: dict[str, str]) -> list[tuple[str, np.ndarray, int]]:
    """Executor: per track, the sum of its clips' MFCC statistics and the clip count (only clips
    of ``wanted`` tracks whose hash matches the scored audio)."""
    from genrecast.features import mfcc_stats

    table = storage.read_parquet(uri, columns=["track_id", "audio_sha256", "mel"])
    sums: dict[str, list] = {}
    for track_id, sha, blob in zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True):
        if wanted.get(track_id) != sha:
            continue
        entry = sums.setdefault(track_id, [0.0, 0])
        entry[0] = entry[0] + mfcc_stats(np.load(io.BytesIO(blob)))
        entry[1] += 1
    return [(t, s, c) for t, (s, c) in sums.items()]


def mfcc_baseline_vectors(spark: Any, cfg: Config, wanted: dict[str, str]) -> dict[str, np.ndarray]:
    """Per-track mean MFCC statistics (40,) from the mel dataset, for ``wanted`` {track: sha}."""
    from genrecast.dataset import mels_uri

    storage = Storage.from_config(cfg)
    files = commit.table_files(storage, mels_uri(cfg))
    if not files or not wanted:
        return {}
    rdd = spark.sparkContext.parallelize(files, len(files)).flatMap(lambda f: _mfcc_file(f, storage, wanted))
    sums: dict[str, list] = {}
    for track_id, s, c in rdd.collect():
        entry = sums.setdefault(track_id, [0.0, 0])
        entry[0], entry[1] = entry[0] + s, entry[1] + c
    return {t: (s / c).astype(np.float32) for t, (s, c) in sums.items()}


def _quality(
    spark: Any,
    cfg: Config,
    frame: ScoresFrame,
    labels: dict[str, Label],
    split: dict[str, str],
    k: int,
    settings: RecommendConf,
) -> dict[str, Any]:
    """precision@k of the embedding and of the MFCC baseline over the same labelled pool."""
    pos = {t: i for i, t in enumerate(frame.track_ids)}
    labelled = [t for t in frame.track_ids if t in labels]
    out: dict[str, Any] = {"k": k, "labelled_scored": len(labelled), "embedding": None, "mfcc_baseline": None}
    if len(labelled) < 2:
        out["note"] = "fewer than 2 scored tracks have a label in labels.csv"
        return out
    if len(labelled) > settings.quality_tracks:
        pick = np.random.default_rng(0).choice(len(labelled), settings.quality_tracks, replace=False)
        labelled = [labelled[i] for i in sorted(pick)]
    baseline: dict[str, np.ndarray] = {}
    if settings.baseline:
        baseline = mfcc_baseline_vectors(spark, cfg, {t: frame.shas[pos[t]] for t in labelled})
        if baseline:
            # Same pool for both, so the two numbers compare like for like.
            labelled = [t for t in labelled if t in baseline]
        else:
            out["note"] = "no mel dataset rows for the scored tracks: MFCC baseline skipped"
    rows = np.asarray([pos[t] for t in labelled], np.int64)
    genres = [labels[t].genre for t in labelled]
    artists = [labels[t].artist for t in labelled]
    dup_keys = group_keys([frame.shas[i] for i in rows])
    query_sets = {"all": np.ones(len(rows), bool)}
    test = np.asarray([split.get(t) == "test" for t in labelled])
    if test.any():
        query_sets["test"] = test  # queries the model never trained on
    out["pool"] = len(rows)
    out["embedding"] = genre_precision(frame.embeddings[rows], genres, artists, dup_keys, k, query_sets)
    if baseline:
        x = np.stack([baseline[t] for t in labelled])
        x = (x - x.mean(axis=0)) / np.maximum(x.std(axis=0), 1e-6)  # standardise: no band dominates
        out["mfcc_baseline"] = genre_precision(l2_normalise(x), genres, artists, dup_keys, k, query_sets)
    return out


# -- report files ------------------------------------------------------------------------------


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, d) -> ((n, 2) first two principal components, (2,) share of variance each), by numpy
    SVD of the centred rows."""
    xc = x - x.mean(axis=0)
    _u, s, vt = np.linalg.svd(xc, full_matrices=False)
    return xc @ vt[:2].T, (s[:2] ** 2) / max(float((s**2).sum()), 1e-12)


def plot_embedding_map(frame: ScoresFrame, labels: dict[str, Label], genre_order: list[str], path: str) -> None:
    """PCA map of the embeddings, coloured by labels.csv genre (filled) else predicted (hollow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(frame.track_ids)
    xy, share = pca_2d(frame.embeddings)
    show = np.sort(np.random.default_rng(0).choice(n, MAP_POINTS, replace=False)) if n > MAP_POINTS else np.arange(n)
    known = np.asarray([frame.track_ids[i] in labels for i in range(n)])
    genre = [labels[t].genre if t in labels else (frame.genres[i] or "?") for i, t in enumerate(frame.track_ids)]
    order = genre_order + sorted(set(genre) - set(genre_order))
    cmap = plt.get_cmap("tab10" if len(order) <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(7.5, 6))
    size = 14 if len(show) < 2000 else 4
    for ci, g in enumerate(order):
        sel = show[np.asarray([genre[i] == g for i in show], bool)]
        if not sel.size:
            continue
        colour = cmap(ci % cmap.N)
        lab, pred = sel[known[sel]], sel[~known[sel]]
        ax.scatter(xy[lab, 0], xy[lab, 1], s=size, color=colour, alpha=0.75, label=g, linewidths=0)
        ax.scatter(xy[pred, 0], xy[pred, 1], s=size, facecolors="none", edgecolors=[colour], alpha=0.75)
    ax.set_title(f"track embeddings, PCA ({len(show)} of {n}; filled: labels.csv genre, hollow: predicted)")
    ax.set_xlabel(f"PC 1 ({share[0]:.0%} of variance)")
    ax.set_ylabel(f"PC 2 ({share[1]:.0%} of variance)")
    ax.legend(fontsize=8, markerscale=2 if size < 10 else 1, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _duplicates_csv(groups: list[list[str]], frame: ScoresFrame) -> bytes:
    sha = dict(zip(frame.track_ids, frame.shas, strict=True))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["audio_sha256", "track_id"])
    for g in groups:
        w.writerows([sha[t], t] for t in g)
    return buf.getvalue().encode()


# -- the job -----------------------------------------------------------------------------------


def _precision_lines(q: dict[str, Any], k: int) -> list[str]:
    """The precision@k table: a column per query set, a row per method, "plain / filtered"."""
    if not q.get("embedding"):
        return []
    sets = list(q["embedding"])  # "all", plus "test" when model.json has a test split
    heads = {"all": "all labelled", "test": "test split"}

    def cell(m: dict[str, Any]) -> str:
        return " / ".join("-" if m[key] is None else f"{m[key]:.3f}" for key in ("plain", "artist_filtered"))

    out = [
        f"  genre precision@{k} over {q['pool']} labelled tracks (plain / same artist filtered out):",
        f"    {'queries':<14}" + "".join(f"{heads[s]} ({q['embedding'][s]['queries']})".rjust(22) for s in sets),
    ]
    for name, key in (("CNN embedding", "embedding"), ("MFCC baseline", "mfcc_baseline")):
        if q.get(key):
            out.append(f"    {name:<14}" + "".join(cell(q[key][s]).rjust(22) for s in sets))
    return out


@dataclass
class RecommendSummary:
    model_id: str
    run_id: str
    tracks: int = 0
    k: int = 10
    method: str = "exact"
    seconds: float = 0.0
    build_seconds: float = 0.0
    query_seconds: float = 0.0
    tasks: int = 0
    rows: int = 0
    recall: float | None = None  # ANN recall@k against exact search
    recall_queries: int = 0
    quality: dict[str, Any] = field(default_factory=dict)
    duplicates: list[list[str]] = field(default_factory=list)
    table_uri: str = ""
    report_uri: str = ""

    def lines(self) -> list[str]:
        out = [
            f"recommend {self.run_id}: model {self.model_id}, {self.tracks} tracks, k={self.k}, "
            f"{self.method} search in {self.seconds:.1f}s (index {self.build_seconds:.1f}s, "
            f"queries {self.query_seconds:.1f}s in {self.tasks} tasks), {self.rows} rows",
        ]
        if self.recall is not None:
            out.append(f"  recall@{self.k} {self.recall:.3f} ({self.method} vs exact, {self.recall_queries} queries)")
        q = self.quality
        out += _precision_lines(q, self.k)
        if q.get("note"):
            out.append(f"  quality: {q['note']}")
        groups, dup_tracks = len(self.duplicates), sum(len(g) for g in self.duplicates)
        out.append(
            f"  duplicates: {groups} group{'' if groups == 1 else 's'} of identical audio ({dup_tracks} tracks), "
            "never recommended to each other"
        )
        out += [
            f"  table   {self.table_uri}",
            f"  report  {join(self.report_uri, QUALITY_FILE)}",
            f"          {join(self.report_uri, DUPLICATES_FILE)}",
            f"          {join(self.report_uri, MAP_FILE)}",
        ]
        return out


def run_recommend(
    cfg: Config, spark: Any, model: str = "latest", k: int | None = None, method: str | None = None
) -> RecommendSummary:
    """Write the neighbours table of ``model`` (and its ``_report/``); safe to kill and re-run.

    ``k`` and ``method`` default to the ``recommend:`` config section (10, ``auto``).
    """
    started = time.monotonic()
    settings = cfg.recommend
    k = k or settings.k
    if k < 1:
        raise ConfigError(f"k must be at least 1, not {k}")
    storage = Storage.from_config(cfg)
    model_id = registry.resolve_model_id(cfg, model)
    meta = registry.read_model_json(cfg, model_id)
    table_uri, rep_uri = neighbours_uri(cfg, model_id), report_uri(cfg, model_id)
    run_id = commit.new_run_id()
    summary = RecommendSummary(model_id, run_id, k=k, table_uri=table_uri, report_uri=rep_uri)
    with lease.hold(storage, cfg, run_id, "recommend", table_uri) as leases:
        commit.recover(storage, table_uri, leases[table_uri])
        _recommend(cfg, spark, storage, summary, meta, method, started, leases[table_uri])
    summary.seconds = time.monotonic() - started
    return summary


def _recommend(
    cfg: Config,
    spark: Any,
    storage: Storage,
    summary: RecommendSummary,
    meta: dict[str, Any],
    method: str | None,
    started: float,
    table_lease: lease.TableLease,
) -> None:
    settings, k, model_id, run_id = cfg.recommend, summary.k, summary.model_id, summary.run_id
    table_uri, rep_uri = summary.table_uri, summary.report_uri

    frame = read_scores(storage, scores_uri(cfg, model_id), model_id)
    n = summary.tracks = len(frame.track_ids)
    if n < 2:
        raise JobError(f"scores for model {model_id} hold {n} track: nothing to compare with")
    try:
        chosen = summary.method = choose_method(n, method or settings.method, settings.exact_max_tracks)
    except ValueError as exc:
        raise ConfigError(f"recommend.method: {exc}") from None
    sha_keys = group_keys(frame.shas)
    summary.duplicates = duplicate_groups(frame.track_ids, frame.shas)
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
    parts = _fan_out(spark, job_args, frame, sha_keys, index)
    summary.query_seconds = time.monotonic() - t0
    summary.tasks, summary.rows = len(parts), sum(p[2] for p in parts)

    if index is not None:
        sample = np.sort(np.random.default_rng(0).choice(n, min(n, settings.recall_queries), replace=False))
        ex = catalogue_exclusions(sample, sha_keys)
        exact_idx, _ = exact_topk(frame.embeddings[sample], frame.embeddings, k, ex)
        index.threads = -1
        approx_idx, _ = ann_topk(index, frame.embeddings[sample], k, ex)
        summary.recall, summary.recall_queries = _finite(recall_at_k(approx_idx, exact_idx)), len(sample)
        log.info("recommend: %s recall@%d %.3f on %d queries", chosen, k, summary.recall, len(sample))

    labels, _ = load_labels(storage, cfg.catalogue.labels_uri, cfg.genres)
    summary.quality = _quality(spark, cfg, frame, labels, meta.get("split", {}).get("tracks", {}), k, settings)
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
    add = [(tmp, final) for tmp, final, _rows in parts]
    with tempfile.TemporaryDirectory() as tmp_dir:
        plot_embedding_map(frame, labels, list(meta.get("genres", [])), os.path.join(tmp_dir, MAP_FILE))
        with open(os.path.join(tmp_dir, MAP_FILE), "rb") as fh:
            files = {
                MAP_FILE: fh.read(),
                QUALITY_FILE: json.dumps(report, indent=2).encode(),
                DUPLICATES_FILE: _duplicates_csv(summary.duplicates, frame),
            }
    for name, data in files.items():
        tmp = commit.tmp_uri(table_uri, run_id, f"{REPORT_DIR}/{name}")
        storage.write_bytes(tmp, data)
        add.append((tmp, join(rep_uri, name)))
    new = {final for _tmp, final in add}
    old = commit.table_files(storage, table_uri) + [u for u, _ in storage.list_files(rep_uri) if u not in new]
    commit.commit(storage, table_uri, run_id, add, old, table_lease)


# -- look-ups without Spark --------------------------------------------------------------------


def _row(rank: int, track_id: str, similarity: float, genre: str | None) -> dict[str, Any]:
    """One output row of ``similar`` (the jsonl keys)."""
    return {"rank": int(rank), "track_id": track_id, "similarity": round(float(similarity), 6), "genre": genre}


def _genres_for(cfg: Config, storage: Storage, model_id: str, track_ids: list[str]) -> dict[str, str | None]:
    """labels.csv genre where known, else the model's predicted genre from the scores table."""
    labels, _ = load_labels(storage, cfg.catalogue.labels_uri, cfg.genres)
    out: dict[str, str | None] = {t: labels[t].genre for t in track_ids if t in labels}
    missing = set(track_ids) - set(out)
    if missing:

        def predicted(files: list[str]) -> dict[str, str]:
            found = {}
            for f in files:
                t = storage.read_parquet(f, columns=["track_id", "genre"])
                for tid, g in zip(t.column("track_id").to_pylist(), t.column("genre").to_pylist(), strict=True):
                    if tid in missing:
                        found[tid] = g
            return found

        out.update(commit.read_snapshot(storage, scores_uri(cfg, model_id), predicted))
    return {t: out.get(t) for t in track_ids}


def similar_for_track(cfg: Config, track_id: str, k: int = 10, model: str = "latest") -> list[dict[str, Any]]:
    """Rows ``{rank, track_id, similarity, genre}`` of a scored track, read from the stored
    neighbours table (only the part file of the track's bucket)."""
    import pyarrow.compute as pc

    validate_track_id(track_id)
    if k < 1:
        raise ConfigError(f"k must be at least 1, not {k}")
    storage = Storage.from_config(cfg)
    model_id = registry.resolve_model_id(cfg, model)
    table_uri = neighbours_uri(cfg, model_id)

    def matching(files: list[str]) -> list[Any]:
        if not files:
            raise JobError(f"no neighbours table for model {model_id} at {table_uri}: run genrecast recommend")
        hits = []
        for f in files:
            m = _PART.search(f)
            if m is None or int(m.group(1)) == bucket_of(track_id, int(m.group(2))):
                t = storage.read_parquet(f)
                hits.append(t.filter(pc.equal(t.column("track_id"), track_id)))
        return hits

    hits = commit.read_snapshot(storage, table_uri, matching)
    rows = sorted((r for t in hits for r in t.to_pylist()), key=lambda r: r["rank"])
    if not rows:
        raise JobError(f"track {track_id!r} is not in the neighbours table {table_uri} (not scored by {model_id}?)")
    if k > len(rows):
        log.warning("neighbours table holds %d neighbours per track; re-run genrecast recommend -k %d", len(rows), k)
    rows = rows[:k]
    genres = _genres_for(cfg, storage, model_id, [r["neighbour_id"] for r in rows])
    return [_row(r["rank"], r["neighbour_id"], r["similarity"], genres[r["neighbour_id"]]) for r in rows]


def embed_audio_bytes(cfg: Config, data: bytes, uri: str, predictor: Any) -> np.ndarray:
    """(d,) float32 unit embedding of one audio file, made exactly as the scoring job makes it
    (:func:`genrecast.features.track_clips`, then :class:`genrecast.score.Predictor`)."""
    from genrecast.audio import AudioRejected
    from genrecast.features import track_clips

    try:
        clips = track_clips(data, uri, cfg.audio, cfg.ingest)
    except AudioRejected as exc:
        raise JobError(f"{uri}: {exc}") from None
    return predictor.predict_tracks([clips])[0][1]


def similar_for_audio(cfg: Config, path_or_uri: str, k: int = 10, model: str = "latest") -> list[dict[str, Any]]:
    """Cold start: rows ``{rank, track_id, similarity, genre}`` of catalogue tracks most similar
    to a new audio file, by exact search over the scores table's embeddings. A catalogue track
    with the very same audio bytes is left out (it is the file itself)."""
    import hashlib

    from genrecast.score import predictor_for

    if k < 1:
        raise ConfigError(f"k must be at least 1, not {k}")
    storage = Storage.from_config(cfg)
    uri = normalize_uri(path_or_uri)
    try:
        data = storage.read_bytes(uri)
    except (FileNotFoundError, IsADirectoryError):
        raise JobError(f"audio file not found: {uri}") from None
    model_id = registry.resolve_model_id(cfg, model)
    frame = read_scores(storage, scores_uri(cfg, model_id), model_id)
    meta = registry.read_model_json(cfg, model_id)
    registry.check_audio_params(meta, cfg.audio, model_id)
    vec = embed_audio_bytes(cfg, data, uri, predictor_for(cfg, model_id, meta["genres"], threads=None))
    if vec.shape[0] != frame.embeddings.shape[1]:
        raise JobError(
            f"model {model_id} embeds {uri} in {vec.shape[0]} dimensions, its scores table holds "
            f"{frame.embeddings.shape[1]}: re-run genrecast score --mode backfill"
        )
    sha = hashlib.sha256(data).hexdigest()
    keys = group_keys([sha, *frame.shas])
    idx, sim = exact_topk(vec[None, :], frame.embeddings, k, [Exclusion(keys[:1], keys[1:])])
    labels, _ = load_labels(storage, cfg.catalogue.labels_uri, cfg.genres)
    rows = []
    for rank, (i, s) in enumerate(zip(idx[0], sim[0], strict=True), start=1):
        if i < 0:
            break
        t = frame.track_ids[i]
        rows.append(_row(rank, t, s, labels[t].genre if t in labels else frame.genres[i]))
    return rows


def format_similar(rows: list[dict[str, Any]], fmt: str = "table") -> str:
    """``table``: aligned columns for people; ``jsonl``: one JSON object a line for scripts."""
    if fmt == "jsonl":
        return "\n".join(json.dumps(r, ensure_ascii=False) for r in rows)
    if fmt != "table":
        raise ConfigError(f"unknown format {fmt!r} (table or jsonl)")
    width = max([5, *(len(r["genre"] or "-") for r in rows)])
    lines = [f"{'rank':>4}  {'similarity':>10}  {'genre':<{width}}  track_id"]
    lines += [f"{r['rank']:>4}  {r['similarity']:>10.4f}  {r['genre'] or '-':<{width}}  {r['track_id']}" for r in rows]
    return "\n".join(lines)
