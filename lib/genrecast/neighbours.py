"""Nearest neighbours over L2-normalised vectors, and how good they are. Pure NumPy; no Spark,
no storage.

Cosine similarity of unit vectors is their inner product, so every search here ranks by
``queries @ base.T``. Three ways to find the top k:
- :func:`exact_topk`: blocked matrix products, each block's top k by ``argpartition`` (memory
  bounded by ``block_elements`` similarities, not by ``queries x base``).
- :class:`HnswIndex`: hnswlib's HNSW graph (inner-product space), when hnswlib is installed.
- :class:`IvfIndex`: a NumPy inverted file, spherical k-means lists probed ``nprobe`` at a time;
  the fallback ANN without hnswlib.
:func:`ann_topk` puts either index behind the same exclusions as the exact search.

Exclusions (:class:`Exclusion`) say which base rows a query may not return: itself, tracks with
the same audio (same ``audio_sha256``), tracks by the same artist. Results are ``(idx, sim)``:
``(q, k)`` int64 base rows, best first, :data:`NO_NEIGHBOUR` (-1) where fewer than k exist, and
``(q, k)`` float32 cosine similarities (NaN where there is no neighbour).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

NO_NEIGHBOUR = -1
BLOCK_ELEMENTS = 1 << 24  # similarities held at once by exact_topk: 64 MiB of float32
METHODS = ("exact", "hnsw", "ivf")


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """(n, d) -> (n, d) float32 rows of unit length; all-zero rows stay zero (similarity 0)."""
    x = np.asarray(x, np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def group_keys(values: Sequence[Any]) -> np.ndarray:
    """(n,) int64: equal values share a key; ``None`` / empty gets -1 (in no group)."""
    keys = np.full(len(values), -1, np.int64)
    seen: dict[Any, int] = {}
    for i, v in enumerate(values):
        if v is not None and v != "":
            keys[i] = seen.setdefault(v, len(seen))
    return keys


class Exclusion:
    """Base row j is excluded for query i when ``query_keys[i] == base_keys[j] >= 0``.

    ``Exclusion(query_rows, np.arange(n))`` excludes each query's own row; sha or artist keys
    from :func:`group_keys` exclude duplicates or same-artist tracks.
    """

    def __init__(self, query_keys: np.ndarray, base_keys: np.ndarray) -> None:
        self.query_keys = np.asarray(query_keys, np.int64)
        self.base_keys = np.asarray(base_keys, np.int64)
        self._order = np.argsort(self.base_keys, kind="stable")
        self._sorted = self.base_keys[self._order]

    def max_group(self) -> int:
        """Most base rows one query can lose to this exclusion (how far an ANN must over-fetch)."""
        keys = self._sorted[self._sorted >= 0]
        return int(np.unique(keys, return_counts=True)[1].max()) if keys.size else 0

    def pairs(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows relative to ``start``, base columns) excluded for queries ``start:stop``.

        Vectorised over the few matches (a ``searchsorted`` range per query), never ``b x n``.
        """
        qk = self.query_keys[start:stop]
        lo = np.searchsorted(self._sorted, qk, "left")
        hi = np.searchsorted(self._sorted, qk, "right")
        counts = np.where(qk >= 0, hi - lo, 0)
        rows = np.repeat(np.arange(qk.size), counts)
        offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        return rows, self._order[np.repeat(lo, counts) + offsets]

    def mask(self, idx: np.ndarray) -> np.ndarray:
        """(q, m) bool: which of the found base rows ``idx`` are excluded (-1 entries: False)."""
        found = self.base_keys[np.maximum(idx, 0)]
        return (idx >= 0) & (found == self.query_keys[:, None]) & (self.query_keys[:, None] >= 0)


THRESHOLD_SAMPLE = 2048  # columns that set a row's lower bound in _top_sorted


