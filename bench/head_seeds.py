"""How much a pooled head's test accuracy depends on its random seed, on a trained model's split.

The frozen backbone's features of every clip are computed once; then, per seed, the product's
head (:func:`genrecast.model.build_pooled_head`, ``compile_model``,
``vector_batches``, train's steps per epoch) trains as ``train`` does with ``refit``: early
stopping on the validation tracks (patience from the config), then a fresh head on train +
validation for the best epoch count, on the model's ``pool_clips``. One process, one worker
(train's job runs two workers on half batches each: the same global batch). Printed: test track
accuracy per seed (with the refit's epochs), their mean / spread, the validation accuracy early
stopping chose by (what a setting may be chosen on), and a standardised logistic regression on
the same rows (train + val). The dataset must have been ingested with the
backbone's audio profile.

``--harmony N`` appends each track's harmony statistics (``bench/harmony_probe.py``) to its
pooled row N times (its weight against the backbone's columns), with the head's layers on the
wider row. The clip features come from ``bench/group_curve.py``'s cache (computed there when
missing).

Usage (environment as for the training run, e.g. GENRECAST__STORAGE__ROOT=... GENRECAST__AUDIO__...):
  .venv/bin/python bench/head_seeds.py --conf conf/backbone.yaml --model MODEL_ID [--seeds 6] [--harmony N]
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
    parser.add_argument(
        "--harmony", type=int, default=0, metavar="N",
        help="append each track's harmony statistics (bench/harmony_probe.py, whole track) to its pooled row, N times",
    )
    parser.add_argument("--cache", default="data/bench-group-curve.npz", help="clip features (bench/group_curve.py)")
    parser.add_argument(
        "--split-seed", type=int, default=None,
        help="rebuild the split with this seed (split.assign_splits, as bench/harmony_probe.py); default: the model's",
    )
    args = parser.parse_args()

    import tensorflow as tf
    from group_curve import split_features  # bench/, beside this script
    from harmony_probe import catalogue_harmony

    from genrecast import registry, report
    from genrecast.config import load_config
    from genrecast.model import _head, build_pooled_head, compile_model, keras, pool_clip_features, pool_indices
    from genrecast.train_worker import vector_batches

    tf.config.threading.set_intra_op_parallelism_threads(1)
    cfg = load_config(args.conf)
    meta = registry.read_model_json(cfg, args.model)
    genres, assignment = meta["genres"], registry.read_split(cfg, args.model, meta)
    pool_clips = meta["training"].get("pool_clips", 0) if args.pool_clips is None else args.pool_clips
    name = meta["backbone"]["name"]
    data = split_features(cfg, args.model, name, args.cache)  # by (track, clip): time order
    feats, y, ids = data["feats"], data["labels"], data["ids"]
    print(f"{len(ids)} clips of {len(set(ids))} tracks through {name}")

    tracks = sorted(set(ids))
    positions: dict[str, list[int]] = {t: [] for t in tracks}
    for i, t in enumerate(ids):
        positions[t].append(i)
    rows = {t: np.asarray(positions[t]) for t in tracks}
    xs = np.stack([pool_clip_features(feats[rows[t][pool_indices(len(rows[t]), pool_clips)]]) for t in tracks])
    ys = np.asarray([int(y[rows[t][0]]) for t in tracks])
    if args.harmony:
        # The head's batch-norm standardises every column, so repeating the block is what weighs
        # it against the backbone's columns (1906 for musicnn-msd; bench/harmony_probe.py weighs it).
        xs = np.concatenate([xs] + [catalogue_harmony(cfg, tracks)] * args.harmony, axis=1)
    if args.split_seed is not None:
        from group_curve import labelled_tracks

        from genrecast.split import assign_splits

        labelled = labelled_tracks(cfg, tracks, genres)
        assignment = assign_splits(labelled, cfg.train.split.test, cfg.train.split.val, args.split_seed)
    side = np.asarray([assignment[t] for t in tracks])
    tr, va, te = side == "train", side == "val", side == "test"
    tv = tr | va
    batch = cfg.train.batch_size
    print(
        f"split{'' if args.split_seed is None else f' seed {args.split_seed}'}: {tr.sum()} train / {va.sum()} val /"
        f" {te.sum()} test tracks; pool_clips {pool_clips}; batch {batch};"
        f" row width {xs.shape[1]}{f' (harmony x {args.harmony})' if args.harmony else ''}"
    )

    k = keras()

    def head() -> object:
        if args.harmony:  # the pooled head's layers on the wider row
            rows_in = k.Input(shape=(xs.shape[1],), name="pooled_features")
            net = k.Model(rows_in, _head(rows_in, len(genres), cfg.train.embedding_dim, 0.3), name="head")
        else:
            net = build_pooled_head(feats.shape[1], len(genres), cfg.train.embedding_dim)
        return compile_model(net, cfg.train.learning_rate)

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
    accs, chosen, best_val = [], [], []
    for seed in range(args.seeds):
        k.utils.set_random_seed(seed)
        val_acc = fit(head(), tr, seed, cfg.train.epochs, val=True)
        chosen.append(int(np.argmax(val_acc)) + 1)
        best_val.append(max(val_acc))
        k.utils.set_random_seed(seed)
        model = head()
        fit(model, tv, seed, chosen[-1], val=False)
        accs.append(float(np.mean(model.predict(xs[te], verbose=0).argmax(axis=1) == ys[te])))
    cells = " ".join(f"{a:.2f}@{e}" for a, e in zip(accs, chosen, strict=True))
    print(f"{np.mean(accs):6.3f} {min(accs):6.3f} {max(accs):6.3f}   {cells}", flush=True)
    # What a product may choose by: the validation tracks' best accuracy in early stopping.
    print(f"validation accuracy at the chosen epoch: mean {np.mean(best_val):.3f} (min {min(best_val):.3f})")


if __name__ == "__main__":
    main()
