"""Pretrained backbone: the tf-keras rebuild of musicnn's taggers against musicnn's own TF1 graph
on rendered music (the demo catalogue's renderers, no downloads), the input path against librosa
and the ingest's dB clips, and the audio profile check."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from genrecast import backbone, democat
from genrecast.audio import decode_audio
from genrecast.config import AudioConf
from genrecast.errors import ConfigError
from genrecast.features import log_mel_clips

from conftest import layers_that_differ

REFERENCE = os.path.join(os.path.dirname(__file__), "musicnn_reference.py")
SECONDS = 7.0  # per render: two whole 187-frame patches each
TESTED = ("musicnn-msd", "vgg-msd")


def _have_renderers() -> bool:
    try:
        democat.find_tools()
        import music21  # noqa: F401
    except Exception:  # noqa: BLE001 - any missing tool: skip with the reason below
        return False
    return True


pytestmark = pytest.mark.skipif(not _have_renderers(), reason="mma, fluidsynth, a GM soundfont and music21 needed")


@pytest.fixture(scope="module")
def music(tmp_path_factory) -> dict:
    """A rock groove (mma) then a Haydn quartet excerpt (music21), rendered by fluidsynth into
    one wav file; its samples at 16 kHz via genrecast's decoder; musicnn's graph run on them."""
    tmp = tmp_path_factory.mktemp("backbone")
    tools = democat.find_tools()
    plans = [p for p in democat.plan_tracks(["rock", "classical"], 1, seed=0)]
    assert [p.renderer for p in plans] == ["mma", "music21"]
    pcm = np.concatenate([democat.render_pcm(p, SECONDS, tools) for p in plans])
    wav = tmp / "music.wav"
    sf.write(wav, pcm, democat.SAMPLE_RATE)
    y = decode_audio(wav.read_bytes(), "wav", backbone.MUSICNN_PROFILE.sample_rate)
    patches = backbone.samples_to_patches(y)
    assert patches.shape == (4, 187, 96)
    np.save(tmp / "patches.npy", patches)
    checkpoints = [backbone.BACKBONES[b].checkpoint for b in TESTED]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, REFERENCE, str(tmp / "patches.npy"), str(tmp / "ref.npz"), *checkpoints, "--wav", str(wav)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"y": y, "patches": patches, "ref": dict(np.load(tmp / "ref.npz"))}


@pytest.mark.parametrize("name", TESTED)
def test_keras_model_matches_musicnn_graph(music, name):
    ckpt = backbone.BACKBONES[name].checkpoint
    model = backbone.build_backbone(name)
    probs = model.predict(music["patches"], verbose=0)
    ref = music["ref"][f"{ckpt}/tags"]
    assert probs.shape == ref.shape == (4, 50)
    assert np.abs(probs - ref).max() < 1e-3
    assert ref.std(axis=0).max() > 0.05  # the patches differ in what the tagger hears
    # musicnn's own extractor (its librosa spectrogram, rounded to float16) on the wav file.
    assert np.abs(probs - music["ref"][f"{ckpt}/extractor/0"]).max() < 1e-3
    if name.startswith("musicnn"):
        layers = ("penultimate", "max_pool", "mean_pool")
        features = backbone.feature_model(model, layers).predict(music["patches"], verbose=0)
        for layer, ours in zip(layers, features, strict=True):
            theirs = music["ref"][f"{ckpt}/{layer}"]
            assert np.abs(ours - theirs).max() < 1e-4 * max(1.0, np.abs(theirs).max()), layer


def test_input_is_librosa_melspectrogram_log_compressed(music):
    import librosa

    y = music["y"][: 16000 * 4]
    power = librosa.feature.melspectrogram(y=y, sr=16000, n_fft=512, hop_length=256, n_mels=96)  # musicnn's call
    want = np.log10(1 + 10000 * power).T[:187]
    assert np.abs(backbone.samples_to_patches(y)[0] - want).max() < 1e-4


def test_dataset_clips_convert_to_the_same_input(music):
    # The ingest stores dB clips of the configured audio profile; 3 s clips hold 188 frames.
    clips_db = log_mel_clips(music["y"], backbone.MUSICNN_PROFILE.audio_conf())
    assert clips_db.shape[1:] == (96, 188)
    converted = backbone.clips_to_backbone_input(clips_db)
    assert converted.shape[1:] == (187, 96)
    assert np.abs(converted[0] - music["patches"][0]).max() < 1e-4  # both start at frame 0
    with pytest.raises(ValueError, match="do not fit"):
        backbone.clips_to_backbone_input(clips_db[:, :64])


@pytest.mark.parametrize(
    ("audio", "problem"),
    [
        (backbone.MUSICNN_PROFILE.audio_conf(), None),
        (AudioConf(sample_rate=16000, n_fft=512, hop_length=256, n_mels=96, clip_seconds=2.98), None),  # 187 frames
        (AudioConf(), ["audio.sample_rate 22050 (needs 16000)", "audio.n_fft 2048 (needs 512)",
                       "audio.hop_length 512 (needs 256)", "audio.n_mels 128 (needs 96)"]),
        (AudioConf(sample_rate=16000, n_fft=512, hop_length=256, n_mels=64), ["audio.n_mels 64 (needs 96)"]),
        (AudioConf(sample_rate=16000, n_fft=512, hop_length=256, n_mels=96, clip_seconds=5.0),
         ["audio.clip_seconds 5 (313 frames; needs 3)"]),
    ],
)  # fmt: skip
def test_profile_mismatch_is_refused_in_one_line(audio, problem):
    for name in backbone.BACKBONES:
        line = backbone.profile_mismatch(audio, name)
        if problem is None:
            assert line is None
            backbone.check_profile(audio, name)
            continue
        assert line is not None and "\n" not in line and line.startswith(f"backbone {name} ")
        assert all(p in line for p in problem), line
        assert line.count("audio.") == len(problem)
        trained = r"needs the audio it was trained on \(16 kHz, n_fft 512, hop 256, 96 mels, 3 s clips\)"
        with pytest.raises(ConfigError, match=trained):
            backbone.check_profile(audio, name)


def test_unknown_backbone_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown backbone 'musicnn'.*musicnn-msd"):
        backbone.profile_mismatch(AudioConf(), "musicnn")


def test_head_model_takes_dataset_clips_and_trains_only_the_head(music, tmp_path):
    """The backbone model has the scratch CNN's contract (dB clips in, ``embedding`` and
    ``genre_probs`` layers), converts clips in its graph exactly as the numpy path does, keeps the
    checkpoint's weights frozen, and survives save + load (its custom layer is registered)."""
    from genrecast.keras_layers import DbToBackboneInput
    from genrecast.model import BACKBONE_FEATURES, build_backbone_model, inference_model, load_model

    clips_db = log_mel_clips(music["y"], backbone.MUSICNN_PROFILE.audio_conf())  # (n, 96, 188)
    layer = DbToBackboneInput(187, backbone.MUSICNN_PROFILE.log_scale)
    assert np.abs(layer(clips_db).numpy() - backbone.clips_to_backbone_input(clips_db)).max() < 1e-4

    model = build_backbone_model(96, 188, 3, "vgg-msd", embedding_dim=16)
    reference = backbone.feature_model(backbone.build_backbone("vgg-msd"), BACKBONE_FEATURES["vgg"])
    head_params = 2 * 256 + (256 * 16 + 16) + (16 * 3 + 3)  # batch-norm of pool5 (256) -> embedding (16) -> 3
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == head_params
    trunk = model.get_layer("backbone")
    want = reference(backbone.clips_to_backbone_input(clips_db), training=False).numpy()
    got = trunk(layer(clips_db), training=False).numpy()
    assert np.abs(got - want).max() < 1e-4

    from genrecast.model import compile_model

    compile_model(model).fit(clips_db, np.arange(len(clips_db)) % 3, epochs=1, batch_size=2, verbose=0)
    for before, after in zip(reference.get_weights(), trunk.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)  # fit moved the head only
    model.save(tmp_path / "m.keras")
    loaded = load_model(str(tmp_path / "m.keras"))
    probs, unit = inference_model(loaded).predict(clips_db, verbose=0)
    np.testing.assert_allclose(probs, model.predict(clips_db, verbose=0), atol=1e-6)
    assert probs.shape == (len(clips_db), 3) and np.allclose(np.linalg.norm(unit, axis=1), 1, atol=1e-5)


