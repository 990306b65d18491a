"""Nearest-neighbour benchmark: exact blocked search vs the ANN indexes, as `genrecast recommend`
runs them on each Spark task (same functions: genrecast.neighbours), on one machine.

Data: N random 128-d L2-normalised vectors ("uniform": no structure, the hardest case for any
ANN) and the same N drawn around 2000 centres ("clustered": closer to real embeddings, where
genres and styles form groups). Every track is a query (k nearest, never itself).
  exact: blocked matrix products; timed on a random sample of queries and extrapolated to N.
  hnsw:  hnswlib HNSW graph (M 16, ef_construction 200, ef as given); all N queries timed.
  ivf:   NumPy inverted file (4 sqrt(N) k-means lists, nprobe N/16 of them); all N queries timed.
recall@k = share of the exact top k (on the sampled queries) that the ANN returned.
Usage: .venv/bin/python bench/recommend.py [--tracks 100000] [--exact-queries 5000] [--data uniform,clustered]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from genrecast.neighbours import (
    Exclusion,
    HnswIndex,
    IvfIndex,
    ann_topk,
    exact_topk,
    hnswlib_available,
    l2_normalise,
    recall_at_k,
)

CHUNK = 10_000  # queries per call, like one Spark task (genrecast.recommend.QUERIES_PER_PARTITION)


def make_vectors(kind: str, n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return l2_normalise(rng.normal(size=(n, dim)))
    centres = rng.normal(size=(2000, dim))
    # noise as strong as the centre: members of a group have cosine ~0.5, so the order within a
    # group is not trivial
    return l2_normalise(centres[rng.integers(0, len(centres), n)] + rng.normal(size=(n, dim)))


def self_exclusion(rows: np.ndarray, n: int) -> list[Exclusion]:
    return [Exclusion(rows, np.arange(n))]


def query_all(index, x: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """(n, k) ANN neighbours of every row, in CHUNK-sized calls; seconds taken."""
    n = len(x)
    out = np.empty((n, k), np.int64)
    t = time.perf_counter()
    for s in range(0, n, CHUNK):
        rows = np.arange(s, min(n, s + CHUNK))
        out[rows], _ = ann_topk(index, x[rows], k, self_exclusion(rows, n))
    return out, time.perf_counter() - t


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--exact-queries", type=int, default=5000, help="exact search timed on this many queries")
    parser.add_argument("--data", default="uniform,clustered")
    parser.add_argument("--hnsw-ef", type=int, default=200)
    args = parser.parse_args()
    n, k = args.tracks, args.k
    print(f"{n} vectors x {args.dim} dims, k={k}; {os.cpu_count()} cores, load average at start "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    results = []
    for kind in args.data.split(","):
        x = make_vectors(kind, n, args.dim)
        sample = np.sort(np.random.default_rng(1).choice(n, min(n, args.exact_queries), replace=False))
        t = time.perf_counter()
        truth, _ = exact_topk(x[sample], x, k, self_exclusion(sample, n))
        exact_s = (time.perf_counter() - t) * n / len(sample)
        results.append((kind, "exact (blocked)", 0.0, exact_s, f"extrapolated from {len(sample)}", 1.0))
        print(f"  {kind} exact done", flush=True)
        methods = ([f"hnsw ef={args.hnsw_ef}"] if hnswlib_available() else []) + ["ivf (numpy)"]
        for name in methods:
            t = time.perf_counter()
            index = HnswIndex(x, ef=args.hnsw_ef) if name.startswith("hnsw") else IvfIndex(x)
            build_s = time.perf_counter() - t
            found, query_s = query_all(index, x, k)
            results.append((kind, name, build_s, query_s, f"all {n}", recall_at_k(found[sample], truth)))
            print(f"  {kind} {name} done", flush=True)

    print(f"\n{'data':<10} {'method':<16} {'build s':>8} {'query s':>9} {'queries timed':<24} "
          f"{'ms/query':>9} {'total s':>8} {'recall@' + str(k):>9}")
    for kind, name, build_s, query_s, timed, recall in results:
        print(f"{kind:<10} {name:<16} {build_s:>8.1f} {query_s:>9.1f} {timed:<24} {1000 * query_s / n:>9.3f} "
              f"{build_s + query_s:>8.1f} {recall:>9.3f}")
    print(f"\nload average at end {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores; shared machines skew timings)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
