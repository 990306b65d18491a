"""How accuracy on tracks of an unheard group grows with the groups heard (issue 15's bound).

The leak-free split tests on groups (artist = the demo's mma library + kit, or identical audio)
that training never heard. This asks how far more groups would carry the frozen backbone's
features, with no head training in the way: every labelled track of a model's split (its
``split.parquet`` names each track's group) -> the frozen backbone's features of each clip
(cached in ``--cache``) -> per track, the mean + std over the clips ``model.pool_indices`` picks
(``--pool-clips``; 3 as conf/backbone.yaml, 0 = every clip) -> the probe's standardised logistic
regression (``report.baseline_mfcc_logreg``), tested two ways:

- **unheard groups**: leave one group out; fit on a fraction of the other groups of each genre
  (at least one, ``--reps`` random draws below 1) and predict the held-out group's tracks;
- **heard groups**: 5 folds by track, so the groups of the test tracks are also in training
  (the accuracy a catalogue whose every style is labelled would see).

MFCC statistics (mean + std of 20 MFCCs a clip) get the same treatment for reference.

Usage (environment / config as for the training run; the dataset of the backbone's profile):
  .venv/bin/python bench/group_curve.py --conf conf/backbone.yaml --model latest
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict
from typing import Any

import numpy as np


def track_stats(feats: np.ndarray, ids: list[str], tracks: list[str], pool_clips: int) -> np.ndarray:
    """Per-clip rows (ordered by track, then clip) -> (tracks, 2F): each track's pooled clips
    (:func:`genrecast.model.pool_indices`) pooled as a pooled head's input (``pool_clip_features``)."""
    from genrecast.model import pool_clip_features, pool_indices

    rows: dict[str, list[np.ndarray]] = defaultdict(list)
    for t, f in zip(ids, feats, strict=True):
        rows[t].append(f)
    return np.stack([pool_clip_features(np.stack(rows[t])[pool_indices(len(rows[t]), pool_clips)]) for t in tracks])


