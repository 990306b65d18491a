import pytest

from genrecast.catalogue import (
    Track,
    list_tracks,
    parse_labels,
    track_id_for,
    validate_track_id,
)
from genrecast.errors import InvalidIdentifier, JobError
from genrecast.storage import Storage

GENRES = ["rock", "jazz", "brazilian funk"]


def test_track_id_is_relative_path_without_extension():
    assert track_id_for("/c/audio/rock/a song.mp3", "/c/audio") == "rock/a song"
    assert track_id_for("s3://b/audio/x/y.z.flac", "s3://b/audio") == "x/y.z"


@pytest.mark.parametrize("bad", ["", " a", "/abs", "a/../b", "a\x01b", "a\\b"])
def test_invalid_track_ids(bad):
    with pytest.raises(InvalidIdentifier):
        validate_track_id(bad)


def test_labels_parse_match_genres_case_insensitively():
    labels, rejects = parse_labels("track_id,genre,artist\na,Rock,x\nb,Brazilian Funk,\nc,jazz,y\n", "l.csv", GENRES)
    assert {k: (v.genre, v.artist) for k, v in labels.items()} == {
        "a": ("rock", "x"),
        "b": ("brazilian funk", None),
        "c": ("jazz", "y"),
    }
    assert rejects == []


def test_labels_source_column_is_optional_free_text_in_any_column_order():
    text = "source,track_id,genre\nmma/FluidR3_GM,a,rock\n,b,jazz\n  spotify:playlist:37i9  ,c,jazz\nx,c,jazz\n"
    labels, rejects = parse_labels(text, "l.csv", GENRES)
    assert rejects == []
    assert {k: (v.genre, v.artist, v.source) for k, v in labels.items()} == {
        "a": ("rock", None, "mma/FluidR3_GM"),
        "b": ("jazz", None, None),  # empty: unknown
        "c": ("jazz", None, "x"),  # a repeated row: its later non-empty source, as for artist
    }
    absent, _ = parse_labels("track_id,genre,artist\na,rock,x\n", "l.csv", GENRES)
    assert absent["a"].source is None and absent["a"].artist == "x"


def test_label_problems_become_rejects_naming_the_line():
    text = "track_id,genre\na,rock\nb,polka\n../x,rock\nc,rock\nc,jazz\nd,jazz\nd,jazz\n"
    labels, rejects = parse_labels(text, "l.csv", GENRES)
    assert set(labels) == {"a", "d"}
    reasons = {r["source_uri"]: r["reason"] for r in rejects}
    assert "not in the configured genres" in reasons["l.csv#line=3"]
    assert "invalid track_id" in reasons["l.csv#line=4"]
    assert "conflicting genres for track 'c'" in reasons["l.csv#line=5"]
    assert all(r["stage"] == "labels" for r in rejects)


def test_labels_without_required_header_fail_clearly():
    with pytest.raises(JobError, match="l.csv: header must name track_id and genre"):
        parse_labels("id,label\na,rock\n", "l.csv", GENRES)


def test_listing_rejects_unknown_extensions_and_duplicate_ids(tmp_path):
    s = Storage()
    for name in ["rock/a.mp3", "rock/a.wav", "rock/notes.txt", "README", "jazz/b.FLAC"]:
        s.write_bytes(str(tmp_path / name), b"x")
    items = list(list_tracks(s, str(tmp_path), ["mp3", "wav", "flac"]))
    tracks = [i for i in items if isinstance(i, Track)]
    rejects = {i["source_uri"].rsplit("/", 1)[-1]: i["reason"] for i in items if isinstance(i, dict)}
    assert [t.track_id for t in tracks] == ["jazz/b", "rock/a"]
    assert rejects == {
        "README": "no file extension",
        "a.wav": f"duplicate track_id 'rock/a' (also {tmp_path}/rock/a.mp3)",
        "notes.txt": "unsupported extension '.txt'",
    }
