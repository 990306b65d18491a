"""Key-invariant harmony statistics of a track: which intervals and chord qualities it plays and
how its chord roots move, from its chroma.

Pure numpy + librosa. Measured as a probe beside the frozen backbone's features on the demo
(``bench/harmony_probe.py``, BENCHMARKS.md "Harmony statistics beside the backbone"); a pooled
model's second input with ``train.harmony`` (:func:`genrecast.model.build_pooled_head`).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

# Chord qualities as pitch classes above the root, matched frame by frame.
QUALITIES: dict[str, tuple[int, ...]] = {
    "maj": (0, 4, 7),
    "min": (0, 3, 7),
    "7": (0, 4, 7, 10),
    "maj7": (0, 4, 7, 11),
    "min7": (0, 3, 7, 10),
    "dim": (0, 3, 6),
    "sus4": (0, 5, 7),
    "6": (0, 4, 7, 9),
}
# Krumhansl-Kessler major key profile: rotates the mean chroma to its most likely tonic.
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
QUIET = 1e-3  # frames under this share of the loudest frame's chroma energy are left out
N_LAGS = 6  # interval classes 1..6 semitones (7..11 mirror them)
N_FEATURES = 2 * N_LAGS + 2 * len(QUALITIES) + 12 + 1 + 12  # 53


@lru_cache(maxsize=1)
def chord_templates() -> np.ndarray:
    """(len(QUALITIES) * 12, 12) unit chord templates, row ``quality * 12 + root``."""
    rows = np.zeros((len(QUALITIES) * 12, 12))
    for q, intervals in enumerate(QUALITIES.values()):
        for root in range(12):
            rows[q * 12 + root, [(root + i) % 12 for i in intervals]] = 1.0
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def chroma_frames(sample_rate: int) -> tuple[int, int]:
    """(n_fft, hop): a ~0.25 s window (a power of two; 4096 at 16 and 22.05 kHz), half overlap -
    long enough to resolve semitones in the bass."""
    n_fft = 2 ** round(math.log2(0.256 * sample_rate))
    return n_fft, n_fft // 2


def harmony_stats(y: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mono samples -> (N_FEATURES,) float32, unchanged (up to the chroma's resolution) when the
    music is transposed:

    - interval profile (12): mean and std over frames of the unit chroma's circular
      autocorrelation at 1-6 semitones - which intervals sound together;
    - chord qualities (16): share of frames whose best chord template has each quality, and each
      quality's mean best match;
    - root movement (13): histogram of the intervals between successive differing chord roots, and
      the share of frames where the root changes;
    - the mean chroma rotated to its most likely major tonic (12).

    A track with no audible frame (rejected as silent before it gets here) gives zeros.
    """
    import librosa

    if not np.any(y):
        return np.zeros(N_FEATURES, np.float32)
    n_fft, hop = chroma_frames(sample_rate)
    chroma = librosa.feature.chroma_stft(y=np.asarray(y, np.float32), sr=sample_rate, n_fft=n_fft, hop_length=hop)
    energy = chroma.sum(axis=0)
    if not energy.size or energy.max() <= 0:
        return np.zeros(N_FEATURES, np.float32)
    chroma = chroma[:, energy > QUIET * energy.max()]
    unit = chroma / np.linalg.norm(chroma, axis=0, keepdims=True)
    lags = np.stack([np.sum(unit * np.roll(unit, -k, axis=0), axis=0) for k in range(1, N_LAGS + 1)])
    match = chord_templates() @ unit  # (qualities * 12, frames)
    best = match.argmax(axis=0)
    quality, root = best // 12, best % 12
    n_q = len(QUALITIES)
    share = np.bincount(quality, minlength=n_q) / len(quality)
    strength = match.reshape(n_q, 12, -1).max(axis=1).mean(axis=1)
    changed = root[1:] != root[:-1]
    moves = ((root[1:] - root[:-1]) % 12)[changed]
    movement = np.bincount(moves, minlength=12) / max(1, int(changed.sum()))
    change_rate = float(changed.mean()) if changed.size else 0.0
    mean = unit.mean(axis=1)
    tonic = int(np.argmax([np.dot(np.roll(mean, -r), MAJOR_PROFILE) for r in range(12)]))
    return np.concatenate(
        [lags.mean(axis=1), lags.std(axis=1), share, strength, movement, [change_rate], np.roll(mean, -tonic)]
    ).astype(np.float32)
