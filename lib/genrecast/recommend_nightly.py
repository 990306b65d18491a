"""Incremental (nightly) update of the neighbours table: work O(changed x catalogue), not
O(catalogue^2), and only the part files that change are rewritten.

What the last run saw is ``_state/tracks.parquet`` beside the parts (``track_id``, ``version``:
:func:`genrecast.neighbours_table.version_key` of the scores row), committed in the same journal
as the parts; ``_table.json`` holds ``recommend: {k, buckets, rows, method}``. Against the scores
table now:
- changed = tracks new since that run, or whose row's model_id / scored_at / audio_sha256 differ;
  deleted = tracks it saw that are gone; stale = changed + deleted.
- a track that is changed, or whose stored list names a stale track, gets its top k again by
  exact search against the whole catalogue (a stale neighbour's slot cannot be refilled from the
  list alone);
- every other track keeps its list, merged with the changed tracks that beat its current k-th
  similarity (the changed tracks are the only candidates that can have appeared);
- a deleted track's own rows go.
Exclusions are the full run's (:func:`~genrecast.neighbours_table.catalogue_exclusions`: never
itself, never the same audio). With exact search the result equals a full recompute; after an
ANN full run the kept lists stay approximate, and what is recomputed is exact.

One Spark task per hash bucket reads its old part(s), applies the above to its query tracks and
writes a new part only when one of its rows changed (see :func:`update_bucket`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from genrecast import commit
from genrecast.neighbours import BLOCK_ELEMENTS, Exclusion, exact_topk
from genrecast.neighbours_table import (
    NEIGHBOURS_SCHEMA,
    BucketJob,
    bucket_owners,
    catalogue_exclusions,
    part_bucket,
    part_name,
)
from genrecast.search_files import shipped
from genrecast.storage import Storage, join

STATE_FILE = "_state/tracks.parquet"  # "_": no table reader lists it
SAME_SIM = 1e-6  # float32 cosine similarities closer than this are equal (rounding, not a change)
STATE_SCHEMA = pa.schema([pa.field("track_id", pa.string(), nullable=False), pa.field("version", pa.int64())])


def state_table(track_ids: list[str], versions: np.ndarray) -> pa.Table:
    return pa.table([pa.array(track_ids, pa.string()), pa.array(versions, pa.int64())], schema=STATE_SCHEMA)


def read_seen(storage: Storage, table_uri: str) -> dict[str, int] | None:
    """``{track_id: version}`` the last committed run saw; None before the first run that kept it."""
    uri = join(table_uri, STATE_FILE)
    if not storage.exists(uri):
        return None
    t = storage.read_parquet(uri)
    return dict(zip(t.column("track_id").to_pylist(), t.column("version").to_pylist(), strict=True))


@dataclass
class Changes:
    changed_rows: np.ndarray  # (c,) int64 rows of the scores frame that are new or changed
    deleted: list[str]  # track ids seen last run and gone now

    @property
    def count(self) -> int:
        return len(self.changed_rows) + len(self.deleted)


def find_changes(seen: dict[str, int], track_ids: list[str], versions: np.ndarray) -> Changes:
    """Compare the scores frame (ids, (n,) int64 versions) with what the last run saw."""
    changed = np.fromiter(
        (i for i, (t, v) in enumerate(zip(track_ids, versions.tolist(), strict=True)) if seen.get(t) != v), np.int64
    )
    now = set(track_ids)
    return Changes(changed, sorted(t for t in seen if t not in now))


def bucket_files(files: list[str]) -> tuple[int, dict[int, list[str]]] | str:
    """``(buckets, {bucket: [files]})`` of a table whose parts all carry one bucket count, else
    why not (a reason for a full run)."""
    by_bucket: dict[int, list[str]] = {}
    counts = set()
    for f in files:
        b = part_bucket(f)
        if b is None:
            return f"{f.rsplit('/', 1)[-1]} has no bucket in its name"
        counts.add(b[1])
        by_bucket.setdefault(b[0], []).append(f)
    if len(counts) != 1:
        return f"parts disagree on the bucket count ({sorted(counts)})" if counts else "the table has no parts"
    return counts.pop(), by_bucket


def full_reason(
    state: dict[str, Any], seen: dict[str, int] | None, layout: tuple[int, dict[int, list[str]]] | str, k: int
) -> str | None:
    """Why the stored table cannot be updated in place (a full run is needed), or None."""
    rec = state.get("recommend")
    if seen is None or not rec:
        return "no state from an earlier run"
    if rec.get("k") != k:
        return f"k changed ({rec.get('k')} -> {k})"
    if isinstance(layout, str):
        return layout
    if layout[0] != rec.get("buckets"):
        return f"the table has {layout[0]} buckets, its state says {rec.get('buckets')}"
    return None


@dataclass
class BucketResult:
    bucket: int
    rewritten: bool  # the bucket's old parts are replaced (by ``tmp``, if it holds any rows)
    tmp: str | None  # the staged new part
    final: str
    rows: int  # the bucket's rows after the run (written, or kept as they were)
    recomputed: int = 0  # queries searched again against the catalogue
    updated: int = 0  # kept lists that a changed track entered (not searched again)
    dropped: int = 0  # deleted tracks' lists removed


def _stored(
    old: pa.Table, rows: np.ndarray, track_ids: pa.StringArray, changed: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The stored lists of queries ``rows`` (sorted catalogue rows; ``track_ids`` sorted) as
    (r, k) catalogue rows now (-1: none, -2: a track gone from the catalogue) and (r, k)
    similarities; (r,) bool: the list names a changed or gone track; how many stored queries
    are gone. Vectorised (Arrow hash look-ups), no Python loop over rows."""
    import pyarrow.compute as pc

    idx = np.full((len(rows), k), -1, np.int64)
    sim = np.full((len(rows), k), np.nan, np.float32)
    stale = np.zeros(len(rows), bool)
    if old.num_rows == 0:
        return idx, sim, stale, 0
    q = pc.index_in(old.column("track_id"), value_set=track_ids.take(pa.array(rows)))
    dropped = len(pc.unique(pc.filter(old.column("track_id"), pc.is_null(q))))
    nb = pc.index_in(old.column("neighbour_id"), value_set=track_ids)
    rank = old.column("rank").to_numpy()
    ok = pc.is_valid(q).to_numpy(zero_copy_only=False) & (rank >= 1) & (rank <= k)
    qi = q.to_numpy(zero_copy_only=False)[ok].astype(np.int64)
    nbi = pc.fill_null(nb, -2).to_numpy()[ok].astype(np.int64)
    idx[qi, rank[ok] - 1] = nbi
    sim[qi, rank[ok] - 1] = old.column("similarity").to_numpy()[ok]
    stale[qi[(nbi == -2) | changed[np.maximum(nbi, 0)]]] = True
    return idx, sim, stale, dropped


