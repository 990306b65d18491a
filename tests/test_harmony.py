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


def test_stored_track_harmony_decodes_the_ingested_audio_or_refuses(tmp_path):
    """train.harmony's statistics of an ingested track come from its audio decoded as ingest
    decodes it; audio changed or gone since ingest is one clear error, never other statistics."""
    import hashlib

    from genrecast.errors import JobError
    from genrecast.features import usable_samples
    from genrecast.storage import Storage
    from genrecast.track_harmony import stored_track_harmony

    from conftest import write_audio, write_config

    cfg = write_config(tmp_path)
    path = write_audio(tmp_path / "a.wav", progression(48, [(0, QUALITIES["maj"]), (5, QUALITIES["maj"])]), SR)
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    got = stored_track_harmony(Storage(), cfg, "a", str(path), sha)
    want = harmony_stats(usable_samples(data, str(path), cfg.audio, cfg.ingest), cfg.audio.sample_rate)
    np.testing.assert_array_equal(got, want)
    with pytest.raises(JobError, match=r"track a: its audio .*a\.wav changed since ingest"):
        stored_track_harmony(Storage(), cfg, "a", str(path), "0" * 64)
    with pytest.raises(JobError, match=r"track b: its audio .*b\.wav is gone since ingest"):
        stored_track_harmony(Storage(), cfg, "b", str(tmp_path / "b.wav"), sha)


def test_harmony_pass_gives_each_track_its_statistics_or_one_clear_error(trained, spark):
    """train.harmony's Spark pass over the mel dataset: every wanted track once, equal to its
    statistics computed alone; a track no file holds, or whose audio changed since ingest, is one
    JobError naming it (the executor reports the change; the driver raises)."""
    from genrecast import commit
    from genrecast.dataset import mels_uri
    from genrecast.errors import JobError
    from genrecast.storage import Storage
    from genrecast.track_harmony import _file_harmony, checked_rows, harmony_pass, stored_track_harmony

    _root, cfg, _model_id = trained
    storage = Storage.from_config(cfg)
    files = commit.table_files(storage, mels_uri(cfg))
    audio = {}  # track_id -> (file, source_uri, audio_sha256)
    for f in files:
        table = storage.read_parquet(f, ["track_id", "source_uri", "audio_sha256"]).to_pylist()
        audio.update({r["track_id"]: (f, r["source_uri"], r["audio_sha256"]) for r in table})
    wanted = frozenset(sorted(audio)[:5])
    got = harmony_pass(spark, cfg, files, wanted, 2)
    assert got.keys() == wanted
    for t in wanted:
        # rtol: another process's BLAS may round the chroma's last bits differently (2.9e-11 seen)
        np.testing.assert_allclose(got[t], stored_track_harmony(storage, cfg, t, *audio[t][1:]), rtol=1e-6)
    with pytest.raises(JobError, match="no clips of track zzz/none .1 in all. in the mel dataset"):
        harmony_pass(spark, cfg, files, wanted | {"zzz/none"}, 2)

    track = min(wanted)
    file, source, _sha = audio[track]
    read = storage.read_bytes
    storage.read_bytes = lambda uri: read(uri) + (b"\0" if uri == source else b"")  # the audio changed
    rows = list(_file_harmony(file, cfg, storage, {track}))
    assert rows == [(track, f"track {track}: its audio {source} changed since ingest; run genrecast ingest")]
    with pytest.raises(JobError, match=f"harmony statistics of 1 track.s. failed, first track {track}: its audio"):
        checked_rows(rows + [(t, got[t]) for t in wanted - {track}], wanted)
