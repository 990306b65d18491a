"""Backbone benchmark: forward time per 3 s patch on one thread, Keras rebuild vs musicnn's graph.

For each backbone: parameters (all / trainable) and the best of N single-patch forward passes of
(a) the tf-keras model (``genrecast.backbone``, called through a ``tf.function``) and (b)
musicnn's own TF1 graph (``musicnn.models.define_model`` in a ``tf.Graph`` + 1-thread session,
restored from the same checkpoint), the two interleaved round by round so load from other
processes hits both alike; plus (c) the Keras model's time per patch in batches of 32.
TensorFlow is held to one thread throughout. Input: random patches (time does not depend on
the values); the outputs of (a) and (b) are compared as a sanity check. Usage:
  .venv/bin/python bench/backbone.py [--reps 20] [--backbones musicnn-msd vgg-msd]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def reference_session(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """musicnn's graph for backbone ``name``, as ``musicnn.extractor`` builds and restores it.

    A graph built inside ``tf.Graph().as_default()`` runs in a TF1 session while the process
    stays eager, so the two models share one process here.
    """
    import tensorflow as tf
    from musicnn import models

    from genrecast.backbone import BACKBONES, checkpoint_prefix

    spec = BACKBONES[name]
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, spec.profile.frames, spec.profile.n_mels])
        is_training = tf.compat.v1.placeholder(tf.bool)
        probs = tf.nn.sigmoid(models.define_model(x, is_training, spec.checkpoint, len(spec.tags))[0])
        one = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=1)
        sess = tf.compat.v1.Session(graph=graph, config=one)
        tf.compat.v1.train.Saver().restore(sess, checkpoint_prefix(spec))
    return lambda batch: sess.run(probs, {x: batch, is_training: False})


def interleaved_best(fns: dict[str, Callable[[], Any]], reps: int) -> dict[str, float]:
    for fn in fns.values():
        fn()  # warm-up: tracing, first allocations
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(reps):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[key] = min(best[key], time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--backbones", nargs="+", default=["musicnn-msd", "vgg-msd"])
    args = ap.parse_args()

    import tensorflow as tf

    from genrecast.backbone import build_backbone

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    patches = np.random.default_rng(0).uniform(0, 4, (32, 187, 96)).astype(np.float32)
    one, batch = tf.constant(patches[:1]), tf.constant(patches)
    print(f"{'backbone':<12} {'params':>8} {'trainable':>9} {'keras ms/patch':>14} {'musicnn ms/patch':>16} "
          f"{'keras ms/patch @32':>18} {'max |diff|':>10}")  # fmt: skip
    for name in args.backbones:
        # Reference first: layers made in a tf.Graph invalidate Keras models made before them.
        reference = reference_session(name)
        model = build_backbone(name)
        forward = tf.function(lambda x, m=model: m(x, training=False))
        diff = float(np.abs(forward(batch).numpy() - reference(patches)).max())
        best = interleaved_best(
            {"keras": lambda f=forward: f(one).numpy(), "musicnn": lambda r=reference: r(patches[:1])}, args.reps
        )
        per_batch = interleaved_best({"keras": lambda f=forward: f(batch).numpy()}, max(3, args.reps // 4))
        trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
        ms = {k: 1e3 * v for k, v in best.items()} | {"batch": 1e3 * per_batch["keras"] / len(patches)}
        print(f"{name:<12} {model.count_params():>8} {trainable:>9} {ms['keras']:>14.1f} {ms['musicnn']:>16.1f} "
              f"{ms['batch']:>18.1f} {diff:>10.1e}")  # fmt: skip


if __name__ == "__main__":
    main()
