"""Harmony statistics beside the frozen backbone's features: do they reach groups never heard?

``bench/group_curve.py`` found the frozen musicnn-msd features (and MFCC statistics) short even
when every group is heard. This probe adds a small key-invariant harmony descriptor of each track
(``genrecast.harmony.harmony_stats``: 53 numbers from its chroma) and runs the probe's standardised logistic
regression on every labelled track of a model's split:

- **leave one group out** over all tracks (each group predicted by a model fitted on all others);
- **test tracks of split seeds 0, 1, 2** (the train job's leak-free split, rebuilt with
  ``split.assign_splits`` from the labels; seed 0 is checked against the model's split.parquet),
  fitted on train + validation, with the harmony block's weight and the regularisation chosen by
  5-fold group cross-validation on train + validation only (the test tracks choose nothing).

The backbone features come from ``bench/group_curve.py``'s cache (computed there when missing);
the harmony descriptor is computed from the catalogue audio with the product's decode.

Usage: .venv/bin/python bench/harmony_probe.py --conf conf/backbone.yaml --model latest
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np


def classifier(weights: np.ndarray, c: float) -> object:
    """Standardise, scale each column by ``weights`` (a feature block's weight), logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    return make_pipeline(
        StandardScaler(), FunctionTransformer(lambda x: x * weights), LogisticRegression(max_iter=5000, C=c)
    )


def block_weights(sizes: tuple[int, int], harmony_weight: float) -> np.ndarray:
    return np.concatenate([np.ones(sizes[0]), np.full(sizes[1], harmony_weight)])


