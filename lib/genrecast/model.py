"""The genre CNN (pure TensorFlow, tf-keras). No Spark, no storage.

Architecture, and what it borrows:
- Input: one clip's log-mel, (n_mels, frames, 1) dB, standardised per mel band with the
  training split's mean/std (a frozen ``Normalization`` layer, so the statistics travel with
  the saved model and scoring cannot forget them).
- Four 3x3 conv blocks (conv -> batch-norm -> ReLU -> 2x2 max-pool), widths 16-32-64-64: the
  fully convolutional front end of Choi et al. (2016, "Automatic tagging using deep
  convolutional neural networks"), narrowed for CPU training. Small kernels stacked four deep
  see ~1.5 s and ~2 octaves, enough for timbre, chords and drum patterns.
- Frequency-aware pooling: after the front end the map is (8 bands x 8 steps x 64). Pooling
  runs over *time only* (mean and max, as in musicnn's back end, Pons et al. 2018), keeping
  the 8 frequency regions apart: where energy sits matters for genre (bass-heavy hip hop vs
  bright metal), when it happens within 3 s much less.
- Dense 128-d **embedding** (ReLU), dropout, then softmax over the configured genres. The
  embedding (L2-normalised in :func:`inference_model`) is what scoring and "more like this" use.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # Keras 3 fit() fails under MultiWorkerMirroredStrategy
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

EMBEDDING_LAYER = "embedding"
PROBS_LAYER = "genre_probs"
TRACK_POOL_LAYER = "track_pool"  # pooled models (train.head: pooled): clips' features -> one track row
HEAD_LAYER = "head"  # pooled models: the nested model that trains (pooled features -> probabilities)
HARMONY_INPUT = "harmony"  # pooled models with train.harmony: a track's harmony statistics


def keras() -> Any:
    import tf_keras

    return tf_keras


def build_model(
    n_mels: int,
    frames: int,
    n_genres: int,
    band_mean: np.ndarray,
    band_std: np.ndarray,
    embedding_dim: int = 128,
    widths: tuple[int, ...] = (16, 32, 64, 64),
    dropout: float = 0.3,
) -> Any:
    """Uncompiled Keras model: (batch, n_mels, frames) dB -> (batch, n_genres) probabilities."""
    k = keras()
    layers = k.layers
    inputs = k.Input(shape=(n_mels, frames), name="mel")
    x = layers.Reshape((n_mels, frames, 1))(inputs)
    norm = layers.Normalization(
        axis=1,
        mean=np.asarray(band_mean, np.float32),
        variance=np.square(np.maximum(np.asarray(band_std, np.float32), 1e-3)),
        name="band_norm",
    )
    x = norm(x)
    for i, width in enumerate(widths):
        x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        # synchronized: statistics over the global batch, not each worker's shard (a shard can
        # be genre-skewed); momentum 0.9 lets the moving statistics settle on small catalogues.
        x = layers.BatchNormalization(momentum=0.9, synchronized=True, name=f"bn{i}")(x)
        x = layers.ReLU()(x)
        x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    # (bands, steps, channels): pool over time (axis 2) only, keep frequency regions apart.
    steps = x.shape[2]
    mean_t = layers.AveragePooling2D((1, steps), name="time_mean")(x)
    max_t = layers.MaxPooling2D((1, steps), name="time_max")(x)
    x = layers.Concatenate(name="time_pool")([mean_t, max_t])
    x = layers.Flatten()(x)
    x = layers.Dropout(dropout)(x)
    embedding = layers.Dense(embedding_dim, activation="relu", name=EMBEDDING_LAYER)(x)
    x = layers.Dropout(dropout)(embedding)
    probs = layers.Dense(n_genres, activation="softmax", name=PROBS_LAYER)(x)
    return k.Model(inputs, probs, name="genrecast_cnn")


# Features of each backbone the head reads: musicnn's 200-d penultimate layer and the 753-d
# max-pool over time (the pair that scored best as frozen features in issue 15's study), vgg's
# flattened last block.
BACKBONE_FEATURES = {"musicnn": ("penultimate", "max_pool"), "vgg": ("pool5",)}


def _backbone_trunk(n_mels: int, frames: int, backbone: str) -> tuple[Any, Any]:
    """(dB clip input (batch, n_mels, frames), frozen backbone features (batch, F)): the clip
    converted in the graph (``DbToBackboneInput``), then the pretrained ``backbone``
    (:mod:`genrecast.backbone`) frozen, its batch-norms in inference mode."""
    from genrecast.backbone import backbone_spec, build_backbone, feature_model
    from genrecast.keras_layers import DbToBackboneInput

    spec = backbone_spec(backbone)
    k = keras()
    trunk = feature_model(build_backbone(backbone), BACKBONE_FEATURES[spec.arch], name="backbone")
    trunk.trainable = False
    inputs = k.Input(shape=(n_mels, frames), name="mel")
    x = DbToBackboneInput(spec.profile.frames, spec.profile.log_scale, name="backbone_input")(inputs)
    feats = trunk(x, training=False)
    return inputs, (k.layers.Concatenate(name="backbone_features")(feats) if isinstance(feats, list) else feats)


def _head(x: Any, n_genres: int, embedding_dim: int, dropout: float) -> Any:
    """Features -> probabilities: batch-norm, dropout, the ``embedding`` layer, dropout, softmax."""
    layers = keras().layers
    # The features differ in scale by orders of magnitude (batch-normed 200-d vs raw max-pooled
    # activations): standardise them, or the first steps blow the softmax up (loss ~16 seen).
    x = layers.BatchNormalization(momentum=0.9, synchronized=True, name="feature_bn")(x)
    x = layers.Dropout(dropout)(x)
    embedding = layers.Dense(embedding_dim, activation="relu", name=EMBEDDING_LAYER)(x)
    x = layers.Dropout(dropout)(embedding)
    return layers.Dense(n_genres, activation="softmax", name=PROBS_LAYER)(x)


# train.classifier logistic: full-batch Adam from this rate, cosine-decayed to 0 over
# train.logistic_steps. On the demo's rows (harmony x 48, C 1) 2000 steps came within 0.034 of
# sklearn's probabilities (5000 steps at 0.01: the same); 600 steps at 0.01 stayed 0.3 away.
LOGISTIC_LEARNING_RATE = 0.05


def _logistic_head(x: Any, n_genres: int, l2: float) -> Any:
    """Features -> probabilities by a multinomial logistic regression: the row standardised
    (a batch-norm without scale or offset, in full batches the rows' own mean and variance),
    then ``embedding`` = the n_genres logits (L2 penalty ``l2`` on the weights) and their softmax."""
    layers = keras().layers
    # epsilon 1e-6, not 1e-3: harmony columns vary by 1e-3-1e-2 and would be shrunk, not standardised.
    x = layers.BatchNormalization(
        momentum=0.9, epsilon=1e-6, center=False, scale=False, synchronized=True, name="feature_bn"
    )(x)
    logits = layers.Dense(n_genres, kernel_regularizer=keras().regularizers.L2(l2), name=EMBEDDING_LAYER)(x)
    return layers.Softmax(name=PROBS_LAYER)(logits)


def build_backbone_model(
    n_mels: int,
    frames: int,
    n_genres: int,
    backbone: str,
    embedding_dim: int = 128,
    dropout: float = 0.3,
) -> Any:
    """Uncompiled Keras model with the scratch CNN's contract - (batch, n_mels, frames) dB ->
    (batch, n_genres) probabilities, layers ``embedding`` and ``genre_probs`` - whose features
    come from the pretrained ``backbone`` (:mod:`genrecast.backbone`), frozen (its batch-norms
    in inference mode); only the head (batch-norm, dropout, dense embedding, softmax) trains. The input must
    fit the backbone's audio profile (:func:`genrecast.backbone.check_profile`)."""
    inputs, feats = _backbone_trunk(n_mels, frames, backbone)
    probs = _head(feats, n_genres, embedding_dim, dropout)
    return keras().Model(inputs, probs, name=f"genrecast_{backbone.replace('-', '_')}_head")


def build_pooled_model(
    n_mels: int,
    frames: int,
    n_genres: int,
    backbone: str,
    embedding_dim: int = 128,
    dropout: float = 0.3,
    harmony: int = 0,
    logistic_l2: float | None = None,
) -> Any:
    """Uncompiled ``train.head: pooled`` model: the clips of ONE track (n_clips, n_mels, frames)
    dB -> frozen ``backbone`` features (n_clips, F) -> ``track_pool`` (their mean and std over
    the clips, (1, 2F)) -> the nested model ``head`` (2F -> (1, n_genres) probabilities, with the
    ``embedding`` and ``genre_probs`` layers), which is what trains, on pooled track vectors
    (:func:`pool_clip_features`). Scoring runs the part before ``track_pool`` over many tracks'
    clips at once and the head on the pooled rows (:class:`genrecast.score.Predictor`).

    ``harmony`` > 0 (``train.harmony``): a second input ``harmony``, the track's
    :func:`genrecast.harmony.harmony_stats` (1, 53), goes into the head too
    (:func:`build_pooled_head`), and ``logistic_l2`` makes the head a logistic regression."""
    from genrecast.keras_layers import TrackPool

    k = keras()
    inputs, feats = _backbone_trunk(n_mels, frames, backbone)
    head = build_pooled_head(int(feats.shape[-1]), n_genres, embedding_dim, dropout, harmony, logistic_l2)
    pooled = TrackPool(name=TRACK_POOL_LAYER)(feats)
    name = f"genrecast_{backbone.replace('-', '_')}_pooled"
    if not harmony:
        return k.Model(inputs, head(pooled), name=name)
    from genrecast.harmony import N_FEATURES

    stats = k.Input(shape=(N_FEATURES,), name=HARMONY_INPUT)
    return k.Model([inputs, stats], head([pooled, stats]), name=name)


def build_pooled_head(
    feature_dim: int,
    n_genres: int,
    embedding_dim: int = 128,
    dropout: float = 0.3,
    harmony: int = 0,
    logistic_l2: float | None = None,
) -> Any:
    """A pooled model's nested ``head``: pooled track rows (m, 2 x ``feature_dim``: mean + std of
    the clips' backbone features) -> (m, n_genres) probabilities, with the ``embedding`` and
    ``genre_probs`` layers. The part of :func:`build_pooled_model` that trains.

    ``harmony`` > 0: inputs ``[pooled rows, harmony statistics (m, 53)]``, the statistics
    appended to each row ``harmony`` times. The head's batch-norm standardises every column, so
    the repetition is the block's weight in the first dense layer (BENCHMARKS.md "Harmony
    statistics beside the backbone").

    ``logistic_l2`` (``train.classifier: logistic``): the layers after the row are
    :func:`_logistic_head`'s, with that penalty, instead of the MLP's."""
    k = keras()

    def top(x: Any) -> Any:
        if logistic_l2 is not None:
            return _logistic_head(x, n_genres, logistic_l2)
        return _head(x, n_genres, embedding_dim, dropout)

    head_in = k.Input(shape=(2 * feature_dim,), name="pooled_features")
    if not harmony:
        return k.Model(head_in, top(head_in), name=HEAD_LAYER)
    from genrecast.harmony import N_FEATURES

    stats = k.Input(shape=(N_FEATURES,), name=HARMONY_INPUT)
    rows = k.layers.Concatenate(name="with_harmony")([head_in] + [stats] * harmony)
    return k.Model([head_in, stats], top(rows), name=HEAD_LAYER)


def takes_harmony(head: Any) -> bool:
    """Whether a pooled model's ``head`` (:func:`pooled_parts`) takes harmony statistics too."""
    return len(head.inputs) == 2


# train.finetune: the layer where a backbone's trained upper part starts, per depth. Every path
# from the input to the features passes through it, so the part below runs once per clip and its
# output is kept (:func:`finetune_parts`). musicnn: 1 = its back end (the 200-unit dense layer
# under ``penultimate``), 2 = the mid end's three convs too; vgg: its last conv block, or two.
FINETUNE_CUTS = {"musicnn": ("midend", "frontend"), "vgg": ("pool4_map", "pool3_map")}


def finetune_parts(model: Any, depth: int) -> tuple[Any, Any]:
    """A pooled model (:func:`build_pooled_model`) -> (lower: (n, n_mels, frames) dB clips ->
    (n, *cut) activations at the cut ``FINETUNE_CUTS[arch][depth - 1]``, upper: those activations
    -> (n, F) backbone features, as the model's ``track_pool`` receives them), sharing the model's
    weights. Marks the upper part's weighted layers trainable, batch-norms excepted: they keep
    their pretrained statistics and scale, and both parts run in inference mode (no dropout)."""
    k = keras()
    trunk = model.get_layer("backbone")
    arch = "musicnn" if any(layer.name == "frontend" for layer in trunk.layers) else "vgg"
    if not 1 <= depth <= len(FINETUNE_CUTS[arch]):
        raise ValueError(f"finetune depth {depth}: {arch} has depths 1-{len(FINETUNE_CUTS[arch])}")
    cut = trunk.get_layer(FINETUNE_CUTS[arch][depth - 1]).output
    upper_raw = k.Model(cut, trunk.outputs, name="backbone_upper")
    trunk.trainable = True  # Keras: a frozen parent freezes every child, whatever its own flag
    for layer in trunk.layers:
        layer.trainable = False
    upper_layers = {id(layer) for layer in upper_raw.layers}
    for layer in trunk.layers:
        if id(layer) in upper_layers and layer.weights and not isinstance(layer, k.layers.BatchNormalization):
            layer.trainable = True
    clips = k.Input(shape=model.input_shape[1:], name="mel")
    below = k.Model(trunk.inputs, cut)
    lower = k.Model(clips, below(model.get_layer("backbone_input")(clips), training=False), name="backbone_lower")
    cut_in = k.Input(shape=tuple(cut.shape[1:]), name="cut")
    feats = upper_raw(cut_in, training=False)
    if isinstance(feats, list):
        feats = k.layers.Concatenate(name="backbone_features")(feats)
    return lower, k.Model(cut_in, feats, name="backbone_upper_features")


def build_finetune_trainer(upper: Any, head: Any, pool_clips: int) -> Any:
    """``train.finetune``'s training model: (cut activations (b, P, *cut) of each track's pooled
    clips, zero-padded to P = ``pool_clips``, and their mask (b, P): 1 for a real clip) ->
    ``upper`` features per clip -> their masked mean and std per track
    (:func:`genrecast.keras_layers.masked_mean_std`, as ``track_pool`` pools one track) ->
    ``head`` -> (b, n_genres) probabilities. Never saved: it shares ``upper``'s and ``head``'s
    weights with the pooled model, which is."""
    import tensorflow as tf

    from genrecast.keras_layers import masked_mean_std

    k = keras()
    cut_shape = tuple(upper.input_shape[1:])

    class FinetuneTrainer(k.Model):
        def __init__(self) -> None:
            super().__init__(name="pooled_finetune")
            self.upper, self.head = upper, head  # tracked: their trainable weights are ours

        def call(self, inputs: Any, training: Any = None) -> Any:
            acts, mask = inputs
            feats = self.upper(tf.reshape(acts, (-1, *cut_shape)), training=False)
            feats = tf.reshape(feats, (-1, pool_clips, feats.shape[-1]))
            return self.head(masked_mean_std(feats, mask), training=training)

    return FinetuneTrainer()


def pool_clip_features(feats: np.ndarray) -> np.ndarray:
    """One track's clip features (n_clips, F) -> (2F,) float32: their mean, then their standard
    deviation (population, 0 for one clip), over the clips: the input of a pooled model's head,
    as :class:`genrecast.keras_layers.TrackPool` computes it in the graph."""
    f = np.asarray(feats, np.float64)
    return np.concatenate([f.mean(axis=0), f.std(axis=0)]).astype(np.float32)


def pool_indices(n_clips: int, pool_clips: int) -> np.ndarray:
    """Which of a track's ``n_clips`` clips (in time order) a pooled head pools: all when
    ``pool_clips`` is 0 or not below ``n_clips``, else the clip at the centre of each of
    ``pool_clips`` equal stretches of the track (centres, not ends: intros and fades are the
    least typical clips). Training and scoring use the same clips (``train.pool_clips``)."""
    if pool_clips <= 0 or n_clips <= pool_clips:
        return np.arange(n_clips)
    return ((np.arange(pool_clips) + 0.5) * n_clips / pool_clips).astype(np.int64)


def stack_in_time_order(clips: list[tuple[int, np.ndarray]]) -> np.ndarray:
    """One track's ``(clip_index, array)`` pairs, in any order (Petastorm and row groups do not
    keep it) -> the arrays stacked by clip index: the order :func:`pool_indices` picks from."""
    return np.stack([array for _index, array in sorted(clips, key=lambda pair: pair[0])])


def pooled_parts(model: Any) -> tuple[Any, Any]:
    """A pooled model (:func:`build_pooled_model`) -> (clip features model: (n, n_mels, frames)
    dB -> (n, F), its ``head``: (m, 2F) pooled rows [and (m, 53) harmony statistics] ->
    (m, n_genres)), sharing its weights."""
    k = keras()
    return k.Model(model.inputs[0], model.get_layer(TRACK_POOL_LAYER).input), model.get_layer(HEAD_LAYER)


def compile_model(model: Any, learning_rate: float = 1e-3, onehot: bool = False, decay_steps: int = 0) -> Any:
    """Adam + cross-entropy on label indices, or on one-hot (soft, with mixup) labels;
    ``decay_steps`` > 0: the rate cosine-decays to 0 over that many steps."""
    k = keras()
    rate = k.optimizers.schedules.CosineDecay(learning_rate, decay_steps) if decay_steps else learning_rate
    model.compile(
        optimizer=k.optimizers.Adam(rate),
        loss="categorical_crossentropy" if onehot else "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def inference_model(model: Any) -> Any:
    """Same weights, two outputs: genre probabilities and the L2-normalised embedding."""
    k = keras()
    emb = model.get_layer(EMBEDDING_LAYER).output
    unit = k.layers.UnitNormalization(name="embedding_l2")(emb)
    return k.Model(model.inputs, [model.get_layer(PROBS_LAYER).output, unit])


def weights_digest(model: Any) -> str:
    """sha256 over all weights, to show that replicas ended identical."""
    import hashlib

    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()


def load_model(path: str) -> Any:
    """Load a saved genrecast model (``.keras`` file) for inference."""
    import genrecast.keras_layers  # noqa: F401  (registers the layers backbone models hold)

    return keras().models.load_model(path, compile=False)
