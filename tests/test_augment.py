"""Augmentation stages (genrecast.augment): each does what it says to a clip, within its bounds."""

from __future__ import annotations

import numpy as np
import pytest

from genrecast.augment import balance, batch_mixup, clip_augmenter, onehot
from genrecast.config import AugmentConf

tf = pytest.importorskip("tensorflow")

M, T = 16, 40


def clip(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-80, 0, size=(M, T)).astype(np.float32)


def run(use: list[str], x: np.ndarray, seed: int = 1, **kw) -> np.ndarray:
    f = clip_augmenter(AugmentConf(use=use, **kw), M, T, seed)
    return f(tf.constant(x), tf.constant(3))[0].numpy()


def test_nothing_used_is_the_identity():
    x = clip()
    assert np.array_equal(run([], x), x)


@pytest.mark.parametrize("seed", range(5))
def test_gain_adds_one_constant_within_bounds(seed):
    x = clip()
    d = run(["gain"], x, seed, gain_db=6.0) - x
    assert np.allclose(d, d[0, 0], atol=1e-4) and abs(d[0, 0]) <= 6.0


@pytest.mark.parametrize("seed", range(5))
def test_tilt_is_a_linear_ramp_over_bands(seed):
    x = clip()
    d = run(["tilt"], x, seed, tilt_db=6.0) - x
    assert np.allclose(d, d[:, :1], atol=1e-4)  # the same for every frame
    ramp = d[:, 0]
    assert np.allclose(np.diff(ramp), np.diff(ramp)[0], atol=1e-4)
    assert abs(ramp[0] + ramp[-1]) < 1e-4 and abs(ramp[-1]) <= 6.0 + 1e-4


@pytest.mark.parametrize("axis,use,kw", [(1, "time_mask", {"mask_frames": 8}), (0, "freq_mask", {"mask_bins": 5})])
def test_masks_fill_one_short_run_with_the_mean(axis, use, kw):
    x = clip()
    widths = set()
    for seed in range(12):
        y = run([use], x, seed, **kw)
        changed = np.flatnonzero((y != x).any(axis=1 - axis))
        if changed.size:
            assert np.array_equal(changed, np.arange(changed[0], changed[-1] + 1))  # contiguous
            sl = (slice(None), changed) if axis == 1 else (changed, slice(None))
            assert np.allclose(y[sl], x.mean(), atol=1e-3)
        assert changed.size <= max(kw.values())
        widths.add(changed.size)
    assert len(widths) > 1  # the width is drawn, not fixed


@pytest.mark.parametrize("seed", range(6))
def test_pitch_moves_bands_by_at_most_pitch_bins(seed):
    x = clip()
    y = run(["pitch"], x, seed, pitch_bins=2)
    shifts = [k for k in range(-2, 3) if np.array_equal(y, x[np.clip(np.arange(M) - k, 0, M - 1)])]
    assert len(shifts) == 1


def test_stretch_keeps_the_shape_and_the_range():
    x = clip()
    for seed in range(5):
        y = run(["stretch"], x, seed, stretch=0.2)
        assert y.shape == (M, T) and y.min() >= x.min() - 1e-3 and y.max() <= x.max() + 1e-3
    assert np.allclose(run(["stretch"], x, 0, stretch=0.0), x, atol=1e-4)


def test_same_seed_same_clips():
    x, use = clip(), ["gain", "tilt", "time_mask", "freq_mask", "pitch", "stretch"]
    assert np.array_equal(run(use, x, 7), run(use, x, 7))
    assert not np.array_equal(run(use, x, 7), run(use, x, 8))


def test_runs_as_a_parallel_tf_data_stage():
    """As training uses it: inside Dataset.map (graph mode, parallel calls), then batched mixup."""
    use = ["gain", "tilt", "time_mask", "freq_mask", "pitch", "stretch"]
    x = np.stack([clip(i) for i in range(8)])
    ds = tf.data.Dataset.from_tensor_slices((x, np.arange(8) % 3))
    ds = ds.map(clip_augmenter(AugmentConf(use=use), M, T, 5), num_parallel_calls=2).map(onehot(3)).batch(4)
    batches = list(ds.map(batch_mixup(0.2, 5)).as_numpy_iterator())
    assert [b[0].shape for b in batches] == [(4, M, T)] * 2 and np.isfinite(batches[0][0]).all()
    assert not np.allclose(batches[0][0], x[:4])


def test_mixup_mixes_powers_and_labels_alike():
    a, b = np.full((M, T), -20.0, np.float32), np.full((M, T), -40.0, np.float32)
    x = tf.constant(np.stack([a, b, a, b]))
    _, y = onehot(3)(x, tf.constant([0, 1, 0, 1]))
    mx, my = batch_mixup(0.4, seed=3)(x, y)
    mx, my = mx.numpy(), my.numpy()
    assert np.allclose(my.sum(axis=1), 1.0, atol=1e-5) and (my >= 0).all()
    # every mixed clip is a + b at some lambda on the power scale, and its label says the same lambda
    lam_from_x = (10 ** (mx[:, 0, 0] / 10) - 10 ** (-40 / 10)) / (10 ** (-20 / 10) - 10 ** (-40 / 10))
    assert np.allclose(lam_from_x, my[:, 0], atol=1e-3)
    assert np.allclose(mx, mx[:, :1, :1], atol=1e-4)  # each clip still flat


def test_balanced_batches_even_out_the_genres():
    labels = np.array([0] * 90 + [1] * 10, np.int32)
    ds = tf.data.Dataset.from_tensor_slices((np.zeros((100, 2), np.float32), labels)).repeat()
    got = np.array([int(lbl) for _, lbl in balance(ds, [90, 10, 0], seed=0).take(600)])
    share = (got == 1).mean()
    assert 0.4 < share < 0.6 and set(got) == {0, 1}
