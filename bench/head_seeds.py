"""How much a pooled head's test accuracy depends on its random seed, on a trained model's split.

The frozen backbone's features of every clip are computed once; then, per seed, the product's
head (:func:`genrecast.model.build_pooled_head`, ``compile_model``,
``vector_batches``, train's steps per epoch) trains as ``train`` does with ``refit``: early
stopping on the validation tracks (patience from the config), then a fresh head on train +
validation for the best epoch count, on the model's ``pool_clips``. One process, one worker
(train's job runs two workers on half batches each: the same global batch). Printed: test track
accuracy per seed (with the refit's epochs), their mean / spread, and a standardised logistic
regression on the same rows (train + val). The dataset must have been ingested with the
backbone's audio profile.

Usage (environment as for the training run, e.g. GENRECAST__STORAGE__ROOT=... GENRECAST__AUDIO__...):
  .venv/bin/python bench/head_seeds.py --conf conf/backbone.yaml --model MODEL_ID [--seeds 6]
"""

from __future__ import annotations

import argparse
import math

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conf", default="conf/backbone.yaml")
    parser.add_argument("--model", required=True, help="model id whose split (model.json) is used")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--pool-clips", type=int, default=None, help="default: the model's training.pool_clips")
    args = parser.parse_args()

    import tensorflow as tf
    from backbone_probe import clip_features  # bench/, beside this script

    from genrecast import registry, report
    from genrecast.config import load_config
    from genrecast.model import build_pooled_head, compile_model, keras, pool_clip_features, pool_indices
    from genrecast.train_worker import load_clips, vector_batches

    tf.config.threading.set_intra_op_parallelism_threads(1)
    cfg = load_config(args.conf)
    meta = registry.read_model_json(cfg, args.model)
    genres, assignment = meta["genres"], registry.read_split(cfg, args.model, meta)
    pool_clips = meta["training"].get("pool_clips", 0) if args.pool_clips is None else args.pool_clips
    x, y, ids = load_clips(cfg, sorted(assignment), genres)  # by (track, clip): time order
    name = meta["backbone"]["name"]
    feats, ms = clip_features(name, x)
    print(f"{len(ids)} clips of {len(set(ids))} tracks through {name}: {ms:.0f} ms a clip")

    tracks = sorted(set(ids))
    positions: dict[str, list[int]] = {t: [] for t in tracks}
    for i, t in enumerate(ids):
        positions[t].append(i)
    rows = {t: np.asarray(positions[t]) for t in tracks}
    xs = np.stack([pool_clip_features(feats[rows[t][pool_indices(len(rows[t]), pool_clips)]]) for t in tracks])
    ys = np.asarray([int(y[rows[t][0]]) for t in tracks])
    side = np.asarray([assignment[t] for t in tracks])
    tr, va, te = side == "train", side == "val", side == "test"
    tv = tr | va
    batch = cfg.train.batch_size
    print(f"split: {tr.sum()} train / {va.sum()} val / {te.sum()} test tracks; pool_clips {pool_clips}; batch {batch}")

    k = keras()

    def head() -> object:
        return compile_model(
            build_pooled_head(feats.shape[1], len(genres), cfg.train.embedding_dim), cfg.train.learning_rate
        )

    def fit(model: object, mask: np.ndarray, seed: int, epochs: int, val: bool) -> list[float]:
        steps = max(1, math.ceil(int(mask.sum()) / batch))  # as train's steps and refit_steps
        callbacks = [k.callbacks.EarlyStopping("val_accuracy", mode="max", patience=cfg.train.patience)] if val else []
        history = model.fit(
            vector_batches(xs[mask], ys[mask], batch, seed=seed),
            epochs=epochs,
            steps_per_epoch=steps,
            validation_data=(xs[va], ys[va]) if val else None,
            callbacks=callbacks,
            verbose=0,
        )
        return history.history.get("val_accuracy", [])

    baseline = report.baseline_mfcc_logreg(xs[tv], ys[tv], xs[te])  # standardised logistic regression
    print(f"\nlogistic regression on the same rows (train + val): {np.mean(baseline == ys[te]):.3f}")
    print(f"{'mean':>6} {'min':>6} {'max':>6}   per seed: accuracy@refit epochs (early stop on val)")
    accs, chosen = [], []
    for seed in range(args.seeds):
        k.utils.set_random_seed(seed)
        val_acc = fit(head(), tr, seed, cfg.train.epochs, val=True)
        chosen.append(int(np.argmax(val_acc)) + 1)
        k.utils.set_random_seed(seed)
        model = head()
        fit(model, tv, seed, chosen[-1], val=False)
        accs.append(float(np.mean(model.predict(xs[te], verbose=0).argmax(axis=1) == ys[te])))
    cells = " ".join(f"{a:.2f}@{e}" for a, e in zip(accs, chosen, strict=True))
    print(f"{np.mean(accs):6.3f} {min(accs):6.3f} {max(accs):6.3f}   {cells}", flush=True)


if __name__ == "__main__":
    main()
