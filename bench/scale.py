"""Scale benchmark: the driver's cost per catalogue track, on simulated catalogues of N tracks
(no audio), each step in a fresh process so its peak RSS (VmHWM) is its own.

Per N (default 10k, 100k, 1M):
  manifest write  ``manifest.write_manifest`` of N rows (journalled commit, local folder): the
                  manifest is rewritten whole whenever a nightly run changes anything.
  manifest read   ``manifest.read_manifest`` of that file (what ingest and score load).
  plan unchanged  ingest's driver state for an unchanged nightly run (manifest read from that
                  file; dataset index rows, labels and listing synthesised as the driver holds
                  them) and ``ingest.plan_ingest``: must plan 0 fetches.
  plan +1 %       the same with N/100 new tracks in the listing: must plan exactly those.
  score plan      ``score.plan_score`` on the unchanged catalogue (manifest + scores index).
"plan s" times the planning function only (the listing and index reads are I/O, not measured
here). "RSS/track" is (peak RSS - the process's RSS after imports) / N. Ratios compare with the
smallest N of the same run: time linear in N gives a time ratio equal to the N ratio.

Optional (``--recommend``): peak RSS and time of ``neighbours.exact_topk`` and HNSW
(``build_index`` + ``ann_topk``) over n random unit vectors of dim 128 (k = 10), the functions a
recommend task runs, without Spark. Queries are a sample, their time extrapolated to n queries
(marked in the output); HNSW is built at 100k only (the build grows ~n log n).

Usage:
  .venv/bin/python bench/scale.py [--sizes 10000,100000,1000000] [--recommend] [--out bench/out]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FKEY = "bench-features-key"
GENRES = ["blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock"]
REJECT_EVERY = 200  # 0.5 % of the catalogue was rejected by an earlier run
FILE_TRACKS = 1000  # tracks per mel part file in the simulated dataset index


def hwm_kib() -> int:
    """This process's peak RSS (ru_maxrss would carry the parent's across exec)."""
    return _status_kib("VmHWM:")


def _status_kib(key: str) -> int:
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key))


def sim_track(i: int) -> tuple[str, str, int, str, str, str | None, str]:
    """Track i of the simulated catalogue: (track_id, uri, size, version, sha256, genre, status)."""
    tid = f"{GENRES[i % 10]}/t{i:07d}"
    genre = None if i % 5 == 4 else GENRES[i % 10]  # 80 % labelled
    status = "rejected" if i % REJECT_EVERY == 7 else "ok"
    key = str(i).encode()
    sha, version = hashlib.sha256(key).hexdigest(), f"etag:{hashlib.md5(key).hexdigest()}"
    return tid, f"s3://catalogue/audio/{tid}.mp3", 4_000_000 + i, version, sha, genre, status


# ---- children (each runs in a fresh process; prints one JSON line) ----


def child_manifest_write(n: int, folder: Path) -> dict:
    from genrecast import commit, lease
    from genrecast.config import Config
    from genrecast.manifest import Entry, write_manifest
    from genrecast.storage import Storage

    base = _status_kib("VmRSS:")
    entries = []  # what ingest passes: the kept rows plus the fresh ones
    for i in range(n):
        tid, uri, size, version, sha, genre, status = sim_track(i)
        entries.append(Entry(tid, uri, size, version, sha, genre, FKEY, status))
    uri = str(folder / "manifest")
    storage, run_id = Storage(), commit.new_run_id()
    t = time.perf_counter()
    with lease.hold(storage, Config(), run_id, "bench", uri) as leases:
        assert write_manifest(storage, uri, run_id, entries, {}, leases[uri])
    return {"s": time.perf_counter() - t, "base_kib": base, "peak_kib": hwm_kib(), "rows": len(entries)}


def child_manifest_read(n: int, folder: Path) -> dict:
    from genrecast.manifest import read_manifest
    from genrecast.storage import Storage

    base = _status_kib("VmRSS:")
    t = time.perf_counter()
    manifest = read_manifest(Storage(), str(folder / "manifest"))
    s = time.perf_counter() - t
    assert len(manifest) == n, (len(manifest), n)
    return {"s": s, "base_kib": base, "peak_kib": hwm_kib(), "rows": len(manifest)}


def child_plan(n: int, folder: Path, job: str, new_share: float) -> dict:
    """The driver's state at planning time (as ``_ingest`` / ``_score`` hold it), then the plan."""
    from genrecast.catalogue import Label, Track
    from genrecast.ingest import plan_ingest, track_index
    from genrecast.manifest import read_manifest
    from genrecast.score import plan_score
    from genrecast.storage import Storage

    base = _status_kib("VmRSS:")
    new = int(n * new_share)
    manifest = read_manifest(Storage(), str(folder / "manifest"))
    files = [f"s3://bucket/genrecast/mels/part-20261204T000000Z-ab12cd-{j:05d}.parquet" for j in range(n // 1000 + 1)]
    tracks, labels, rows, rejected_shas = [], {}, [], {}
    for i in range(n + new):
        tid, uri, size, version, sha, genre, status = sim_track(i)
        tracks.append(Track(tid, uri, size, version))
        if genre is not None:
            labels[tid] = Label(genre, f"artist {i % 50_000}")
        if i >= n:
            continue  # new: in the listing (and labels.csv) only
        if status == "ok":
            rows.append((tid, sha, genre, files[i // FILE_TRACKS]))
        else:
            rejected_shas[uri] = sha
    listed_ids = {t.track_id for t in tracks}
    if job == "ingest":
        index = track_index(rows)  # as _ingest: the collected rows, grouped by track
        del rows
        gone = {tid: f for tid, (_sha, _genre, f) in index.items() if tid not in listed_ids}
        t = time.perf_counter()
        plan = plan_ingest(tracks, labels, index, manifest, rejected_shas, FKEY, FKEY)
        s = time.perf_counter() - t
        assert len(plan.kept) == n, (len(plan.kept), n)
    else:
        index = {}
        for tid, sha, _genre, f in rows:  # as _score: track_id -> (scored sha, files)
            index.setdefault(tid, (sha, set()))[1].add(f)
        del rows
        gone = {tid for tid in index if tid not in listed_ids}
        t = time.perf_counter()
        plan = plan_score(tracks, index, manifest, rejected_shas)
        s = time.perf_counter() - t
    assert not gone
    assert len(plan.tasks) == new, (len(plan.tasks), new)  # the new tracks exactly, nothing else
    assert {t.track_id for t in plan.tasks} == {t.track_id for t in tracks[n:]}
    rejected = sum(1 for i in range(n) if i % REJECT_EVERY == 7)
    assert (plan.skipped_unchanged, plan.skipped_rejected) == (n - rejected, rejected)
    return {"s": s, "base_kib": base, "peak_kib": hwm_kib(), "tasks": len(plan.tasks)}


def child_recommend(n: int, method: str, queries: int) -> dict:
    import numpy as np

    from genrecast.neighbours import ann_topk, build_index, exact_topk, l2_normalise

    base_kib = _status_kib("VmRSS:")
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, 128), dtype=np.float32)
    for start in range(0, n, 50_000):  # in place, by chunks: one n x d copy, as the job holds
        vectors[start : start + 50_000] = l2_normalise(vectors[start : start + 50_000])
    sample = vectors[rng.choice(n, size=min(queries, n), replace=False)]
    build = 0.0
    t = time.perf_counter()
    if method == "exact":
        idx, _sim = exact_topk(sample, vectors, 10)
    else:
        index = build_index(vectors, "hnsw")
        build = time.perf_counter() - t
        t = time.perf_counter()
        idx, _sim = ann_topk(index, sample, 10)
    query = time.perf_counter() - t
    assert idx.shape == (len(sample), 10) and (idx >= 0).all()
    return {"build_s": build, "query_s": query, "q": len(sample), "base_kib": base_kib, "peak_kib": hwm_kib()}


CHILDREN = {
    "manifest-write": lambda a: child_manifest_write(int(a[0]), Path(a[1])),
    "manifest-read": lambda a: child_manifest_read(int(a[0]), Path(a[1])),
    "plan": lambda a: child_plan(int(a[0]), Path(a[1]), a[2], float(a[3])),
    "recommend": lambda a: child_recommend(int(a[0]), a[1], int(a[2])),
}


# ---- parent ----


def run(*args: object) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO / "lib")}
    cmd = [sys.executable, __file__, "--child", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"bench/scale.py: child {' '.join(map(str, args))} failed: {proc.stderr.strip()[-400:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def mib(kib: float) -> float:
    return kib / 1024


def catalogue_rows(sizes: list[int], out: Path) -> None:
    steps = [
        ("manifest write", lambda n, d: run("manifest-write", n, d)),
        ("manifest read", lambda n, d: run("manifest-read", n, d)),
        ("ingest plan, unchanged", lambda n, d: run("plan", n, d, "ingest", 0.0)),
        ("ingest plan, +1 % new", lambda n, d: run("plan", n, d, "ingest", 0.01)),
        ("score plan, unchanged", lambda n, d: run("plan", n, d, "score", 0.0)),
    ]
    results: dict[tuple[str, int], dict] = {}
    for n in sizes:
        folder = out / f"n{n}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for name, fn in steps:
            results[name, n] = r = fn(n, folder)
            print(f"  {name} N={n}: {r['s']:.2f}s, peak {mib(r['peak_kib']):.0f} MiB", file=sys.stderr, flush=True)
        mf = sum(p.stat().st_size for p in (folder / "manifest").glob("*.parquet"))
        results["manifest bytes", n] = {"bytes": mf}
        shutil.rmtree(folder)
    n0 = sizes[0]
    print(f"\nDriver cost per catalogue size (ratios vs N={n0:,} in this run)")
    hdr = f"{'step':24} {'N':>9} {'s':>7} {'peak MiB':>9} {'base MiB':>9} {'RSS/track B':>11} {'tasks':>6}"
    print(hdr + f" {'N x':>6} {'time x':>7} {'RSS x':>6} {'marginal B/track':>16}")
    for name, _fn in steps:
        r0 = results[name, n0]
        for n in sizes:
            r = results[name, n]
            above = r["peak_kib"] - r["base_kib"]
            per_track = above * 1024 / n
            tasks = r.get("tasks", "")
            above0 = r0["peak_kib"] - r0["base_kib"]
            # RSS above the smallest run's, per extra track: the slope, free of fixed costs
            marginal = f"{(above - above0) * 1024 / (n - n0):16.0f}" if n > n0 else f"{'':16}"
            print(
                f"{name:24} {n:>9,} {r['s']:7.2f} {mib(r['peak_kib']):9.0f} {mib(r['base_kib']):9.0f} "
                f"{per_track:11.0f} {tasks!s:>6} {n / n0:6.0f} {r['s'] / r0['s']:7.1f} {above / above0:6.1f} {marginal}"
            )
    sized = (f"N={n:,}: {results['manifest bytes', n]['bytes'] / 2**20:.1f} MiB" for n in sizes)
    print("manifest file: " + ", ".join(sized))


def recommend_rows() -> None:
    # (n, method, queries sampled): a few minutes in all on 2 cores.
    cases = [(100_000, "exact", 2000), (100_000, "hnsw", 5000), (1_000_000, "exact", 500)]
    print("\nRecommend: top-10 over n random unit vectors, dim 128 (no Spark; query time extrapolated to n queries)")
    print(f"{'n':>9} {'method':7} {'build s':>8} {'q sampled':>9} {'q s':>7} {'all-n query s (extrap.)':>24} "
          f"{'peak MiB':>9} {'vectors MiB':>11} {'peak - base MiB':>15}")  # fmt: skip
    for n, method, q in cases:
        r = run("recommend", n, method, q)
        print(
            f"{n:>9,} {method:7} {r['build_s']:8.1f} {r['q']:>9,} {r['query_s']:7.2f} "
            f"{r['query_s'] * n / r['q']:24.0f} {mib(r['peak_kib']):9.0f} {n * 128 * 4 / 2**20:11.0f} "
            f"{mib(r['peak_kib'] - r['base_kib']):15.0f}"
        )
    print("hnsw at 1,000,000: not run (its build alone would take several minutes on 2 cores)")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(CHILDREN[sys.argv[2]](sys.argv[3:])))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000", help="catalogue sizes, comma-separated")
    ap.add_argument("--recommend", action="store_true", help="also measure exact / HNSW top-k memory")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    args = ap.parse_args()
    try:
        sizes = sorted(int(s) for s in args.sizes.split(","))
    except ValueError:
        ap.error(f"--sizes: not a comma-separated list of integers: {args.sizes!r}")
    if not sizes or sizes[0] < 100:
        ap.error("--sizes: each size must be >= 100 (1 % of it is the new tracks)")
    started = time.monotonic()
    catalogue_rows(sizes, args.out / "scale")
    if args.recommend:
        recommend_rows()
    print(f"\ntotal {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    main()
