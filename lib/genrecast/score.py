"""Score job: catalogue audio -> Spark executors (ingest's decode + mel -> genre CNN) ->
``<root>/scores/model=<model_id>/``, one row per track (+ rejects).

Driver: resolve the model, check its audio settings -> take the leases of the score table and
its rejects (one writer each) -> recover interrupted commits -> plan on Spark
(:mod:`genrecast.score_plan`: the listing, the table's ``track_id``/``audio_sha256`` index, the
catalogue manifest and earlier rejects joined on the executors) -> one Spark task per batch of
tracks to fetch -> journalled commit. Executors fetch, hash, decode and run the model
(:func:`score_partition`), loading it once per Python worker (:func:`predictor_for`).
Scoring reads the catalogue, not the mel dataset: a track need not have been ingested.

Pure helpers (:func:`aggregate_clips`, :class:`Predictor`, :func:`scores_table`) need no Spark;
:mod:`genrecast.classify` uses them for single files.

With ``score.keep_timeline`` the job also keeps every clip's prediction in the ``timelines``
table, ``<root>/timelines/model=<model_id>/`` (:data:`TIMELINES_ARROW_SCHEMA`, one row per clip),
committed after the scores with the same journal; a track re-scored loses its old clip rows,
backfill replaces the table. Nightly also re-scores a scored track whose clip rows are missing
or stale, so the two tables agree after any run (e.g. after turning the option on, or a kill
between the two commits). With the option off the timelines table is neither read nor written.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

from genrecast import commit, lease, registry
from genrecast.catalogue import Track
from genrecast.config import Config
from genrecast.dataset import reject_key, rejects_uri, scores_uri, timelines_uri
from genrecast.errors import ConfigError, JobError
from genrecast.features import features_key
from genrecast.manifest import Entry
from genrecast.plan_frames import planning
from genrecast.storage import Storage, join
from genrecast.tasks import (
    FETCH,
    KEPT_REJECTED,
    KEPT_UNCHANGED,
    PartitionResult,
    Plan,
    TrackTask,
    changed_inputs,
    spread,
)

# Before any TensorFlow import in this process (driver or Spark worker): see genrecast.model.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

log = logging.getLogger(__name__)
ClipItem = TypeVar("ClipItem", bound=tuple)  # (..., clips): see clip_batches

MODES = ("nightly", "backfill")
BATCH_CLIPS = 64  # clips per model call: large enough to amortise the call, small enough for cache
FLUSH_CLIPS = 512  # decoded clips a task holds before running the model (~35 MB at 128 x 130)
REJECT_PREFIX = "score-"

SCORES_ARROW_SCHEMA = pa.schema(
    [
        pa.field("track_id", pa.string(), nullable=False),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("genre", pa.string(), nullable=False),
        pa.field("confidence", pa.float32(), nullable=False),
        pa.field("probabilities", pa.list_(pa.float32()), nullable=False),  # order = model.json genres
        pa.field("embedding", pa.list_(pa.float32()), nullable=False),  # L2-normalised
        pa.field("n_clips", pa.int32(), nullable=False),
        pa.field("audio_sha256", pa.string(), nullable=False),
        pa.field("scored_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)
SCORE_COLUMNS = tuple(SCORES_ARROW_SCHEMA.names)
TIMELINES_ARROW_SCHEMA = pa.schema(
    [
        pa.field("track_id", pa.string(), nullable=False),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("clip_index", pa.int32(), nullable=False),  # 0-based, in time order
        pa.field("start_s", pa.float64(), nullable=False),  # see genrecast.timeline (clip times)
        pa.field("end_s", pa.float64(), nullable=False),
        pa.field("genre", pa.string(), nullable=False),  # the clip's top genre
        pa.field("confidence", pa.float32(), nullable=False),
        pa.field("probabilities", pa.list_(pa.float32()), nullable=False),  # order = model.json genres
        pa.field("audio_sha256", pa.string(), nullable=False),
        pa.field("scored_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)
TIMELINE_COLUMNS = tuple(TIMELINES_ARROW_SCHEMA.names)


def aggregate_clips(probs: np.ndarray, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One track from its clips: (n_clips, n_genres) probabilities and (n_clips, d) unit
    embeddings -> mean probabilities (n_genres,) and the mean embedding re-L2-normalised (d,),
    both float32. (A mean of unit vectors is shorter than 1; neighbours want cosine = dot.)"""
    p = probs.mean(axis=0, dtype=np.float64)
    e = embeddings.mean(axis=0, dtype=np.float64)
    norm = float(np.linalg.norm(e))
    return p.astype(np.float32), (e / norm if norm > 0 else e).astype(np.float32)


