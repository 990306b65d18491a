"""Backbone benchmark: forward time per 3 s patch on one thread, Keras rebuild vs musicnn's graph.

For each backbone: parameters (all / trainable), the best of N single-patch forward passes of
the tf-keras model (``genrecast.backbone``, a ``tf.function``, TensorFlow held to 1 thread) and
of musicnn's own TF1 graph in a subprocess (tests/musicnn_reference.py, a 1-thread session),
plus batched throughput (32 patches per call) for the Keras model. Input: random patches
(time does not depend on the values). Usage:
  .venv/bin/python bench/backbone.py [--reps 20] [--backbones musicnn-msd vgg-msd]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def best_seconds(fn, reps: int) -> float:
    fn()  # warm-up: tracing, first allocation
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--backbones", nargs="+", default=["musicnn-msd", "vgg-msd"])
    args = ap.parse_args()

    import tensorflow as tf

    from genrecast.backbone import BACKBONES, build_backbone

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    rng = np.random.default_rng(0)
    patches = rng.uniform(0, 4, (32, 187, 96)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        np.save(os.path.join(tmp, "p.npy"), patches[:1])
        checkpoints = [BACKBONES[b].checkpoint for b in args.backbones]
        subprocess.run(
            [sys.executable, str(ROOT / "tests" / "musicnn_reference.py"), os.path.join(tmp, "p.npy"),
             os.path.join(tmp, "ref.npz"), *checkpoints, "--time", str(args.reps)],
            check=True, capture_output=True,
        )  # fmt: skip
        ref = dict(np.load(os.path.join(tmp, "ref.npz")))

    print(f"{'backbone':<12} {'params':>8} {'trainable':>9} {'keras ms/patch':>14} {'musicnn ms/patch':>16} "
          f"{'keras ms/patch @32':>18}")  # fmt: skip
    for name in args.backbones:
        model = build_backbone(name)
        forward = tf.function(lambda x, m=model: m(x, training=False))
        one, batch = tf.constant(patches[:1]), tf.constant(patches)
        t_one = best_seconds(lambda f=forward, x=one: f(x).numpy(), args.reps)
        t_batch = best_seconds(lambda f=forward, x=batch: f(x).numpy(), max(3, args.reps // 4)) / len(patches)
        trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
        t_ref = float(ref[f"{BACKBONES[name].checkpoint}/seconds_per_patch"])
        print(f"{name:<12} {model.count_params():>8} {trainable:>9} {1e3 * t_one:>14.1f} {1e3 * t_ref:>16.1f} "
              f"{1e3 * t_batch:>18.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
