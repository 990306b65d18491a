"""Pretrained music backbones: musicnn's taggers rebuilt in tf-keras, weights from its wheel.

Source: ``musicnn`` 0.1.0 (Jordi Pons and Xavier Serra, Music Technology Group, Universitat
Pompeu Fabra; ISC licence), a pinned dependency whose wheel ships the trained TF1 checkpoints;
nothing is downloaded at run time. The taggers predict 50 tags (Million Song Dataset last.fm
tags for ``*-msd``, MagnaTagATune tags for ``*-mtt``) from one 3 s patch of log-compressed mel
power. musicnn's own code builds TF1 graphs (``tf.compat.v1.layers``, sessions; its extractor
switches eager execution off for the whole process on import); the Keras models here compute
the same functions, layer for layer, eagerly or in a ``tf.function``, and save as ``.keras``.

Input (:data:`MUSICNN_PROFILE`): mono audio at 16 kHz, centred STFT with n_fft 512 (periodic
Hann) and hop 256, power, 96 Slaney-normalised mel bands (librosa's defaults), then
``log10(1 + 10000 * power)``; a patch is 187 frames (musicnn's "3 s") laid out
``(frames, n_mels)``. The genrecast ingest computes the same mel power (:mod:`genrecast.features`),
stored in dB, so :func:`clips_to_backbone_input` converts dataset clips without the audio.

Shapes: a batch of patches ``(batch, 187, 96)`` float32 -> tag probabilities ``(batch, 50)``
(sigmoid, multi-label). Named layers for features: ``penultimate`` (musicnn, 200-d, batch-norm
of the 200-unit dense layer), ``max_pool`` / ``mean_pool`` (musicnn, 753-d, temporal pooling of
the front- and mid-end features), ``pool5`` (vgg, flattened 256-d).

Cost on one core (bench/backbone.py): see README "Pretrained backbone".
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from genrecast.config import AudioConf
from genrecast.errors import ConfigError
from genrecast.model import keras  # also sets TF_USE_LEGACY_KERAS before TensorFlow loads

MUSICNN_PACKAGE = "musicnn"
MUSICNN_VERSION = "0.1.0"


@dataclass(frozen=True)
class AudioProfile:
    """The audio a backbone was trained on. ``log_scale``: input = log10(1 + log_scale * power)."""

    sample_rate: int = 16000
    n_fft: int = 512
    hop_length: int = 256
    n_mels: int = 96
    frames: int = 187  # patch length the model was trained on (musicnn: 3 s, uncentred count)
    log_scale: float = 10000.0

    def audio_conf(self) -> AudioConf:
        """The ``audio:`` config whose ingest feeds this backbone (3 s clips: 188 centred frames)."""
        return AudioConf(
            sample_rate=self.sample_rate, n_fft=self.n_fft, hop_length=self.hop_length, n_mels=self.n_mels,
            clip_seconds=3.0,
        )


MUSICNN_PROFILE = AudioProfile()

MSD_TAGS = (
    "rock", "pop", "alternative", "indie", "electronic", "female vocalists", "dance", "00s", "alternative rock",
    "jazz", "beautiful", "metal", "chillout", "male vocalists", "classic rock", "soul", "indie rock", "Mellow",
    "electronica", "80s", "folk", "90s", "chill", "instrumental", "punk", "oldies", "blues", "hard rock",
    "ambient", "acoustic", "experimental", "female vocalist", "guitar", "Hip-Hop", "70s", "party", "country",
    "easy listening", "sexy", "catchy", "funk", "electro", "heavy metal", "Progressive rock", "60s", "rnb",
    "indie pop", "sad", "House", "happy",
)  # fmt: skip
MTT_TAGS = (
    "guitar", "classical", "slow", "techno", "strings", "drums", "electronic", "rock", "fast", "piano",
    "ambient", "beat", "violin", "vocal", "synth", "female", "indian", "opera", "male", "singing", "vocals",
    "no vocals", "harpsichord", "loud", "quiet", "flute", "woman", "male vocal", "no vocal", "pop", "soft",
    "sitar", "solo", "man", "classic", "choir", "voice", "new age", "dance", "male voice", "female vocal",
    "beats", "harp", "cello", "no voice", "weird", "country", "metal", "female voice", "choral",
)  # fmt: skip


@dataclass(frozen=True)
class BackboneSpec:
    name: str  # genrecast's name, e.g. "musicnn-msd"
    checkpoint: str  # folder in the musicnn package, e.g. "MSD_musicnn"
    arch: Literal["musicnn", "vgg"]
    tags: tuple[str, ...]
    profile: AudioProfile = MUSICNN_PROFILE


BACKBONES: dict[str, BackboneSpec] = {
    s.name: s
    for s in (
        BackboneSpec("musicnn-msd", "MSD_musicnn", "musicnn", MSD_TAGS),
        BackboneSpec("vgg-msd", "MSD_vgg", "vgg", MSD_TAGS),
        BackboneSpec("musicnn-mtt", "MTT_musicnn", "musicnn", MTT_TAGS),
        BackboneSpec("vgg-mtt", "MTT_vgg", "vgg", MTT_TAGS),
    )
}


def backbone_spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}: choose one of {', '.join(BACKBONES)}")
    return BACKBONES[name]


# -- audio profile -------------------------------------------------------------------------
def profile_mismatch(audio: AudioConf, backbone: str = "musicnn-msd") -> str | None:
    """One line naming every ``audio.*`` key that cannot feed ``backbone``, or None when it fits.

    Sample rate, STFT and mel bands must match exactly (the filters were learnt on them). Clips
    must hold the patch length: 187 frames, or 188, which is what ``clip_seconds: 3.0`` gives
    with genrecast's centred framing (1 + samples // hop); the extra frame is cropped.
    """
    profile = backbone_spec(backbone).profile
    want = {"sample_rate": profile.sample_rate, "n_fft": profile.n_fft, "hop_length": profile.hop_length,
            "n_mels": profile.n_mels}
    wrong = [f"audio.{k} {getattr(audio, k)} (needs {v})" for k, v in want.items() if getattr(audio, k) != v]
    # Frames count hops: only comparable once the sample rate and hop fit.
    if not wrong and not profile.frames <= audio.clip_frames <= profile.frames + 1:
        seconds = profile.audio_conf().clip_seconds
        wrong.append(f"audio.clip_seconds {audio.clip_seconds:g} ({audio.clip_frames} frames; needs {seconds:g})")
    if not wrong:
        return None
    trained = (f"{profile.sample_rate / 1000:g} kHz, n_fft {profile.n_fft}, hop {profile.hop_length}, "
               f"{profile.n_mels} mels, {profile.audio_conf().clip_seconds:g} s clips")  # fmt: skip
    return f"backbone {backbone} needs the audio it was trained on ({trained}): {'; '.join(wrong)}"


def check_profile(audio: AudioConf, backbone: str) -> None:
    """Raise :class:`ConfigError` with :func:`profile_mismatch`'s line when the audio does not fit."""
    problem = profile_mismatch(audio, backbone)
    if problem:
        raise ConfigError(problem)


