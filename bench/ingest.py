"""Ingest benchmark: the seeds' single-process librosa loop vs `genrecast ingest` on local[2].

Both process the same N generated 30 s tracks (wav/mp3/ogg mixed) into 128 x 130 log-mel clips.
  (a) baseline: librosa.load -> melspectrogram -> power_to_db -> one .npy per clip, one process.
  (b) genrecast: run_ingest --full on local[2] (Spark, Petastorm dataset), same machine.
Prints a table with tracks/s, x real time per core and the ratio b/a. Usage:
  .venv/bin/python bench/ingest.py [--tracks 120] [--out bench/out]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 22050
SECONDS = 30.0
FORMATS = [("wav", "WAV", "PCM_16"), ("mp3", "MP3", "MPEG_LAYER_III"), ("ogg", "OGG", "VORBIS")]


def synth_track(i: int) -> np.ndarray:
    """A deterministic 30 s 'song': chords with harmonics, a beat, a little noise. Stereo 44.1 kHz,
    so decode, downmix and resampling all do real work."""
    rng = np.random.default_rng(i)
    sr = 44100
    t = np.arange(int(SECONDS * sr)) / sr
    y = np.zeros_like(t)
    root = 110 * 2 ** (rng.integers(0, 12) / 12)
    for k, ratio in enumerate([1, 1.25, 1.5, 2]):
        for h in range(1, 5):
            y += 0.08 / h * np.sin(2 * np.pi * root * ratio * h * t + k)
    bpm = rng.uniform(70, 160)
    beat = (np.sin(2 * np.pi * bpm / 60 * t) > 0.95).astype(float)
    y += 0.3 * beat * rng.normal(0, 1, t.size)
    y /= np.abs(y).max() * 1.2
    return np.stack([y, np.roll(y, 100)], axis=1).astype(np.float32)


def make_catalogue(folder: Path, n: int) -> list[Path]:
    paths = []
    for i in range(n):
        ext, fmt, subtype = FORMATS[i % len(FORMATS)]
        path = folder / f"g{i % 4}" / f"track{i:04d}.{ext}"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, synth_track(i), 44100, format=fmt, subtype=subtype)
        paths.append(path)
    return paths


def baseline(paths: list[Path], out: Path) -> tuple[float, float]:
    """The seeds' way. Returns (wall seconds, audio seconds)."""
    import librosa

    librosa.feature.melspectrogram(y=np.zeros(4096, np.float32), sr=SR)  # imports/caches off the clock
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    audio = 0.0
    start = time.perf_counter()
    for path in paths:
        y, _ = librosa.load(path, sr=SR, mono=True)
        audio += y.size / SR
        mel = librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=SR, n_fft=2048, hop_length=512, n_mels=128))
        for c in range(mel.shape[1] // 130):
            np.save(out / f"{path.stem}_{c}.npy", mel[:, c * 130 : (c + 1) * 130])
    return time.perf_counter() - start, audio


def genrecast_ingest(folder: Path, root: Path, cores: int) -> tuple[list[tuple[float, float, dict]], float]:
    """Two `--full` runs in one Spark application: cold (fresh Python workers: imports, caches)
    and warm (workers reused). Returns ([(job wall s, audio s, executor stage s)] * 2, Spark start s)."""
    from genrecast.config import load_config
    from genrecast.ingest import run_ingest
    from genrecast.spark import get_spark

    shutil.rmtree(root, ignore_errors=True)
    conf = root.parent / "bench.yaml"
    conf.write_text(
        f"spark: {{master: 'local[{cores}]'}}\nstorage: {{root: {root}}}\n"
        f"catalogue: {{audio_uri: {folder}, labels_uri: null}}\n"
    )
    cfg = load_config(conf)
    t0 = time.perf_counter()
    spark = get_spark(cfg)
    started = time.perf_counter() - t0
    runs = []
    try:
        for _ in range(2):
            summary = run_ingest(cfg, spark, full=True)
            runs.append((summary.wall_seconds, summary.audio_seconds, dict(summary.stage_seconds)))
    finally:
        spark.stop()
    return runs, started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=120)
    parser.add_argument("--cores", type=int, default=2, help="local[N] for genrecast")
    parser.add_argument("--out", type=Path, default=Path("bench/out"))
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    out = args.out.resolve()
    t = time.perf_counter()
    paths = make_catalogue(out / "catalogue", args.tracks)
    print(f"catalogue: {len(paths)} x {SECONDS:.0f}s tracks (wav/mp3/ogg, 44.1 kHz stereo) ready in "
          f"{time.perf_counter() - t:.1f}s", flush=True)

    a_wall, a_audio = baseline(paths, out / "baseline_npy")
    (cold, warm), b_start = genrecast_ingest(out / "catalogue", out / "genrecast", args.cores)
    rows = [
        ("(a) librosa loop, 1 process", 1, a_wall, a_audio),
        (f"(b) genrecast ingest local[{args.cores}], cold job", args.cores, cold[0], cold[1]),
        (f"(b) same, plus Spark start ({b_start:.1f}s)", args.cores, cold[0] + b_start, cold[1]),
        (f"(b) genrecast ingest local[{args.cores}], warm job", args.cores, warm[0], warm[1]),
    ]
    print(f"\n{'method':<44} {'cores':>5} {'wall s':>8} {'tracks/s':>9} {'x RT/core':>10} {'vs (a)':>7}")
    for name, cores, wall, audio in rows:
        print(f"{name:<44} {cores:>5} {wall:>8.2f} {len(paths) / wall:>9.2f} {audio / wall / cores:>10.0f} "
              f"{a_wall / wall:>6.2f}x")
    stages = warm[2]
    total = sum(stages.values())
    if total:
        share = ", ".join(f"{k} {v:.1f}s ({100 * v / total:.0f}%)" for k, v in sorted(stages.items()))
        print(f"\nwarm job, executor time by stage (summed over tasks): {share}")
        print(f"per-track executor work: {1000 * total / len(paths):.0f} ms (genrecast) vs "
              f"{1000 * a_wall / len(paths):.0f} ms (librosa loop), audio x real time per core: "
              f"{warm[1] / total:.0f} vs {a_audio / a_wall:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
