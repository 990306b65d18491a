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


@k.saving.register_keras_serializable(package="genrecast")
class TrackPool(k.layers.Layer):
    """The clip features of one track ``(n_clips, F)`` -> ``(1, 2F)``: their mean, then their
    standard deviation, over the batch axis (the clips). The graph form of
    :func:`genrecast.model.pool_clip_features`: a pooled model called on one track's clips gives
    that track's row."""

    def call(self, feats: Any) -> Any:
        import tensorflow as tf

        mean = tf.reduce_mean(feats, axis=0, keepdims=True)
        std = tf.sqrt(tf.reduce_mean(tf.square(feats - mean), axis=0, keepdims=True))
        return tf.concat([mean, std], axis=-1)