def test_config_refuses_a_backbone_the_audio_does_not_fit(tmp_path):
    from genrecast.config import load_config

    conf = tmp_path / "c.yaml"
    conf.write_text("train: {backbone: musicnn-msd}\n")
    with pytest.raises(ConfigError, match=r"key 'train.backbone': backbone musicnn-msd needs .*audio.n_mels 128"):
        load_config(conf, environ={})
    conf.write_text("train: {backbone: musicnn}\n")
    with pytest.raises(ConfigError, match="key 'train.backbone'.*unknown backbone 'musicnn'"):
        load_config(conf, environ={})
    profile = "audio: {sample_rate: 16000, n_fft: 512, hop_length: 256, n_mels: 96}\n"
    conf.write_text(profile + "train: {backbone: musicnn-msd}\n")
    assert load_config(conf, environ={}).train.backbone == "musicnn-msd"


@pytest.mark.parametrize(
    ("n_clips", "pool_clips", "want"),
    [
        (10, 0, list(range(10))),  # 0: every clip
        (10, 3, [1, 5, 8]),  # the centre of each third: not the intro (0) nor the fade (9)
        (10, 1, [5]),
        (4, 4, [0, 1, 2, 3]),  # not more clips than the track has
        (2, 5, [0, 1]),
        (100, 4, [12, 37, 62, 87]),
    ],
)
def test_pool_indices_pick_evenly_spread_clips(n_clips, pool_clips, want):
    from genrecast.model import pool_indices

    got = pool_indices(n_clips, pool_clips)
    assert list(got) == want
    assert len(set(got)) == len(got) and all(0 <= i < n_clips for i in got)