def catalogue_harmony(cfg: Any, tracks: list[str], harmony_clips: int = 0) -> np.ndarray:
    """(len(tracks), 53) :func:`genrecast.harmony.harmony_stats` of each track, decoded from the
    catalogue audio with the product's decode; ``harmony_clips`` > 0: of the samples of the clips
    a pooled head with that many clips picks (``model.pool_indices``; each clip's span as
    ``timeline.clip_times`` gives it), else of the whole track."""
    from genrecast.catalogue import list_tracks
    from genrecast.features import usable_samples
    from genrecast.harmony import harmony_stats
    from genrecast.model import pool_indices
    from genrecast.storage import Storage
    from genrecast.timeline import clip_times

    storage = Storage.from_config(cfg)
    listed = list_tracks(storage, cfg.catalogue.audio_uri, cfg.ingest.extensions)
    uris = {t.track_id: t.uri for t in listed if not isinstance(t, dict)}

    def decoded(t: str) -> np.ndarray:
        y = usable_samples(storage.read_bytes(uris[t]), uris[t], cfg.audio, cfg.ingest)
        if not harmony_clips:
            return y
        starts, ends = (np.round(s * cfg.audio.sample_rate).astype(int) for s in clip_times(y.size, cfg.audio))
        return np.concatenate([y[starts[i] : ends[i]] for i in pool_indices(len(starts), harmony_clips)])

    return np.stack([harmony_stats(decoded(t), cfg.audio.sample_rate) for t in tracks])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conf", default="conf/backbone.yaml")
    parser.add_argument("--model", default="latest")
    parser.add_argument("--backbone", default="musicnn-msd")
    parser.add_argument("--pool-clips", type=int, default=3, help="clips pooled per track (0 = every clip)")
    parser.add_argument("--cache", default="data/bench-group-curve.npz")
    parser.add_argument(
        "--harmony-clips", type=int, default=0,
        help="harmony of the samples of the N clips a pooled head picks (model.pool_indices), 0 = the whole track",
    )
    parser.add_argument("--weights", type=float, nargs="+", default=[1.0, 2.0, 3.0, 6.0])
    parser.add_argument("--cs", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    args = parser.parse_args()

    from group_curve import labelled_tracks, split_features, track_stats
    from sklearn.model_selection import GroupKFold

    from genrecast import registry
    from genrecast.config import load_config
    from genrecast.split import TEST, assign_splits

    cfg = load_config(args.conf)
    data = split_features(cfg, args.model, args.backbone, args.cache)
    ids, group_of = data["ids"], data["group_of"]
    tracks = sorted(set(ids))
    label = {t: int(c) for t, c in zip(ids, data["labels"], strict=True)}
    y = np.asarray([label[t] for t in tracks])
    groups = np.asarray([group_of[t] for t in tracks])

    t0 = time.perf_counter()
    harmony = catalogue_harmony(cfg, tracks, args.harmony_clips)
    took = time.perf_counter() - t0
    where = f"its {args.harmony_clips} pooled clips" if args.harmony_clips else "the whole track"
    print(f"harmony statistics of {len(tracks)} tracks ({where}) in {took:.1f}s (decode included, 1 process)")

    backbone = track_stats(data["feats"], ids, tracks, args.pool_clips)
    mfcc = track_stats(data["mfcc"], ids, tracks, args.pool_clips)
    sets = {
        "MFCC statistics": (mfcc, None),
        f"{args.backbone}": (backbone, None),
        "harmony": (harmony, None),
        f"{args.backbone} + harmony": (np.concatenate([backbone, harmony], axis=1), backbone.shape[1]),
    }

    def fit_predict(x: np.ndarray, split_at: int | None, w: float, c: float, fit: np.ndarray, test: np.ndarray):
        weights = np.ones(x.shape[1]) if split_at is None else block_weights((split_at, x.shape[1] - split_at), w)
        return classifier(weights, c).fit(x[fit], y[fit]).predict(x[test])

    def choose(x: np.ndarray, split_at: int | None, rows: np.ndarray) -> tuple[float, float]:
        """(harmony weight, C) by 5-fold group cross-validation on ``rows`` only."""
        best, pick = -1.0, (1.0, 0.1)
        for w in args.weights if split_at is not None else [1.0]:
            for c in args.cs:
                right = 0
                for fit, test in GroupKFold(5).split(rows, groups=groups[rows]):
                    right += int(np.sum(fit_predict(x, split_at, w, c, rows[fit], rows[test]) == y[rows[test]]))
                if right > best:
                    best, pick = right, (w, c)
        return pick

    labelled = labelled_tracks(cfg, tracks, data["genres"])
    model_split = registry.read_split(cfg, data["model_id"])
    sides = {seed: assign_splits(labelled, cfg.train.split.test, cfg.train.split.val, seed) for seed in (0, 1, 2)}
    if sides[0] != {t: model_split[t] for t in tracks}:
        raise SystemExit("the rebuilt seed-0 split differs from the model's split.parquet (audio duplicates?)")

    print(f"\npool_clips {args.pool_clips}; track accuracy, standardised logistic regression")
    print(f"{'features':<28} {'leave a group out':>18} {'test seed 0':>16} {'seed 1':>16} {'seed 2':>16}")
    for name, (x, split_at) in sets.items():
        everyone = np.arange(len(tracks))
        w_all, c_all = choose(x, split_at, everyone)
        logo = np.empty_like(y)
        for g in sorted(set(groups)):
            held = groups == g
            logo[held] = fit_predict(x, split_at, w_all, c_all, everyone[~held], everyone[held])
        cells = [f"{np.mean(logo == y):.3f}"]
        for seed in (0, 1, 2):
            is_test = np.asarray([sides[seed][t] == TEST for t in tracks])
            fit, test = everyone[~is_test], everyone[is_test]
            w, c = choose(x, split_at, fit)
            acc = np.mean(fit_predict(x, split_at, w, c, fit, test) == y[test])
            cells.append(f"{acc:.3f} (w{w:g} C{c:g})" if split_at is not None else f"{acc:.3f} (C{c:g})")
        print(f"{name:<28} {cells[0]:>18} {cells[1]:>16} {cells[2]:>16} {cells[3]:>16}", flush=True)
    print("leave a group out: weight and C chosen by 5-fold group CV over all tracks (its own choice, reported as is)")


if __name__ == "__main__":
    main()
