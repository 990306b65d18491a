"""Choosing ``train.classifier: logistic``'s C and the harmony weight on validation tracks.

Every labelled track of a model's catalogue -> the product's pooled row (mean + std of the frozen
backbone's features of the clips ``model.pool_indices`` picks, ``--pool-clips`` as the model) with
its harmony statistics (``bench/harmony_probe.catalogue_harmony``, whole track) appended N times,
as ``model.build_pooled_head`` does -> sklearn's standardised logistic regression (what the
logistic head converges to). Per split seed (``split.assign_splits``, as train), harmony weight N
and C: validation accuracy of the fit on the train tracks (what a setting may be chosen by) /
test accuracy of the fit on train + validation (the refit). Means over the split seeds last.
The clip features come from ``bench/group_curve.py``'s cache (computed there when missing).

Usage (environment / config as for the training run):
  .venv/bin/python bench/logistic_sweep.py --conf conf/backbone.yaml --model latest [--cache ...]
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conf", default="conf/backbone.yaml")
    parser.add_argument("--model", default="latest", help="model id whose backbone and pool_clips are used")
    parser.add_argument("--cache", default="data/bench-group-curve.npz", help="clip features (bench/group_curve.py)")
    parser.add_argument("--split-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--harmony", type=int, nargs="+", default=[12, 24, 48, 96], metavar="N")
    parser.add_argument("--cs", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    args = parser.parse_args()

    from group_curve import labelled_tracks, split_features, track_stats  # bench/, beside this script
    from harmony_probe import catalogue_harmony
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from genrecast import registry
    from genrecast.config import load_config
    from genrecast.split import TEST, TRAIN, VAL, assign_splits

    cfg = load_config(args.conf)
    meta = registry.read_model_json(cfg, args.model)
    data = split_features(cfg, args.model, meta["backbone"]["name"], args.cache)
    ids = data["ids"]
    tracks = sorted(set(ids))
    label = {t: int(c) for t, c in zip(ids, data["labels"], strict=True)}
    y = np.asarray([label[t] for t in tracks])
    pooled = track_stats(data["feats"], ids, tracks, meta["training"].get("pool_clips", 0))
    harmony = catalogue_harmony(cfg, tracks)
    labelled = labelled_tracks(cfg, tracks, data["genres"])

    def accuracy(x: np.ndarray, c: float, fit: np.ndarray, test: np.ndarray) -> float:
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=20000, tol=1e-8, C=c)).fit(x[fit], y[fit])
        return float(np.mean(clf.predict(x[test]) == y[test]))

    means: dict[tuple[int, float], list[tuple[float, float]]] = defaultdict(list)
    print(f"{len(tracks)} tracks; cells: validation (fit on train) / test (fit on train + validation)")
    for seed in args.split_seeds:
        side = assign_splits(labelled, cfg.train.split.test, cfg.train.split.val, seed)
        sides = np.asarray([side[t] for t in tracks])
        tr, va, te = sides == TRAIN, sides == VAL, sides == TEST
        for n in args.harmony:
            x = np.concatenate([pooled] + [harmony] * n, axis=1)
            cells = []
            for c in args.cs:
                cell = (accuracy(x, c, tr, va), accuracy(x, c, tr | va, te))
                means[(n, c)].append(cell)
                cells.append(f"C {c:g}: {cell[0]:.3f} / {cell[1]:.3f}")
            print(f"split {seed} ({tr.sum()}/{va.sum()}/{te.sum()}) N {n:>3}: " + "   ".join(cells), flush=True)
    print(f"\nmean over split seeds {args.split_seeds}: validation / test")
    for (n, c), cells in sorted(means.items()):
        val, test = np.mean(cells, axis=0)
        print(f"N {n:>3} C {c:>5g}: {val:.3f} / {test:.3f}")


if __name__ == "__main__":
    main()