@pytest.mark.parametrize(
    ("name", "depth", "trained"),
    [("musicnn-msd", 2, {"midend_1", "midend_2", "midend_3", "dense"}), ("vgg-msd", 1, {"conv5"})],
)
def test_finetune_parts_split_the_backbone_and_train_only_its_upper_layers(music, name, depth, trained):
    """``train.finetune``: lower + upper compute the pooled model's clip features exactly; the
    trainer's masked pooling over zero-padded tracks equals ``track_pool`` + head on each track's
    real clips; a fit step moves the upper part's weighted layers and the head, nothing else
    (batch-norms and the lower part keep the checkpoint's values)."""
    from genrecast.model import build_finetune_trainer, build_pooled_model, compile_model, finetune_parts, pooled_parts
    from genrecast.train_worker import padded_clips

    clips_db = log_mel_clips(music["y"], backbone.MUSICNN_PROFILE.audio_conf())[:4]  # (4, 96, 188)
    net = build_pooled_model(96, 188, 3, name, embedding_dim=8)
    features, head = pooled_parts(net)
    lower, upper = finetune_parts(net, depth)
    want = features(clips_db, training=False).numpy()
    cut = lower(clips_db, training=False).numpy()
    np.testing.assert_allclose(upper(cut, training=False).numpy(), want, atol=1e-5)

    trainer = build_finetune_trainer(upper, head, pool_clips=3)
    # A track of 3 clips, one of 1 (padded): its std is 0, where sqrt's gradient is not finite.
    acts, mask = padded_clips([cut[:3], cut[3:4]], 3)
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]] and not acts[1, 1:].any()
    by_track = np.concatenate([net(clips_db[:3], training=False).numpy(), net(clips_db[3:4], training=False).numpy()])
    np.testing.assert_allclose(trainer([acts, mask], training=False).numpy(), by_track, atol=1e-5)

    reference = build_pooled_model(96, 188, 3, name, embedding_dim=8).get_layer("backbone")
    head_before = head.get_weights()
    compile_model(trainer, 1e-2).fit((acts, mask), np.array([0, 2]), epochs=1, batch_size=2, verbose=0)
    assert all(np.isfinite(w).all() for w in trainer.get_weights())
    assert layers_that_differ(reference, net.get_layer("backbone")) == trained
    assert any(not np.array_equal(a, b) for a, b in zip(head_before, head.get_weights(), strict=True))
    with pytest.raises(ValueError, match="finetune depth 3"):
        finetune_parts(net, 3)