def scores_table(rows: dict[str, list]) -> pa.Table:
    """Columns (see :data:`SCORE_COLUMNS`) -> Arrow table, sorted by track_id so that the same
    inputs give byte-comparable files."""
    table = pa.table([pa.array(rows[c], SCORES_ARROW_SCHEMA.field(c).type) for c in SCORE_COLUMNS], SCORES_ARROW_SCHEMA)
    return table.sort_by("track_id")


def timelines_table(rows: dict[str, list]) -> pa.Table:
    """Columns (see :data:`TIMELINE_COLUMNS`) -> Arrow table sorted by (track_id, clip_index)."""
    table = pa.table(
        [pa.array(rows[c], TIMELINES_ARROW_SCHEMA.field(c).type) for c in TIMELINE_COLUMNS], TIMELINES_ARROW_SCHEMA
    )
    return table.sort_by([("track_id", "ascending"), ("clip_index", "ascending")])


def _add_timeline_rows(
    rows: dict[str, list],
    track_id: str,
    model_id: str,
    genres: Sequence[str],
    probs: np.ndarray,
    times: tuple[np.ndarray, np.ndarray],
    sha: str,
    scored_at: datetime,
) -> None:
    """Append one track's clips (probabilities (n_clips, n_genres), clip start/end seconds)."""
    best = np.argmax(probs, axis=1)
    for k, (start, end) in enumerate(zip(*times, strict=True)):
        for col, value in (
            ("track_id", track_id),
            ("model_id", model_id),
            ("clip_index", k),
            ("start_s", float(start)),
            ("end_s", float(end)),
            ("genre", genres[int(best[k])]),
            ("confidence", float(probs[k, best[k]])),
            ("probabilities", probs[k]),
            ("audio_sha256", sha),
            ("scored_at", scored_at),
        ):
            rows[col].append(value)


def limit_tf_threads(threads: int) -> None:
    """Cap TensorFlow's thread pools; only possible before TF's runtime starts in this process.

    Spark runs one task per core, so a task's TF must not spread over the other tasks' cores.
    """
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        log.debug("TensorFlow already initialised in this process: keeping its thread pools")


