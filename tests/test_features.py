import os
import subprocess
import sys
from datetime import UTC, datetime

import librosa
import numpy as np
import pytest
import soundfile as sf

from genrecast import features, registry
from genrecast.audio import AudioRejected
from genrecast.config import AudioConf
from genrecast.features import (
    AMIN,
    DB_FLOOR,
    clip_starts,
    log_mel,
    log_mel_clips,
    mel_basis,
    min_track_seconds,
    power_spectrogram,
)
from genrecast.storage import Storage
from genrecast.tasks import TrackTask

from conftest import REPO, tone, write_audio, write_config

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


@pytest.mark.parametrize("n", [3 * 22050, 2048 * 512 - 1, 2048 * 512, 2048 * 512 * 2 + 700, 60 * 22050 + 17])
def test_log_mel_in_stft_blocks_equals_the_whole_track(n):
    """log_mel computes STFT_BLOCK_FRAMES frames at a time; the whole-track STFT gives the same."""
    y = np.random.default_rng(4).normal(0, 0.2, n).astype(np.float32)
    power = power_spectrogram(y, P.n_fft, P.hop_length)  # every frame at once
    mel = mel_basis(P.sample_rate, P.n_fft, P.n_mels) @ power
    whole = (10.0 * np.log10(np.maximum(mel, AMIN))).astype(np.float32)
    np.testing.assert_array_equal(log_mel(y, P), whole)


RSS_PROBE = """
import sys
from genrecast.audio import AudioRejected
from genrecast.config import AudioConf, IngestConf
from genrecast.features import track_clips
with open(sys.argv[1], "rb") as f:
    data = f.read()
try:
    print("accepted", track_clips(data, sys.argv[1], AudioConf(), IngestConf()).shape)
except AudioRejected as exc:
    print("rejected:", exc)
# VmHWM, not getrusage's ru_maxrss: that one survives exec, so it would report the forking pytest
# process's size (1.6 GB in the full suite) instead of this one's.
print(next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")))  # KiB
"""


def test_three_hour_six_channel_file_is_rejected_in_under_1_gb(tmp_path):
    """A real 3 h, 6-channel, 8 kHz FLAC (2 GB as float32 samples; ~2 MB on disk: digital
    silence): rejected as too long from its header, in a fresh process peaking under 1 GB."""
    path = tmp_path / "three_hours.flac"
    block = np.zeros((1 << 20, 6), np.int16)
    with sf.SoundFile(path, "w", 8000, 6, subtype="PCM_16", format="FLAC", compression_level=0) as f:
        for start in range(0, 3 * 3600 * 8000, len(block)):
            f.write(block[: min(len(block), 3 * 3600 * 8000 - start)])
    assert sf.info(path).duration == 3 * 3600 and sf.info(path).channels == 6
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "lib"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-c", RSS_PROBE, str(path)], capture_output=True, text=True, env=env, check=True
    ).stdout.splitlines()
    assert out[0] == "rejected: too long: header declares 10800s > ingest.max_seconds 1800s"
    peak_mib = int(out[1]) / 1024
    print(f"peak RSS {peak_mib:.0f} MiB")
    assert peak_mib < 1024


def _raise(exc):
    def stub(*_args, **_kwargs):
        raise exc

    return stub


def _run_job_on(job, task, cfg, tmp_path):
    """One track through the job's decode catch site: ingest/score partition results, classify rows."""
    from genrecast import classify, ingest, score

    if job == "ingest":
        return next(ingest.ingest_partition(0, [task], Storage.from_config(cfg), cfg.audio, cfg.ingest, str(tmp_path)))
    if job == "score":
        return next(score.score_partition(0, [task], cfg, "m", ["rock"], 1, datetime.now(UTC), str(tmp_path)))
    return classify.classify_files(cfg, [task.uri])


@pytest.mark.parametrize("job", ["ingest", "score", "classify"])
@pytest.mark.parametrize("exc", [MemoryError("simulated"), AudioRejected("undecodable audio: simulated")])
def test_memory_error_fails_the_task_and_is_never_a_reject(tmp_path, monkeypatch, job, exc):
    """An AudioRejected from decoding becomes a reject row (or an error line in classify); a
    MemoryError propagates, so Spark fails and retries the task."""
    from genrecast import ingest

    cfg = write_config(tmp_path)
    task = TrackTask("a", str(write_audio(tmp_path / "audio" / "a.wav", tone(4.0))))
    monkeypatch.setattr(ingest, "usable_samples", _raise(exc))
    monkeypatch.setattr(features, "track_clips_length_harmony", _raise(exc))  # score and classify import it late
    monkeypatch.setattr(registry, "resolve_model_id", lambda cfg, spec: "m")  # classify: no model needed
    monkeypatch.setattr(registry, "read_model_json", lambda cfg, model_id: {"genres": ["rock"], "audio": {}})
    monkeypatch.setattr(registry, "check_audio_params", lambda meta, audio, model_id: None)
    if isinstance(exc, MemoryError):
        with pytest.raises(MemoryError, match="simulated"):
            _run_job_on(job, task, cfg, tmp_path)
        return
    result = _run_job_on(job, task, cfg, tmp_path)
    if job == "classify":
        assert result == [{"path": task.uri, "error": "undecodable audio: simulated"}]
    else:
        assert [r["reason"] for r in result.rejects] == ["undecodable audio: simulated"] and not result.tracks