def update_bucket(
    old: pa.Table,
    rows: np.ndarray,
    vectors: np.ndarray,
    sha_keys: np.ndarray,
    track_ids: pa.StringArray,
    changed_rows: np.ndarray,
    k: int,
    block_elements: int = BLOCK_ELEMENTS,
) -> tuple[np.ndarray, np.ndarray, dict[str, int]] | None:
    """One bucket's new lists, or None if none of them changes.

    ``old``: the bucket's stored rows; ``rows``: (r,) sorted catalogue rows of its query tracks now;
    ``vectors`` (n, d) unit rows, ``sha_keys`` (n,), ``track_ids`` (n,) the catalogue now (sorted);
    ``changed_rows`` (c,) catalogue rows new or changed since the stored lists were made.
    Returns ((r, k) neighbour rows (-1: none), (r, k) similarities, counts).
    """
    changed = np.zeros(len(track_ids), bool)
    changed[changed_rows] = True
    old_idx, old_sim, names_stale, dropped = _stored(old, rows, track_ids, changed, k)
    redo = changed[rows] | names_stale
    idx, sim = old_idx.copy(), old_sim.copy()
    if redo.any():
        q = rows[redo]
        idx[redo], sim[redo] = exact_topk(vectors[q], vectors, k, catalogue_exclusions(q, sha_keys), block_elements)

    keep = np.flatnonzero(~redo)  # these lists name no stale track: only a changed one can enter
    if keep.size and changed_rows.size:
        # The changed tracks against the kept queries, in blocks: (b, c) similarities at a time.
        kth = np.where(np.isnan(sim[keep, k - 1]), -np.inf, sim[keep, k - 1])
        ex = Exclusion(sha_keys[rows[keep]], sha_keys[changed_rows])  # the same audio; self cannot occur
        step = max(1, block_elements // len(changed_rows))
        for start in range(0, keep.size, step):
            stop = min(keep.size, start + step)
            s = vectors[rows[keep[start:stop]]] @ vectors[changed_rows].T
            er, ec = ex.pairs(start, stop)
            s[er, ec] = -np.inf
            for a in np.flatnonzero((s > kth[start:stop, None]).any(axis=1)).tolist():
                j = keep[start + a]
                enter = np.flatnonzero(s[a] > kth[start + a])
                have = idx[j] >= 0
                cand_idx = np.concatenate([idx[j][have], changed_rows[enter]])
                cand_sim = np.concatenate([sim[j][have], s[a, enter]])
                order = np.argsort(-cand_sim, kind="stable")[:k]  # ties: the kept entry first
                idx[j], sim[j] = -1, np.nan
                idx[j, : order.size], sim[j, : order.size] = cand_idx[order], cand_sim[order]
    # A recomputed list often comes out as it was (a re-scored neighbour that kept its place):
    # only lists that differ make the bucket's part be rewritten. Similarities within SAME_SIM
    # are the same (matrix products of other shapes can round the last bit differently).
    same_sim = (np.abs(sim - old_sim) <= SAME_SIM) | (np.isnan(sim) & np.isnan(old_sim))
    differ = ~((idx == old_idx) & same_sim).all(axis=1)
    if not differ.any() and not dropped:
        return None
    counts = {"recomputed": int(redo.sum()), "updated": int((differ & ~redo).sum()), "dropped": dropped}
    return idx, sim, counts


def neighbours_part(
    rows: np.ndarray, idx: np.ndarray, sim: np.ndarray, track_ids: pa.StringArray, model_id: str
) -> pa.Table:
    """(r,) query rows and their (r, k) neighbour rows / similarities -> the table's rows, by query
    then rank (missing neighbours left out)."""
    qi, kj = np.nonzero(idx >= 0)  # row-major: by query, then rank
    return pa.table(
        [
            track_ids.take(pa.array(rows[qi])),
            pa.array(kj + 1, pa.int32()),
            track_ids.take(pa.array(idx[qi, kj])),
            pa.array(sim[qi, kj], pa.float32()),
            pa.array([model_id] * len(qi), pa.string()),
        ],
        schema=NEIGHBOURS_SCHEMA,
    )


def read_parts(storage: Storage, files: list[str]) -> pa.Table:
    """The stored rows of one bucket (one file, or several before a compaction)."""
    tables = [storage.read_parquet(f, columns=["track_id", "rank", "neighbour_id", "similarity"]) for f in files]
    if not tables:
        return NEIGHBOURS_SCHEMA.empty_table()
    return pa.concat_tables(tables)


# -- the Spark fan-out -------------------------------------------------------------------------


@dataclass(frozen=True)
class NightlyJob(BucketJob):
    changed_rows: Any  # Broadcast of (c,) int64: catalogue rows new or changed since the last run


def run_bucket(job: NightlyJob, bucket: int, rows: np.ndarray, files: list[str]) -> BucketResult:
    """Executor: update one bucket's lists; stage a new part only if one of them changed."""
    from threadpoolctl import threadpool_limits

    final = join(job.table_uri, part_name(job.run_id, bucket, job.buckets))
    old = read_parts(job.storage, files)
    ids, vectors, keys = job.files.track_ids(), job.files.vectors(), job.files.sha_keys()
    with threadpool_limits(limits=job.cpus):  # BLAS defaults to every core; the task owns spark.task.cpus
        out = update_bucket(old, rows, vectors, keys, ids, job.changed_rows.value, job.k)
    if out is None:
        return BucketResult(bucket, False, None, final, old.num_rows)
    idx, sim, counts = out
    table = neighbours_part(rows, idx, sim, ids, job.model_id)
    tmp = None
    if table.num_rows:
        tmp = commit.tmp_uri(job.table_uri, job.run_id, final.rsplit("/", 1)[-1])
        job.storage.write_parquet(tmp, table)
    return BucketResult(bucket, True, tmp, final, table.num_rows, **counts)


def fan_out(
    spark: Any,
    job_args: dict[str, Any],
    track_ids: list[str],
    vectors: np.ndarray,
    sha_keys: np.ndarray,
    changes: Changes,
    layout: tuple[int, dict[int, list[str]]],
) -> list[BucketResult]:
    """One task per bucket that has query tracks now or parts stored (a bucket whose tracks
    were all deleted is emptied). The catalogue's arrays reach the executors as mapped files
    (:mod:`genrecast.search_files`); only the changed rows are a broadcast (they grow with the
    change, not the catalogue)."""
    from genrecast.spark import with_progress

    sc = spark.sparkContext
    buckets, files = layout
    owner = bucket_owners(track_ids, buckets)
    order = np.argsort(owner, kind="stable")  # rows grouped by bucket, sorted by track id within
    bounds = np.searchsorted(owner[order], np.arange(buckets + 1))
    jobs = [
        (b, order[bounds[b] : bounds[b + 1]], files.get(b, []))
        for b in range(buckets)
        if bounds[b + 1] > bounds[b] or files.get(b)
    ]
    changed = sc.broadcast(changes.changed_rows)
    try:
        with shipped(sc, job_args["run_id"], vectors, sha_keys, track_ids) as search:
            job = NightlyJob(
                search,
                changed_rows=changed,
                buckets=buckets,
                cpus=int(sc.getConf().get("spark.task.cpus", "1")),
                **job_args,
            )
            rdd = sc.parallelize(jobs, len(jobs)).map(lambda j: run_bucket(job, *j))
            return with_progress(spark, "recommend", rdd.collect)
    finally:
        changed.destroy()