def log_compress(power: np.ndarray, profile: AudioProfile = MUSICNN_PROFILE) -> np.ndarray:
    """Mel power -> ``log10(1 + log_scale * power)`` float32 (musicnn's input scale)."""
    return np.log10(1.0 + profile.log_scale * power.astype(np.float32, copy=False)).astype(np.float32)


def mel_power(y: np.ndarray, profile: AudioProfile = MUSICNN_PROFILE) -> np.ndarray:
    """Mono samples at ``profile.sample_rate`` -> ``(frames, n_mels)`` float32 mel power.

    The ingest's STFT and filterbank (:mod:`genrecast.features`): centred, zero-padded, periodic
    Hann, power 2, Slaney mel - ``librosa.feature.melspectrogram``'s defaults, which musicnn uses.
    """
    from genrecast.features import mel_basis, power_spectrogram

    power = power_spectrogram(y, profile.n_fft, profile.hop_length)
    return np.asarray(mel_basis(profile.sample_rate, profile.n_fft, profile.n_mels) @ power, np.float32).T


def samples_to_patches(y: np.ndarray, profile: AudioProfile = MUSICNN_PROFILE) -> np.ndarray:
    """Mono samples -> ``(n_patches, frames, n_mels)`` float32 backbone input.

    Consecutive patches without overlap from the first frame, as musicnn's ``batch_data`` cuts
    them (a tail shorter than a patch is dropped). One difference from musicnn's extractor: the
    mel power stays float32 (musicnn rounds it to float16 first); tag probabilities of the two
    paths agree within 1e-4 on rendered music (tests/test_backbone.py). The models were trained
    with an older librosa whose centred STFT padded by reflection, not zeros: edge frames only.
    """
    logmel = log_compress(mel_power(y, profile), profile)
    starts = range(0, logmel.shape[0] - profile.frames + 1, profile.frames)
    if not starts:
        return np.empty((0, profile.frames, profile.n_mels), np.float32)
    return np.stack([logmel[s : s + profile.frames] for s in starts])


