"""Harmony statistics on synthetic chords: the right quality, root movement and key invariance."""

from __future__ import annotations

import numpy as np
import pytest

from genrecast.harmony import N_FEATURES, QUALITIES, harmony_stats

SR = 16000
N_Q = len(QUALITIES)
# Offsets of the blocks in the feature vector (see harmony_stats).
SHARE = slice(12, 12 + N_Q)
MOVEMENT = slice(12 + 2 * N_Q, 12 + 2 * N_Q + 12)


def chord(midi_notes: list[int], seconds: float) -> np.ndarray:
    """Organ-like tones (3 harmonics) of the given MIDI notes, summed."""
    t = np.arange(int(seconds * SR)) / SR
    y = np.zeros_like(t)
    for note in midi_notes:
        f = 440.0 * 2 ** ((note - 69) / 12)
        y += sum(np.sin(2 * np.pi * h * f * t) / h for h in (1, 2, 3))
    return (0.1 * y).astype(np.float32)


def progression(root: int, shapes: list[tuple[int, tuple[int, ...]]], bar: float = 1.0, repeats: int = 4) -> np.ndarray:
    """Chords (root offset, intervals) of one bar each, from MIDI ``root``, repeated."""
    bars = [chord([root + offset + i for i in intervals], bar) for offset, intervals in shapes]
    return np.concatenate(bars * repeats)


def test_a_held_chord_is_recognised_by_its_quality():
    for name in ("maj", "min", "7", "min7"):
        got = harmony_stats(chord([48 + i for i in QUALITIES[name]], 4.0), SR)
        assert got.shape == (N_FEATURES,) and got.dtype == np.float32
        share = dict(zip(QUALITIES, got[SHARE], strict=True))
        assert max(share, key=share.get) == name and share[name] > 0.8, (name, share)


def test_root_movement_of_a_one_four_vamp():
    # C - F - C - F ...: roots move up a fourth (5) and up a fifth (7); a frame that straddles
    # two chords can match a third chord on the way, so not every move is one of the two.
    got = harmony_stats(progression(48, [(0, (0, 4, 7)), (5, (0, 4, 7))]), SR)
    movement = got[MOVEMENT]
    assert movement.sum() == pytest.approx(1.0)
    assert set(np.argsort(movement)[-2:]) == {5, 7} and movement[5] + movement[7] >= 0.7, movement


def test_transposing_the_music_leaves_the_statistics_nearly_unchanged():
    shapes = [(0, (0, 4, 7, 10)), (5, (0, 4, 7, 10)), (7, (0, 4, 7, 10)), (0, (0, 3, 7))]
    in_c, in_e = (harmony_stats(progression(root, shapes), SR) for root in (48, 52))
    other = harmony_stats(progression(48, [(0, (0, 4, 7, 11)), (2, (0, 3, 7, 10))]), SR)
    # Same music a third higher: far closer than different chords in the same key.
    assert np.abs(in_c - in_e).max() < 0.1
    assert np.abs(in_c - other).max() > 3 * np.abs(in_c - in_e).max()


def test_silence_gives_zeros():
    assert not harmony_stats(np.zeros(3 * SR, np.float32), SR).any()
