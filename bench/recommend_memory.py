"""Recommend memory per executor: the catalogue's search arrays as mapped files (what recommend
does) against pickled Spark broadcasts (what it did before), at n catalogue vectors.

Per n (default 100k and 1M; 128-d float32 unit rows) and per way of shipping, a fresh process
starts Spark local[CORES] (one executor with CORES Python workers, like one cluster executor),
then runs CORES recommend tasks at once, each searching QUERIES query rows against all n with
exact search (k 10), and reports what each Python worker holds at the end of its task:
  files      ``recommend._query_bucket``, the real task: vectors / keys / ids / index from
             ``search_files.shipped`` (SparkContext.addFile, np.load mmap, Arrow memory_map).
  broadcast  the previous code path, rebuilt here: ``sc.broadcast`` of the matrix, the keys and
             an object array of ids; the task takes ``.value`` of each and runs the same search.
Columns: the Python worker's peak RSS (VmHWM) and, at the task's end, its private (RssAnon) and
file-backed (RssFile: the mapped pages, shared by every worker on the machine through the page
cache) resident memory, each minus the same figure of the idle worker (a warm-up task);
the driver process's peak RSS (Python) and the JVM's (in local mode the driver and executor
JVM are one process: it holds the broadcast's blocks). The search itself is sized by QUERIES,
not n: at 1M x 1M a full exact search is hours on 2 cores; the memory does not depend on it.

Usage: .venv/bin/python bench/recommend_memory.py [--sizes 100000,1000000] [--cores 2] [--queries 256]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DIM, K = 128, 10


def status_kib(key: str, pid: int | str = "self") -> int:
    return next(int(line.split()[1]) for line in open(f"/proc/{pid}/status") if line.startswith(key))


def worker_memory() -> dict[str, int]:
    return {key: status_kib(f"{key}:") for key in ("VmRSS", "VmHWM", "RssAnon", "RssFile")}


def child(mode: str, n: int, cores: int, queries: int) -> dict:
    import numpy as np
    import pyarrow as pa
    from pyspark.sql import SparkSession

    from genrecast.neighbours import exact_topk, l2_normalise
    from genrecast.neighbours_table import BucketJob, catalogue_exclusions
    from genrecast.recommend import _query_bucket
    from genrecast.recommend_nightly import neighbours_part
    from genrecast.search_files import shipped
    from genrecast.storage import Storage

    spark = (
        SparkSession.builder.master(f"local[{cores}]")
        .config("spark.python.worker.reuse", "true")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.memory", "4g")
        .getOrCreate()
    )
    sc = spark.sparkContext
    jvm_pid = sc._jvm.java.lang.ProcessHandle.current().pid()
    # Warm-up: start the workers (one per core) and import what the task imports.
    warm = sc.parallelize(range(cores), cores).map(lambda _: (os.getpid(), _warm())).collect()
    base = dict(warm)

    # Made in blocks of float32, so the driver's peak is the matrix, not the generator's temporaries.
    rng, x = np.random.default_rng(0), np.empty((n, DIM), np.float32)
    for start in range(0, n, 100_000):
        x[start : start + 100_000] = l2_normalise(rng.standard_normal((min(100_000, n - start), DIM), np.float32))
    keys = np.arange(n, dtype=np.int64)
    ids = [f"genre{i % 10}/track-{i:08d}" for i in range(n)]
    jobs = [(b, np.arange(b, n, max(1, n // queries))[:queries]) for b in range(cores)]
    out_dir = tempfile.mkdtemp(prefix="bench-recmem-")
    t0 = time.perf_counter()
    if mode == "files":
        args = {"k": K, "model_id": "bench", "table_uri": out_dir, "run_id": "bench", "storage": Storage()}
        with shipped(sc, "bench", x, keys, ids) as files:
            job = BucketJob(files, buckets=cores, cpus=1, **args)

            def task(j):
                _query_bucket(job, j[0], j[1])
                return os.getpid(), worker_memory()

            got = sc.parallelize(jobs, cores).map(task).collect()
    else:
        bx, bk, bi = sc.broadcast(x), sc.broadcast(keys), sc.broadcast(np.asarray(ids, dtype=object))

        def task(j):
            from threadpoolctl import threadpool_limits

            rows = j[1]
            vectors, sha_keys, track_ids = bx.value, bk.value, bi.value
            with threadpool_limits(limits=1):
                idx, sim = exact_topk(vectors[rows], vectors, K, catalogue_exclusions(rows, sha_keys))
            neighbours_part(rows, idx, sim, pa.array(track_ids.tolist()), "bench")
            return os.getpid(), worker_memory()

        got = sc.parallelize(jobs, cores).map(task).collect()
    seconds = time.perf_counter() - t0
    jvm_hwm = status_kib("VmHWM:", jvm_pid)
    spark.stop()
    workers = []
    for pid, mem in got:
        b = base.get(pid) or {key: 0 for key in mem}
        peak, anon, file = mem["VmHWM"] - b["VmRSS"], mem["RssAnon"] - b["RssAnon"], mem["RssFile"] - b["RssFile"]
        workers.append({"peak": peak, "anon": anon, "file": file})
    return {
        "mode": mode,
        "n": n,
        "seconds": seconds,
        "workers": workers,
        "driver_peak": status_kib("VmHWM:"),
        "jvm_peak": jvm_hwm,
        "matrix_kib": x.nbytes // 1024,
    }


def _warm() -> dict[str, int]:
    import numpy as np  # noqa: F401
    import pyarrow  # noqa: F401

    import genrecast.recommend  # noqa: F401

    return worker_memory()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--queries", type=int, default=256, help="query rows per task")
    ap.add_argument("--child", nargs=2, metavar=("MODE", "N"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child[0], int(a.child[1]), a.cores, a.queries)))
        return 0
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'lib'}:{os.environ.get('PYTHONPATH', '')}"}
    env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    rows = []
    for n in [int(s) for s in a.sizes.split(",")]:
        for mode in ("broadcast", "files"):
            cmd = [
                sys.executable,
                __file__,
                "--child",
                mode,
                str(n),
                "--cores",
                str(a.cores),
                "--queries",
                str(a.queries),
            ]
            res = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if res.returncode:
                print(res.stderr[-3000:], file=sys.stderr)
                return 1
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    mib = 1024
    print(
        f"recommend memory per Python worker: {a.cores} tasks at once, {a.queries} queries each, exact k={K}, dim {DIM}"
    )
    head = (
        f"{'n':>9} {'shipped as':<10} {'matrix':>7} {'worker peak':>11} {'private':>8} {'mapped':>7} "
        f"{'x matrix':>8} {'driver':>7} {'JVM':>6} {'s':>6}"
    )
    print(head)
    for r in rows:
        w = max(r["workers"], key=lambda v: v["peak"])
        print(
            f"{r['n']:>9} {r['mode']:<10} {r['matrix_kib'] // mib:>5}Mi {w['peak'] // mib:>9}Mi "
            f"{w['anon'] // mib:>6}Mi "
            f"{w['file'] // mib:>5}Mi {w['peak'] / r['matrix_kib']:>8.2f} {r['driver_peak'] // mib:>5}Mi "
            f"{r['jvm_peak'] // mib:>4}Mi {r['seconds']:>6.1f}"
        )
    by = {(r["n"], r["mode"]): r for r in rows}
    for n in sorted({r["n"] for r in rows}):
        old, new = by[(n, "broadcast")], by[(n, "files")]
        anon = [sum(w["anon"] for w in r["workers"]) for r in (old, new)]
        # What the executor's Python workers take from the machine: their private pages plus
        # one copy of the mapped files (the page cache holds each page once for all of them).
        total = [anon[i] + max(w["file"] for w in r["workers"]) for i, r in enumerate((old, new))]
        print(
            f"n={n}: private memory of the {a.cores} workers {anon[0] // mib} -> {anon[1] // mib} MiB; "
            f"with the mapped files counted once {total[0] // mib} -> {total[1] // mib} MiB "
            f"(files/broadcast {total[1] / total[0]:.2f}); "
            f"JVM peak {old['jvm_peak'] // mib} -> {new['jvm_peak'] // mib} MiB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