def clips_to_backbone_input(mel_db: np.ndarray, profile: AudioProfile = MUSICNN_PROFILE) -> np.ndarray:
    """Dataset clips ``(n, n_mels, clip_frames)`` in dB (genrecast's mel column) ->
    ``(n, frames, n_mels)`` backbone input, cropped to ``profile.frames``.

    dB = 10 log10(max(power, 1e-10)) is undone exactly above the floor; floored bins become
    log10(1 + 1e-6) ~ 4e-7 instead of 0, far below anything the model resolves.
    """
    if mel_db.ndim != 3 or mel_db.shape[1] != profile.n_mels or mel_db.shape[2] < profile.frames:
        raise ValueError(f"clips of shape {mel_db.shape} do not fit (n, {profile.n_mels}, >= {profile.frames})")
    power = np.power(10.0, mel_db[:, :, : profile.frames].astype(np.float32) / 10.0)
    return np.ascontiguousarray(log_compress(power, profile).transpose(0, 2, 1))


# -- models --------------------------------------------------------------------------------
def build_musicnn(
    n_tags: int = 50, frames: int | None = 187, n_mels: int = 96, midend_filters: int = 64, backend_units: int = 200
) -> Any:
    """musicnn (Pons & Serra 2019): ``(batch, frames, n_mels)`` -> ``(batch, n_tags)`` sigmoid.

    Front end: input batch-norm; "timbral" convs spanning 7 frames x 40% / 70% of the mel bands
    (204 filters each) and "temporal" convs over 128 / 64 / 32 frames x 1 band (51 each), every
    conv ReLU -> batch-norm -> max over frequency. Mid end: three 7-frame convs (64) over the
    561 concatenated front-end features, the last two residual. Back end: max and mean over
    time of all 753 features (interleaved, as musicnn flattens them), batch-norm, dropout,
    dense 200 ReLU, batch-norm (``penultimate``), dropout, dense -> sigmoid. ``frames=None``:
    any length (the model pools over time), though it was trained on 187.
    """
    k = keras()
    L = k.layers
    x_in = k.Input(shape=(frames, n_mels), name="logmel")
    x = L.Reshape((-1, n_mels, 1), name="expand")(x_in)
    x = L.BatchNormalization(name="input_bn")(x)

    def freq_max(h: Any, name: str) -> Any:
        h = L.MaxPooling2D((1, h.shape[2]), name=f"{name}_freq_max")(h)
        return L.Reshape((-1, h.shape[3]), name=f"{name}_squeeze")(h)

    front = []
    padded = L.ZeroPadding2D(((3, 3), (0, 0)), name="time_pad")(x)
    for name, share in (("timbral_74", 0.4), ("timbral_77", 0.7)):
        h = L.Conv2D(204, (7, int(share * n_mels)), activation="relu", name=name)(padded)
        front.append(freq_max(L.BatchNormalization(name=f"{name}_bn")(h), name))
    for width in (128, 64, 32):
        name = f"temporal_{width}"
        h = L.Conv2D(51, (width, 1), padding="same", activation="relu", name=name)(x)
        front.append(freq_max(L.BatchNormalization(name=f"{name}_bn")(h), name))
    front_features = L.Concatenate(name="frontend")(front)  # (batch, frames, 561)

    # A conv spanning all features ([7, C] on a (frames, C, 1) map in musicnn) is a Conv1D.
    mid1 = L.BatchNormalization(name="midend_1_bn")(
        L.Conv1D(midend_filters, 7, padding="same", activation="relu", name="midend_1")(front_features)
    )
    mid2 = L.BatchNormalization(name="midend_2_bn")(
        L.Conv1D(midend_filters, 7, padding="same", activation="relu", name="midend_2")(mid1)
    )
    res2 = L.Add(name="midend_2_res")([mid2, mid1])
    mid3 = L.BatchNormalization(name="midend_3_bn")(
        L.Conv1D(midend_filters, 7, padding="same", activation="relu", name="midend_3")(res2)
    )
    res3 = L.Add(name="midend_3_res")([mid3, res2])
    features = L.Concatenate(name="midend")([front_features, mid1, res2, res3])  # (batch, frames, 753)

    n_feat = features.shape[-1]
    max_pool = L.GlobalMaxPooling1D(name="max_pool")(features)
    mean_pool = L.GlobalAveragePooling1D(name="mean_pool")(features)
    pair = L.Concatenate(name="pool_pairs")(
        [L.Reshape((n_feat, 1), name="max_col")(max_pool), L.Reshape((n_feat, 1), name="mean_col")(mean_pool)]
    )
    h = L.BatchNormalization(name="pool_bn")(L.Flatten(name="pool_flat")(pair))  # [max0, mean0, max1, ...]
    h = L.Dense(backend_units, activation="relu", name="dense")(L.Dropout(0.5, name="pool_dropout")(h))
    penultimate = L.BatchNormalization(name="penultimate")(h)
    logits = L.Dense(n_tags, name="tag_logits")(L.Dropout(0.5, name="penultimate_dropout")(penultimate))
    probs = L.Activation("sigmoid", name="tags")(logits)
    return k.Model(x_in, probs, name="musicnn")