class Predictor:
    """A genre model ready for batched inference on log-mel clips.

    ``head`` is the model's ``training.head`` (model.json): ``clip`` - the model classifies each
    clip, a track is the mean of its clips (:func:`aggregate_clips`); ``pooled`` - the model's
    head classifies a track from the mean + std of its clips' backbone features
    (:func:`genrecast.model.build_pooled_model`). A pooled model's per-clip outputs (timelines,
    clip metrics) treat each clip as a one-clip track (std 0): a rough local view, outside what
    its head was trained on; the track's genre and embedding come from the pooled row.
    ``pool_clips`` (``training.pool_clips``, pooled only): the track row pools the clips
    :func:`genrecast.model.pool_indices` picks, as in training; 0 = all. A pooled model trained
    with ``train.harmony`` (``self.harmony``) takes each track's harmony statistics too
    (:func:`genrecast.features.track_clips_length_harmony`): every predict method then needs them."""

    def __init__(
        self,
        keras_model: Any,
        genres: Sequence[str],
        batch_clips: int = BATCH_CLIPS,
        head: str = "clip",
        pool_clips: int = 0,
        harmony: int = 0,
    ) -> None:
        import tensorflow as tf

        from genrecast.model import TRACK_POOL_LAYER, inference_model, pooled_parts, takes_harmony

        if pool_clips and head != "pooled":
            raise JobError(f"model.json training.pool_clips is {pool_clips} for a {head!r} head (pooled only)")
        has_pool = any(layer.name == TRACK_POOL_LAYER for layer in keras_model.layers)
        if head not in ("clip", "pooled") or has_pool != (head == "pooled"):
            raise JobError(
                f"model.json training.head is {head!r} but the model {'has' if has_pool else 'lacks'} "
                f"a {TRACK_POOL_LAYER} layer"
            )
        self.head, self.pool_clips, self.harmony = head, pool_clips, False
        if head == "pooled":
            features, head_model = pooled_parts(keras_model)
            infer = inference_model(head_model)
            clip_in = features.inputs[0]
            self.harmony = takes_harmony(head_model)
        else:
            features, infer = None, inference_model(keras_model)
            clip_in = infer.inputs[0]
        if self.harmony != bool(harmony):
            raise JobError(
                f"model.json training.harmony is {harmony} but the model "
                f"{'takes' if self.harmony else 'does not take'} harmony statistics"
            )
        n_out = int(infer.outputs[0].shape[-1])
        if n_out != len(genres):
            raise JobError(f"model has {n_out} outputs but model.json lists {len(genres)} genres")
        self.genres = list(genres)
        self.input_shape = tuple(int(d) for d in clip_in.shape[1:])  # (n_mels, clip_frames)
        self.batch_clips = batch_clips
        # One traced graph for every batch size: eager Keras calls cost ~ms of Python per layer.
        specs = [tf.TensorSpec((None, *(int(d) for d in i.shape[1:])), tf.float32) for i in infer.inputs]
        self._infer = tf.function(
            lambda *x: infer(list(x) if self.harmony else x[0], training=False), input_signature=specs
        )
        self._features = (
            None
            if features is None
            else tf.function(
                lambda x: features(x, training=False),
                input_signature=[tf.TensorSpec((None, *self.input_shape), tf.float32)],
            )
        )

    def _batched(self, fn: Any, *xs: np.ndarray) -> list[np.ndarray]:
        """``fn`` over the rows of ``xs`` (each its argument) in batches of ``batch_clips`` rows
        -> its outputs, concatenated."""
        size = self.batch_clips
        outs = [fn(*(x[start : start + size] for x in xs)) for start in range(0, len(xs[0]), size)]
        outs = [o if isinstance(o, (list, tuple)) else (o,) for o in outs]
        return [np.concatenate([o[i].numpy() for o in outs]) for i in range(len(outs[0]))]

    def _check(self, clips: np.ndarray) -> None:
        if clips.shape[1:] != self.input_shape:
            raise JobError(f"clips of shape {clips.shape[1:]} for a model that takes {self.input_shape}")

    def _harmony_rows(self, harmony: Sequence[np.ndarray] | None, n_tracks: int) -> list[np.ndarray]:
        """The head's extra inputs: [(n_tracks, 53) float32] for a model that takes harmony
        statistics, [] for one that does not. Refuses a missing or misshapen block."""
        from genrecast.harmony import N_FEATURES

        if not self.harmony:
            return []
        if harmony is None:
            raise JobError("this model takes each track's harmony statistics (model.json training.harmony): none given")
        rows = np.asarray(harmony, np.float32).reshape(len(harmony), -1) if len(harmony) else np.zeros((0, N_FEATURES))
        if rows.shape != (n_tracks, N_FEATURES):
            raise JobError(f"harmony statistics of shape {rows.shape} for {n_tracks} tracks of {N_FEATURES} numbers")
        return [rows.astype(np.float32, copy=False)]

    def predict(
        self, clips: np.ndarray, harmony: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(n, n_mels, clip_frames) float32 dB -> (n, n_genres) probabilities, (n, d) unit
        embeddings, per clip (a pooled model: each clip as a one-clip track; ``harmony``: each
        clip's track's statistics (n, 53), for a model that takes them)."""
        self._check(clips)
        extra = self._harmony_rows(harmony, len(clips))
        if self._features is None:
            probs, embs = self._batched(self._infer, clips)
            return probs, embs
        feats = self._batched(self._features, clips)[0]
        probs, embs = self._batched(self._infer, np.concatenate([feats, np.zeros_like(feats)], axis=1), *extra)
        return probs, embs

    def predict_all(
        self,
        tracks: Sequence[np.ndarray],
        clip_outputs: bool = True,
        harmony: Sequence[np.ndarray] | None = None,
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """Clips of several tracks, batched across track boundaries -> per track, in order: its
        clips' probabilities (n_clips, n_genres) and unit embeddings (n_clips, d) (as
        :meth:`predict`), and the track's probabilities (n_genres,) and unit embedding (d,)
        float32: :func:`aggregate_clips` of its clips, or a pooled model's head on the pooled
        features (:func:`genrecast.model.pool_clip_features`). The backbone runs once a clip.

        ``clip_outputs=False`` (callers that keep only the track row): a pooled model with
        ``pool_clips`` runs the backbone on the pooled clips only - the saving the option is
        for - and returns empty clip arrays (0, n_genres) and (0, d) for every model.

        ``harmony``: per track its harmony statistics (53,), for a model that takes them
        (``self.harmony``; its clip rows take their track's)."""
        from genrecast.model import pool_clip_features, pool_indices

        extra = self._harmony_rows(harmony, len(tracks))
        if not tracks:
            return []
        if self._features is None:
            clips = np.concatenate(tracks)
            bounds = np.cumsum([0, *(len(t) for t in tracks)])
            probs, embs = self.predict(clips)
            spans = zip(bounds[:-1], bounds[1:], strict=True)
            out = [(probs[a:b], embs[a:b], *aggregate_clips(probs[a:b], embs[a:b])) for a, b in spans]
            return out if clip_outputs else [(p[:0], e[:0], tp, te) for p, e, tp, te in out]
        picks = [pool_indices(len(t), self.pool_clips) for t in tracks]
        if not clip_outputs:  # only the pooled clips go through the backbone
            tracks, picks = [t[p] for t, p in zip(tracks, picks, strict=True)], [np.arange(len(p)) for p in picks]
        clips = np.concatenate(tracks)
        self._check(clips)
        bounds = np.cumsum([0, *(len(t) for t in tracks)])
        spans = list(zip(bounds[:-1], bounds[1:], strict=True))
        feats = self._batched(self._features, clips)[0]
        pooled = np.stack([pool_clip_features(feats[a:b][p]) for (a, b), p in zip(spans, picks, strict=True)])
        # Each clip as a one-clip track (std 0), then the pooled rows: one pass of the head.
        rows = [np.concatenate([feats, np.zeros_like(feats)], axis=1), pooled] if clip_outputs else [pooled]
        if extra and clip_outputs:  # a clip row takes its track's statistics
            extra = [np.concatenate([np.repeat(extra[0], [b - a for a, b in spans], axis=0), extra[0]])]
        probs, embs = self._batched(self._infer, np.concatenate(rows), *extra)
        n = len(clips) if clip_outputs else 0
        return [
            (
                probs[a:b] if clip_outputs else probs[:0],
                embs[a:b] if clip_outputs else embs[:0],
                probs[n + i].astype(np.float32),
                embs[n + i].astype(np.float32),
            )
            for i, (a, b) in enumerate(spans)
        ]

    def predict_clips(
        self, tracks: Sequence[np.ndarray], harmony: Sequence[np.ndarray] | None = None
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per track, in order: its clips' (probabilities (n_clips, n_genres), unit embeddings
        (n_clips, d)) (see :meth:`predict_all`)."""
        return [(p, e) for p, e, _tp, _te in self.predict_all(tracks, harmony=harmony)]

    def predict_tracks(
        self, tracks: Sequence[np.ndarray], harmony: Sequence[np.ndarray] | None = None
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per track, in order: (probabilities (n_genres,), unit embedding (d,)) (see :meth:`predict_all`)."""
        return [(tp, te) for _p, _e, tp, te in self.predict_all(tracks, clip_outputs=False, harmony=harmony)]


def predictor_options(meta: dict[str, Any]) -> dict[str, Any]:
    """A model.json -> the :class:`Predictor` keywords its ``training`` section sets (``head``,
    ``pool_clips``, ``harmony``; models from before a key get its default)."""
    training = meta.get("training", {})
    return {
        "head": training.get("head", "clip"),
        "pool_clips": int(training.get("pool_clips", 0)),
        "harmony": int(training.get("harmony") or 0),
    }


_PREDICTORS: dict[str, Predictor] = {}


def predictor_for(
    cfg: Config,
    model_id: str,
    genres: Sequence[str],
    threads: int | None = 1,
    head: str | None = None,
    pool_clips: int = 0,
    harmony: int = 0,
) -> Predictor:
    """The model ``model_id``, loaded from storage once per process (Spark reuses its Python
    workers, so once per worker). Only the last model is kept: a worker scores one at a time.
    ``head``, ``pool_clips``: its ``training.head`` and ``training.pool_clips``, read from
    model.json when ``head`` is None (train's evaluation passes them: the model is not published
    yet)."""
    key = registry.model_uri(cfg, model_id)
    if key not in _PREDICTORS:
        if threads:
            limit_tf_threads(threads)
        if head is None:
            options = predictor_options(registry.read_model_json(cfg, model_id))
        else:
            options = {"head": head, "pool_clips": pool_clips, "harmony": harmony}
        _PREDICTORS.clear()
        _PREDICTORS[key] = Predictor(registry.load_keras_file(cfg, model_id), genres, **options)
    return _PREDICTORS[key]


# -- executor side ------------------------------------------------------------------------


@dataclass
class ScorePartitionResult(PartitionResult):
    """``seconds`` by stage: fetch / audio / load / model / write."""

    genres: Counter = field(default_factory=Counter)  # predicted genres of the tracks scored
    timeline_tmp_file: str | None = None  # score.keep_timeline: this task's clip rows


def clip_batches(items: Iterable[ClipItem], limit: int = FLUSH_CLIPS) -> Iterator[list[ClipItem]]:
    """Group ``(..., clips)`` items, in order, into batches of at least ``limit`` clips (the last
    may hold fewer): the model then runs over many tracks' clips at once, while only about
    ``limit`` decoded clips are held in memory."""
    batch: list[ClipItem] = []
    n_clips = 0
    for item in items:
        batch.append(item)
        n_clips += len(item[-1])
        if n_clips >= limit:
            yield batch
            batch, n_clips = [], 0
    if batch:
        yield batch


def score_partition(
    index: int,
    tasks: Iterable[TrackTask],
    cfg: Config,
    model_id: str,
    genres: Sequence[str],
    threads: int,
    scored_at: datetime,
    tmp_prefix: str,
    timeline_tmp_prefix: str | None = None,
    harmony: bool = False,
) -> Iterator[ScorePartitionResult]:
    """Executor side: fetch, hash, decode + mel (as ingest) - and with ``harmony`` (the model's
    ``training.harmony``) each track's harmony statistics -, run the model over the clips of
    many tracks at once, aggregate per track; write one Parquet file of score rows (and, given
    ``timeline_tmp_prefix``, one of clip rows)."""
    from genrecast.features import track_clips_length_harmony
    from genrecast.timeline import clip_times

    storage = Storage.from_config(cfg)
    res = ScorePartitionResult(partition=index)
    rows: dict[str, list] = {c: [] for c in SCORE_COLUMNS}
    clip_rows: dict[str, list] = {c: [] for c in TIMELINE_COLUMNS}
    predictor: Predictor | None = None
    samples: dict[str, int] = {}  # track_id -> decoded length, for the clip times

    def decoded() -> Iterator[tuple[TrackTask, str, np.ndarray | None, np.ndarray]]:
        for task, data, sha in changed_inputs(storage, tasks, res, "score"):
            t = time.perf_counter()
            try:
                clips, samples[task.track_id], stats = track_clips_length_harmony(
                    data, task.uri, cfg.audio, cfg.ingest, harmony
                )
            except Exception as exc:  # AudioRejected or a decoder bug: a reject; MemoryError: re-raised there
                res.reject_error(task, "score", exc, sha)
                continue
            finally:
                res.seconds["audio"] += time.perf_counter() - t
            yield task, sha, stats, clips  # clips last: clip_batches counts them

    for batch in clip_batches(decoded()):
        if predictor is None:  # loaded only when there is work: a no-op nightly never imports TF
            t = time.perf_counter()
            predictor = predictor_for(cfg, model_id, genres, threads)
            res.seconds["load"] += time.perf_counter() - t
        t = time.perf_counter()
        # Clip rows only for the timelines: without them a pooled model runs only its pooled clips.
        predictions = predictor.predict_all(
            [clips for _task, _sha, _h, clips in batch],
            bool(timeline_tmp_prefix),
            [h for _task, _sha, h, _clips in batch] if harmony else None,
        )
        for (task, sha, _h, clips), (clip_probs, _clip_embs, probs, emb) in zip(batch, predictions, strict=True):
            best = int(np.argmax(probs))
            if timeline_tmp_prefix:
                times = clip_times(samples.pop(task.track_id), cfg.audio)
                if len(times[0]) != len(clips):
                    raise JobError(f"{task.uri}: {len(clips)} clips but {len(times[0])} clip times")
                _add_timeline_rows(clip_rows, task.track_id, model_id, genres, clip_probs, times, sha, scored_at)
            samples.pop(task.track_id, None)
            for col, value in (
                ("track_id", task.track_id),
                ("model_id", model_id),
                ("genre", predictor.genres[best]),
                ("confidence", float(probs[best])),
                ("probabilities", probs),
                ("embedding", emb),
                ("n_clips", len(clips)),
                ("audio_sha256", sha),
                ("scored_at", scored_at),
            ):
                rows[col].append(value)
            res.tracks.append((task.track_id, sha))
            res.genres[predictor.genres[best]] += 1
            res.clips += len(clips)
        res.seconds["model"] += time.perf_counter() - t
    if res.tracks:
        t = time.perf_counter()
        res.tmp_file = f"{tmp_prefix}/part-{index:05d}.parquet"
        storage.write_parquet(res.tmp_file, scores_table(rows))
        if timeline_tmp_prefix:
            res.timeline_tmp_file = f"{timeline_tmp_prefix}/part-{index:05d}.parquet"
            storage.write_parquet(res.timeline_tmp_file, timelines_table(clip_rows))
        res.seconds["write"] += time.perf_counter() - t
    yield res


# -- driver -------------------------------------------------------------------------------
def commit_timelines(
    sc: Any,
    storage: Storage,
    tl_uri: str,
    run_id: str,
    results: Sequence[ScorePartitionResult],
    stale: dict[str, set[str]],
    replace_all: list[str],
    tl_lease: lease.TableLease,
) -> None:
    """``score.keep_timeline``, after the scores' commit: move this run's clip files in and,
    with the same journalled commit, drop the ``stale`` clip rows (``{file: track ids}``: tracks
    scored again, now rejected or gone) - or, on backfill, every file of ``replace_all``."""
    add = [
        (r.timeline_tmp_file, f"{tl_uri}/part-{run_id}-{r.partition:05d}.parquet")
        for r in results
        if r.timeline_tmp_file
    ]
    add += commit.stage_without(sc, storage, tl_uri, run_id, stale)
    commit.commit(storage, tl_uri, run_id, add, sorted(set(replace_all) | set(stale)), tl_lease)


@dataclass
class ScoreSummary:
    run_id: str
    model_id: str
    mode: str
    tracks_listed: int = 0
    scored: int = 0
    clips: int = 0
    rejected: int = 0
    skipped_unchanged: int = 0
    skipped_rejected: int = 0
    fetched: int = 0  # audio files read (the rest were known unchanged from the catalogue manifest)
    deleted: int = 0  # scored tracks gone from the listing, their rows dropped
    genres: Counter = field(default_factory=Counter)  # of the tracks scored in this run
    table_tracks: int = 0  # rows in the score table after the run
    wall_seconds: float = 0.0
    stage_seconds: Counter = field(default_factory=Counter)
    table_uri: str = ""
    rejects_uri: str = ""
    timelines_uri: str = ""  # set when score.keep_timeline

    def lines(self) -> list[str]:
        dist = ", ".join(f"{g} {n}" for g, n in sorted(self.genres.items(), key=lambda kv: (-kv[1], kv[0])))
        out = [
            f"score {self.run_id} ({self.mode}, model {self.model_id}): {self.tracks_listed} tracks listed "
            f"in {self.wall_seconds:.1f}s",
            f"  scored {self.scored} ({self.clips} clips)" + (f": {dist}" if dist else ""),
            f"  skipped {self.skipped_unchanged + self.skipped_rejected} "
            f"({self.skipped_unchanged} already scored and unchanged, {self.skipped_rejected} previously rejected)",
            f"  rejected {self.rejected}",
            f"  fetched {self.fetched} audio file(s); deleted {self.deleted} (gone from the catalogue)",
            f"  table {self.table_uri} ({self.table_tracks} tracks)",
            f"  rejects {self.rejects_uri}",
        ]
        if self.timelines_uri:
            out.append(f"  timelines {self.timelines_uri}")
        if self.stage_seconds:
            spent = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(self.stage_seconds.items()))
            out.append(f"  executor time: {spent}")
        return out


