"""Score benchmark: `genrecast score --mode backfill` on local[N] vs `classify` in one process.

Both score the same N generated 30 s tracks (bench/ingest.py's catalogue: wav/mp3/ogg, 44.1 kHz
stereo, so decode, downmix and resampling do real work) with a tiny genre CNN trained here once
(1 epoch on 16 tracks; reused from <out>/score/ when present: accuracy is beside the point, the
model's size and the audio path are the same as a real one's).
  (a) classify_files in a fresh process, TensorFlow held to 1 thread: cold (imports + model
      load + every file) and warm (the same files again in that process).
  (b) run_score --mode backfill on local[N]: cold (fresh Spark; each Python worker imports
      TensorFlow and loads the model) and warm (a second backfill, workers reused).
Prints tracks per core-minute and the ratio to (a) warm. ``--variants`` runs the same for other
models (issue 15's option study), each trained here on the same 16 tracks with its own audio
profile and compared with the first variant's score rows in a last table:
  cnn         the genre CNN (train.backbone scratch, the default profile)
  pooled-k3   musicnn-msd, train.head pooled, train.pool_clips 3 (16 kHz / 96 mels)
  pooled-all  musicnn-msd, train.head pooled, every clip pooled
  pooled-k3-harmony  pooled-k3 with train.harmony (each track's harmony statistics: its whole
              audio's chroma, computed by score from the samples it decodes)
  pooled-k3-harmony-logistic  pooled-k3-harmony with train.classifier logistic (conf/backbone.yaml's recipe)
Usage:
  .venv/bin/python bench/score.py [--tracks 60] [--cores 2] [--out bench/out] [--retrain]
                                  [--variants cnn,pooled-k3,pooled-all]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import SECONDS, make_catalogue  # noqa: E402  (bench/ingest.py: the shared catalogue)

TRAIN_TRACKS = 16
BACKBONE_AUDIO = "audio: {sample_rate: 16000, n_fft: 512, hop_length: 256, n_mels: 96}\n"
# variant -> (its audio section, its train keys); "cnn" keeps bench/out/score/genrecast as before.
VARIANTS = {
    "cnn": ("", ""),
    "pooled-k3": (BACKBONE_AUDIO, ", backbone: musicnn-msd, head: pooled, pool_clips: 3"),
    "pooled-all": (BACKBONE_AUDIO, ", backbone: musicnn-msd, head: pooled"),
    "pooled-k3-harmony": (BACKBONE_AUDIO, ", backbone: musicnn-msd, head: pooled, pool_clips: 3, harmony: 48"),
    "pooled-k3-harmony-logistic": (
        BACKBONE_AUDIO,
        ", backbone: musicnn-msd, head: pooled, pool_clips: 3, harmony: 48, classifier: logistic",
    ),
}


def variant_root(out: Path, variant: str) -> Path:
    return out / "score" / ("genrecast" if variant == "cnn" else f"genrecast-{variant}")


def write_conf(path: Path, root: Path, audio: Path, labels: Path | None, cores: int, variant: str = "cnn") -> Path:
    audio_section, train_keys = VARIANTS[variant]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"spark: {{master: 'local[{cores}]'}}\nstorage: {{root: {root}}}\n"
        f"catalogue: {{audio_uri: {audio}, labels_uri: {labels or 'null'}}}\n{audio_section}"
        f"genres: [g0, g1, g2, g3]\ntrain: {{workers: 1, epochs: 1, batch_size: 32{train_keys}}}\n"
    )
    return path


def ensure_model(out: Path, cores: int, retrain: bool, variant: str = "cnn") -> str:
    """A model id under :func:`variant_root`, training one (ingest + 1 epoch) if needed."""
    from genrecast import registry
    from genrecast.config import load_config
    from genrecast.errors import ConfigError

    audio = out / "score" / "train_catalogue"
    paths = make_catalogue(audio, TRAIN_TRACKS)
    labels = out / "score" / "train_labels.csv"
    rows = [f"{p.relative_to(audio).with_suffix('').as_posix()},{p.parent.name}" for p in paths]
    labels.write_text("track_id,genre\n" + "\n".join(rows) + "\n")
    root = variant_root(out, variant)
    cfg = load_config(write_conf(out / "score" / f"train-{variant}.yaml", root, audio, labels, cores, variant))
    if not retrain:
        try:
            return registry.resolve_model_id(cfg, "latest")
        except ConfigError:
            pass
    from genrecast.ingest import run_ingest
    from genrecast.spark import get_spark
    from genrecast.train import run_train

    t = time.perf_counter()
    spark = get_spark(cfg)
    try:
        run_ingest(cfg, spark, full=True)
        model_id = run_train(cfg, spark, workers=1, epochs=1).model_id
    finally:
        spark.stop()
    print(f"trained model {model_id} in {time.perf_counter() - t:.0f}s", flush=True)
    return model_id


def classify_child(conf: str, model_id: str, paths_file: str) -> int:
    """Runs in a fresh process: time classify_files cold (imports, model load) and warm."""
    t0 = time.perf_counter()
    from genrecast.classify import classify_files
    from genrecast.config import load_config

    cfg = load_config(conf)
    paths = Path(paths_file).read_text().split("\n")
    cold = classify_files(cfg, paths, model=model_id, threads=1)
    t1 = time.perf_counter()
    warm = classify_files(cfg, paths, model=model_id, threads=1)
    t2 = time.perf_counter()
    failed = sum("error" in r for r in cold + warm)
    print(json.dumps({"cold": t1 - t0, "warm": t2 - t1, "failed": failed}))
    return 0


def bench_classify(conf: Path, model_id: str, paths: list[Path], scratch: Path) -> dict:
    paths_file = scratch / "classify_paths.txt"
    paths_file.write_text("\n".join(str(p) for p in paths))
    proc = subprocess.run(
        [sys.executable, __file__, "--classify-child", str(conf), model_id, str(paths_file)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_score(conf: Path, model_id: str) -> tuple[list, float]:
    """[(cold summary), (warm summary)] of two backfills in one fresh Spark, and Spark's start time."""
    from genrecast.config import load_config
    from genrecast.score import run_score
    from genrecast.spark import get_spark

    cfg = load_config(conf)
    t = time.perf_counter()
    spark = get_spark(cfg)
    started = time.perf_counter() - t
    try:
        runs = [run_score(cfg, spark, "backfill", model=model_id) for _ in range(2)]
    finally:
        spark.stop()
    return runs, started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=60)
    parser.add_argument("--cores", type=int, default=2, help="local[N] for the score job")
    parser.add_argument("--out", type=Path, default=Path("bench/out"))
    parser.add_argument("--retrain", action="store_true", help="train a new model even if one exists")
    parser.add_argument(
        "--variants", default="cnn", help=f"comma-separated, of {', '.join(VARIANTS)} (default: cnn)"
    )
    parser.add_argument("--classify-child", nargs=3, metavar=("CONF", "MODEL", "PATHS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.classify_child:
        return classify_child(*args.classify_child)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    out = args.out.resolve()
    t = time.perf_counter()
    paths = make_catalogue(out / "catalogue", args.tracks)
    print(f"catalogue: {len(paths)} x {SECONDS:.0f}s tracks ready in {time.perf_counter() - t:.1f}s", flush=True)
    # Score exactly these N files: a catalogue folder holding only them (links, no copies).
    folder = out / "score" / f"catalogue_{args.tracks}"
    for p in paths:
        link = folder / p.relative_to(out / "catalogue")
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(p)
    summary = []
    for variant in args.variants.split(","):
        result = bench_variant(out, variant, folder, paths, args.cores, args.retrain)
        if result is None:
            return 1
        summary.append((variant, *result))
    if len(summary) > 1:
        n = len(paths)
        print(f"\nscore backfill, local[{args.cores}], {n} tracks: tracks per core-minute, vs {summary[0][0]}")
        print(f"{'variant':<18} {'cold':>8} {'warm':>8} {'cold vs':>8} {'warm vs':>8}")
        base = [n / (wall * args.cores / 60) for wall in summary[0][1:]]
        for variant, cold, warm in summary:
            rates = [n / (wall * args.cores / 60) for wall in (cold, warm)]
            ratios = f"{rates[0] / base[0]:>7.2f}x {rates[1] / base[1]:>7.2f}x"
            print(f"{variant:<18} {rates[0]:>8.0f} {rates[1]:>8.0f} {ratios}")
    return 0


def bench_variant(
    out: Path, variant: str, folder: Path, paths: list[Path], cores: int, retrain: bool
) -> tuple[float, float] | None:
    """One variant's table; -> the score backfill's (cold, warm) wall seconds, None on a failure."""
    model_id = ensure_model(out, cores, retrain, variant)
    conf = write_conf(out / "score" / f"score-{variant}.yaml", variant_root(out, variant), folder, None, cores, variant)

    a = bench_classify(conf, model_id, paths, out / "score")
    if a["failed"]:
        print(f"classify: {a['failed']} file(s) failed", file=sys.stderr)
        return None
    runs, spark_start = bench_score(conf, model_id)
    n = len(paths)
    rows = [
        ("(a) classify, 1 process, cold", 1, a["cold"]),
        ("(a) classify, 1 process, warm", 1, a["warm"]),
        (f"(b) score backfill, local[{cores}], cold", cores, runs[0].wall_seconds),
        (f"(b) score backfill, local[{cores}], warm", cores, runs[1].wall_seconds),
    ]
    ref = n / (a["warm"] / 60)
    load = os.getloadavg()[0]
    print(f"\n[{variant}] model {model_id}; {n} tracks x {SECONDS:.0f}s; load {load:.1f} on {os.cpu_count()} cores")
    print(f"{'method':<40} {'cores':>5} {'tracks':>6} {'wall s':>8} {'tracks/core-min':>16} {'vs (a) warm':>12}")
    for name, n_cores, wall in rows:
        per_core_min = n / (wall * n_cores / 60)
        print(f"{name:<40} {n_cores:>5} {n:>6} {wall:>8.2f} {per_core_min:>16.0f} {per_core_min / ref:>11.2f}x")
    for label, run in (("cold", runs[0]), ("warm", runs[1])):
        total = sum(run.stage_seconds.values())
        share = ", ".join(f"{k} {v:.1f}s ({100 * v / total:.0f}%)" for k, v in sorted(run.stage_seconds.items()))
        print(f"score {label}: executor time by stage (summed over tasks): {share}")
    print(f"Spark start (not in (b)): {spark_start:.1f}s; scored {runs[1].scored}, rejected {runs[1].rejected}")
    return runs[0].wall_seconds, runs[1].wall_seconds


if __name__ == "__main__":
    sys.exit(main())