def build_vgg(n_tags: int = 50, frames: int = 187, n_mels: int = 96, filters: int = 128) -> Any:
    """musicnn's VGG-like baseline: five 3x3 conv (ReLU) -> batch-norm -> max-pool blocks
    (pools 4x1 stride 2, 2x2, 2x2, 2x2, 4x4), dropout, dense -> sigmoid. Fixed input length."""
    k = keras()
    L = k.layers
    x_in = k.Input(shape=(frames, n_mels), name="logmel")
    h = L.BatchNormalization(name="input_bn")(L.Reshape((frames, n_mels, 1), name="expand")(x_in))
    pools = (((4, 1), (2, 2)), ((2, 2), (2, 2)), ((2, 2), (2, 2)), ((2, 2), (2, 2)), ((4, 4), (4, 4)))
    for i, (pool, stride) in enumerate(pools, start=1):
        if i > 1:
            h = L.Dropout(0.25, name=f"dropout{i - 1}")(h)
        h = L.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{i}")(h)
        h = L.BatchNormalization(name=f"bn{i}")(h)
        h = L.MaxPooling2D(pool, stride, name=f"pool{i}_map")(h)
    h = L.Flatten(name="pool5")(h)
    logits = L.Dense(n_tags, name="tag_logits")(L.Dropout(0.5, name="pool5_dropout")(h))
    return k.Model(x_in, L.Activation("sigmoid", name="tags")(logits), name="vgg")


# -- checkpoint ----------------------------------------------------------------------------
def _checkpoint_names(arch: str) -> list[tuple[str, str]]:
    """(Keras layer, checkpoint scope) pairs.

    ``tf.compat.v1.layers`` name variables by creation order within their kind: ``conv2d``,
    ``conv2d_1``, ... and ``batch_normalization``, ``batch_normalization_1``, ..., each holding
    ``kernel``/``bias`` or ``gamma``/``beta``/``moving_mean``/``moving_variance``. musicnn creates
    them in the order of :func:`build_musicnn`'s docstring: input batch-norm; timbral 74, 77;
    temporal 128, 64, 32; mid end 1-3; back end batch-norm, dense, batch-norm, output dense. The
    vgg names its convs ``1CNN`` ... ``5CNN``. Adam slots and step counters are not read.
    """
    if arch == "musicnn":
        convs = ["timbral_74", "timbral_77", "temporal_128", "temporal_64", "temporal_32",
                 "midend_1", "midend_2", "midend_3"]  # fmt: skip
        bns = ["input_bn"] + [f"{c}_bn" for c in convs] + ["pool_bn", "penultimate"]
        return (
            [(c, "conv2d" + (f"_{i}" if i else "")) for i, c in enumerate(convs)]
            + [(b, "batch_normalization" + (f"_{i}" if i else "")) for i, b in enumerate(bns)]
            + [("dense", "dense"), ("tag_logits", "dense_1")]
        )
    bns = ["input_bn"] + [f"bn{i}" for i in range(1, 6)]
    return (
        [(f"conv{i}", f"{i}CNN") for i in range(1, 6)]
        + [(b, "batch_normalization" + (f"_{i}" if i else "")) for i, b in enumerate(bns)]
        + [("tag_logits", "dense")]
    )