def run_score(
    cfg: Config, spark: Any, mode: str = "nightly", model: str = "latest", allow_mass_delete: bool = False
) -> ScoreSummary:
    """Score the catalogue with ``model`` (an id or ``latest``). ``nightly``: tracks without a
    score from this model or whose audio changed; ``backfill``: every track, replacing the
    table. Safe to kill and re-run: the table never holds a duplicate or half a run."""
    if mode not in MODES:
        raise ConfigError(f"score mode must be one of {', '.join(MODES)}, not {mode!r}")
    started = time.monotonic()
    storage = Storage.from_config(cfg)
    model_id = registry.resolve_model_id(cfg, model)
    meta = registry.read_model_json(cfg, model_id)
    registry.check_audio_params(meta, cfg.audio, model_id)
    genres = list(meta["genres"])
    table_uri, rj_uri = scores_uri(cfg, model_id), rejects_uri(cfg, "score", model_id)
    run_id = commit.new_run_id()
    summary = ScoreSummary(run_id, model_id, mode, table_uri=table_uri, rejects_uri=rj_uri)
    tables = [table_uri, rj_uri] + ([timelines_uri(cfg, model_id)] if cfg.score.keep_timeline else [])
    plan_tmp = commit.tmp_uri(table_uri, run_id, "plan")
    with (
        lease.hold(storage, cfg, run_id, f"score {mode}", *tables) as leases,
        planning(spark, storage, plan_tmp) as frames,
    ):
        for uri in tables:
            commit.recover(storage, uri, leases[uri])
        # train.harmony models take each track's harmony statistics: decoded beside its clips
        harmony = bool(predictor_options(meta)["harmony"])
        _score(cfg, spark, storage, summary, genres, leases, allow_mass_delete, frames, harmony)
    summary.wall_seconds = time.monotonic() - started
    return summary


