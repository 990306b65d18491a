"""Train job: Petastorm mel dataset -> Spark barrier stage -> MultiWorkerMirroredStrategy CNN
-> model registry + evaluation report.

Driver: index the dataset and split by artist/track -> one Spark pass over the dataset files
for per-band normalisation (train split) and MFCC statistics (baseline), reduced per track on the
executors -> barrier stage of ``workers`` tasks, each running :mod:`genrecast.train_worker` in a
fresh process with ``TF_CONFIG`` (training and validation both streamed from Petastorm shards)
-> a Spark pass that runs the saved model over the test split's clips and reduces them per track
on the executors -> metrics against the baseline -> report, ``split.parquet``, ``model.json``,
``LATEST``. Neither the driver nor a TF worker holds a split's clips: memory does not grow with
the dataset's clips (the driver holds one small row per labelled track).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from genrecast import __version__, commit, registry, report
from genrecast.backbone import describe as describe_backbone
from genrecast.catalogue import load_labels
from genrecast.config import Config
from genrecast.dataset import check_mel_metadata, index_dataset, mels_uri
from genrecast.errors import JobError
from genrecast.split import TEST, TRAIN, VAL, LabelledTrack, assign_splits, split_counts, split_groups
from genrecast.storage import Storage, join
from genrecast.track_harmony import harmony_pass

log = logging.getLogger(__name__)
SHUFFLE_BUFFER = 2048


@dataclass
class TrainResult:
    model_id: str
    model_uri: str
    report_uri: str
    metrics: dict[str, Any]
    workers: list[dict[str, Any]]
    report_text: str


# The reduce key of the per-band sums in _file_sums (a track id holds no control character).
BANDS = "\x00bands"


def _add(a: tuple, b: tuple) -> tuple:
    """Element-wise sum of two equal-length tuples of numbers / arrays (a ``reduceByKey`` op)."""
    return tuple(x + y for x, y in zip(a, b, strict=True))


def _file_sums(uri: str, storage: Storage, train_ids: frozenset[str]) -> Iterator[tuple[str, tuple]]:
    """Executor: one mel part file, a row group at a time -> keyed partial sums for
    ``reduceByKey(_add)``: ``(BANDS, (sum (n_mels,), sum of squares (n_mels,), frames))`` over
    the train split's clips, and per labelled track ``(track_id, (clips, sum of the clips'
    MFCC statistics (40,) float64))``. Holds one row group and one row per track of the file."""
    from genrecast.features import mfcc_stats

    band_sum = band_sq = None
    frames = 0
    tracks: dict[str, tuple[int, np.ndarray]] = {}
    for table in storage.iter_row_groups(uri, ["track_id", "genre", "mel"]):
        for track_id, genre, blob in zip(
            *(table.column(c).to_pylist() for c in ("track_id", "genre", "mel")), strict=True
        ):
            if genre is None:
                continue
            mel = np.load(io.BytesIO(blob))
            stats = (1, mfcc_stats(mel).astype(np.float64))
            tracks[track_id] = _add(tracks[track_id], stats) if track_id in tracks else stats
            if track_id in train_ids:
                s, q = mel.sum(axis=1, dtype=np.float64), np.square(mel, dtype=np.float64).sum(axis=1)
                band_sum = s if band_sum is None else band_sum + s
                band_sq = q if band_sq is None else band_sq + q
                frames += mel.shape[1]
    if frames:
        yield BANDS, (band_sum, band_sq, frames)
    yield from tracks.items()


def _test_track_sums(
    uri: str,
    cfg: Config,
    storage: Storage,
    model_id: str,
    genres: list[str],
    test_ids: frozenset[str],
    threads: int,
    harmony: dict[str, np.ndarray] | None = None,
) -> Iterator[tuple[str, tuple[int, np.ndarray, np.ndarray]]]:
    """Executor: the test clips of one mel part file, a row group at a time (other rows' mels are
    not read), through the saved model - loaded once per Python worker
    (:func:`genrecast.score.predictor_for`), and only if the file holds a test clip -> per test
    track, keyed for ``reduceByKey(_add)``: ``(clips, clips x track probabilities (n_genres,)
    float64, predicted-genre counts of its clips (n_genres,) int64)``. A pooled model
    (``train.head: pooled``) needs a track's clips together: its file's test clips are gathered
    first (ingest writes a track into one file), in time order (``train.pool_clips`` picks by it);
    with ``train.harmony``, ``harmony`` holds each test track's statistics."""
    from genrecast.model import stack_in_time_order
    from genrecast.score import predictor_for

    predictor = None
    sums: dict[str, tuple[int, np.ndarray, np.ndarray]] = {}

    def add(clips: dict[str, list[tuple[int, np.ndarray]]]) -> None:
        order = list(clips)
        tracks = [stack_in_time_order(clips[t]).astype(np.float32) for t in order]
        predictions = predictor.predict_all(tracks, harmony=[harmony[t] for t in order] if harmony else None)
        for track_id, (probs, _embeddings, track_probs, _embedding) in zip(order, predictions, strict=True):
            n = len(probs)
            row = (n, track_probs.astype(np.float64) * n, np.bincount(probs.argmax(axis=1), minlength=len(genres)))
            sums[track_id] = _add(sums[track_id], row) if track_id in sums else row

    clips: dict[str, list[tuple[int, np.ndarray]]] = {}
    for table in storage.iter_row_groups(uri, ["track_id", "clip_index", "mel"], where=("track_id", test_ids)):
        if predictor is None:
            predictor = predictor_for(
                cfg,
                model_id,
                genres,
                threads,
                head=cfg.train.head,
                pool_clips=cfg.train.pool_clips,
                harmony=cfg.train.harmony,
            )
        columns = (table.column(c).to_pylist() for c in ("track_id", "clip_index", "mel"))
        for track_id, clip, blob in zip(*columns, strict=True):
            clips.setdefault(track_id, []).append((clip, np.load(io.BytesIO(blob))))
        if cfg.train.head == "clip":
            add(clips)
            clips = {}
    if clips:
        add(clips)
    yield from sums.items()


