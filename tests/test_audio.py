"""Decoding across formats and odd inputs (one parametrized test per behaviour)."""

import numpy as np
import pytest

from genrecast.audio import AudioRejected, check_usable, decode_audio

from conftest import tone, write_audio

SR = 22050
ALL_FORMATS = ["wav", "flac", "ogg", "opus", "mp3", "m4a"]


def _native_sr(ext):
    return 48000 if ext == "opus" else SR


@pytest.mark.parametrize("ext", ALL_FORMATS)
def test_every_format_decodes_to_mono_at_target_rate(tmp_path, ext):
    sr = _native_sr(ext)
    data = write_audio(tmp_path / f"t.{ext}", tone(4.0, sr=sr, freq=440), sr=sr).read_bytes()
    y = decode_audio(data, ext, SR)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(y.size / SR - 4.0) < 0.1  # encoders add a little priming (m4a ~ 1024 samples)
    spectrum = np.abs(np.fft.rfft(y[SR : 3 * SR]))
    assert abs(np.argmax(spectrum) * SR / (2 * SR) - 440) < 3  # the tone survived decode + resample


@pytest.mark.parametrize(
    ("name", "sr", "channels", "subtype"),
    [
        ("8-bit unsigned", 22050, 1, "PCM_U8"),
        ("48 kHz", 48000, 1, "PCM_16"),
        ("44.1 kHz 24-bit", 44100, 1, "PCM_24"),
        ("stereo", 22050, 2, "PCM_16"),
        ("6-channel", 22050, 6, "PCM_16"),
        ("float", 16000, 1, "FLOAT"),
    ],
)
def test_odd_but_valid_wavs_become_mono_22050(tmp_path, name, sr, channels, subtype):
    data = write_audio(
        tmp_path / "t.wav", tone(3.5, sr=sr, freq=220, channels=channels, amp=0.3), sr=sr, subtype=subtype
    ).read_bytes()
    y = decode_audio(data, "wav", SR)
    assert abs(y.size - 3.5 * SR) <= 2
    assert 0.05 < np.abs(y).max() <= 1.0


@pytest.mark.parametrize("ext", ["wav", "flac", "ogg", "mp3", "m4a"])
def test_truncated_files_are_rejected(tmp_path, ext):
    data = write_audio(tmp_path / f"t.{ext}", tone(10.0)).read_bytes()
    with pytest.raises(AudioRejected, match="truncated|undecodable|no audio"):
        decode_audio(data[: len(data) // 2], ext, SR)


@pytest.mark.parametrize(
    ("data", "ext", "reason"),
    [
        (b"", "mp3", "empty file"),
        (b"hello, this is not audio\n" * 40, "mp3", "undecodable"),
        (b"hello, this is not audio\n" * 40, "wav", "undecodable"),
        (b"hello, this is not audio\n" * 40, "m4a", "undecodable"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "wav", "undecodable"),
    ],
)
def test_garbage_is_rejected_with_a_reason(data, ext, reason):
    with pytest.raises(AudioRejected, match=reason):
        decode_audio(data, ext, SR)


@pytest.mark.parametrize(
    ("y", "reason"),
    [
        (np.zeros(SR * 10, np.float32), "silent"),
        (np.full(SR * 10, 1e-4, np.float32), "silent"),
        (tone(2.0)[:, 0], "too short"),
        (tone(40.0, sr=SR)[:, 0], "too long"),
    ],
)
def test_unusable_audio_is_rejected(y, reason):
    with pytest.raises(AudioRejected, match=reason):
        check_usable(y, SR, min_seconds=2.995, max_seconds=30.0, silence_peak_dbfs=-60)


def test_quiet_music_is_not_silence():
    check_usable(tone(5.0, amp=0.01)[:, 0], SR, 2.995, 30.0, -60)  # -40 dBFS passes


@pytest.mark.parametrize("channels", [1, 2, 6])
def test_downmix_is_the_channel_mean(channels):
    from genrecast.audio import to_mono

    x = np.random.default_rng(0).normal(size=(1000, channels)).astype(np.float32)
    np.testing.assert_allclose(to_mono(x), x.mean(axis=1), rtol=1e-5, atol=1e-6)
    assert to_mono(x).dtype == np.float32 and to_mono(x).shape == (1000,)