def plan_score(
    tracks: Iterable[Track],
    index: dict[str, tuple[str | None, set[str]]],
    manifest: dict[str, Entry],
    rejected_shas: dict[str, str],
    backfill: bool = False,
) -> Plan:
    """Decide, from metadata alone (no Spark, no storage), which listed tracks a run fetches.

    ``index``: track_id -> (the sha256 the scores table holds, None if its rows disagree; files);
    ``manifest``: ingest's catalogue manifest; ``rejected_shas``: ``{source_uri: sha256}`` score
    rejected under the current features_key. ``backfill``: every track fetched and scored.

    Where the listing still shows the file (uri, size, ETag/mtime) a manifest row was made from,
    the row's sha256 is the file's, and a track scored (or rejected) with that sha is not
    fetched. A track ingest has not read yet (or read before it changed) is fetched and hashed.
    """
    if backfill:
        index, manifest, rejected_shas = {}, {}, {}
    plan = Plan()
    for t in tracks:
        scored_sha = index[t.track_id][0] if t.track_id in index else None
        kind = decide_score(t, manifest.get(t.track_id), scored_sha, rejected_shas.get(t.uri))
        if kind == KEPT_UNCHANGED:
            plan.skipped_unchanged += 1
        elif kind == KEPT_REJECTED:
            plan.skipped_rejected += 1
        else:
            plan.tasks.append(TrackTask(t.track_id, t.uri, skip_sha=scored_sha, rejected_sha=rejected_shas.get(t.uri)))
    plan.tasks = spread(plan.tasks)
    return plan