def _top_sorted(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k largest of ``sims`` (b, m), best first; -inf entries become -1 / NaN.

    Wide rows skip a full ``argpartition`` (the slowest step of exact search): the k-th best of
    the first THRESHOLD_SAMPLE columns is a lower bound of the row's k-th best, so only the few
    columns at or above it (~ m * k / THRESHOLD_SAMPLE) are sorted.
    """
    b, m = sims.shape
    idx = np.full((b, k), NO_NEIGHBOUR, np.int64)
    sim = np.full((b, k), np.nan, np.float32)
    kk = min(k, m)
    if m > 2 * THRESHOLD_SAMPLE and kk <= THRESHOLD_SAMPLE // 8:
        bound = np.partition(sims[:, :THRESHOLD_SAMPLE], THRESHOLD_SAMPLE - kk, axis=1)[:, THRESHOLD_SAMPLE - kk]
        rows, cols = np.nonzero(sims >= bound[:, None])
        vals = sims[rows, cols]
        order = np.lexsort((-vals, rows))  # by row, best first; ties keep column order
        rows, cols, vals = rows[order], cols[order], vals[order]
        rank = np.arange(rows.size) - np.searchsorted(rows, np.arange(b))[rows]
        keep = (rank < kk) & np.isfinite(vals)
        idx[rows[keep], rank[keep]] = cols[keep]
        sim[rows[keep], rank[keep]] = vals[keep]
        return idx, sim
    top = np.argpartition(sims, m - kk, axis=1)[:, m - kk :] if kk < m else np.tile(np.arange(m), (b, 1))
    part = np.take_along_axis(sims, top, 1)
    order = np.argsort(-part, axis=1, kind="stable")
    top, part = np.take_along_axis(top, order, 1), np.take_along_axis(part, order, 1)
    ok = np.isfinite(part)
    idx[:, :kk] = np.where(ok, top, NO_NEIGHBOUR)
    sim[:, :kk] = np.where(ok, part, np.nan)
    return idx, sim


def exact_topk(
    queries: np.ndarray,
    base: np.ndarray,
    k: int,
    exclusions: Sequence[Exclusion] = (),
    block_elements: int = BLOCK_ELEMENTS,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by cosine: queries (q, d) against base (n, d), both unit rows, float32.

    Works in blocks of ``block_elements // n`` queries so memory stays flat however large q is.
    """
    queries, base = np.asarray(queries, np.float32), np.asarray(base, np.float32)
    q, n = len(queries), len(base)
    idx = np.full((q, k), NO_NEIGHBOUR, np.int64)
    sim = np.full((q, k), np.nan, np.float32)
    if n == 0 or q == 0:
        return idx, sim
    step = max(1, block_elements // n)
    for start in range(0, q, step):
        stop = min(q, start + step)
        sims = queries[start:stop] @ base.T
        for ex in exclusions:
            rows, cols = ex.pairs(start, stop)
            sims[rows, cols] = -np.inf
        idx[start:stop], sim[start:stop] = _top_sorted(sims, k)
    return idx, sim


class AnnIndex(Protocol):
    """An approximate index over unit vectors: ``search`` returns (idx, sim) like exact_topk."""

    method: str
    threads: int

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def save(self, stem: str) -> tuple[dict[str, str], dict[str, Any]]: ...


def hnswlib_available() -> bool:
    try:
        import hnswlib  # noqa: F401
    except ImportError:
        return False
    return True


class HnswIndex:
    """hnswlib HNSW graph in inner-product space. Shipped to executors as its saved graph file
    (:meth:`save` / :meth:`load`); hnswlib reads the file into each process's memory.

    ``m``: graph degree; ``ef_construction``: build beam; ``ef``: query beam (raised to k when
    smaller). Larger values buy recall with time; see bench/recommend.py.
    """

    method = "hnsw"

    def __init__(
        self, base: np.ndarray, m: int = 16, ef_construction: int = 200, ef: int = 200, threads: int = -1
    ) -> None:
        import hnswlib

        base = np.asarray(base, np.float32)
        self.n, self.ef, self.threads = len(base), ef, threads
        self.index = hnswlib.Index(space="ip", dim=base.shape[1])
        self.index.init_index(max_elements=max(1, self.n), M=m, ef_construction=ef_construction, random_seed=0)
        if self.n:
            self.index.add_items(base, np.arange(self.n), num_threads=threads)

    def save(self, stem: str) -> tuple[dict[str, str], dict[str, Any]]:
        """Write the graph to ``<stem>.hnsw``: ({part: path}, params for :meth:`load`)."""
        path = f"{stem}.hnsw"
        self.index.save_index(path)
        return {"graph": path}, {"n": self.n, "ef": self.ef, "dim": self.index.dim}

    @classmethod
    def load(cls, paths: dict[str, str], params: dict[str, Any]) -> HnswIndex:
        import hnswlib

        obj = cls.__new__(cls)
        obj.n, obj.ef, obj.threads = params["n"], params["ef"], 1
        obj.index = hnswlib.Index(space="ip", dim=params["dim"])
        obj.index.load_index(paths["graph"], max_elements=max(1, obj.n))
        return obj

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = len(queries)
        idx = np.full((q, k), NO_NEIGHBOUR, np.int64)
        sim = np.full((q, k), np.nan, np.float32)
        kk = min(k, self.n)
        if kk == 0 or q == 0:
            return idx, sim
        self.index.set_ef(max(self.ef, kk))
        labels, dist = self.index.knn_query(np.asarray(queries, np.float32), k=kk, num_threads=self.threads)
        idx[:, :kk] = labels.astype(np.int64)
        sim[:, :kk] = 1.0 - dist  # hnswlib's "ip" distance is 1 - <q, x>
        return idx, sim


class IvfIndex:
    """Inverted file over unit vectors: ``nlist`` spherical k-means centroids (trained on a
    sample), each base row stored in its centroid's list; a query scans the ``nprobe`` lists
    whose centroids are most similar. NumPy only; saved as .npy files that :meth:`load` maps
    read-only (the lists' rows are a second copy of the base, so they are worth sharing)."""

    method = "ivf"

    def __init__(
        self,
        base: np.ndarray,
        nlist: int | None = None,
        nprobe: int | None = None,
        iterations: int = 10,
        seed: int = 0,
    ) -> None:
        base = np.asarray(base, np.float32)
        self.n, self.threads = len(base), 1
        # ~4 sqrt(n) lists of ~sqrt(n)/4 rows; probing 1/16 of them scans ~n/16 rows a query.
        self.nlist = max(1, min(self.n, nlist or int(round(4 * math.sqrt(max(self.n, 1))))))
        self.nprobe = max(1, min(self.nlist, nprobe or math.ceil(self.nlist / 16)))
        rng = np.random.default_rng(seed)
        # ~40 training rows a centroid is enough for k-means to settle (the FAISS rule of thumb).
        sample = base[rng.choice(self.n, min(self.n, 40 * self.nlist), replace=False)] if self.n else base
        self.centroids = self._kmeans(sample, iterations, rng)
        assign = self._nearest_centroids(base, 1)[:, 0] if self.n else np.zeros(0, np.int64)
        self.ids = np.argsort(assign, kind="stable")
        self.data = base[self.ids]  # rows grouped by list: list l is data[offsets[l]:offsets[l + 1]]
        self.offsets = np.searchsorted(assign[self.ids], np.arange(self.nlist + 1))

    ARRAYS = ("centroids", "ids", "data", "offsets")

    def save(self, stem: str) -> tuple[dict[str, str], dict[str, Any]]:
        """Write ``<stem>-<array>.npy`` per array: ({array: path}, params for :meth:`load`)."""
        paths = {a: f"{stem}-{a}.npy" for a in self.ARRAYS}
        for a, path in paths.items():
            np.save(path, getattr(self, a))
        return paths, {"n": self.n, "nlist": self.nlist, "nprobe": self.nprobe}

    @classmethod
    def load(cls, paths: dict[str, str], params: dict[str, Any]) -> IvfIndex:
        obj = cls.__new__(cls)
        obj.n, obj.nlist, obj.nprobe, obj.threads = params["n"], params["nlist"], params["nprobe"], 1
        for a in cls.ARRAYS:
            setattr(obj, a, np.load(paths[a], mmap_mode="r"))
        return obj

    def _nearest_centroids(self, x: np.ndarray, p: int, centroids: np.ndarray | None = None) -> np.ndarray:
        c = self.centroids if centroids is None else centroids
        out = np.empty((len(x), p), np.int64)
        step = max(1, BLOCK_ELEMENTS // max(len(c), 1))
        for s in range(0, len(x), step):
            out[s : s + step] = _top_sorted(x[s : s + step] @ c.T, p)[0]
        return out

    def _kmeans(self, sample: np.ndarray, iterations: int, rng: np.random.Generator) -> np.ndarray:
        if not len(sample):
            return np.zeros((self.nlist, sample.shape[1]), np.float32)
        centroids = sample[rng.choice(len(sample), self.nlist, replace=False)]
        for _ in range(iterations):
            assign = self._nearest_centroids(sample, 1, centroids)[:, 0]
            counts = np.bincount(assign, minlength=self.nlist)
            starts = np.cumsum(counts) - counts
            sums = np.zeros_like(centroids)
            # Sum each list's rows as contiguous segments (np.add.at is unbuffered and slow).
            filled = counts > 0
            sums[filled] = np.add.reduceat(sample[np.argsort(assign, kind="stable")], starts[filled], axis=0)
            # An empty list takes a random sample row, so every centroid keeps pulling its weight.
            sums[~filled] = sample[rng.choice(len(sample), int((~filled).sum()))]
            centroids = l2_normalise(sums)
        return centroids

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.asarray(queries, np.float32)
        q = len(queries)
        best_idx = np.full((q, k), NO_NEIGHBOUR, np.int64)
        best_sim = np.full((q, k), -np.inf, np.float32)
        if q and self.n:
            probes = self._nearest_centroids(queries, self.nprobe)
            # Invert (query, list) pairs so each list is scanned once against all its queries.
            flat = probes.ravel()
            order = np.argsort(flat, kind="stable")
            owners = np.repeat(np.arange(q), self.nprobe)[order]
            bounds = np.searchsorted(flat[order], np.arange(self.nlist + 1))
            for lst in np.flatnonzero(np.diff(bounds)):
                lo, hi = self.offsets[lst], self.offsets[lst + 1]
                if lo == hi:
                    continue
                qs = owners[bounds[lst] : bounds[lst + 1]]
                sims = np.concatenate([best_sim[qs], queries[qs] @ self.data[lo:hi].T], axis=1)
                cands = np.concatenate([best_idx[qs], np.broadcast_to(self.ids[lo:hi], (len(qs), hi - lo))], axis=1)
                pick, _ = _top_sorted(sims, k)
                ok = pick >= 0
                safe = np.maximum(pick, 0)
                best_idx[qs] = np.where(ok, np.take_along_axis(cands, safe, 1), NO_NEIGHBOUR)
                best_sim[qs] = np.where(ok, np.take_along_axis(sims, safe, 1), -np.inf)
        return best_idx, np.where(best_idx >= 0, best_sim, np.nan).astype(np.float32)


def build_index(base: np.ndarray, method: str, **params: Any) -> AnnIndex:
    """An ANN index of ``method`` ("hnsw" or "ivf") over unit rows ``base`` (n, d)."""
    if method == "hnsw":
        return HnswIndex(base, **params)
    if method == "ivf":
        return IvfIndex(base, **params)
    raise ValueError(f"unknown ANN method {method!r} (hnsw or ivf)")


def load_index(method: str, paths: dict[str, str], params: dict[str, Any]) -> AnnIndex:
    """The index an ``index.save(stem)`` wrote: ``paths`` and ``params`` are what it returned."""
    cls: Any = {"hnsw": HnswIndex, "ivf": IvfIndex}.get(method)
    if cls is None:
        raise ValueError(f"unknown ANN method {method!r} (hnsw or ivf)")
    return cls.load(paths, params)


def choose_method(n: int, method: str, exact_max: int) -> str:
    """``auto``: exact up to ``exact_max`` tracks, then HNSW if hnswlib is installed, else IVF."""
    if method == "auto":
        if n <= exact_max:
            return "exact"
        return "hnsw" if hnswlib_available() else "ivf"
    if method not in METHODS:
        raise ValueError(f"unknown search method {method!r} (auto, {', '.join(METHODS)})")
    if method == "hnsw" and not hnswlib_available():
        raise ValueError("hnsw needs the hnswlib package (pip install hnswlib==0.8.0); ivf needs nothing")
    return method


def ann_topk(
    index: AnnIndex, queries: np.ndarray, k: int, exclusions: Sequence[Exclusion] = ()
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k from an ANN index under exclusions: over-fetch by the most rows any exclusion can
    take from one query, drop the excluded, keep the first k."""
    extra = sum(ex.max_group() for ex in exclusions)
    idx, sim = index.search(queries, k + extra)
    drop = idx < 0
    for ex in exclusions:
        drop |= ex.mask(idx)
    keep = np.argsort(drop, axis=1, kind="stable")[:, :k]  # kept entries first, order preserved
    idx, sim = np.take_along_axis(idx, keep, 1), np.take_along_axis(sim, keep, 1)
    gone = np.take_along_axis(drop, keep, 1)
    return np.where(gone, NO_NEIGHBOUR, idx), np.where(gone, np.nan, sim).astype(np.float32)


def recall_at_k(approx_idx: np.ndarray, exact_idx: np.ndarray) -> float:
    """Mean over queries of |approx top-k ∩ exact top-k| / |exact top-k| ((q, k) row indices)."""
    valid = exact_idx >= 0
    found = (approx_idx[:, :, None] == exact_idx[:, None, :]).any(axis=1) & valid
    per_query = found.sum(1) / np.maximum(valid.sum(1), 1)
    return float(per_query[valid.any(1)].mean()) if valid.any() else float("nan")


def precision_at_k(idx: np.ndarray, query_labels: np.ndarray, base_labels: np.ndarray) -> float:
    """Mean over queries of the share of returned neighbours whose label equals the query's.

    ``idx`` (q, k) base rows (-1: none); labels are int keys (-1: unknown). A query counts only
    if it is labelled and has a neighbour; the share is over the neighbours actually returned.
    """
    valid = idx >= 0
    hits = valid & (base_labels[np.maximum(idx, 0)] == query_labels[:, None])
    counted = valid.any(1) & (query_labels >= 0)
    if not counted.any():
        return float("nan")
    return float((hits.sum(1)[counted] / valid.sum(1)[counted]).mean())