_VARIABLES = {
    "Conv2D": ("kernel", "bias"),
    "Conv1D": ("kernel", "bias"),
    "Dense": ("kernel", "bias"),
    "BatchNormalization": ("gamma", "beta", "moving_mean", "moving_variance"),
}


def checkpoint_prefix(spec: BackboneSpec) -> str:
    """Path prefix of the checkpoint files inside the installed musicnn package (not imported:
    ``musicnn.extractor`` switches eager execution off for the whole process)."""
    found = importlib.util.find_spec(MUSICNN_PACKAGE)
    if found is None or not found.submodule_search_locations:
        need = f"{MUSICNN_PACKAGE}=={MUSICNN_VERSION}"
        raise ConfigError(f"backbone {spec.name} needs the {need} package (its checkpoints): run make setup")
    folder = os.path.join(list(found.submodule_search_locations)[0], spec.checkpoint)
    # The files are "<folder>/.index", ".data-00000-of-00001": the prefix is the folder + "/".
    if not os.path.isfile(os.path.join(folder, ".index")):
        raise ConfigError(f"backbone {spec.name}: no checkpoint at {folder}/ (musicnn=={MUSICNN_VERSION} expected)")
    return folder + os.sep


def load_checkpoint_weights(model: Any, spec: BackboneSpec) -> None:
    """Copy the checkpoint's variables into ``model``'s layers by :func:`_checkpoint_names`.

    The checkpoint's ``checkpoint`` index file names the author's absolute path, so
    ``tf.train.load_checkpoint(folder)`` cannot resolve it; the reader it wraps
    (``NewCheckpointReader``) is given the prefix directly. Every shape is checked; a Conv1D
    kernel is musicnn's ``[7, C, 1, F]`` conv2d kernel with the unit axis dropped.
    """
    import tensorflow as tf

    reader = tf.compat.v1.train.NewCheckpointReader(checkpoint_prefix(spec))
    stored = reader.get_variable_to_shape_map()
    used = set()
    for layer_name, scope in _checkpoint_names(spec.arch):
        layer = model.get_layer(layer_name)
        names = _VARIABLES[type(layer).__name__]
        values = []
        for var, weight in zip(names, layer.weights, strict=True):
            key = f"{scope}/{var}"
            if key not in stored:
                raise ValueError(f"{spec.checkpoint}: no variable {key} for layer {layer_name}")
            value = reader.get_tensor(key)
            if value.size != int(np.prod(weight.shape)):
                raise ValueError(
                    f"{spec.checkpoint}: {key} has shape {value.shape}, layer {layer_name} needs {weight.shape}"
                )
            values.append(value.reshape(weight.shape))
            used.add(key)
        layer.set_weights(values)
    unused = sorted(k for k in stored if k not in used and "Adam" not in k and not k.startswith("beta"))
    if unused:
        raise ValueError(f"{spec.checkpoint}: variables not mapped to a layer: {', '.join(unused)}")


def build_backbone(name: str, any_length: bool = False) -> Any:
    """The pretrained tagger ``name`` (see :data:`BACKBONES`) as a tf-keras model, weights loaded.

    Input ``(batch, 187, 96)``; ``any_length``: ``(batch, None, 96)`` (musicnn models only, which
    pool over time; they were trained on 187 frames).
    """
    spec = backbone_spec(name)
    frames = None if any_length else spec.profile.frames
    if any_length and spec.arch != "musicnn":
        raise ValueError(f"backbone {name} takes {spec.profile.frames} frames only")
    if spec.arch == "musicnn":
        model = build_musicnn(len(spec.tags), frames, spec.profile.n_mels)
    else:
        model = build_vgg(len(spec.tags), frames, spec.profile.n_mels)
    load_checkpoint_weights(model, spec)
    return model


def feature_model(model: Any, layers: Sequence[str], name: str | None = None) -> Any:
    """Same weights, outputs = the named layers (e.g. ``("penultimate", "max_pool")``)."""
    k = keras()
    return k.Model(model.inputs, [model.get_layer(n).output for n in layers], name=name)


def describe(name: str) -> dict[str, Any]:
    """Name, checkpoint, tags and audio profile of a backbone, JSON-ready (for model.json)."""
    spec = backbone_spec(name)
    return {"name": spec.name, "source": f"{MUSICNN_PACKAGE}=={MUSICNN_VERSION}:{spec.checkpoint}",
            "tags": list(spec.tags), "profile": asdict(spec.profile)}