def decide_score(t: Track, m: Entry | None, scored_sha: str | None, rejected_sha: str | None) -> str:
    """One listed track's verdict (see :func:`plan_score`; :mod:`genrecast.score_plan` applies it
    per row on Spark): FETCH, KEPT_UNCHANGED or KEPT_REJECTED. ``m``: its manifest row;
    ``scored_sha``: the audio its score rows hold; ``rejected_sha``: audio score rejected."""
    known_sha = m.sha256 if m is not None and m.same_listing(t) else None
    if known_sha is not None and known_sha == scored_sha:
        return KEPT_UNCHANGED
    if known_sha is not None and known_sha == rejected_sha:
        return KEPT_REJECTED
    return FETCH


def _score(
    cfg: Config,
    spark: Any,
    storage: Storage,
    summary: ScoreSummary,
    genres: list[str],
    leases: dict[str, lease.TableLease],
    allow_mass_delete: bool,
    frames: list[Any],
    harmony: bool = False,
) -> None:
    """Plan on Spark (:mod:`genrecast.score_plan`), score the tracks to fetch, commit. The driver
    holds counts, the partitions' results and rejects (proportional to the change) and the
    tables' file lists."""
    from genrecast import score_plan
    from genrecast.plan_frames import known_reject_keys, stale_files, task_rdd

    table_uri, rj_uri, run_id, model_id, mode = (
        summary.table_uri,
        summary.rejects_uri,
        summary.run_id,
        summary.model_id,
        summary.mode,
    )
    backfill = mode == "backfill"
    sc = spark.sparkContext
    keep_timeline, tl_uri = cfg.score.keep_timeline, timelines_uri(cfg, model_id)
    if keep_timeline:
        summary.timelines_uri = tl_uri
    fkey = features_key(cfg.audio, cfg.ingest)
    started = time.monotonic()
    plan = score_plan.plan_on_spark(
        spark, storage, cfg, table_uri, rj_uri, tl_uri if keep_timeline else None, run_id, fkey, backfill,
        allow_mass_delete, frames,
    )  # fmt: skip
    counts = plan.counts
    summary.tracks_listed = counts.listed
    summary.deleted = plan.gone
    summary.skipped_unchanged += counts.skipped_unchanged
    summary.skipped_rejected += counts.skipped_rejected
    summary.fetched = n_tasks = counts.fetch
    log.info(
        "score %s: planned %d listed tracks: %d to fetch, in %.1fs",
        mode,
        counts.listed,
        n_tasks,
        time.monotonic() - started,
    )
    results: list[ScorePartitionResult] = []
    if n_tasks:
        n_parts = max(math.ceil(n_tasks / cfg.ingest.tracks_per_partition), min(n_tasks, 2 * sc.defaultParallelism))
        tmp_prefix = f"{table_uri}/{commit.TMP}/{run_id}"
        threads = int(sc.getConf().get("spark.task.cpus", "1"))
        scored_at = datetime.now(UTC)
        tl_tmp_prefix = f"{tl_uri}/{commit.TMP}/{run_id}" if keep_timeline else None
        rdd = task_rdd(plan.decided, n_parts).mapPartitionsWithIndex(
            lambda i, it: score_partition(
                i, it, cfg, model_id, genres, threads, scored_at, tmp_prefix, tl_tmp_prefix, harmony
            )
        )
        log.info("score %s: %d tracks, %d partitions on %s (model %s)", mode, n_tasks, n_parts, sc.master, model_id)
        from genrecast.spark import with_progress

        results = with_progress(spark, "score", rdd.collect)

    written: dict[str, str] = {}
    rejected_ids: set[str] = set()
    new_rejects: list[dict] = []
    add: list[tuple[str, str]] = []
    for r in results:
        written.update(dict(r.tracks))
        rejected_ids.update(r.rejected_ids)
        for row in r.rejects:
            if row.get("audio_sha256"):
                row["features_key"] = fkey
        summary.clips += r.clips
        summary.genres.update(r.genres)
        summary.skipped_unchanged += r.skipped_unchanged
        summary.skipped_rejected += r.skipped_rejected
        summary.stage_seconds.update(r.seconds)
        new_rejects.extend(r.rejects)
        if r.tmp_file:
            add.append((r.tmp_file, f"{table_uri}/part-{run_id}-{r.partition:05d}.parquet"))
    summary.scored = len(written)
    summary.rejected = len(new_rejects)

    # Everything that reads the listing comes before the scores' commit, which removes the
    # plan's staged listing with the run's tmp folder.
    stale: dict[str, set[str]] = {}
    tl_stale: dict[str, set[str]] = {}
    if backfill:
        remove, tl_remove = plan.old_files, plan.timeline_files
        summary.table_tracks = len(written)
    else:
        # Old rows of tracks scored again, whose changed audio is now rejected, or gone from the
        # catalogue, are stale.
        remove, tl_remove = [], []
        replaced = set(written) | rejected_ids
        if plan.old_files:
            stale = stale_files(spark, plan.index, plan.listing, replaced)
        if plan.timelines is not None and plan.timeline_files:
            tl_stale = stale_files(spark, plan.timelines, plan.listing, replaced)
        summary.table_tracks = score_plan.table_tracks(spark, plan, written, rejected_ids)
        if stale:
            add += commit.stage_without(sc, storage, table_uri, run_id, stale)
            log.info("score: replacing %d changed track(s) in %d file(s)", sum(map(len, stale.values())), len(stale))
    known_keys = set() if backfill else known_reject_keys(spark, plan.previous, [reject_key(r) for r in new_rejects])
    commit.commit(storage, table_uri, run_id, add, sorted(set(remove) | set(stale)), leases[table_uri])
    if keep_timeline:
        commit_timelines(sc, storage, tl_uri, run_id, results, tl_stale, tl_remove, leases[tl_uri])

    fresh = [r for r in new_rejects if reject_key(r) not in known_keys]
    if fresh or (backfill and plan.reject_files):
        from genrecast.schema import rejects_table

        name = f"{REJECT_PREFIX}{run_id}.parquet"
        adds = []
        if fresh:
            tmp = commit.tmp_uri(rj_uri, run_id, name)
            storage.write_parquet(tmp, rejects_table(fresh))
            adds = [(tmp, join(rj_uri, name))]
        commit.commit(storage, rj_uri, run_id, adds, plan.reject_files if backfill else [], leases[rj_uri])
    for r in fresh:
        log.warning("rejected %s (score): %s", r["source_uri"], r["reason"])