def _file_passes(spark: Any, files: list[str]) -> int:
    """Partitions of a pass over the mel ``files``: 2 per core, several files each. A Python task
    costs ~0.5-0.7 s of its own on a loaded 2-core machine (measured: 40 files as 40 tasks 20 s,
    as 4 tasks 5 s); a task still holds one row group at a time, whatever its number of files."""
    return max(1, min(len(files), 2 * spark.sparkContext.defaultParallelism))


def val_shards(clips: dict[str, int], workers: int) -> list[list[str]]:
    """Validation tracks - and a pooled head's train tracks - (``track_id -> clips``) -> one
    sorted list per TF worker, balanced by clips (largest track first onto the lightest shard).
    With fewer tracks than workers every worker gets them all: a worker with nothing to read
    would wait forever on its endless reader."""
    if not clips:
        return [[] for _ in range(workers)]
    if len(clips) < workers:
        return [sorted(clips) for _ in range(workers)]
    shards: list[list[str]] = [[] for _ in range(workers)]
    load = [0] * workers
    for track_id in sorted(clips, key=lambda t: (-clips[t], t)):
        k = min(range(workers), key=lambda i: (load[i], i))
        shards[k].append(track_id)
        load[k] += clips[track_id]
    return [sorted(s) for s in shards]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _set_parent_death_signal() -> None:
    """Kill the TF process if its Spark task dies (Linux), so nothing is left hanging."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def worker_env(addresses: list[str], rank: int) -> dict[str, str]:
    """Environment of one TF worker process: the task's own, ``TF_CONFIG``, and - when genrecast
    was imported from a zip shipped with ``spark-submit --py-files`` - that zip on
    ``PYTHONPATH``: Spark puts it on the task's ``sys.path``, not in its environment, so a child
    process would not find genrecast (or would find another copy) without it."""
    import genrecast

    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(genrecast.__file__)))
    if os.path.isfile(root):  # a zip archive (--py-files), not a directory install
        rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
        env["PYTHONPATH"] = os.pathsep.join([root, *rest])
    env["TF_CONFIG"] = json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": rank}})
    return env


def _barrier_task(spec_base: dict[str, Any], storage: Storage, model_dir: str) -> Any:
    """Runs in each barrier task: gather addresses -> TF_CONFIG -> fresh TF worker process."""

    def task(_: Any) -> Any:
        from pyspark import BarrierTaskContext

        ctx = BarrierTaskContext.get()
        rank = ctx.partitionId()
        host = ctx.getTaskInfos()[rank].address.split(":")[0]
        addresses = ctx.allGather(f"{host}:{_free_port()}")
        spec = dict(spec_base, rank=rank, workers=len(addresses))
        with tempfile.TemporaryDirectory(prefix=f"genrecast-train{rank}-") as tmp:
            spec.update(
                out_dir=os.path.join(tmp, "model"),
                scratch_dir=os.path.join(tmp, "scratch"),
                result_path=os.path.join(tmp, "result.json"),
            )
            spec_path = os.path.join(tmp, "spec.json")
            with open(spec_path, "w") as fh:
                json.dump(spec, fh)
            env = worker_env(addresses, rank)
            proc = subprocess.run(
                [sys.executable, "-m", "genrecast.train_worker", spec_path],
                env=env,
                preexec_fn=_set_parent_death_signal,
                check=False,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"train worker {rank} exited with {proc.returncode} (see its log above)")
            with open(spec["result_path"]) as fh:
                result = json.load(fh)
            if rank == 0:
                with open(os.path.join(spec["out_dir"], registry.MODEL_FILE), "rb") as fh:
                    storage.write_bytes(join(model_dir, registry.MODEL_FILE), fh.read())
        ctx.barrier()
        yield result

    return task


def _features_key(cfg: Config, tracks: list[LabelledTrack]) -> str:
    """The features_key (genrecast.features) of the clips trained on; a warning if mixed."""
    from genrecast.dataset import manifest_uri
    from genrecast.ingest import FEATURES_KEY
    from genrecast.manifest import dataset_features_key

    storage = Storage.from_config(cfg)
    ds_key = commit.read_state(storage, mels_uri(cfg)).get(FEATURES_KEY)
    key = dataset_features_key(storage, manifest_uri(cfg), ds_key, {t.track_id: t.audio_sha256 or "" for t in tracks})
    if "+" in key or key == "unknown":
        log.warning("train: the mel dataset's feature settings are %s; run genrecast ingest to make them one", key)
    return key


def _labelled_tracks(
    cfg: Config, spark: Any, files: list[str]
) -> tuple[list[LabelledTrack], str, dict[str, int], dict[str, str]]:
    """Labelled tracks in ``files`` of the dataset (genres in config order), a dataset
    fingerprint, tracks per genre, and the labels.csv ``source`` of those that name one."""
    storage = Storage.from_config(cfg)
    rows = index_dataset(spark, cfg, files)
    if not rows:
        raise JobError(f"no mel dataset at {mels_uri(cfg)}: run genrecast ingest first")
    labels, _ = load_labels(storage, cfg.catalogue.labels_uri, cfg.genres)
    known = set(cfg.genres)
    tracks, fingerprint, source_of = [], hashlib.sha256(), {}
    for track_id, sha, genre, _file in sorted(set((r[0], r[1], r[2], "") for r in rows)):
        if genre in known:
            label = labels.get(track_id)
            tracks.append(LabelledTrack(track_id, genre, label.artist if label else None, sha))
            fingerprint.update(f"{track_id}\0{sha}\0{genre}\n".encode())
            if label and label.source:
                source_of[track_id] = label.source
    return tracks, fingerprint.hexdigest(), Counter(t.genre for t in tracks), source_of


def _collect_barrier(spark: Any, rdd: Any, workers: int) -> list[dict[str, Any]]:
    """Run the barrier stage. If one of its tasks dies (its executor or TF process is lost),
    Spark kills the others - their TF processes die with them (PR_SET_PDEATHSIG) - and aborts
    the job: a barrier result stage is not retried. That is one clear error here, and nothing
    is published (``LATEST`` keeps the previous model): run ``genrecast train`` again."""
    from py4j.protocol import Py4JJavaError

    from genrecast.spark import with_progress

    try:
        return with_progress(spark, "train", rdd.collect, every=30.0)
    except Py4JJavaError as exc:
        message = str(exc.java_exception.getMessage() or exc.java_exception.toString())
        reason = " ".join(line.strip() for line in message.splitlines()[:3] if line.strip())
        raise JobError(f"training stage of {workers} barrier tasks failed, nothing published: {reason[:500]}") from exc


def run_train(cfg: Config, spark: Any, workers: int | None = None, epochs: int | None = None) -> TrainResult:
    started = time.monotonic()
    storage = Storage.from_config(cfg)
    workers = workers or cfg.train.workers
    epochs = epochs or cfg.train.epochs
    if not commit.table_files(storage, mels_uri(cfg)):
        raise JobError(f"no mel dataset at {mels_uri(cfg)}: run genrecast ingest first")
    # One committed version of the dataset, its Petastorm metadata checked before anything reads it.
    files = check_mel_metadata(storage, cfg)
    tracks, fingerprint, per_genre, source_of = _labelled_tracks(cfg, spark, files)
    genre_of = {t.track_id: t.genre for t in tracks}
    genres = [g for g in cfg.genres if per_genre.get(g)]
    missing = [g for g in cfg.genres if not per_genre.get(g)]
    if missing:
        log.warning("train: no labelled tracks for %s; the model covers %d genres", ", ".join(missing), len(genres))
    if len(genres) < 2:
        raise JobError(f"need labelled tracks of at least 2 genres in {mels_uri(cfg)}, found {genres or 'none'}")
    split = cfg.train.split
    assignment = assign_splits(tracks, test=split.test, val=split.val, seed=split.seed, by=split.by)
    counts = split_counts(assignment)
    log.info("train: %d labelled tracks, %d genres; split by %s: %s", len(tracks), len(genres), split.by, counts)

    train_ids = frozenset(t for t, s in assignment.items() if s == TRAIN)
    # One row per labelled track (and one of band sums) reaches the driver, never one per clip.
    parts = _file_passes(spark, files)
    sums = dict(
        spark.sparkContext.parallelize(files, parts)
        .flatMap(lambda f: _file_sums(f, storage, train_ids))
        .reduceByKey(_add, parts)
        .collect()
    )
    if BANDS not in sums:
        raise JobError(f"no clips of training tracks in {mels_uri(cfg)}")
    band_sum, band_sq, frames = sums.pop(BANDS)
    band_mean = band_sum / frames
    band_std = np.sqrt(np.maximum(band_sq / frames - band_mean**2, 1e-6))
    track_clips = {t: n for t, (n, _s) in sums.items() if t in assignment}
    track_feats = {t: (s / n).astype(np.float32) for t, (n, s) in sums.items() if t in assignment}
    del sums
    clips_per_split: Counter = Counter()
    for t, n in track_clips.items():
        clips_per_split[assignment[t]] += n
    global_batch = cfg.train.batch_size
    shards = val_shards({t: n for t, n in track_clips.items() if assignment[t] == VAL}, workers)
    pooled = cfg.train.head == "pooled"
    # A pooled head trains on one row per track: each worker featurises whole tracks, its own
    # (balanced by clips, the backbone's cost), and an epoch is one pass over the train tracks.
    train_shards: list[list[str]] = []
    if pooled:
        train_shards = val_shards({t: n for t, n in track_clips.items() if assignment[t] == TRAIN}, workers)
        steps = max(1, math.ceil(len(train_ids) / global_batch))
        # Validation: one batch of a worker's whole shard (a smaller shard repeats a few rows),
        # not global-batch-sized batches that would count most of ~20 tracks twice.
        val_batch = max(len(shard) for shard in shards)
        validation_steps = min(1, val_batch)
    else:
        steps = max(1, math.ceil(clips_per_split[TRAIN] / global_batch))
        shard_clips = max(sum(track_clips[t] for t in shard) for shard in shards)
        validation_steps = math.ceil(shard_clips / max(1, global_batch // workers))
        val_batch = 0
    log.info(
        "train: clips train %d / val %d / test %d; %d workers, global batch %d, %d steps per epoch, "
        "%d validation steps",
        clips_per_split[TRAIN],
        clips_per_split[VAL],
        clips_per_split[TEST],
        workers,
        global_batch,
        steps,
        validation_steps,
    )

    fit_steps, refit_steps = steps, (
        math.ceil((len(train_ids) + counts[VAL]) / global_batch) if cfg.train.refit else 0
    )
    logistic: dict[str, Any] = {}
    if pooled and cfg.train.classifier == "logistic":
        # Full batches: every step all of a worker's rows (the smaller shards padded with
        # weight-0 rows), so the standardisation is the rows' own and the fit converges. The
        # objective is sklearn's for C = logistic_c, mean loss + |W|^2 / (2 C n) over the n rows
        # of each fit: the penalty is fixed at the training fit's n, and the rows' weight
        # (global batch / that n) makes the refit's the same objective over its own rows, scaled.
        n_fit = sum(len(shard) for shard in train_shards)
        batch = max(len(shard) for shard in train_shards)
        refit_batch = max(len(t) + len(v) for t, v in zip(train_shards, shards, strict=True))
        logistic = {
            "batch": batch,
            "refit_batch": refit_batch,
            "l2": 1.0 / (2 * cfg.train.logistic_c * n_fit),
            "weight": workers * batch / n_fit,
            "refit_weight": workers * refit_batch / n_fit,
        }
        fit_steps = cfg.train.logistic_steps
        epochs, refit_steps = 1, fit_steps if cfg.train.refit else 0
        log.info(
            "train: logistic head: %d full-batch steps of %d rows a worker (refit %d), C %g",
            fit_steps,
            batch,
            refit_batch if cfg.train.refit else 0,
            cfg.train.logistic_c,
        )

    track_harmony: dict[str, np.ndarray] = {}
    if cfg.train.harmony:
        t_harmony = time.monotonic()
        track_harmony = harmony_pass(spark, cfg, files, frozenset(assignment), _file_passes(spark, files))
        log.info("train: harmony statistics of %d tracks in %.0fs", len(track_harmony), time.monotonic() - t_harmony)

    model_id = commit.new_run_id()
    model_dir = registry.model_uri(cfg, model_id)
    spec = {
        "config": cfg.model_dump(mode="json"),
        "genres": genres,
        "seed": split.seed,
        "train_tracks": sorted(train_ids),
        "val_shards": shards,  # per worker: its validation tracks (val_shards)
        "validation_steps": validation_steps,
        "band_mean": band_mean.tolist(),
        "band_std": band_std.tolist(),
        "epochs": epochs,
        "steps_per_epoch": fit_steps,
        "batch_size": global_batch,
        "learning_rate": cfg.train.learning_rate,
        "patience": cfg.train.patience,
        "embedding_dim": cfg.train.embedding_dim,
        "backbone": cfg.train.backbone,
        "head": cfg.train.head,
        "pool_clips": cfg.train.pool_clips,
        "finetune": cfg.train.finetune,
        "finetune_learning_rate": cfg.train.finetune_learning_rate,
        "finetune_epochs": cfg.train.finetune_epochs,
        "harmony": cfg.train.harmony,
        # train.harmony: each train and validation track's statistics (a worker takes its shards')
        "track_harmony": {t: v.tolist() for t, v in track_harmony.items() if assignment[t] != TEST},
        # pooled head: each train and validation track's clip count, so a worker sends only the
        # clips it pools through the backbone
        "track_clips": {t: n for t, n in track_clips.items() if assignment[t] in (TRAIN, VAL)} if pooled else {},
        # train.refit: steps of an epoch over the train + validation tracks (the same on every worker)
        "refit_steps": refit_steps,
        # train.classifier logistic: per-worker full batches (train, train + validation) and the penalty
        "logistic": logistic,
        "train_shards": train_shards,  # pooled head: per worker, its train tracks
        "val_batch": val_batch,  # pooled head: validation rows per worker and step
        "shuffle_buffer": min(SHUFFLE_BUFFER, max(64, clips_per_split[TRAIN] // workers)),
        "train_genre_clips": [
            sum(n for t, n in track_clips.items() if assignment[t] == TRAIN and genre_of[t] == g) for g in genres
        ],
        "threads": int(spark.sparkContext.getConf().get("spark.task.cpus", "1")),
    }
    rdd = (
        spark.sparkContext.parallelize(range(workers), workers)
        .barrier()
        .mapPartitions(_barrier_task(spec, storage, model_dir))
    )
    t_train = time.monotonic()
    results = sorted(_collect_barrier(spark, rdd, workers), key=lambda r: r["rank"])
    train_seconds = time.monotonic() - t_train
    digests = {r["weights_sha256"] for r in results}
    if len(digests) != 1:
        raise JobError(f"workers ended with different weights ({len(digests)} digests): replicas diverged")
    log.info("train: %d workers done in %.0fs, %d epochs", workers, train_seconds, results[0]["epochs_run"])

    t_eval = time.monotonic()
    test_harmony = {t: v for t, v in track_harmony.items() if assignment[t] == TEST}
    metrics = evaluate(
        cfg, spark, files, model_id, genres, assignment, genre_of, track_feats, source_of, test_harmony or None
    )
    log.info("train: evaluated in %.0fs", time.monotonic() - t_eval)
    chief = results[0]
    metrics["training"] = {
        "workers": workers,
        "epochs_run": chief["epochs_run"],
        "seconds": train_seconds,
        "seconds_per_epoch": float(np.mean(chief["epoch_seconds"])) if chief["epoch_seconds"] else None,
        "train_clips_per_s_per_worker": chief["train_clips_per_s"],
        "input_pipeline_clips_per_s_per_worker": chief["pipeline_clips_per_s"],
        "params": chief["params"],
        "head": cfg.train.head,  # genrecast.score.Predictor picks its path from this
        "pool_clips": cfg.train.pool_clips,  # and, for a pooled head, the clips it pools
        "harmony": cfg.train.harmony,  # and whether its head takes harmony statistics (their weight)
        # pooled head: mlp, or logistic with its C and full-batch steps
        "classifier": cfg.train.classifier if pooled else None,
        "logistic_c": cfg.train.logistic_c if logistic else None,
        "logistic_steps": cfg.train.logistic_steps if logistic else None,
        "refit_epochs": chief.get("refit_epochs"),  # train.refit: epochs on train + validation, else None
        # train.finetune: its depth and the epochs validation kept (0: the head alone won), else None
        "finetune": {"depth": cfg.train.finetune, "epochs": chief.get("finetune_epochs"),
                     "learning_rate": cfg.train.finetune_learning_rate} if cfg.train.finetune else None,
        "augment": cfg.train.augment.model_dump(),
        "worker_peak_rss_mb": [r.get("peak_rss_mb") for r in results],
        **({"feature_pass": [r["feature_pass"] for r in results]} if pooled else {}),
    }
    report_uri = write_report(cfg, model_id, metrics, chief["history"], genres)
    features_key = _features_key(cfg, tracks)
    registry.write_split(cfg, model_id, assignment, split_groups(tracks, split.by))
    meta = {
        "model_id": model_id,
        "genres": genres,
        "audio": cfg.audio.model_dump(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "package_version": __version__,
        "normalisation": {"band_mean": band_mean.tolist(), "band_std": band_std.tolist()},
        "split": {**split.model_dump(), "counts": counts, "table": registry.SPLIT_FILE},
        "dataset": {"uri": mels_uri(cfg), "fingerprint": fingerprint, "tracks": len(tracks)},
        "features_key": features_key,
        "embedding_dim": len(genres) if logistic else cfg.train.embedding_dim,  # logistic: its logits
        "backbone": "scratch" if cfg.train.backbone == "scratch" else describe_backbone(cfg.train.backbone),
        "params": chief["params"],
        "metrics": {k: metrics[k]["accuracy"] for k in ("cnn_track", "cnn_clip", "baseline_track")},
        "training": metrics["training"],
        "weights_sha256": chief["weights_sha256"],
    }
    uri = registry.publish(cfg, model_id, meta)
    log.info("train: model %s published in %.0fs", model_id, time.monotonic() - started)
    return TrainResult(model_id, uri, report_uri, metrics, results, report.format_report(metrics))


def evaluate(
    cfg: Config,
    spark: Any,
    files: list[str],
    model_id: str,
    genres: list[str],
    assignment: dict[str, str],
    genre_of: dict[str, str],
    track_feats: dict[str, np.ndarray],
    source_of: dict[str, str] | None = None,
    harmony: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Test-split metrics of the saved model (clip and track level) and of the MFCC baseline,
    and - when a test track has a labels.csv ``source`` (``source_of``) - both track
    accuracies per source (:func:`genrecast.report.per_source_accuracy`).

    The model runs on the executors, over the mel ``files`` (:func:`_test_track_sums`); the
    driver receives one row per test track - clips, summed probabilities, predicted-genre counts
    of its clips: O(test tracks x genres), never the test clips - and builds the clip-level
    confusion matrix from the counts. The baseline (logistic regression on the per-track mean of
    clip MFCC statistics, fitted on train + val, tested on test) takes ``track_feats``: one
    (40,) row per labelled track, reduced on the executors by the statistics pass. ``harmony``:
    each test track's harmony statistics, for a model trained with ``train.harmony``."""
    storage = Storage.from_config(cfg)
    test_ids = frozenset(t for t, s in assignment.items() if s == TEST)
    threads = int(spark.sparkContext.getConf().get("spark.task.cpus", "1"))
    parts = _file_passes(spark, files)
    rows = sorted(
        spark.sparkContext.parallelize(files, parts)
        .flatMap(lambda f: _test_track_sums(f, cfg, storage, model_id, genres, test_ids, threads, harmony))
        .reduceByKey(_add, parts)
        .collect()
    )
    if len(rows) != len(test_ids):
        raise JobError(f"evaluation found clips of {len(rows)} of the {len(test_ids)} test tracks in {mels_uri(cfg)}")
    index = {g: i for i, g in enumerate(genres)}
    clip_confusion = np.zeros((len(genres), len(genres)), np.int64)
    y_true, y_pred = [], []
    for track_id, (_n, prob_sum, predicted) in rows:
        clip_confusion[index[genre_of[track_id]]] += predicted
        y_true.append(index[genre_of[track_id]])
        y_pred.append(int(np.argmax(prob_sum)))
    cnn_clip = report.confusion_metrics(clip_confusion, genres)
    cnn_track = report.classification_metrics(y_true, y_pred, genres)

    tids = sorted(track_feats)
    tfeat = np.stack([track_feats[t] for t in tids])
    y_all = np.asarray([index[genre_of[t]] for t in tids])
    fit_rows = [i for i, t in enumerate(tids) if assignment[t] != TEST]
    test_rows = [i for i, t in enumerate(tids) if assignment[t] == TEST]
    pred = report.baseline_mfcc_logreg(tfeat[fit_rows], y_all[fit_rows], tfeat[test_rows], cfg.train.split.seed)
    baseline = report.classification_metrics(y_all[test_rows], pred, genres)
    metrics = {"cnn_clip": cnn_clip, "cnn_track": cnn_track, "baseline_track": baseline}
    test_order = [track_id for track_id, _sums in rows]
    if source_of and any(t in source_of for t in test_order):
        metrics["per_source"] = report.per_source_accuracy(
            dict(zip(test_order, y_true, strict=True)),
            dict(zip(test_order, y_pred, strict=True)),
            {tids[i]: int(p) for i, p in zip(test_rows, pred, strict=True)},
            source_of,
        )
    return metrics


