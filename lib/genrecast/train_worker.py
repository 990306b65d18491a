"""One TensorFlow worker of a distributed training run: ``python -m genrecast.train_worker SPEC``.

Started by a Spark barrier task (see :mod:`genrecast.train`) in a fresh process with
``TF_CONFIG`` set, so TensorFlow's collective runtime starts clean every run (a reused Spark
Python worker cannot re-initialise MultiWorkerMirroredStrategy). Reads its own Petastorm shard
of the train split (``cur_shard``/``shard_count``) and its own validation tracks
(``val_shards[rank]``), both streamed: the worker holds reader and tf.data buffers, never a
split. Trains with ``MultiWorkerMirroredStrategy`` and writes a JSON result (with its peak
RSS). The chief (worker 0) saves the model; the others save to a scratch directory, as
MultiWorkerMirroredStrategy requires every worker to take part in saving.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def log(rank: int, msg: str) -> None:
    print(f"[train worker {rank}] {msg}", file=sys.stderr, flush=True)


def _reader(cfg: Any, tracks: list[str], fields: list[str] | None = None, **kwargs: Any) -> Any:
    from petastorm.predicates import in_set

    from genrecast.dataset import make_mel_reader

    fields = fields or ["track_id", "genre", "mel"]
    return make_mel_reader(cfg, schema_fields=fields, predicate=in_set(set(tracks), "track_id"), **kwargs)


def load_clips(cfg: Any, tracks: list[str], genres: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """All clips of ``tracks`` in memory: (n, n_mels, frames) float32, (n,) int32 labels, track ids,
    ordered by track id, then time (clip index).

    Not used by training (streamed): for notebooks, benches and tests on a few tracks."""
    index = {g: i for i, g in enumerate(genres)}
    rows = []
    if tracks:
        fields = ["track_id", "clip_index", "genre", "mel"]
        with _reader(cfg, tracks, fields, num_epochs=1, shuffle_row_groups=False, workers_count=2) as reader:
            rows = sorted(((r.track_id, int(r.clip_index)), r.mel, index[r.genre]) for r in reader)
    if not rows:
        return np.zeros((0, cfg.audio.n_mels, cfg.audio.clip_frames), np.float32), np.zeros(0, np.int32), []
    xs = np.stack([mel for _key, mel, _y in rows]).astype(np.float32)
    return xs, np.asarray([y for _k, _m, y in rows], np.int32), [key[0] for key, _m, _y in rows]


def _sharded_by_us(ds: Any, prefetch: int) -> Any:
    """``ds`` with tf.data's auto-sharding off, prefetched: sharding is ours (petastorm row
    groups, val_shards, train_shards), tf.data must not shard again."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options).prefetch(prefetch)


def _batches(
    reader: Any,
    genres: list[str],
    batch: int,
    shuffle: tuple[int, int] | None = None,
    augment: Any = None,
    aug: tuple[int, int, int] | None = None,
    balance_counts: list[int] | None = None,
) -> Any:
    """A Petastorm reader -> tf.data (mel, label) batches of ``batch`` (remainder dropped),
    shuffled through a buffer with ``shuffle=(buffer, seed)``. ``augment`` (an AugmentConf) with
    ``aug=(n_mels, frames, seed)`` adds its stages (:mod:`genrecast.augment`, train batches);
    without ``aug`` it only makes labels one-hot when mixup is on (validation batches).
    ``balance_counts``: clips per genre of the split, for class-balanced batches."""
    import tensorflow as tf
    from petastorm.tf_utils import make_petastorm_dataset

    from genrecast import augment as stages

    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(genres), tf.range(len(genres), dtype=tf.int32)),
        default_value=-1,
    )
    ds = make_petastorm_dataset(reader).map(lambda r: (r.mel, table.lookup(r.genre)), num_parallel_calls=2)
    onehot = augment is not None and stages.needs_onehot(augment)
    if balance_counts is not None:
        ds = stages.balance(ds, balance_counts, aug[2] if aug else 0)
    if shuffle is not None:
        ds = ds.shuffle(shuffle[0], seed=shuffle[1])
    if aug is not None and augment.use:
        ds = ds.map(stages.clip_augmenter(augment, *aug), num_parallel_calls=2)
    if onehot:
        ds = ds.map(stages.onehot(len(genres)))
    ds = ds.batch(batch, drop_remainder=True)
    if aug is not None and onehot:
        ds = ds.map(stages.batch_mixup(augment.mixup_alpha, aug[2]))
    return _sharded_by_us(ds, prefetch=4)


