"""Training memory benchmark: one TF worker's peak RSS and the driver's peak RSS during
evaluation, on a synthetic mel dataset of 1x, 2x and 8x a base size, for this code and for the
code before streaming (``--old-rev``), in the same run.

The dataset is written directly as Petastorm rows (random float32 (n_mels, clip_frames) clips
with a per-genre band offset, no audio), committed with its ``_common_metadata`` as ingest does,
with a labels.csv (one artist per 2 tracks of a genre, so the split is by artist as on the demo). The base
is the demo catalogue's size: 200 tracks of 10 clips (~130 MiB of mels). Each (variant, size)
trains 1 epoch in a fresh process (``--child``) whose ``PYTHONPATH`` puts that variant's
``lib/`` first, so its Spark Python workers and TF worker run that code:

- TF worker: ``VmHWM`` of the ``genrecast.train_worker`` process (started by the barrier task
  with ``subprocess.run``), sampled from /proc every 0.1 s until it exits (VmHWM only grows).
- driver, evaluation: ``train.evaluate`` wrapped; the process's peak is reset before it
  (``/proc/self/clear_refs`` 5) and ``VmHWM`` minus the RSS before it is what evaluation added.

Usage: .venv/bin/python bench/train_memory.py [--sizes 1,2,8] [--base-tracks 200] [--old-rev REV]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out" / "train_memory"
OLD_REV = "c831801"  # the last commit before streamed training / evaluation
GENRES = ["g0", "g1", "g2", "g3"]


def status_kib(pid: int | str, key: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(key + ":"))


def write_dataset(root: Path, tracks: int, clips: int) -> None:
    """``tracks`` labelled tracks of ``clips`` synthetic clips under ``root`` (config, labels,
    committed mel dataset), unless already there."""
    from genrecast import commit, lease
    from genrecast.config import load_config
    from genrecast.dataset import mel_rows_per_group, mels_uri
    from genrecast.features import features_key
    from genrecast.ingest import FEATURES_KEY, stage_metadata
    from genrecast.schema import MEL_COLUMNS, mel_rows_table, mel_schema
    from genrecast.spark import get_spark
    from genrecast.storage import Storage

    conf = root / "conf.yaml"
    if (root / "done").exists():
        return
    root.mkdir(parents=True, exist_ok=True)
    conf.write_text(
        f"storage: {{root: {root / 'out'}}}\n"
        f"catalogue: {{audio_uri: {root / 'audio'}, labels_uri: {root / 'labels.csv'}}}\n"
        f"genres: {GENRES}\n"
        "spark: {master: 'local[2]', conf: {spark.driver.memory: 2g}}\n"
        "train: {workers: 1, epochs: 1, batch_size: 32}\n"
    )
    cfg = load_config(conf)
    storage = Storage.from_config(cfg)
    schema, audio = mel_schema(cfg.audio), cfg.audio
    rng = np.random.default_rng(0)
    ids = [f"{GENRES[i % len(GENRES)]}/t{i:06d}" for i in range(tracks)]
    (root / "labels.csv").write_text(
        "track_id,genre,artist\n"
        + "".join(f"{t},{t.split('/')[0]},{t.split('/')[0]}-a{i // 8}\n" for i, t in enumerate(ids))
    )
    run_id = commit.new_run_id()
    ds_uri = mels_uri(cfg)
    add = []
    per_file = cfg.ingest.tracks_per_partition
    for part, start in enumerate(range(0, tracks, per_file)):
        cols: dict[str, list] = {k: [] for k in MEL_COLUMNS}
        for t in ids[start : start + per_file]:
            genre = t.split("/")[0]
            offset = np.linspace(-20, 20, audio.n_mels, dtype=np.float32)[:, None] * (GENRES.index(genre) - 1.5) / 2
            for c in range(clips):
                mel = (rng.standard_normal((audio.n_mels, audio.clip_frames), np.float32) * 10 - 40 + offset).astype(
                    np.float32
                )
                for k, v in (("track_id", t), ("clip_index", c), ("genre", genre), ("mel", mel)):
                    cols[k].append(v)
                cols["source_uri"].append(f"{root}/audio/{t}.wav")
                cols["audio_sha256"].append(hashlib.sha256(t.encode()).hexdigest())
        table = mel_rows_table(schema, *(cols[k] for k in cols))
        tmp = commit.tmp_uri(ds_uri, run_id, f"part-{part:05d}.parquet")
        storage.write_parquet(tmp, table, row_group_size=mel_rows_per_group(audio, cfg.ingest))
        add.append((tmp, f"{ds_uri}/part-{run_id}-{part:05d}.parquet"))
    spark = get_spark(cfg)
    with lease.hold(storage, cfg, run_id, "bench", ds_uri) as leases:
        meta_add, state = stage_metadata(spark, storage, cfg, run_id, add, [])
        state = {**state, FEATURES_KEY: features_key(cfg.audio, cfg.ingest)}
        commit.commit(storage, ds_uri, run_id, add + meta_add, [], leases[ds_uri], state=state)
    spark.stop()
    (root / "done").write_text("")


def child(conf: str) -> dict[str, Any]:
    """One training run of 1 epoch in this process (the variant's code is first on sys.path)."""
    import genrecast.train as train
    from genrecast.config import load_config
    from genrecast.spark import get_spark

    cfg = load_config(conf)
    spark = get_spark(cfg)
    worker_hwm: dict[int, int] = {}
    done = threading.Event()

    def ours(pid: str) -> bool:  # a descendant of this process (not another job's TF worker)
        while pid not in ("0", "1"):
            if int(pid) == os.getpid():
                return True
            pid = str(status_kib(pid, "PPid"))
        return False

    def sample() -> None:  # VmHWM of this run's genrecast.train_worker processes, until it ends
        while not done.is_set():
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as fh:
                        if b"genrecast.train_worker" not in fh.read() or not ours(pid):
                            continue
                    worker_hwm[int(pid)] = max(worker_hwm.get(int(pid), 0), status_kib(pid, "VmHWM"))
                except (OSError, StopIteration, ValueError):
                    pass
            time.sleep(0.1)

    evaluation: dict[str, float] = {}
    real_evaluate = train.evaluate

    def measured_evaluate(*args: Any, **kwargs: Any) -> Any:
        before = status_kib("self", "VmRSS")
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset this process's VmHWM to its current RSS
        t0 = time.perf_counter()
        out = real_evaluate(*args, **kwargs)
        evaluation.update(
            seconds=time.perf_counter() - t0,
            rss_before_mib=before / 1024,
            peak_mib=status_kib("self", "VmHWM") / 1024,
        )
        return out

    train.evaluate = measured_evaluate
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    result = train.run_train(cfg, spark, workers=1, epochs=1)
    seconds = time.perf_counter() - t0
    done.set()
    thread.join()
    spark.stop()
    return {
        "worker_peak_mib": max(worker_hwm.values()) / 1024 if worker_hwm else None,
        "worker_processes": len(worker_hwm),
        "eval": evaluation,
        "seconds": seconds,
        "test_tracks": result.metrics["cnn_track"]["n"],
        "test_clips": result.metrics["cnn_clip"]["n"],
        "epoch_seconds": result.metrics["training"]["seconds_per_epoch"],
    }


def old_lib(rev: str) -> Path:
    """``lib/`` of commit ``rev`` (git archive), extracted once under bench/out."""
    dest = OUT / f"lib-{rev}"
    if not (dest / "lib" / "genrecast" / "train.py").exists():
        dest.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "lib"], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest / "lib"


