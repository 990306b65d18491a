"""Training-time augmentation of log-mel clips, as tf.data stages. Pure TensorFlow; no I/O.

A clip is ``(n_mels, frames)`` float32 log-mel power in dB (:mod:`genrecast.features`), the form
both the scratch CNN and a backbone's input layer take, so every augmentation works in dB:

- ``gain``: the whole clip +- ``gain_db`` (a louder or quieter master: dB add a constant).
- ``tilt``: an EQ tilt, a linear ramp of +- ``tilt_db`` from the lowest to the highest band
  (a darker or brighter mix, another microphone, another soundfont's timbre).
- ``time_mask`` / ``freq_mask``: SpecAugment masks - up to ``mask_frames`` frames / ``mask_bins``
  bands set to the clip's mean (Park et al. 2019): the label must not hang on one moment or band.
- ``pitch``: a shift of +- ``pitch_bins`` mel bands (roughly a small pitch shift; mel bands
  are near-logarithmic above ~1 kHz), the edge band repeated into the gap.
- ``stretch``: time stretch by a factor in 1 +- ``stretch`` (tempo), resampling frames, then a
  random crop (or edge padding) back to ``frames``.
- ``mixup``: two clips of a batch mixed with weight lambda ~ Beta(alpha, alpha) on the power
  scale (dB -> power -> mix -> dB: two sounds add as powers, not as decibels); their labels mix
  the same way, so labels become one-hot (:func:`needs_onehot`).
- ``balanced`` batches: rejection resampling to a uniform genre distribution.

Which run is :class:`genrecast.config.AugmentConf` (``train.augment``): all off by default; keep
one only where validation shows it helps (``bench/augment_ablation.py``).
"""

from __future__ import annotations

from typing import Any

AUGMENTATIONS = ("gain", "tilt", "time_mask", "freq_mask", "pitch", "stretch", "mixup")


def needs_onehot(conf: Any) -> bool:
    """Mixup mixes labels: batches then carry one-hot (soft) labels, and the loss is categorical."""
    return "mixup" in conf.use


def clip_augmenter(conf: Any, n_mels: int, frames: int, seed: int) -> Any:
    """``f(mel, label) -> (mel, label)``: the per-clip augmentations ``conf.use`` names, each drawn
    independently per clip (a ``tf.random.Generator`` seeded by ``seed``)."""
    import tensorflow as tf

    rng = tf.random.Generator.from_seed(seed)
    use = set(conf.use)
    bands = tf.linspace(-1.0, 1.0, n_mels)[:, None]  # (n_mels, 1): the tilt ramp

    def uniform(lo: float, hi: float) -> Any:
        return rng.uniform([], lo, hi)

    def mask(x: Any, axis: int, width: int) -> Any:
        size = tf.shape(x)[axis]
        w = rng.uniform([], 0, width + 1, dtype=tf.int32)
        start = rng.uniform([], 0, tf.maximum(size - w, 0) + 1, dtype=tf.int32)
        pos = tf.range(size)
        hit = (pos >= start) & (pos < start + w)
        hit = hit[None, :] if axis == 1 else hit[:, None]
        return tf.where(hit, tf.reduce_mean(x), x)

    def shift_bands(x: Any, k: Any) -> Any:
        # Positive k moves content up k bands; the band at the edge fills the gap.
        idx = tf.clip_by_value(tf.range(n_mels) - k, 0, n_mels - 1)
        return tf.gather(x, idx, axis=0)

    def stretch(x: Any) -> Any:
        factor = uniform(1.0 - conf.stretch, 1.0 + conf.stretch)
        new = tf.maximum(1, tf.cast(tf.round(frames * factor), tf.int32))
        y = tf.image.resize(x[:, :, None], tf.stack([n_mels, new]), method="bilinear")[:, :, 0]
        pad = tf.maximum(frames - new, 0)
        y = tf.pad(y, [[0, 0], [0, pad]], mode="SYMMETRIC")
        start = rng.uniform([], 0, tf.shape(y)[1] - frames + 1, dtype=tf.int32)
        return y[:, start : start + frames]

    def apply(mel: Any, label: Any) -> tuple[Any, Any]:
        x = tf.cast(mel, tf.float32)
        if "gain" in use:
            x = x + uniform(-conf.gain_db, conf.gain_db)
        if "tilt" in use:
            x = x + uniform(-conf.tilt_db, conf.tilt_db) * bands
        if "pitch" in use:
            x = shift_bands(x, rng.uniform([], -conf.pitch_bins, conf.pitch_bins + 1, dtype=tf.int32))
        if "stretch" in use:
            x = stretch(x)
        if "time_mask" in use:
            x = mask(x, 1, conf.mask_frames)
        if "freq_mask" in use:
            x = mask(x, 0, conf.mask_bins)
        return tf.ensure_shape(x, [n_mels, frames]), label

    return apply


def onehot(n_classes: int) -> Any:
    """``f(mel, label index) -> (mel, one-hot float32 label)``."""
    import tensorflow as tf

    return lambda mel, label: (mel, tf.one_hot(label, n_classes, dtype=tf.float32))


def batch_mixup(alpha: float, seed: int) -> Any:
    """``f(mels (b, m, t), one-hot labels (b, c)) -> mixed``: each clip mixed with another clip of
    the batch (a random permutation) at lambda ~ Beta(alpha, alpha), on the power scale."""
    import tensorflow as tf

    rng = tf.random.Generator.from_seed(seed)

    def beta(n: Any) -> Any:
        # Beta(a, a) as G1 / (G1 + G2) with G ~ Gamma(a): tf.random.Generator has no beta.
        g1 = tf.random.stateless_gamma([n], rng.make_seeds(1)[:, 0], alpha)
        g2 = tf.random.stateless_gamma([n], rng.make_seeds(1)[:, 0], alpha)
        return g1 / tf.maximum(g1 + g2, 1e-12)

    def apply(x: Any, y: Any) -> tuple[Any, Any]:
        n = tf.shape(x)[0]
        perm = tf.argsort(rng.uniform([n]))
        lam = beta(n)
        power = tf.pow(10.0, x / 10.0)
        mixed = lam[:, None, None] * power + (1.0 - lam[:, None, None]) * tf.gather(power, perm)
        x = 10.0 * tf.math.log(tf.maximum(mixed, 1e-10)) / tf.math.log(10.0)  # features' -100 dB floor
        return x, lam[:, None] * y + (1.0 - lam[:, None]) * tf.gather(y, perm)

    return apply


def balance(ds: Any, class_counts: list[int], seed: int) -> Any:
    """Rejection-resample a (mel, label index) dataset to a uniform genre distribution (classes
    with no clips are left out of the target)."""
    import tensorflow as tf

    counts = tf.constant(class_counts, tf.float32)
    present = tf.cast(counts > 0, tf.float32)
    # An absent class gets a tiny initial share, so its acceptance ratio is 0, not 0 / 0.
    initial = tf.maximum(counts, 1e-6) / tf.reduce_sum(tf.maximum(counts, 1e-6))
    target = present / tf.reduce_sum(present)
    out = ds.rejection_resample(lambda mel, label: label, target_dist=target, initial_dist=initial, seed=seed)
    return out.map(lambda _cls, pair: pair)