def train_dataset(cfg: Any, spec: dict[str, Any], per_replica_batch: int) -> Any:
    """Endless shuffled (mel, label) batches from this worker's Petastorm shard of the train
    split, augmented as ``train.augment`` says."""
    reader = _reader(
        cfg,
        spec["train_tracks"],
        num_epochs=None,
        cur_shard=spec["rank"],
        shard_count=spec["workers"],
        shuffle_row_groups=True,
        seed=spec["seed"] + spec["rank"],
        workers_count=2,
    )
    conf = cfg.train.augment
    shuffle = (spec["shuffle_buffer"], spec["seed"])
    aug = (cfg.audio.n_mels, cfg.audio.clip_frames, spec["seed"] + spec["rank"])  # own draws per worker
    counts = spec["train_genre_clips"] if conf.balanced else None
    return _batches(reader, spec["genres"], per_replica_batch, shuffle, conf, aug, counts), reader


def val_dataset(cfg: Any, spec: dict[str, Any], per_replica_batch: int) -> Any:
    """Endless (mel, label) batches of this worker's validation tracks (``val_shards[rank]``, a
    predicate on track_id over the whole dataset: every worker gets clips, whatever the row
    groups), in storage order, never augmented. Keras takes ``validation_steps`` batches a run on
    every worker (enough for the largest shard; a smaller one repeats some clips) and all-reduces
    the metrics."""
    reader = _reader(cfg, spec["val_shards"][spec["rank"]], num_epochs=None, shuffle_row_groups=False, workers_count=2)
    return _batches(reader, spec["genres"], per_replica_batch, augment=cfg.train.augment), reader


def pooled_clip_outputs(
    cfg: Any,
    tracks: list[str],
    genres: list[str],
    fn: Any,
    batch: int,
    pool_clips: int,
    clip_counts: dict[str, int],
) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, float]]:
    """``train.head: pooled``: the clips of ``tracks`` streamed from Petastorm; those a pooled
    head pools (:func:`genrecast.model.pool_indices` of the track's clip count in
    ``clip_counts``, as the driver counted them; ``pool_clips`` 0: all) go through ``fn`` (a
    callable (b, n_mels, frames) -> (b, ...)), ``batch`` clips a call. Returns per track its
    outputs stacked in time order, (n_tracks,) int32 labels in ``tracks`` order, and the counts
    and seconds (clips read, clips through ``fn``, reading, model). Holds the outputs of the
    pooled clips, never a clip: for the frozen features 3.8 KB a clip (musicnn)."""
    from genrecast.model import pool_indices, stack_in_time_order

    index = {g: i for i, g in enumerate(genres)}
    wanted = {t: set(pool_indices(clip_counts[t], pool_clips).tolist()) for t in tracks}
    outs: dict[str, list[tuple[int, np.ndarray]]] = {t: [] for t in tracks}
    read: dict[str, int] = dict.fromkeys(tracks, 0)
    label: dict[str, int] = {}
    stats = {"read_clips": 0, "clips": 0, "read_s": 0.0, "model_s": 0.0}
    pending: list[tuple[str, int, np.ndarray]] = []

    def flush() -> None:
        t0 = time.perf_counter()
        out = np.asarray(fn(np.stack([m for _t, _i, m in pending]).astype(np.float32)))
        stats["model_s"] += time.perf_counter() - t0
        for (track_id, clip, _m), row in zip(pending, out, strict=True):
            outs[track_id].append((clip, row))
        stats["clips"] += len(pending)
        pending.clear()

    if tracks:
        fields = ["track_id", "clip_index", "genre", "mel"]
        with _reader(cfg, tracks, fields, num_epochs=1, shuffle_row_groups=False, workers_count=2) as reader:
            t0 = time.perf_counter()
            for row in reader:
                stats["read_s"] += time.perf_counter() - t0
                read[row.track_id] += 1
                label[row.track_id] = index[row.genre]
                stats["read_clips"] += 1
                if int(row.clip_index) in wanted[row.track_id]:
                    pending.append((row.track_id, int(row.clip_index), row.mel))
                    if len(pending) >= batch:
                        flush()
                t0 = time.perf_counter()
    if pending:
        flush()
    # The driver counted each track's clips in the same dataset: a difference means it changed.
    wrong = [t for t in tracks if read[t] != clip_counts[t] or len(outs[t]) != len(wanted[t])]
    if wrong:
        t = wrong[0]
        raise RuntimeError(
            f"track {t}: read {read[t]} clips, the driver counted {clip_counts[t]} "
            f"({len(wrong)} track(s) differ): the mel dataset changed during training"
        )
    stacked = {t: stack_in_time_order(outs[t]) for t in tracks}
    return stacked, np.asarray([label[t] for t in tracks], np.int32), stats


