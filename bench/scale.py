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
Optional (``--spark-plan SIZES``, e.g. 10000,100000): ingest's planning from a simulated
catalogue written as files (N empty audio files + N/100 new ones, labels.csv, a manifest, a mel
index of N/1000 parts and an ingest rejects file, all local), each way in a fresh process with a
``local[2]`` Spark session:
  lists           the driver-list planning ingest did before (``list_tracks``, ``index_dataset``
                  collected into ``track_index``, ``load_labels``, ``read_manifest``,
                  ``previous_rejects``, ``plan_ingest``) and its manifest rewrite
                  (``write_manifest`` of the kept rows + one fresh row per new track);
  spark           ``ingest_plan.plan_on_spark`` + the tasks built on the executors (counted,
                  not collected) + ``write_manifest_parts`` and its commit.
Then score's nightly planning from the same files (a score table of model "bench" with the mel
parts' two index columns, score rejects of the same sources), each way in a fresh process too:
  lists           the driver lists score planned with before (``list_tracks``, the table's index
                  collected into a dict, ``read_manifest``, ``previous_rejects``, ``plan_score``);
  spark           ``score_plan.plan_on_spark`` + the tasks built on the executors (counted).
Both must plan exactly the N/100 new tracks. Reported: the driver Python process's peak RSS
above its RSS once Spark is up (the JVM is another process), planning and manifest seconds.

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
SCORE_MODEL = "bench"  # the simulated score table's model id


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


def sim_files(n: int, folder: Path) -> dict:
    """Write the simulated catalogue of ``--spark-plan`` under ``folder`` (not measured): the
    ingest state of a run that read tracks 0..n-1, plus n/100 new files in the listing."""
    import pyarrow as pa

    from genrecast.dataset import rejects_uri, scores_uri
    from genrecast.manifest import MANIFEST_ARROW_SCHEMA
    from genrecast.schema import rejects_table
    from genrecast.storage import Storage

    t = time.perf_counter()
    storage, cfg = Storage(), sim_config(folder)
    total = n + n // 100
    for g in GENRES:
        (folder / "audio" / g).mkdir(parents=True, exist_ok=True)
    for i in range(total):
        open(folder / "audio" / f"{sim_track(i)[0]}.mp3", "wb").close()
    with open(folder / "labels.csv", "w") as fh:
        fh.write("track_id,genre\n")
        fh.writelines(f"{tid},{genre}\n" for tid, _u, _s, _v, _h, genre, _st in map(sim_track, range(total)) if genre)
    listed = {e.uri: e for e in storage.list_entries(cfg.catalogue.audio_uri)}
    cols: dict[str, list] = {c: [] for c in MANIFEST_ARROW_SCHEMA.names}
    index: dict[str, list] = {"track_id": [], "audio_sha256": [], "genre": []}
    rejects = []
    for i in range(n):
        tid, _uri, _size, _version, sha, genre, status = sim_track(i)
        e = listed[str(folder / "audio" / f"{tid}.mp3")]
        row = (tid, e.uri, e.size, e.version, sha, genre, FKEY, status, 0)
        for c, v in zip(MANIFEST_ARROW_SCHEMA.names, row, strict=True):
            cols[c].append(v)
        if status == "ok":
            for c, v in (("track_id", tid), ("audio_sha256", sha), ("genre", genre)):
                index[c].append(v)
        else:
            rejects.append({"source_uri": e.uri, "stage": "ingest", "reason": "bench", "audio_sha256": sha,
                            "features_key": FKEY})  # fmt: skip
    mf = pa.Table.from_pydict({**cols, "updated_at": pa.array(cols["updated_at"], pa.int64())})
    storage.write_parquet(str(folder / "root/manifest/part-0.parquet"), mf.cast(MANIFEST_ARROW_SCHEMA))
    mels = folder / "root/datasets/mels"
    for j in range(0, len(index["track_id"]), FILE_TRACKS):
        part = pa.table({c: v[j : j + FILE_TRACKS] for c, v in index.items()})
        storage.write_parquet(str(mels / f"part-{j // FILE_TRACKS:05d}.parquet"), part)
    (mels / "_table.json").write_text(json.dumps({"version": 1, "features_key": FKEY}))
    storage.write_parquet(str(folder / "root/rejects/job=ingest/ingest-0.parquet"), rejects_table(rejects))
    # Score's state: model SCORE_MODEL scored what ingest read (its table's two index columns are
    # the mel parts' own) and rejected what ingest rejected.
    scores = scores_uri(cfg, SCORE_MODEL)
    for f in sorted(mels.glob("part-*.parquet")):
        storage.write_parquet(f"{scores}/{f.name}", storage.read_parquet(str(f), columns=["track_id", "audio_sha256"]))
    score_rejects = [{**r, "stage": "score"} for r in rejects]
    storage.write_parquet(f"{rejects_uri(cfg, 'score', SCORE_MODEL)}/score-0.parquet", rejects_table(score_rejects))
    return {"s": time.perf_counter() - t, "files": total}