def unheard(
    x: np.ndarray, y: np.ndarray, groups: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[float, float]:
    """Leave-one-group-out accuracy over all tracks, fitting on ``fraction`` of every genre's
    other groups -> (track accuracy, mean training groups a genre)."""
    from genrecast.report import baseline_mfcc_logreg

    by_genre: dict[int, list[str]] = defaultdict(list)
    for g in sorted(set(groups)):
        by_genre[int(np.bincount(y[groups == g]).argmax())].append(g)
    right, heard = 0, []
    for held in sorted(set(groups)):
        keep: list[str] = []
        for members in by_genre.values():
            others = [g for g in members if g != held]
            n = max(1, round(fraction * len(others)))
            keep += [others[i] for i in rng.permutation(len(others))[:n]]
        heard.append(len(keep) / len(by_genre))
        fit, test = np.isin(groups, keep), groups == held
        right += int(np.sum(baseline_mfcc_logreg(x[fit], y[fit], x[test]) == y[test]))
    return right / len(y), float(np.mean(heard))


def heard(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, folds: int = 5) -> float:
    """Track accuracy with 5 random folds by track: every test track's group is in training."""
    from genrecast.report import baseline_mfcc_logreg

    fold = rng.permutation(len(y)) % folds
    pred = np.empty_like(y)
    for k in range(folds):
        pred[fold == k] = baseline_mfcc_logreg(x[fold != k], y[fold != k], x[fold == k])
    return float(np.mean(pred == y))


def labelled_tracks(cfg: Any, tracks: list[str], genres: list[str]) -> list[Any]:
    """``tracks`` as ``split.LabelledTrack`` (genre and artist from labels.csv): what
    ``split.assign_splits`` rebuilds train's split from, for another split seed."""
    from genrecast.catalogue import load_labels
    from genrecast.split import LabelledTrack
    from genrecast.storage import Storage

    labels, _rejects = load_labels(Storage.from_config(cfg), cfg.catalogue.labels_uri, genres)
    return [LabelledTrack(t, labels[t].genre, labels[t].artist) for t in tracks]


def split_features(cfg: Any, model: str, backbone: str, cache: str) -> dict[str, Any]:
    """Every labelled track of ``model``'s split -> ``genres``, per clip (ordered by track, then
    clip) ``ids``, ``labels``, the frozen ``backbone``'s ``feats`` and ``mfcc`` statistics, and
    ``group_of`` (track -> its split group, from ``split.parquet``). The clip arrays are kept in
    ``cache`` (an .npz keyed by model and backbone) between runs."""
    from genrecast import registry
    from genrecast.backbone import check_profile
    from genrecast.features import mfcc_stats
    from genrecast.storage import Storage, join
    from genrecast.train_worker import load_clips

    check_profile(cfg.audio, backbone)
    model_id = registry.resolve_model_id(cfg, model)
    genres = registry.read_model_json(cfg, model_id)["genres"]
    split = Storage.from_config(cfg).read_parquet(
        join(registry.model_uri(cfg, model_id), registry.SPLIT_FILE), ["track_id", "group"]
    )
    group_of = dict(zip(split.column("track_id").to_pylist(), split.column("group").to_pylist(), strict=True))
    key = f"{model_id}:{backbone}"
    if os.path.exists(cache) and str(np.load(cache)["key"]) == key:
        cached = np.load(cache)
        print(f"clip features from {cache}")
        feats, mfcc, labels, ids = cached["feats"], cached["mfcc"], cached["labels"], list(cached["ids"])
    else:
        import tensorflow as tf
        from backbone_probe import clip_features

        tf.config.threading.set_intra_op_parallelism_threads(os.cpu_count() or 1)
        t0 = time.perf_counter()
        x, labels, ids = load_clips(cfg, sorted(group_of), genres)
        feats, ms = clip_features(backbone, x)
        mfcc = np.stack([mfcc_stats(c) for c in x])
        took = time.perf_counter() - t0
        print(f"{len(ids)} clips of {len(set(ids))} tracks: features in {took:.0f}s ({ms:.0f} ms a clip)")
        np.savez(cache, key=key, feats=feats, mfcc=mfcc, labels=labels, ids=np.asarray(ids))
    return {
        "model_id": model_id, "genres": genres, "ids": ids, "labels": labels, "feats": feats, "mfcc": mfcc,
        "group_of": group_of,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conf", default="conf/backbone.yaml")
    parser.add_argument("--model", default="latest", help="model id (or latest) whose split.parquet names the groups")
    parser.add_argument("--backbone", default="musicnn-msd")
    parser.add_argument("--pool-clips", type=int, default=3)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--reps", type=int, default=5, help="random draws of the heard groups below fraction 1")
    parser.add_argument("--cache", default="data/bench-group-curve.npz", help="clip features kept here between runs")
    args = parser.parse_args()

    from genrecast.config import load_config

    cfg = load_config(args.conf)
    data = split_features(cfg, args.model, args.backbone, args.cache)
    genres, ids, labels, feats, mfcc, group_of = (
        data[k] for k in ("genres", "ids", "labels", "feats", "mfcc", "group_of")
    )
    label = {t: int(c) for t, c in zip(ids, labels, strict=True)}
    tracks = sorted(set(ids))
    y = np.asarray([label[t] for t in tracks])
    groups = np.asarray([group_of[t] for t in tracks])
    per_genre = [len({g for g, c in zip(groups, y, strict=True) if c == k}) for k in range(len(genres))]
    print(
        f"{len(tracks)} tracks, {len(set(groups))} groups; groups a genre: "
        + ", ".join(f"{g} {n}" for g, n in zip(genres, per_genre, strict=True))
    )
    sets = {
        f"{args.backbone} features": track_stats(feats, ids, tracks, args.pool_clips),
        "MFCC statistics": track_stats(mfcc, ids, tracks, args.pool_clips),
    }
    print(f"\npool_clips {args.pool_clips}; track accuracy, logistic regression")
    print(f"{'features':<24} {'test groups':<12} {'groups heard a genre':>20} {'track acc':>14}")
    for name, x in sets.items():
        rng = np.random.default_rng(0)
        for fraction in args.fractions:
            reps = 1 if fraction >= 1 else args.reps
            runs = [unheard(x, y, groups, fraction, rng) for _ in range(reps)]
            accs = [a for a, _n in runs]
            spread = f" ({min(accs):.2f}-{max(accs):.2f})" if reps > 1 else ""
            print(f"{name:<24} {'unheard':<12} {np.mean([n for _a, n in runs]):>20.1f} {np.mean(accs):>8.3f}{spread}")
        accs = [heard(x, y, rng) for _ in range(args.reps)]
        print(f"{name:<24} {'heard':<12} {'all':>20} {np.mean(accs):>8.3f} ({min(accs):.2f}-{max(accs):.2f})")


if __name__ == "__main__":
    main()
