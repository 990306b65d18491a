"""Nightly vs full recommend: `run_recommend --mode nightly` after 1 % new tracks against a full
recompute of the same scores table, in the same Spark application (local[N]).

Per size N: N clustered 128-d vectors (2000 centres, like bench/recommend.py's "clustered") are
written as a scores table and (a) a full run (exact search, k 10) builds the neighbours table
and its state; then N/100 new tracks are appended to the scores table and
  (b) `--mode nightly` updates the stored table (new tracks searched against the catalogue,
      existing lists merged with the new tracks that beat their k-th, changed buckets rewritten);
  (c) `--mode full` recomputes the same table from scratch (the baseline).
The tables of (b) and (c) are compared (same neighbours and ranks, similarities within 1e-6).
Times are whole jobs (read scores, Spark tasks, Parquet parts, commit; (c) also its report:
quality pass and embedding map); "query s" is the Spark stage alone. Usage:
  .venv/bin/python bench/recommend_nightly.py [--sizes 20000,100000] [--new-share 0.01] [--cores 2]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

from genrecast import commit, registry
from genrecast.config import load_config
from genrecast.dataset import neighbours_uri, scores_uri
from genrecast.neighbours import l2_normalise
from genrecast.recommend import run_recommend
from genrecast.storage import Storage, join

DIM = 128
K = 10
CENTRES = 2000
MODEL = "bench"


def vectors(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CENTRES, DIM))
    return l2_normalise(centres[rng.integers(CENTRES, size=n)] + 0.5 * rng.normal(size=(n, DIM)))


def scores_part(ids: list[str], x: np.ndarray, at: datetime) -> pa.Table:
    """Scores rows with the contract columns (one genre, fixed hashes)."""
    n = len(ids)
    offsets = pa.array(np.arange(0, (n + 1) * DIM, DIM, dtype=np.int32))
    return pa.table(
        {
            "track_id": pa.array(ids, pa.string()),
            "model_id": pa.array([MODEL] * n, pa.string()),
            "genre": pa.array(["g0"] * n, pa.string()),
            "confidence": pa.array(np.full(n, 0.9, np.float32)),
            "probabilities": pa.array([[1.0]] * n, pa.list_(pa.float32())),
            "embedding": pa.ListArray.from_arrays(offsets, pa.array(x.ravel(), pa.float32())),
            "n_clips": pa.array(np.full(n, 10, np.int32)),
            "audio_sha256": pa.array([f"sha-{t}" for t in ids], pa.string()),
            "scored_at": pa.array([at] * n, pa.timestamp("us", tz="UTC")),
        }
    )


def table_rows(storage: Storage, uri: str) -> dict[tuple[str, int], tuple[str, float]]:
    out = {}
    for f in commit.table_files(storage, uri):
        t = storage.read_parquet(f, columns=["track_id", "rank", "neighbour_id", "similarity"])
        cols = [t.column(c).to_pylist() for c in t.column_names]
        out.update({(a, r): (nb, s) for a, r, nb, s in zip(*cols, strict=True)})
    return out


def same_table(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[key][0] == b[key][0] and abs(a[key][1] - b[key][1]) <= 1e-6 for key in a)


def run_size(spark, out: Path, n: int, share: float) -> dict:
    root = out / f"n{n}"
    shutil.rmtree(root, ignore_errors=True)
    conf = root / "conf.yaml"
    conf.parent.mkdir(parents=True)
    conf.write_text(
        f"storage: {{root: {root / 'genrecast'}}}\ncatalogue: {{audio_uri: {root / 'audio'}, labels_uri: null}}\n"
        "genres: [g0, g1]\nrecommend: {baseline: false}\n"
    )
    cfg = load_config(conf)
    storage = Storage()
    registry.publish(cfg, MODEL, {"model_id": MODEL, "genres": ["g0", "g1"], "split": {"tracks": {}}})
    new = max(1, int(round(n * share)))
    x = vectors(n + new, seed=n)
    ids = [f"a{i:07d}" for i in range(n)]
    t0 = datetime(2026, 12, 1, tzinfo=UTC)
    for p, rows in enumerate(np.array_split(np.arange(n), 4)):
        storage.write_parquet(
            join(scores_uri(cfg, MODEL), f"score-0-{p:05d}.parquet"), scores_part([ids[i] for i in rows], x[rows], t0)
        )
    first = run_recommend(cfg, spark, model=MODEL, k=K, method="exact", mode="full")
    # A night's new tracks: ids spread over the sort order (and so over every bucket).
    new_ids = [f"a{i:07d}n" for i in np.random.default_rng(1).choice(n, new, replace=False)]
    storage.write_parquet(
        join(scores_uri(cfg, MODEL), "score-1-00000.parquet"), scores_part(new_ids, x[n:], t0 + timedelta(days=1))
    )
    started = time.monotonic()
    night = run_recommend(cfg, spark, model=MODEL, k=K, method="exact", mode="nightly")
    night_s = time.monotonic() - started
    assert night.mode == "nightly", night.lines()
    night_table = table_rows(storage, neighbours_uri(cfg, MODEL))
    started = time.monotonic()
    full = run_recommend(cfg, spark, model=MODEL, k=K, method="exact", mode="full")
    full_s = time.monotonic() - started
    identical = same_table(night_table, table_rows(storage, neighbours_uri(cfg, MODEL)))
    shutil.rmtree(root, ignore_errors=True)
    return {
        "n": n,
        "new": new,
        "first_s": first.seconds,
        "full_s": full_s,
        "full_query_s": full.query_seconds,
        "night_s": night_s,
        "night_query_s": night.query_seconds,
        "buckets": f"{night.buckets_rewritten} / {night.tasks}",
        "recomputed": night.recomputed,
        "updated": night.updated,
        "identical": identical,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--sizes", default="20000,100000")
    ap.add_argument("--new-share", type=float, default=0.01)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--out", default="bench/out")
    args = ap.parse_args(argv)
    from genrecast.config import Config
    from genrecast.spark import spark_session

    cfg = Config()
    cfg.spark.master = f"local[{args.cores}]"
    out = Path(args.out) / "recommend_nightly"
    with spark_session(cfg) as spark:
        results = [run_size(spark, out, int(s), args.new_share) for s in args.sizes.split(",")]
    print(
        "| tracks | new | (c) full s | (c) query s | (b) nightly s | (b) query s | full / nightly "
        "| buckets rewritten | lists searched again | lists updated | (b) == (c) |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in results:
        print(
            f"| {r['n']} | {r['new']} | {r['full_s']:.1f} | {r['full_query_s']:.1f} | {r['night_s']:.1f} | "
            f"{r['night_query_s']:.1f} | {r['full_s'] / r['night_s']:.1f}x | {r['buckets']} | {r['recomputed']} | "
            f"{r['updated']} | {'yes' if r['identical'] else 'NO'} |"
        )
    return 0 if all(r["identical"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
