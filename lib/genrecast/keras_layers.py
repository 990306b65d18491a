"""Custom tf-keras layers that saved genrecast models contain. Importing this module registers
them, so :func:`genrecast.model.load_model` imports it before loading any ``.keras`` file."""

from __future__ import annotations

from typing import Any

from genrecast.model import keras

k = keras()


@k.saving.register_keras_serializable(package="genrecast")
class DbToBackboneInput(k.layers.Layer):
    """Dataset clips ``(batch, n_mels, clip_frames)`` in dB -> ``(batch, frames, n_mels)``
    ``log10(1 + log_scale * power)``, cropped to ``frames``: the graph form of
    :func:`genrecast.backbone.clips_to_backbone_input`, so a backbone model takes the same input
    as the scratch CNN and score / classify / recommend need no second feature path."""

    def __init__(self, frames: int, log_scale: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.frames = int(frames)
        self.log_scale = float(log_scale)

    def call(self, mel_db: Any) -> Any:
        import tensorflow as tf

        power = tf.pow(10.0, mel_db[:, :, : self.frames] / 10.0)
        logmel = tf.math.log(1.0 + self.log_scale * power) / tf.math.log(10.0)
        return tf.transpose(logmel, (0, 2, 1))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "frames": self.frames, "log_scale": self.log_scale}


def masked_mean_std(feats: Any, weights: Any) -> Any:
    """Clip features ``(b, n, F)`` and weights ``(b, n)`` (1 for a clip, 0 for padding) ->
    ``(b, 2F)``: per row the mean, then the standard deviation (population), over its clips. The
    graph form of :func:`genrecast.model.pool_clip_features`, for :class:`TrackPool` and for
    ``train.finetune``'s trainer, whose gradients flow through it: sqrt's gradient at 0 is
    infinite, and a feature equal over a track's clips (one clip, a dead ReLU) made every weight
    NaN in the first step, so there it gets the same value, 0, with a zero gradient."""
    import tensorflow as tf

    w = tf.cast(weights, feats.dtype)[..., None]
    n = tf.reduce_sum(w, axis=1)
    mean = tf.reduce_sum(feats * w, axis=1) / n
    var = tf.reduce_sum(tf.square(feats - mean[:, None]) * w, axis=1) / n
    positive = var > 0
    std = tf.where(positive, tf.sqrt(tf.where(positive, var, 1.0)), 0.0)
    return tf.concat([mean, std], axis=-1)


@k.saving.register_keras_serializable(package="genrecast")
class TrackPool(k.layers.Layer):
    """The clip features of one track ``(n_clips, F)`` -> ``(1, 2F)``: their mean, then their
    standard deviation, over the batch axis (the clips) (:func:`masked_mean_std`). A pooled model
    called on one track's clips gives that track's row."""

    def call(self, feats: Any) -> Any:
        import tensorflow as tf

        return masked_mean_std(feats[None], tf.ones_like(feats[None, :, 0]))
