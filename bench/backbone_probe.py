"""Frozen-backbone probe on a trained model's split: per-track mean + std of a backbone's
features over the clips, standardised, logistic regression fitted on the train + val tracks
(``--fit train``: the train tracks only, as a trained head sees them) and tested on the test
tracks. Beside them, the same treatment of train's per-clip MFCC statistics (train's own
baseline averages them per track without the std, so its number differs). It answers "are the
features good on this catalogue?" apart from how a head is trained. The dataset must have been
ingested with the backbone's audio profile.

Usage (environment as for the training run, e.g. GENRECAST__AUDIO__SAMPLE_RATE=16000 ...):
  .venv/bin/python bench/backbone_probe.py --model MODEL_ID [--backbones musicnn-msd vgg-msd]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def clip_features(name: str, x: np.ndarray) -> tuple[np.ndarray, float]:
    """Dataset mel clips (n, n_mels, frames) dB -> (the frozen backbone ``name``'s features the
    pooled head reads, (n, F); milliseconds a clip)."""
    from genrecast.backbone import backbone_spec, build_backbone, clips_to_backbone_input, feature_model
    from genrecast.model import BACKBONE_FEATURES

    feats_model = feature_model(build_backbone(name), BACKBONE_FEATURES[backbone_spec(name).arch])
    t0 = time.perf_counter()
    out = feats_model.predict(clips_to_backbone_input(x), batch_size=32, verbose=0)
    out = np.concatenate(out, axis=1) if isinstance(out, list) else out
    return out, 1e3 * (time.perf_counter() - t0) / len(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conf", default="conf/local.yaml")
    parser.add_argument("--model", required=True, help="model id whose split (model.json) is used")
    parser.add_argument("--backbones", nargs="+", default=["musicnn-msd", "vgg-msd"])
    parser.add_argument(
        "--fit", choices=["train+val", "train"], default="train+val",
        help="tracks the regression is fitted on (train: as a trained head, which holds val out for early stopping)",
    )
    args = parser.parse_args()

    import tensorflow as tf

    from genrecast import registry, report
    from genrecast.backbone import check_profile
    from genrecast.config import load_config
    from genrecast.features import mfcc_stats
    from genrecast.train_worker import load_clips

    tf.config.threading.set_intra_op_parallelism_threads(1)
    cfg = load_config(args.conf)
    meta = registry.read_model_json(cfg, args.model)
    genres, assignment = meta["genres"], registry.read_split(cfg, args.model, meta)
    t0 = time.perf_counter()
    x, y, ids = load_clips(cfg, sorted(assignment), genres)
    print(f"{len(ids)} clips of {len(set(ids))} tracks loaded in {time.perf_counter() - t0:.1f}s")
    tracks = sorted(set(ids))
    label = {t: int(c) for t, c in zip(ids, y, strict=True)}
    fit_sides = {"train", "val"} if args.fit == "train+val" else {"train"}
    fit = [i for i, t in enumerate(tracks) if assignment[t] in fit_sides]
    test = [i for i, t in enumerate(tracks) if assignment[t] == "test"]
    y_t = np.asarray([label[t] for t in tracks])

    def track_stats(feats: np.ndarray) -> np.ndarray:
        rows = {t: [] for t in tracks}
        for t, f in zip(ids, feats, strict=True):
            rows[t].append(f)
        return np.stack([np.concatenate([np.mean(rows[t], 0), np.std(rows[t], 0)]) for t in tracks])

    def score(feats: np.ndarray) -> float:
        pred = report.baseline_mfcc_logreg(feats[fit], y_t[fit], feats[test], meta["split"]["seed"])
        return float(np.mean(pred == y_t[test]))

    results = [("MFCC statistics (mean + std)", score(track_stats(np.stack([mfcc_stats(c) for c in x]))), 0.0)]
    for name in args.backbones:
        check_profile(cfg.audio, name)
        out, ms = clip_features(name, x)
        results.append((f"{name} frozen features", score(track_stats(out)), ms))
    print(f"\nsplit: fitted on {len(fit)} {args.fit} tracks, {len(test)} test tracks (model {args.model})")
    print(f"{'features + logistic regression':40} {'test track acc':>14} {'ms/clip (1 thread)':>19}")
    base = results[0][1]
    for name, acc, ms in results:
        print(f"{name:40} {acc:14.3f} {ms:19.1f}   {acc - base:+.3f} vs MFCC")


if __name__ == "__main__":
    main()
