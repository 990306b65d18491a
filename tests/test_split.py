import pytest

from genrecast.split import TEST, TRAIN, VAL, LabelledTrack, assign_splits, split_groups


def catalogue(n_genres=4, artists=5, per_artist=3, with_artist=True):
    return [
        LabelledTrack(f"g{g}/a{a}-t{t}", f"genre{g}", f"artist-{g}-{a}" if with_artist else None)
        for g in range(n_genres)
        for a in range(artists)
        for t in range(per_artist)
    ]


@pytest.mark.parametrize("by", ["artist_or_track", "track"])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_no_group_on_two_sides(by, seed):
    tracks = catalogue()
    split = assign_splits(tracks, test=0.2, val=0.15, seed=seed, by=by)
    groups = split_groups(tracks, by)
    sides_of_group: dict[str, set[str]] = {}
    for t in tracks:
        sides_of_group.setdefault(groups[t.track_id], set()).add(split[t.track_id])
    assert all(len(s) == 1 for s in sides_of_group.values())
    if by == "artist_or_track":  # every artist's tracks are together
        assert len(sides_of_group) == 20


def test_every_genre_on_every_side_and_fractions_roughly_kept():
    tracks = catalogue()
    split = assign_splits(tracks, test=0.2, val=0.15, seed=0)
    for g in range(4):
        sides = [split[t.track_id] for t in tracks if t.genre == f"genre{g}"]
        assert sides.count(TEST) == 3 and sides.count(VAL) == 3 and sides.count(TRAIN) == 9  # 1/1/3 artists


def test_deterministic_for_a_seed_and_different_across_seeds():
    tracks = catalogue()
    a = assign_splits(tracks, 0.2, 0.15, seed=3)
    assert a == assign_splits(list(reversed(tracks)), 0.2, 0.15, seed=3)
    assert a != assign_splits(tracks, 0.2, 0.15, seed=4)


def test_tracks_without_artist_split_by_track():
    tracks = catalogue(with_artist=False)
    split = assign_splits(tracks, 0.2, 0.0, seed=0)
    assert sum(1 for s in split.values() if s == TEST) == 4 * 3  # ceil(0.2 * 15) tracks per genre
    assert VAL not in split.values()


def test_a_genre_with_one_group_stays_in_training():
    tracks = [LabelledTrack("x/1", "solo", "one-artist"), LabelledTrack("x/2", "solo", "one-artist")] + catalogue(1)
    split = assign_splits(tracks, 0.2, 0.15, seed=0)
    assert split["x/1"] == split["x/2"] == TRAIN


def test_groups_join_by_artist_and_identical_audio_transitively():
    # A shares an artist with B, B the audio of C (another id, no artist), C the audio of D:
    # one group. E shares nothing.
    tracks = [
        LabelledTrack("a", "rock", "band", "sha-1"),
        LabelledTrack("b", "rock", "band", "sha-2"),
        LabelledTrack("c", "rock", None, "sha-2"),
        LabelledTrack("d", "pop", "other", "sha-2"),
        LabelledTrack("e", "rock", None, "sha-9"),
    ]
    groups = split_groups(tracks)
    assert groups == {"a": "artist:band", "b": "artist:band", "c": "artist:band", "d": "artist:band", "e": "track:e"}
    # by track: artists no longer join, identical audio still does.
    by_track = split_groups(tracks, by="track")
    assert by_track == {"a": "track:a", "b": "track:b", "c": "track:b", "d": "track:b", "e": "track:e"}
    assert split_groups(list(reversed(tracks))) == groups


@pytest.mark.parametrize("seed", range(6))
def test_duplicate_audio_never_straddles_splits(seed):
    # Every artist-less track of genre0 has a twin (same audio, another id) in the catalogue.
    tracks = catalogue(n_genres=2, with_artist=False)
    twins = [LabelledTrack(t.track_id + "-copy", t.genre, None, f"sha-{t.track_id}") for t in tracks]
    tracks = [LabelledTrack(t.track_id, t.genre, None, f"sha-{t.track_id}") for t in tracks] + twins
    split = assign_splits(tracks, 0.3, 0.2, seed=seed, by="track")
    assert all(split[t.track_id] == split[t.track_id + "-copy"] for t in tracks[: len(twins)])
    assert TEST in split.values() and VAL in split.values()
