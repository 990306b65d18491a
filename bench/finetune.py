"""Does fine-tuning the backbone's upper layers (``train.finetune``) beat the frozen pooled head?

Runs the product's ``train`` job (2 Spark barrier workers, MultiWorkerMirroredStrategy, the
config's recipe: conf/backbone.yaml is the pooled musicnn head with pool_clips 3 and refit) once
per split seed (``train.split.seed``, which also seeds the weights) and per finetune depth, on an
already ingested dataset, and prints per run the test track accuracy and macro-F1, the epochs
validation kept, and the job's training seconds; then per depth the mean over seeds and the
mean paired difference against depth 0 (the same splits). Each run registers a model under the
config's storage root (``latest`` moves).

Usage (after ``make demo CONF=conf/backbone.yaml``):
  .venv/bin/python bench/finetune.py --conf conf/backbone.yaml [--seeds 0,1,2] [--depths 0,1,2]
      [--lr 1e-4] [--epochs 10]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conf", default="conf/backbone.yaml")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--depths", default="0,1,2")
    parser.add_argument("--lr", type=float, default=None, help="train.finetune_learning_rate (default: config)")
    parser.add_argument("--epochs", type=int, default=None, help="train.finetune_epochs (default: config)")
    args = parser.parse_args()

    from genrecast.config import load_config
    from genrecast.spark import get_spark
    from genrecast.train import run_train

    base = load_config(args.conf)
    spark = get_spark(base)
    rows: dict[int, dict[int, tuple[float, float]]] = {}
    print(f"{'seed':>4} {'depth':>5} {'accuracy':>8} {'macro-F1':>8} {'ft epochs':>9} {'refit':>5} {'seconds':>7}")
    for seed in [int(s) for s in args.seeds.split(",")]:
        for depth in [int(d) for d in args.depths.split(",")]:
            train = base.train.model_copy(
                update={
                    "finetune": depth,
                    "split": base.train.split.model_copy(update={"seed": seed}),
                    **({"finetune_learning_rate": args.lr} if args.lr else {}),
                    **({"finetune_epochs": args.epochs} if args.epochs else {}),
                }
            )
            cfg = base.model_copy(update={"train": train})
            t0 = time.monotonic()
            result = run_train(cfg, spark)
            seconds = time.monotonic() - t0
            track = result.metrics["cnn_track"]
            chief = result.workers[0]
            rows.setdefault(depth, {})[seed] = (track["accuracy"], track["macro_f1"])
            print(
                f"{seed:>4} {depth:>5} {track['accuracy']:>8.3f} {track['macro_f1']:>8.3f} "
                f"{chief.get('finetune_epochs')!s:>9} {chief.get('refit_epochs')!s:>5} {seconds:>7.0f}",
                flush=True,
            )
    print(f"\n{'depth':>5} {'mean acc':>8} {'mean F1':>8} {'acc - depth 0 (paired)':>24}")
    for depth, by_seed in rows.items():
        acc = np.mean([a for a, _f in by_seed.values()])
        f1 = np.mean([f for _a, f in by_seed.values()])
        diffs = [by_seed[s][0] - rows[0][s][0] for s in by_seed if 0 in rows and s in rows[0]]
        delta = f"{np.mean(diffs):+.3f} ({min(diffs):+.3f}..{max(diffs):+.3f})" if diffs else "-"
        print(f"{depth:>5} {acc:>8.3f} {f1:>8.3f} {delta:>24}")
    spark.stop()


if __name__ == "__main__":
    main()