def write_report(
    cfg: Config, model_id: str, metrics: dict[str, Any], history: dict[str, list[float]], genres: list[str]
) -> str:
    """metrics.json, confusion.png (the model, track level), baseline_confusion.png, curves.png, report.txt."""
    storage = Storage.from_config(cfg)
    out = registry.report_uri(cfg, model_id)
    with tempfile.TemporaryDirectory() as tmp:
        report.plot_confusion(
            metrics["cnn_track"]["confusion"],
            genres,
            os.path.join(tmp, "confusion.png"),
            f"model, test tracks (accuracy {metrics['cnn_track']['accuracy']:.2f})",
        )
        report.plot_confusion(
            metrics["baseline_track"]["confusion"],
            genres,
            os.path.join(tmp, "baseline_confusion.png"),
            f"MFCC + logistic regression (accuracy {metrics['baseline_track']['accuracy']:.2f})",
        )
        report.plot_curves(history, os.path.join(tmp, "curves.png"))
        with open(os.path.join(tmp, "metrics.json"), "w") as fh:
            json.dump({**metrics, "history": history, "genres": genres}, fh, indent=2)
        with open(os.path.join(tmp, "report.txt"), "w") as fh:
            fh.write(report.format_report(metrics) + "\n")
        for name in sorted(os.listdir(tmp)):
            with open(os.path.join(tmp, name), "rb") as fh:
                storage.write_bytes(join(out, name), fh.read())
    return out
