"""Features: mono samples -> log-mel spectrogram -> fixed-length clips. Pure NumPy/librosa.

Units: mel power in dB relative to 1.0 (full-scale sine ~ +54 dB in its band), floored at
``DB_FLOOR`` (-100 dB), float32. Shapes: a track's mel is ``(n_mels, frames)``; clips are
``(n_clips, n_mels, clip_frames)``, 128 x 130 for the default 3 s at 22 050 Hz / hop 512.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np

from genrecast.audio import check_usable, decode_audio, extension_of
from genrecast.config import AudioConf, IngestConf

# Bump when the decode / mel / clip code changes its output: every track is then re-ingested, and
# rejects made by the old code are retried (see features_key).
FEATURES_VERSION = 1
INGEST_FEATURE_SETTINGS = ("max_seconds", "silence_peak_dbfs", "silence_rms_dbfs")

AMIN = 1e-10
DB_FLOOR = 10.0 * math.log10(AMIN)  # -100 dB: digital silence


@lru_cache(maxsize=8)
def mel_basis(sample_rate: int, n_fft: int, n_mels: int) -> Any:
    """(n_mels, 1 + n_fft // 2) Slaney mel filterbank as a CSR matrix, built once per process.

    Each FFT bin feeds at most two filters, so the sparse product does ~1/60 of the dense work.
    """
    import librosa
    import scipy.sparse

    return scipy.sparse.csr_matrix(librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, dtype=np.float32))


@lru_cache(maxsize=8)
def _hann(n_fft: int) -> np.ndarray:
    import scipy.signal

    return scipy.signal.get_window("hann", n_fft, fftbins=True).astype(np.float32)


def stft_frames(n_samples: int, n_fft: int, hop_length: int) -> int:
    """STFT frames of a centred (``n_fft // 2`` zero-padded each side) signal: ``1 + n // hop``
    for an even ``n_fft``."""
    return 1 + (n_samples + 2 * (n_fft // 2) - n_fft) // hop_length


def power_spectrogram(
    y: np.ndarray, n_fft: int, hop_length: int, start: int = 0, stop: int | None = None
) -> np.ndarray:
    """(1 + n_fft // 2, stop - start) float32 |STFT|^2 of frames ``start:stop`` (default: all):
    centred, zero-padded, periodic Hann.

    Same frames as ``librosa.stft(y, center=True, pad_mode="constant")``, but single-precision
    (scipy.fft keeps float32; numpy.fft computes in float64) over a strided view, ~2x faster.
    Only the samples of the requested frames are copied (padded at the track's edges), so a
    range of frames costs memory in proportion to the range, not to the track.
    """
    import scipy.fft

    total = stft_frames(y.size, n_fft, hop_length)
    stop = total if stop is None else min(stop, total)
    # Sample range of frames start..stop-1 in y's indices (frame f starts at f * hop - n_fft // 2).
    lo = start * hop_length - n_fft // 2
    hi = (stop - 1) * hop_length - n_fft // 2 + n_fft
    segment = y[max(lo, 0) : max(min(hi, y.size), 0)].astype(np.float32, copy=False)
    padded = np.pad(segment, (max(-lo, 0), max(hi - y.size, 0)), mode="constant")
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop_length]
    spec = scipy.fft.rfft(frames * _hann(n_fft), axis=-1, workers=1)
    return (spec.real**2 + spec.imag**2).T


# STFT frames per block in log_mel: ~16 MB of complex64 spectrum at n_fft 2048 instead of the
# whole track's (a 30-minute track's would be ~0.6 GB, plus as much again for the frames).
STFT_BLOCK_FRAMES = 2048


def log_mel(y: np.ndarray, params: AudioConf) -> np.ndarray:
    """(n_mels, 1 + len(y) // hop_length) float32 log-mel power in dB (centred STFT, Hann),
    computed ``STFT_BLOCK_FRAMES`` frames at a time (frames are independent: same numbers)."""
    basis = mel_basis(params.sample_rate, params.n_fft, params.n_mels)
    total = stft_frames(y.size, params.n_fft, params.hop_length)
    out = np.empty((params.n_mels, total), dtype=np.float32)
    for start in range(0, total, STFT_BLOCK_FRAMES):
        stop = min(start + STFT_BLOCK_FRAMES, total)
        mel = basis @ power_spectrogram(y, params.n_fft, params.hop_length, start, stop)
        out[:, start:stop] = 10.0 * np.log10(np.maximum(mel, AMIN))
    return out


def clip_starts(n_frames: int, clip_frames: int) -> list[int]:
    """First frame of each clip. Clips tile the track; the last one is aligned to the end
    (overlapping its neighbour) so the whole track is covered without padding.
    Tracks shorter than one clip have no clips (they are rejected upstream)."""
    if n_frames < clip_frames:
        return []
    starts = list(range(0, n_frames - clip_frames + 1, clip_frames))
    if starts[-1] + clip_frames < n_frames:
        starts.append(n_frames - clip_frames)
    return starts


def slice_clips(mel: np.ndarray, clip_frames: int) -> np.ndarray:
    """(n_mels, frames) -> (n_clips, n_mels, clip_frames), see :func:`clip_starts`."""
    starts = clip_starts(mel.shape[1], clip_frames)
    if not starts:
        return np.empty((0, mel.shape[0], clip_frames), dtype=mel.dtype)
    return np.stack([mel[:, s : s + clip_frames] for s in starts])


def log_mel_clips(y: np.ndarray, params: AudioConf) -> np.ndarray:
    """Mono samples at ``params.sample_rate`` -> (n_clips, n_mels, clip_frames) float32 dB."""
    return slice_clips(log_mel(y, params), params.clip_frames)


def min_track_seconds(params: AudioConf) -> float:
    """Shortest track that yields one whole clip."""
    return (params.clip_frames - 1) * params.hop_length / params.sample_rate


def mfcc_stats(mel_db: np.ndarray, n_mfcc: int = 20) -> np.ndarray:
    """(2 * n_mfcc,) float32: mean and std over frames of the MFCCs of one (n_mels, frames) dB
    log-mel - the classic hand-made timbre summary, used as the baseline's features."""
    import scipy.fft

    mfcc = scipy.fft.dct(mel_db, axis=0, type=2, norm="ortho")[:n_mfcc]
    return np.concatenate([mfcc.mean(axis=1), mfcc.std(axis=1)]).astype(np.float32)


def features_key(audio: AudioConf, ingest: IngestConf) -> str:
    """What decides a track's clips (or its reject): ``v<FEATURES_VERSION>-<12 hex>``, the hex a
    sha256 of the audio settings and the ingest limits (``INGEST_FEATURE_SETTINGS``). Stored in
    the catalogue manifest, rejects rows and model.json; a track made under another key is
    processed again."""
    import hashlib
    import json

    settings = {
        "audio": audio.model_dump(),
        "ingest": {k: getattr(ingest, k) for k in INGEST_FEATURE_SETTINGS},
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return f"v{FEATURES_VERSION}-{digest}"


def usable_samples(data: bytes, uri: str, audio: AudioConf, ingest: IngestConf) -> np.ndarray:
    """Decode one audio file's bytes (its extension picks the decoder) to mono float32 samples at
    ``audio.sample_rate`` Hz and check they are long enough, short enough and not silent.

    Raises :class:`AudioRejected` with the reason for the rejects table.
    """
    y = decode_audio(data, extension_of(uri), audio.sample_rate, ingest.max_seconds)
    check_usable(
        y,
        audio.sample_rate,
        min_track_seconds(audio),
        ingest.max_seconds,
        ingest.silence_peak_dbfs,
        ingest.silence_rms_dbfs,
    )
    return y


def track_clips_length_harmony(
    data: bytes, uri: str, audio: AudioConf, ingest: IngestConf, harmony: bool
) -> tuple[np.ndarray, int, np.ndarray | None]:
    """One audio file -> (n_clips, n_mels, clip_frames) float32 log-mel clips in dB, the decoded
    length in samples at ``audio.sample_rate`` (the clip times need it) and, with ``harmony``, the
    track's harmony statistics (:func:`genrecast.harmony.harmony_stats` of the same samples, (53,)
    float32; else None): what a pooled model trained with ``train.harmony`` takes beside the clips.

    The single decode + mel path shared by score, classify and similar, so a model always sees
    clips made exactly as ingest made its training clips. Raises :class:`AudioRejected`.
    """
    y = usable_samples(data, uri, audio, ingest)
    stats = None
    if harmony:
        from genrecast.harmony import harmony_stats

        stats = harmony_stats(y, audio.sample_rate)
    return log_mel_clips(y, audio), len(y), stats


def track_clips(data: bytes, uri: str, audio: AudioConf, ingest: IngestConf) -> np.ndarray:
    """:func:`track_clips_length_harmony`'s clips alone."""
    return track_clips_length_harmony(data, uri, audio, ingest, False)[0]


def warm_up(params: AudioConf) -> None:
    """Import librosa and build the filterbank once per worker process, off the timed path."""
    log_mel(np.zeros(params.n_fft * 2, dtype=np.float32), params)
