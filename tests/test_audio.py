"""Decoding across formats and odd inputs (one parametrized test per behaviour)."""

import subprocess

import librosa
import numpy as np
import pytest
import soundfile as sf

from genrecast import audio
from genrecast.audio import AudioRejected, check_usable, decode_audio

from conftest import synthetic_track, tone, write_audio

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
        (np.full(SR * 10, 0.5, np.float32), "silent: RMS around the mean"),  # DC: peak -6 dBFS
        (0.5 + np.random.default_rng(0).normal(0, 1e-5, SR * 10).astype(np.float32), "silent: RMS"),
        (tone(2.0)[:, 0], "too short"),
        (tone(40.0, sr=SR)[:, 0], "too long"),
    ],
)
def test_unusable_audio_is_rejected(y, reason):
    with pytest.raises(AudioRejected, match=reason):
        check_usable(y, SR, min_seconds=2.995, max_seconds=30.0, silence_peak_dbfs=-60)


@pytest.mark.parametrize(
    "y",
    [
        tone(5.0, amp=0.01)[:, 0],  # -40 dBFS peak, -43 dBFS RMS
        tone(5.0, amp=0.01)[:, 0] + np.float32(0.3),  # the same on a DC offset
        np.random.default_rng(1).normal(0, 1e-3, SR * 5).astype(np.float32),  # noise at -60 dBFS RMS
    ],
)
def test_quiet_music_is_not_silence(y):
    check_usable(y, SR, 2.995, 30.0, -60)
    check_usable(y, SR, 2.995, 30.0, -60, silence_rms_dbfs=-70)


@pytest.mark.parametrize("channels", [1, 2, 6])
def test_downmix_is_the_channel_mean(channels):
    from genrecast.audio import to_mono

    x = np.random.default_rng(0).normal(size=(1000, channels)).astype(np.float32)
    np.testing.assert_allclose(to_mono(x), x.mean(axis=1), rtol=1e-5, atol=1e-6)
    assert to_mono(x).dtype == np.float32 and to_mono(x).shape == (1000,)


@pytest.mark.parametrize(
    ("sr", "channels", "ext"),
    [
        (22050, 1, "wav"),
        (8000, 3, "wav"),
        (44100, 2, "flac"),
        (96000, 6, "flac"),
        (48000, 1, "mp3"),
        (44100, 2, "mp3"),
        (44100, 2, "ogg"),
        (48000, 2, "opus"),
    ],
)
def test_blockwise_decode_equals_the_whole_file_path(tmp_path, monkeypatch, sr, channels, ext):
    """Block-wise read + downmix + streamed soxr == whole read, mean, librosa.resample. The
    pulsing drone is one whose MP3 soundfile's seek-per-read() decodes wrongly in blocks."""
    drone = synthetic_track("low", np.random.default_rng(0), seconds=3.3, sr=sr)
    y = np.concatenate([np.roll(drone, 100 * k) for k in range(channels)], axis=1)
    data = write_audio(tmp_path / f"t.{ext}", y, sr=sr).read_bytes()
    whole, rate = sf.read(tmp_path / f"t.{ext}", dtype="float32", always_2d=True)
    ref = librosa.resample(whole.mean(axis=1), orig_sr=rate, target_sr=SR, res_type="soxr_hq")
    monkeypatch.setattr(audio, "BLOCK_SAMPLES", 9973 * channels)  # many blocks, odd sizes
    ours = decode_audio(data, ext, SR)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("ext", "seconds", "header"),
    [(ext, s, True) for ext in ["wav", "flac", "ogg", "mp3", "m4a"] for s in (9.0, 12.0)]
    + [(ext, 12.0, False) for ext in ["wav", "flac", "ogg", "mp3"]],
)
def test_length_is_capped_while_decoding(tmp_path, monkeypatch, ext, seconds, header):
    """Longer than max_seconds -> rejected from the header before reading samples (soundfile),
    or when decoding passes the cap: a header that declares no length (simulated), ffmpeg's -t."""
    data = write_audio(tmp_path / f"t.{ext}", tone(seconds, freq=330)).read_bytes()
    if not header:
        monkeypatch.setattr(sf.SoundFile, "frames", property(lambda self: 0))
    if seconds < 10:
        assert abs(decode_audio(data, ext, SR, max_seconds=10.0).size / SR - seconds) < 0.1
        return
    expected = "decoded at least" if ext == "m4a" or not header else "header declares 12s"
    with pytest.raises(AudioRejected, match=f"too long: {expected}.* > ingest.max_seconds 10s"):
        decode_audio(data, ext, SR, max_seconds=10.0)


def test_hls_playlist_named_m4a_is_rejected_without_opening_its_segment(tmp_path):
    """A `.m4a` holding an HLS playlist: plain ffmpeg (content-probed demuxer) follows it to the
    segment and decodes it; decode_audio forces the mov demuxer and rejects the file."""
    segment = tmp_path / "segment.ts"
    sine = ["-f", "lavfi", "-i", "sine=frequency=440:duration=5", "-ar", "22050", "-c:a", "aac"]
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", *sine, str(segment)], check=True)
    playlist = tmp_path / "evil.m4a"
    playlist.write_text(
        "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n"
        f"#EXTINF:5.0,\n{segment}\n#EXTINF:5.0,\nhttp://127.0.0.1:1/x.ts\n#EXT-X-ENDLIST\n"
    )
    plain = subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "quiet", "-i", str(playlist), "-ac", "1", "-f", "f32le", "pipe:1"],
        capture_output=True,
        check=False,
    )
    assert len(plain.stdout) > 4 * 22050 * 4  # the control: the playlist is a real threat
    with pytest.raises(AudioRejected, match="undecodable audio \\(ffmpeg\\)") as exc:
        decode_audio(playlist.read_bytes(), "m4a", SR)
    assert "\n" not in str(exc.value)
