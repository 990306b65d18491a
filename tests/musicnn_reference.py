"""The reference for tests/test_backbone.py and bench/backbone.py: musicnn's own TF1 graph.

Runs in its own process because musicnn needs eager execution off, which is process-wide:
    python tests/musicnn_reference.py PATCHES.npy OUT.npz MODEL [MODEL ...] [--time N] [--wav F ...]
PATCHES.npy: (n, 187, 96) float32 log-mel patches. For each MODEL (musicnn's name, e.g.
MSD_musicnn) the graph is built by ``musicnn.models.define_model`` and restored from the wheel's
checkpoint exactly as ``musicnn.extractor`` does; OUT.npz gets ``<MODEL>/tags`` (sigmoid) and,
for musicnn models, ``<MODEL>/penultimate``, ``<MODEL>/max_pool``, ``<MODEL>/mean_pool``.
``--time N``: also ``<MODEL>/seconds_per_patch``, the best of N one-patch runs on one thread.
``--wav F``: also ``<MODEL>/extractor/<i>``, the taggram of ``musicnn.extractor.extractor(F)``
(musicnn's own audio loading and spectrogram) for the i-th file.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # tf.compat.v1.layers needs tf-keras, not Keras 3

import numpy as np
import tensorflow as tf

tf.compat.v1.disable_eager_execution()

from musicnn import configuration, models  # noqa: E402


def run_model(model: str, patches: np.ndarray, time_reps: int) -> dict[str, np.ndarray]:
    labels = configuration.MSD_LABELS if model.startswith("MSD") else configuration.MTT_LABELS
    graph = tf.Graph()
    with graph.as_default():
        with tf.name_scope("model"):  # as musicnn.extractor does
            x = tf.compat.v1.placeholder(tf.float32, [None, patches.shape[1], configuration.N_MELS])
            is_training = tf.compat.v1.placeholder(tf.bool)
            out = models.define_model(x, is_training, model, len(labels))
            fetch = {"tags": tf.nn.sigmoid(out[0])}
            if "musicnn" in model:
                fetch |= {"mean_pool": out[6], "max_pool": out[7], "penultimate": out[8]}
        saver = tf.compat.v1.train.Saver()
        one_thread = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=1)
        with tf.compat.v1.Session(graph=graph, config=one_thread) as sess:
            saver.restore(sess, os.path.join(os.path.dirname(models.__file__), model) + "/")
            result = sess.run(fetch, feed_dict={x: patches, is_training: False})
            if time_reps:
                one = patches[:1]
                sess.run(fetch["tags"], feed_dict={x: one, is_training: False})
                best = float("inf")
                for _ in range(time_reps):
                    t0 = time.perf_counter()
                    sess.run(fetch["tags"], feed_dict={x: one, is_training: False})
                    best = min(best, time.perf_counter() - t0)
                result["seconds_per_patch"] = np.float64(best)
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("patches")
    ap.add_argument("out")
    ap.add_argument("models", nargs="+")
    ap.add_argument("--time", type=int, default=0)
    ap.add_argument("--wav", nargs="*", default=[])
    args = ap.parse_args()
    patches = np.load(args.patches).astype(np.float32)
    saved: dict[str, np.ndarray] = {}
    for model in args.models:
        for key, value in run_model(model, patches, args.time).items():
            saved[f"{model}/{key}"] = value
        if args.wav:
            from musicnn.extractor import extractor

            for i, wav in enumerate(args.wav):
                taggram, _labels = extractor(wav, model=model, extract_features=False)
                saved[f"{model}/extractor/{i}"] = taggram
    np.savez(args.out, **saved)


if __name__ == "__main__":
    main()