def sim_config(folder: Path):  # noqa: ANN201 (genrecast.config imported in the child only)
    from genrecast.config import Config

    cfg = Config()
    cfg.storage.root = str(folder / "root")
    cfg.catalogue.audio_uri = str(folder / "audio")
    cfg.catalogue.labels_uri = str(folder / "labels.csv")
    cfg.genres = list(GENRES)
    cfg.spark.conf = {"spark.driver.memory": "2g"}
    return cfg


def _spark_up(cfg):  # noqa: ANN001, ANN202
    from genrecast.spark import get_spark

    spark = get_spark(cfg)
    spark.sparkContext.parallelize(range(4), 2).map(lambda x: x).collect()  # Python workers up
    return spark


def child_spark_plan(n: int, folder: Path, way: str) -> dict:
    """Ingest's planning from the files of :func:`sim_files`: ``lists`` (the driver-list way)
    or ``spark`` (``genrecast.ingest_plan``). Peak RSS is the driver Python process's."""
    import genrecast.ingest_plan  # noqa: F401 (imported before the base RSS, as the other way's modules)
    from genrecast import commit, lease
    from genrecast.catalogue import Track, list_tracks, load_labels
    from genrecast.dataset import index_dataset, manifest_uri, mels_uri, previous_rejects, rejects_uri
    from genrecast.ingest import plan_ingest, track_index
    from genrecast.manifest import Entry, read_manifest, write_manifest
    from genrecast.storage import Storage

    cfg, storage, new = sim_config(folder), Storage(), n // 100
    spark = _spark_up(cfg)
    base = _status_kib("VmRSS:")
    run_id = commit.new_run_id()
    out_uri = str(folder / f"manifest-out-{way}")
    t = time.perf_counter()
    if way == "lists":
        tracks = [t for t in list_tracks(storage, cfg.catalogue.audio_uri, ["mp3"]) if isinstance(t, Track)]
        index = track_index(index_dataset(spark, cfg, commit.table_files(storage, mels_uri(cfg))))
        labels, _rejects = load_labels(storage, cfg.catalogue.labels_uri, cfg.genres)
        listed_ids = {t.track_id for t in tracks}
        gone = sum(1 for tid in index if tid not in listed_ids)
        manifest = read_manifest(storage, manifest_uri(cfg))
        _files, rejected_shas, _keys = previous_rejects(storage, rejects_uri(cfg, "ingest"), "ingest-", FKEY)
        ds_key = commit.read_state(storage, mels_uri(cfg)).get("features_key")
        plan = plan_ingest(tracks, labels, index, manifest, rejected_shas, FKEY, ds_key)
        plan_s = time.perf_counter() - t
        fetch, listed = len(plan.tasks), len(tracks)
        assert all(int(task.track_id.rsplit("/t", 1)[1]) >= n for task in plan.tasks)
        t = time.perf_counter()
        fresh = [Entry(task.track_id, task.uri, 0, "v", "sha", task.genre, FKEY, "ok") for task in plan.tasks]
        with lease.hold(storage, cfg, run_id, "bench", out_uri) as leases:
            assert write_manifest(storage, out_uri, run_id, plan.kept + fresh, manifest, leases[out_uri])
        rows = len(plan.kept) + len(fresh)
    else:
        from genrecast import ingest_plan as sp
        from genrecast import plan_frames as pf

        with pf.planning_conf(spark):
            plan = sp.plan_on_spark(spark, storage, cfg, run_id, FKEY, False, False, False, [])
        tasks = pf.task_rdd(plan.decided, max(1, new // 16))
        fetch = tasks.count()
        assert tasks.filter(lambda task: int(task.track_id.rsplit("/t", 1)[1]) < n).isEmpty()
        plan_s = time.perf_counter() - t
        listed, gone = plan.counts.listed, plan.gone
        t = time.perf_counter()
        outcome = dict(tasks.map(lambda task: (task.track_id, ("sha", "ok"))).collect())  # the change only
        parts, rows = sp.write_manifest_parts(spark, storage, plan.decided, outcome, FKEY, f"{out_uri}/_tmp/{run_id}")
        with lease.hold(storage, cfg, run_id, "bench", out_uri) as leases:
            adds = [(p, f"{out_uri}/part-{run_id}-{i:05d}.parquet") for i, p in enumerate(parts)]
            commit.commit(storage, out_uri, run_id, adds, [], leases[out_uri])
        storage.delete_prefix(commit.tmp_uri(manifest_uri(cfg), run_id, "plan"))
    manifest_s = time.perf_counter() - t
    assert (fetch, listed, gone, rows) == (new, n + new, 0, n + new), (fetch, listed, gone, rows)
    spark.stop()
    return {"s": plan_s, "manifest_s": manifest_s, "base_kib": base, "peak_kib": hwm_kib(), "tasks": fetch}


def child_score_plan(n: int, folder: Path, way: str) -> dict:
    """Score's nightly planning from the files of :func:`sim_files`: ``lists`` (the driver
    lists score planned with before: ``list_tracks``, the table's index collected into a dict,
    ``read_manifest``, ``previous_rejects``, ``plan_score``) or ``spark``
    (``genrecast.score_plan``). Peak RSS is the driver Python process's."""
    import genrecast.score_plan  # noqa: F401 (imported before the base RSS, as the other way's modules)
    from genrecast import commit
    from genrecast.catalogue import Track, list_tracks
    from genrecast.dataset import manifest_uri, previous_rejects, rejects_uri, scores_uri
    from genrecast.manifest import read_manifest
    from genrecast.score import REJECT_PREFIX, plan_score
    from genrecast.score_plan import _index_rows
    from genrecast.storage import Storage

    cfg, storage, new = sim_config(folder), Storage(), n // 100
    table, rj_uri = scores_uri(cfg, SCORE_MODEL), rejects_uri(cfg, "score", SCORE_MODEL)
    spark = _spark_up(cfg)
    base = _status_kib("VmRSS:")
    run_id = commit.new_run_id()
    t = time.perf_counter()
    if way == "lists":
        tracks = [t for t in list_tracks(storage, cfg.catalogue.audio_uri, ["mp3"]) if isinstance(t, Track)]
        files = commit.table_files(storage, table)
        index: dict[str, tuple[str | None, set[str]]] = {}
        for tid, sha, f in spark.sparkContext.parallelize(files, len(files)).flatMap(
            lambda f: _index_rows(storage, f)
        ).collect():
            index.setdefault(tid, (sha, set()))[1].add(f)
        listed_ids = {t.track_id for t in tracks}
        gone = sum(1 for tid in index if tid not in listed_ids)
        _files, rejected_shas, _keys = previous_rejects(storage, rj_uri, REJECT_PREFIX, FKEY)
        plan = plan_score(tracks, index, read_manifest(storage, manifest_uri(cfg)), rejected_shas)
        fetch, listed = len(plan.tasks), len(tracks)
        assert all(int(task.track_id.rsplit("/t", 1)[1]) >= n for task in plan.tasks)
    else:
        from genrecast import plan_frames as pf
        from genrecast import score_plan as sp

        with pf.planning(spark, storage, commit.tmp_uri(table, run_id, "plan")) as frames:
            plan = sp.plan_on_spark(spark, storage, cfg, table, rj_uri, None, run_id, FKEY, False, False, frames)
            tasks = pf.task_rdd(plan.decided, max(1, new // 16))
            fetch = tasks.count()
            assert tasks.filter(lambda task: int(task.track_id.rsplit("/t", 1)[1]) < n).isEmpty()
        listed, gone = plan.counts.listed, plan.gone
    plan_s = time.perf_counter() - t
    assert (fetch, listed, gone) == (new, n + new, 0), (fetch, listed, gone)
    spark.stop()
    return {"s": plan_s, "manifest_s": 0.0, "base_kib": base, "peak_kib": hwm_kib(), "tasks": fetch}


CHILDREN = {
    "score-plan": lambda a: child_score_plan(int(a[0]), Path(a[1]), a[2]),
    "sim-files": lambda a: sim_files(int(a[0]), Path(a[1])),
    "spark-plan": lambda a: child_spark_plan(int(a[0]), Path(a[1]), a[2]),
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


def spark_plan_rows(sizes: list[int], out: Path, jobs: list[str]) -> None:
    results: dict[tuple[str, str, int], dict] = {}
    for n in sizes:
        folder = out / f"files-n{n}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        r = run("sim-files", n, folder)
        print(f"  simulated catalogue N={n}: {r['files']} files written in {r['s']:.0f}s", file=sys.stderr, flush=True)
        for job in jobs:
            for way in ("lists", "spark"):
                results[job, way, n] = r = run("spark-plan" if job == "ingest" else "score-plan", n, folder, way)
                print(f"  {job} planning ({way}) N={n}: {r['s']:.1f}s, peak {mib(r['peak_kib']):.0f} MiB",
                      file=sys.stderr, flush=True)  # fmt: skip
        shutil.rmtree(folder)
    n0 = sizes[0]
    for job in jobs:
        what = {"ingest": "Ingest planning", "score": "Score nightly planning"}[job]
        print(f"\n{what} from files (+1 % new), local[2] Spark; driver Python RSS (ratios vs N="
              f"{n0:,} in this run; spark/lists: the two ways at the same N)")  # fmt: skip
        print(f"{'way':6} {'N':>9} {'plan s':>7} {'manifest s':>10} {'peak MiB':>9} {'above base MiB':>14} "
              f"{'B/track':>8} {'tasks':>6} {'N x':>5} {'time x':>7} {'RSS x':>6} {'spark/lists s':>13} "
              f"{'spark/lists RSS':>15}")  # fmt: skip
        for way in ("lists", "spark"):
            r0 = results[job, way, n0]
            above0 = r0["peak_kib"] - r0["base_kib"]
            for n in sizes:
                r, lists = results[job, way, n], results[job, "lists", n]
                above = r["peak_kib"] - r["base_kib"]
                vs = (
                    f"{(r['s'] + r['manifest_s']) / (lists['s'] + lists['manifest_s']):13.2f} "
                    f"{above / max(1, lists['peak_kib'] - lists['base_kib']):15.2f}"
                )
                print(
                    f"{way:6} {n:>9,} {r['s']:7.1f} {r['manifest_s']:10.1f} {mib(r['peak_kib']):9.0f} "
                    f"{mib(above):14.0f} {above * 1024 / n:8.0f} {r['tasks']:>6} {n / n0:5.0f} "
                    f"{r['s'] / r0['s']:7.1f} {above / max(1, above0):6.1f} {vs}"
                )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(CHILDREN[sys.argv[2]](sys.argv[3:])))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000", help="catalogue sizes, comma-separated")
    ap.add_argument("--recommend", action="store_true", help="also measure exact / HNSW top-k memory")
    ap.add_argument("--spark-plan", default="", metavar="SIZES",
                    help="also time ingest's and score's planning from simulated files: driver lists vs Spark")
    ap.add_argument("--only-spark-plan", action="store_true", help="skip the in-memory catalogue steps")
    ap.add_argument("--plan-jobs", default="ingest,score", help="the jobs --spark-plan measures (comma-separated)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    args = ap.parse_args()
    try:
        sizes = sorted(int(s) for s in args.sizes.split(","))
    except ValueError:
        ap.error(f"--sizes: not a comma-separated list of integers: {args.sizes!r}")
    if not sizes or sizes[0] < 100:
        ap.error("--sizes: each size must be >= 100 (1 % of it is the new tracks)")
    try:
        plan_sizes = sorted(int(s) for s in args.spark_plan.split(",")) if args.spark_plan else []
    except ValueError:
        ap.error(f"--spark-plan: not a comma-separated list of integers: {args.spark_plan!r}")
    plan_jobs = args.plan_jobs.split(",")
    if not set(plan_jobs) <= {"ingest", "score"}:
        ap.error(f"--plan-jobs: ingest and/or score, not {args.plan_jobs!r}")
    if any(n < 100 for n in plan_sizes):
        ap.error("--spark-plan: each size must be >= 100 (1 % of it is the new tracks)")
    started = time.monotonic()
    if not args.only_spark_plan:
        catalogue_rows(sizes, args.out / "scale")
    if plan_sizes:
        spark_plan_rows(plan_sizes, args.out / "scale", plan_jobs)
    if args.recommend:
        recommend_rows()
    print(f"\ntotal {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    main()