def run_child(lib: Path, conf: Path) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(lib), os.environ.get("PYTHONPATH", "")]))
    env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(conf)], env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        sys.exit(f"child run failed ({lib}, {conf}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,2,8", help="multiples of the base size")
    parser.add_argument("--base-tracks", type=int, default=200)
    parser.add_argument("--clips", type=int, default=10, help="clips per track")
    parser.add_argument("--old-rev", default=OLD_REV, help="commit of the code before streaming ('' to skip)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return
    variants = {"new": REPO / "lib"}
    if args.old_rev:
        variants["old"] = old_lib(args.old_rev)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        tracks = args.base_tracks * size
        root = OUT / f"x{size}-{tracks}x{args.clips}"
        t0 = time.perf_counter()
        write_dataset(root, tracks, args.clips)
        mib = sum(f.stat().st_size for f in (root / "out" / "datasets" / "mels").glob("*.parquet")) / 2**20
        print(f"x{size}: {tracks} tracks, {tracks * args.clips} clips, {mib:.0f} MiB ({time.perf_counter() - t0:.0f}s)")
        for name, lib in variants.items():
            r = run_child(lib, root / "conf.yaml")
            rows.append({"size": size, "variant": name, "tracks": tracks, "mib": mib, **r})
            ev = r["eval"]
            print(
                f"  {name}: worker peak {r['worker_peak_mib']:.0f} MiB; evaluation on the driver "
                f"+{ev['peak_mib'] - ev['rss_before_mib']:.0f} MiB (peak {ev['peak_mib']:.0f}), "
                f"{ev['seconds']:.1f}s; {r['test_tracks']} test tracks; run {r['seconds']:.0f}s "
                f"({r['worker_processes']} TF worker process(es) seen)",
                flush=True,
            )
    base = {r["variant"]: r for r in rows if r["size"] == rows[0]["size"]}
    print(
        f"\n{'size':>4} {'tracks':>6} {'clips':>6} {'MiB':>5} {'code':>4} | {'TF worker peak':>15} {'vs 1x':>6} | "
        f"{'driver eval +MiB':>16} {'vs 1x':>6} {'eval s':>6} | {'epoch s':>7} {'run s':>5}"
    )
    for r in rows:
        b = base[r["variant"]]
        grow = r["eval"]["peak_mib"] - r["eval"]["rss_before_mib"]
        grow0 = b["eval"]["peak_mib"] - b["eval"]["rss_before_mib"]
        print(
            f"{r['size']:>3}x {r['tracks']:>6} {r['tracks'] * args.clips:>6} {r['mib']:>5.0f} {r['variant']:>4} | "
            f"{r['worker_peak_mib']:>11.0f} MiB {r['worker_peak_mib'] / b['worker_peak_mib']:>6.2f} | "
            f"{grow:>12.0f} MiB {grow / max(grow0, 1e-9):>6.2f} {r['eval']['seconds']:>6.1f} | "
            f"{r['epoch_seconds']:>7.0f} {r['seconds']:>5.0f}"
        )
    (OUT / "results.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
