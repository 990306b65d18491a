import librosa
import numpy as np
import pytest

from genrecast.config import AudioConf
from genrecast.features import (
    DB_FLOOR,
    clip_starts,
    log_mel,
    log_mel_clips,
    min_track_seconds,
)

P = AudioConf()


@pytest.mark.parametrize("freq", [110.0, 440.0, 1000.0, 4000.0])
def test_sine_energy_lands_in_its_mel_band(freq):
    y = (0.5 * np.sin(2 * np.pi * freq * np.arange(P.sample_rate * 2) / P.sample_rate)).astype(np.float32)
    mel = log_mel(y, P)
    assert mel.dtype == np.float32 and mel.shape == (128, 1 + y.size // P.hop_length)
    centres = librosa.mel_frequencies(n_mels=P.n_mels + 2, fmax=P.sample_rate / 2)[1:-1]
    loudest = int(np.argmax(mel[:, 10:-10].mean(axis=1)))
    assert abs(loudest - int(np.argmin(np.abs(centres - freq)))) <= 1
    # dB relative to 1.0: a -6 dBFS sine sits tens of dB up, far bands near the -100 dB floor
    assert 15 < mel[loudest, 10:-10].mean() < 60
    assert mel.min() >= DB_FLOOR - 1e-3
    assert mel[:, 10:-10].mean(axis=1).min() < mel[loudest, 10:-10].mean() - 60


def test_silence_is_the_floor():
    mel = log_mel(np.zeros(P.sample_rate, dtype=np.float32), P)
    assert np.allclose(mel, DB_FLOOR, atol=1e-3)


@pytest.mark.parametrize(
    ("seconds", "clips"),
    [(2.99, 0), (min_track_seconds(P), 1), (3.0, 1), (6.0, 2), (6.1, 3), (10.0, 4), (30.0, 10), (600.0, 199)],
)
def test_clip_count_for_known_durations(seconds, clips):
    n = int(round(seconds * P.sample_rate))
    y = np.random.default_rng(0).normal(0, 0.1, n).astype(np.float32)
    out = log_mel_clips(y, P)
    assert out.shape == (clips, 128, 130)


def test_clips_cover_the_whole_track_without_padding():
    frames = 1292  # 30 s
    starts = clip_starts(frames, 130)
    assert starts[0] == 0 and starts[-1] + 130 == frames
    covered = np.zeros(frames, bool)
    for s in starts:
        covered[s : s + 130] = True
    assert covered.all()
    assert clip_starts(130, 130) == [0] and clip_starts(260, 130) == [0, 130] and clip_starts(129, 130) == []


def test_clips_are_slices_of_the_track_mel():
    y = np.random.default_rng(1).normal(0, 0.1, P.sample_rate * 7).astype(np.float32)
    mel, clips = log_mel(y, P), log_mel_clips(y, P)
    np.testing.assert_array_equal(clips[1], mel[:, 130:260])
    np.testing.assert_array_equal(clips[-1], mel[:, -130:])


@pytest.mark.parametrize("seconds", [0.5, 3.0, 30.0])
def test_log_mel_matches_librosa_reference(seconds):
    y = np.random.default_rng(2).normal(0, 0.2, int(seconds * P.sample_rate)).astype(np.float32)
    ref = librosa.power_to_db(
        librosa.feature.melspectrogram(y=y, sr=P.sample_rate, n_fft=P.n_fft, hop_length=P.hop_length, n_mels=P.n_mels,
                                       pad_mode="constant"),
        ref=1.0, amin=1e-10, top_db=None,
    )
    ours = log_mel(y, P)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=0.05)  # float32 FFT vs librosa's path: < 0.05 dB