def through(fn: Any, arrays: list[np.ndarray], batch: int) -> list[np.ndarray]:
    """``fn`` over the rows of every array, ``batch`` rows a call -> its outputs split back."""
    if not arrays:
        return []
    rows = np.concatenate(arrays)
    out = np.concatenate([np.asarray(fn(rows[i : i + batch])) for i in range(0, len(rows), batch)])
    return np.split(out, np.cumsum([len(a) for a in arrays])[:-1])


def padded_clips(outputs: list[np.ndarray], pool_clips: int) -> tuple[np.ndarray, np.ndarray]:
    """Per track its pooled clips' arrays (p <= ``pool_clips``, ...) -> (n, pool_clips, ...)
    zero-padded and the (n, pool_clips) float32 mask, 1 for a real clip: the input of
    :func:`genrecast.model.build_finetune_trainer`."""
    shape = outputs[0].shape[1:]
    acts = np.zeros((len(outputs), pool_clips, *shape), np.float32)
    mask = np.zeros((len(outputs), pool_clips), np.float32)
    for i, out in enumerate(outputs):
        acts[i, : len(out)] = out
        mask[i, : len(out)] = 1.0
    return acts, mask


def vector_batches(x: Any, y: np.ndarray, batch: int, seed: int | None = None) -> Any:
    """In-memory track rows (an array, or a tuple of arrays: the finetune trainer's inputs) ->
    endless tf.data (rows, label) batches of ``batch`` (shuffled every pass with ``seed``;
    ``None``: in order, for validation)."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if seed is not None:
        ds = ds.shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
    return _sharded_by_us(ds.repeat().batch(batch, drop_remainder=True), prefetch=2)


def full_batches(x: Any, y: np.ndarray, batch: int, weight: float) -> Any:
    """In-memory rows (an array, or a tuple of arrays) -> endless tf.data of one batch, all of
    them every step (``train.classifier: logistic``), each row of sample weight ``weight``:
    padded to ``batch`` rows by repeating the first rows with weight 0, so every worker's step
    has the same size."""
    import tensorflow as tf

    n = len(y)
    if not 0 < n <= batch:
        raise ValueError(f"full batch of {batch} rows for {n} rows")
    pick = np.concatenate([np.arange(n), np.arange(batch - n) % n])
    rows = tuple(a[pick] for a in x) if isinstance(x, tuple) else x[pick]
    weights = np.where(np.arange(batch) < n, weight, 0.0).astype(np.float32)
    return _sharded_by_us(tf.data.Dataset.from_tensors((rows, y[pick], weights)).repeat(), prefetch=2)


def harmony_rows(stats: dict[str, list[float]], tracks: list[str]) -> np.ndarray:
    """(len(tracks), 53) float32: the harmony statistics of ``tracks`` (``train.harmony``)."""
    from genrecast.harmony import N_FEATURES

    return np.asarray([stats[t] for t in tracks], np.float32).reshape(len(tracks), N_FEATURES)


def concat_rows(a: Any, b: Any) -> Any:
    """Two sets of track rows -> one: arrays, or tuples of arrays (a head with two inputs)."""
    if isinstance(a, tuple):
        return tuple(np.concatenate(pair) for pair in zip(a, b, strict=True))
    return np.concatenate([a, b])


def peak_rss_mb() -> float | None:
    """This process's peak resident set (``VmHWM``), MiB; None off Linux."""
    try:
        with open("/proc/self/status") as fh:
            kib = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None
    return kib / 1024


