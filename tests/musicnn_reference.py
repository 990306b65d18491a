"""The reference for tests/test_backbone.py: musicnn's own TF1 graph and extractor.

Runs in its own process because ``musicnn.extractor`` switches eager execution off on import,
for the whole process:
    python tests/musicnn_reference.py PATCHES.npy OUT.npz MODEL [MODEL ...] [--wav F ...]
PATCHES.npy: (n, 187, 96) float32 log-mel patches. For each MODEL (musicnn's name, e.g.
MSD_musicnn) the graph is built by ``musicnn.models.define_model`` and restored from the wheel's
checkpoint exactly as ``musicnn.extractor`` does; OUT.npz gets ``<MODEL>/tags`` (sigmoid) and,
for musicnn models, ``<MODEL>/penultimate``, ``<MODEL>/max_pool``, ``<MODEL>/mean_pool``.
``--wav F``: also ``<MODEL>/extractor/<i>``, the taggram of ``musicnn.extractor.extractor(F)``
(musicnn's own audio loading and spectrogram) for the i-th file.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # tf.compat.v1.layers needs tf-keras, not Keras 3

import numpy as np
import tensorflow as tf

tf.compat.v1.disable_eager_execution()

from musicnn import configuration, models  # noqa: E402


def run_model(model: str, patches: np.ndarray) -> dict[str, np.ndarray]:
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
        with tf.compat.v1.Session(graph=graph) as sess:
            saver.restore(sess, os.path.join(os.path.dirname(models.__file__), model) + "/")
            result = sess.run(fetch, feed_dict={x: patches, is_training: False})
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("patches")
    ap.add_argument("out")
    ap.add_argument("models", nargs="+")
    ap.add_argument("--wav", nargs="*", default=[])
    args = ap.parse_args()
    patches = np.load(args.patches).astype(np.float32)
    saved: dict[str, np.ndarray] = {}
    for model in args.models:
        for key, value in run_model(model, patches).items():
            saved[f"{model}/{key}"] = value
        if args.wav:
            from musicnn.extractor import extractor

            for i, wav in enumerate(args.wav):
                taggram, _labels = extractor(wav, model=model, extract_features=False)
                saved[f"{model}/extractor/{i}"] = taggram
    np.savez(args.out, **saved)


if __name__ == "__main__":
    main()