def run(spec: dict[str, Any]) -> dict[str, Any]:
    import tensorflow as tf

    from genrecast.config import Config
    from genrecast.model import (
        LOGISTIC_LEARNING_RATE,
        build_backbone_model,
        build_finetune_trainer,
        build_model,
        build_pooled_model,
        compile_model,
        finetune_parts,
        keras,
        pool_clip_features,
        pooled_parts,
        weights_digest,
    )

    rank, workers = spec["rank"], spec["workers"]
    threads = int(spec.get("threads", 1))
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(max(1, threads))
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    cfg = Config.model_validate(spec["config"])
    tf.keras.utils.set_random_seed(spec["seed"])  # same initial weights on every worker
    k = keras()

    # The same on every worker (train.val_shards gives all of them tracks, or none): a worker
    # that skipped validation would leave the others waiting in its collectives.
    has_val = bool(spec["val_shards"][rank]) and spec["validation_steps"] > 0
    log(
        rank,
        f"training on shard {rank + 1}/{workers}; {len(spec['val_shards'][rank])} validation tracks, "
        f"{spec['validation_steps']} validation steps",
    )
    global_batch = spec["batch_size"]
    per_replica = max(1, global_batch // strategy.num_replicas_in_sync)
    readers = []

    def dataset_fn(input_context: Any) -> Any:
        ds, reader = train_dataset(cfg, spec, input_context.get_per_replica_batch_size(global_batch))
        readers.append(reader)
        return ds

    def val_fn(input_context: Any) -> Any:
        ds, reader = val_dataset(cfg, spec, input_context.get_per_replica_batch_size(global_batch))
        readers.append(reader)
        return ds

    logistic = spec.get("logistic") or {}

    def train_rows(x: Any, y: np.ndarray, full_batch: tuple[int, float] | None = None) -> Any:
        """In-memory track rows -> a DatasetCreator function: shuffled batches of this worker's
        share, or (``full_batch`` = (rows, weight): train.classifier logistic) all of it every step."""
        if full_batch:
            return lambda _ctx: full_batches(x, y, *full_batch)
        return lambda ctx: vector_batches(x, y, ctx.get_per_replica_batch_size(global_batch), seed=spec["seed"] + rank)

    def val_rows(x: Any, y: np.ndarray) -> Any:
        """In-memory validation rows -> a DatasetCreator function: one batch of the worker's tracks, in order."""
        return lambda _ctx: vector_batches(x, y, spec["val_batch"])

    def compile_fit(net: Any, steps: int) -> Any:
        """The model that trains (the CNN, or a pooled model's head), compiled: at
        train.learning_rate, or for the logistic head from its rate cosine-decayed over its ``steps``."""
        from genrecast.augment import needs_onehot

        rate, decay = (LOGISTIC_LEARNING_RATE, steps) if logistic else (spec["learning_rate"], 0)
        return compile_model(net, rate, onehot=needs_onehot(cfg.train.augment), decay_steps=decay)

    backbone = spec.get("backbone", "scratch")
    pooled = spec.get("head", "clip") == "pooled"
    with strategy.scope():
        if backbone == "scratch":
            net = build_model(
                cfg.audio.n_mels,
                cfg.audio.clip_frames,
                len(spec["genres"]),
                np.asarray(spec["band_mean"]),
                np.asarray(spec["band_std"]),
                embedding_dim=spec["embedding_dim"],
            )
        elif pooled:
            net = build_pooled_model(
                cfg.audio.n_mels,
                cfg.audio.clip_frames,
                len(spec["genres"]),
                backbone,
                spec["embedding_dim"],
                harmony=int(spec.get("harmony", 0)),
                logistic_l2=logistic.get("l2"),
            )
        else:
            net = build_backbone_model(
                cfg.audio.n_mels, cfg.audio.clip_frames, len(spec["genres"]), backbone, spec["embedding_dim"]
            )
        # Pooled: only the nested head trains (on track rows); `model` is what is saved.
        fit_model = compile_fit(pooled_parts(net)[1] if pooled else net, spec["steps_per_epoch"])
        model = net
    initial = fit_model.get_weights() if spec.get("refit_steps") else None  # train.refit's fresh head
    feature_pass: dict[str, float] = {}
    depth = int(spec.get("finetune", 0))
    if pooled:
        # Frozen features of the pooled clips, pooled per track, once: every epoch then reads the
        # rows from memory. train.finetune: the clips go through the backbone's frozen lower part
        # once, and its output is kept (the fine-tuned upper part starts from it every epoch).
        pool_clips = spec.get("pool_clips", 0)
        features = pooled_parts(net)[0]
        if depth:
            lower, upper = finetune_parts(net, depth)
            upper_initial = upper.get_weights()
        clip_fn = tf.function(
            lambda x: (lower if depth else features)(x, training=False),
            input_signature=[tf.TensorSpec((None, cfg.audio.n_mels, cfg.audio.clip_frames), tf.float32)],
        )
        t0 = time.perf_counter()
        clip_counts = spec["track_clips"]
        out_train, y_train, feature_pass = pooled_clip_outputs(
            cfg, spec["train_shards"][rank], spec["genres"], clip_fn, 64, pool_clips, clip_counts
        )
        out_val, y_val, val_pass = pooled_clip_outputs(
            cfg, spec["val_shards"][rank], spec["genres"], clip_fn, 64, pool_clips, clip_counts
        )
        for key, value in val_pass.items():
            feature_pass[key] += value
        train_outs = [out_train[t] for t in spec["train_shards"][rank]]
        val_outs = [out_val[t] for t in spec["val_shards"][rank]]
        del out_train, out_val
        if depth:
            upper_fn = tf.function(lambda x: upper(x, training=False))
            train_feats, val_feats = through(upper_fn, train_outs, 64), through(upper_fn, val_outs, 64)
        else:
            train_feats, val_feats = train_outs, val_outs
        x_train = np.stack([pool_clip_features(f) for f in train_feats])
        x_val = np.stack([pool_clip_features(f) for f in val_feats]) if val_feats else np.zeros((0, x_train.shape[1]))
        if spec.get("harmony"):  # the head's second input: each track's harmony statistics (the driver's pass)
            x_train = (x_train, harmony_rows(spec["track_harmony"], spec["train_shards"][rank]))
            x_val = (x_val, harmony_rows(spec["track_harmony"], spec["val_shards"][rank]))
        feature_pass["seconds"] = time.perf_counter() - t0
        log(
            rank,
            f"pooled features of {len(y_train)} train / {len(y_val)} validation tracks "
            f"({int(feature_pass['clips'])} of {int(feature_pass['read_clips'])} clips) in "
            f"{feature_pass['seconds']:.1f}s",
        )

        full = (logistic["batch"], logistic["weight"]) if logistic else None
        dataset_fn, val_fn = train_rows(x_train, y_train, full), val_rows(x_val, y_val)

    if rank == 0:
        trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
        log(rank, f"model {model.name}: {model.count_params():,} parameters, {trainable:,} trainable")

    class EpochLog(k.callbacks.Callback):
        def __init__(self, stage: str = "epoch", total: int = spec["epochs"]) -> None:
            super().__init__()
            self.stage, self.total = stage, total

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            secs = time.perf_counter() - self.t0
            clips = spec["steps_per_epoch"] * logistic.get("batch", per_replica)  # tracks, for a pooled head
            logs = logs or {}
            if rank == 0:
                log(
                    rank,
                    f"{self.stage} {epoch + 1}/{self.total}: loss {logs.get('loss', 0):.3f} "
                    f"acc {logs.get('accuracy', 0):.3f} val_loss {logs.get('val_loss', float('nan')):.3f} "
                    f"val_acc {logs.get('val_accuracy', float('nan')):.3f} {secs:.1f}s "
                    f"({clips / secs:.0f} {'tracks' if pooled else 'clips'}/s per worker)",
                )
            epoch_seconds.append(secs)

    epoch_seconds: list[float] = []

    def fit_early_stopped(net: Any, train_fn: Any, val_fn: Any, epochs: int, epoch_log: Any) -> Any:
        """``net.fit`` for up to ``epochs``, early-stopped on validation when there is some."""
        callbacks = [epoch_log]
        if has_val:
            callbacks.append(
                # Accuracy, not loss: on held-out artists val_loss climbs with over-confidence long
                # before accuracy stops improving (seen on the demo catalogue).
                k.callbacks.EarlyStopping(
                    monitor="val_accuracy", mode="max", patience=spec["patience"], restore_best_weights=True
                )
            )
        return net.fit(
            k.utils.experimental.DatasetCreator(train_fn),
            epochs=epochs,
            steps_per_epoch=spec["steps_per_epoch"],
            validation_data=k.utils.experimental.DatasetCreator(val_fn) if has_val else None,
            validation_steps=spec["validation_steps"] if has_val else None,
            callbacks=callbacks,
            verbose=0,
        )

    history = fit_early_stopped(fit_model, dataset_fn, val_fn, spec["epochs"], EpochLog())
    finetune_epochs = None
    if depth:
        # train.finetune: the head has trained on frozen features; now the backbone's upper part
        # trains with it, slower, from the kept lower-part outputs. Validation keeps the result
        # only where it beats the head alone (all-reduced accuracy: every worker decides alike).
        acts_train, mask_train = padded_clips(train_outs, pool_clips)
        acts_val, mask_val = padded_clips(val_outs, pool_clips) if val_outs else (None, None)
        del train_outs, val_outs  # held once, padded
        with strategy.scope():
            trainer = build_finetune_trainer(upper, fit_model, pool_clips)
            trainer = compile_model(trainer, spec["finetune_learning_rate"])
        head_before = fit_model.get_weights()

        ft_history = fit_early_stopped(
            trainer,
            train_rows((acts_train, mask_train), y_train),
            val_rows((acts_val, mask_val), y_val),
            spec["finetune_epochs"],
            EpochLog("finetune epoch", spec["finetune_epochs"]),
        )
        scores = ft_history.history.get("val_accuracy") or []
        head_best = max(history.history.get("val_accuracy") or [0.0])
        if has_val and max(scores, default=0.0) <= head_best:
            upper.set_weights(upper_initial)
            fit_model.set_weights(head_before)
            finetune_epochs = 0
        else:
            finetune_epochs = int(np.argmax(scores)) + 1 if scores else len(ft_history.epoch)
        for key, values in ft_history.history.items():
            history.history[f"finetune_{key}"] = values
        log(
            rank,
            f"finetune (depth {depth}): best val_acc {max(scores, default=float('nan')):.3f} against the head's "
            f"{head_best:.3f}: keeping {finetune_epochs} epochs",
        )
    refit_epochs = None
    if pooled and spec.get("refit_steps") and has_val:
        # train.refit: validation chose the epoch count (its all-reduced accuracy is the same on
        # every worker); a fresh head and optimiser now train that long on train + validation.
        scores = history.history.get("val_accuracy") or [0.0]
        refit_epochs = int(np.argmax(scores)) + 1
        x_all, y_all = concat_rows(x_train, x_val), np.concatenate([y_train, y_val])
        with strategy.scope():
            fit_model.set_weights(initial)
            if depth:
                upper.set_weights(upper_initial)
            fit_model = compile_fit(fit_model, spec["refit_steps"])

        t0 = time.perf_counter()
        fit_model.fit(
            k.utils.experimental.DatasetCreator(train_rows(
                x_all, y_all, (logistic["refit_batch"], logistic["refit_weight"]) if logistic else None
            )),
            epochs=refit_epochs,
            steps_per_epoch=spec["refit_steps"],
            verbose=0,
        )
        if finetune_epochs:
            # The fine-tuned upper part too, from its pretrained weights (x_all was computed with
            # them), for the epochs validation chose, on the train + validation tracks.
            rows = (np.concatenate([acts_train, acts_val]), np.concatenate([mask_train, mask_val]))
            with strategy.scope():  # a fresh optimiser; the trainer shares upper's and the head's weights
                trainer = compile_model(trainer, spec["finetune_learning_rate"])
            trainer.fit(
                k.utils.experimental.DatasetCreator(train_rows(rows, y_all)),
                epochs=finetune_epochs,
                steps_per_epoch=spec["refit_steps"],
                verbose=0,
            )
        log(
            rank,
            f"refit on {len(y_all)} train + validation tracks for {refit_epochs} epochs"
            f"{f' + {finetune_epochs} finetune epochs' if finetune_epochs else ''} in "
            f"{time.perf_counter() - t0:.1f}s",
        )
    train_seconds = float(sum(epoch_seconds))
    if pooled:  # clips through the frozen backbone (the cost), per second of features + fit; reading alone
        train_clips_per_s = feature_pass["clips"] / max(feature_pass["seconds"] + train_seconds, 1e-9)
        pipeline_clips_per_s = feature_pass["clips"] / max(feature_pass["read_s"], 1e-9)
    else:
        train_clips_per_s = spec["steps_per_epoch"] * per_replica * len(epoch_seconds) / max(train_seconds, 1e-9)
        # Input pipeline alone, same batches: does it keep up with training?
        probe_ds, probe_reader = train_dataset(cfg, spec, per_replica)
        probe_batches = min(20, spec["steps_per_epoch"])
        t0 = time.perf_counter()
        for _ in probe_ds.take(probe_batches):
            pass
        pipeline_clips_per_s = probe_batches * per_replica / (time.perf_counter() - t0)
        probe_reader.stop()
        probe_reader.join()

    out_dir = spec["out_dir"] if rank == 0 else os.path.join(spec["scratch_dir"], f"worker{rank}")
    os.makedirs(out_dir, exist_ok=True)
    model.save(os.path.join(out_dir, "model.keras"))
    for reader in readers:
        reader.stop()
        reader.join()
    return {
        "rank": rank,
        "weights_sha256": weights_digest(model),
        "epochs_run": len(history.history["loss"]),  # train.finetune's epochs are apart
        "history": {key: [float(v) for v in vals] for key, vals in history.history.items()},
        "epoch_seconds": epoch_seconds,
        "train_clips_per_s": train_clips_per_s,
        "pipeline_clips_per_s": pipeline_clips_per_s,
        "params": int(model.count_params()),
        "peak_rss_mb": peak_rss_mb(),
        "feature_pass": feature_pass,  # pooled head: clips, read_s, model_s, seconds; {} otherwise
        "refit_epochs": refit_epochs,  # train.refit: epochs on train + validation; None otherwise
        "finetune_epochs": finetune_epochs,  # train.finetune: epochs kept (0: the head alone won); None: off
    }


def main(argv: list[str]) -> int:
    with open(argv[0]) as fh:
        spec = json.load(fh)
    result = run(spec)
    with open(spec["result_path"], "w") as fh:
        json.dump(result, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
