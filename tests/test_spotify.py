"""genrecast labels spotify, offline: spotipy against a fake Web API on 127.0.0.1 (tests/spotify_server.py).

Covers paging (> 100 items), 429 + Retry-After and a 5xx once, null/local/episode items, ISRC and
artist+title matching, conflicts, the unmatched report, credentials never leaking, and adding a
genre end to end (labels -> ingest -> train) with only config + labels changed.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import logging
import os
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from genrecast import registry
from genrecast.catalogue import load_labels, parse_labels
from genrecast.dataset import index_dataset
from genrecast.errors import ConfigError, JobError
from genrecast.ingest import run_ingest
from genrecast.spotify_labels import (
    DEFAULT_AUTH_URL as DEFAULT_AUTH,
)
from genrecast.spotify_labels import (
    SpotifySettings,
    artist_keys,
    classify_entry,
    merge_labels,
    normalise_isrc,
    normalise_text,
    normalise_title,
    parse_playlist_specs,
    playlist_id_of,
    run_spotify_labels,
)
from genrecast.storage import Storage
from genrecast.train import run_train

from conftest import synthetic_track, write_audio, write_config
from spotify_server import FakeSpotify, entry, episode_object, local_object, spotify_id, track_object

CLIENT_ID = "genrecast-test-client-7c41e2"
CLIENT_SECRET = "s3cr3t-never-logged-5b9f0a"
RAP = spotify_id("playlist:rap")
HIPHOP = spotify_id("playlist:hiphop")
N_ISRC_TRACKS = 104  # with the extra entries below: 3 pages of 50


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setenv("SPOTIPY_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("SPOTIPY_CLIENT_SECRET", CLIENT_SECRET)
    for name in ("NO_PROXY", "no_proxy"):  # a proxy from the environment must not see loopback
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    with FakeSpotify(CLIENT_ID, CLIENT_SECRET) as server:
        yield server


def settings_for(fake: FakeSpotify, **overrides) -> SpotifySettings:
    values = dict(
        api_prefix=fake.api_prefix, auth_url=fake.auth_url, backoff_factor=0.01, retries=3, max_retry_after_s=2
    )
    return SpotifySettings(**{**values, **overrides})


def isrc(i: int) -> str:
    return f"USGR1{2_600_000 + i:07d}"


@pytest.fixture
def catalogue(tmp_path, fake):
    """A catalogue index of rap tracks (ISRC), name-only tracks, a labelled jazz track; playlists
    for rap (> 100 items, every kind of entry) and hiphop (one overlap with rap)."""
    index = ["track_id,isrc,artist,title"]
    for i in range(N_ISRC_TRACKS):
        # The owner's ISRCs are spelt loosely (lower case, hyphens): matching normalises them.
        code = isrc(i)
        spelt = f"{code[:2]}-{code[2:5]}-{code[5:7]}-{code[7:]}".lower() if i % 2 else code
        index.append(f"rap/r{i:03d},{spelt},Rapper {i % 5},Song {i}")
    index += [
        'rap/crazy-in-love,,"Beyonce, Jay Z",Crazy In Love',  # no ISRC: artist+title fallback
        "rap/senorita,,Ñandú,Señorita",
        "rap/the-boxer,,Simon and Garfunkel,The Boxer",
        "jazz/j00,USJZ12600001,Jazz Band,Blue Tune",
        "jazz/dup-a,,Twin,Same Title",  # two catalogue tracks with one artist+title: ambiguous
        "jazz/dup-b,,Twin,Same Title",
        "../escape,USXX12600009,Bad,Row",  # invalid id: rejected, listed in the report
    ]
    (tmp_path / "catalogue_index.csv").write_text("\n".join(index) + "\n")
    (tmp_path / "labels.csv").write_text("track_id,genre,artist\njazz/j00,jazz,Jazz Band\n")

    rap: list = []
    for i in range(N_ISRC_TRACKS):
        key = ("both", "item", "track")[i % 3]  # 2026 `item`, deprecated `track`, or both
        rap.append(entry(track_object(f"Song {i} (Remastered)", [f"Rapper {i % 5}"], isrc(i), seed=str(i)), key))
    rap += [
        entry(track_object("Crazy in Love (feat. JAY-Z)", ["Beyoncé", "JAY-Z"], "USSM10301234"), "item"),
        entry(track_object("Senorita - Remastered 2011", ["Nandu"], None)),
        entry(track_object("The Boxer - Live", ["Simon & Garfunkel"], "USSM19999999")),
        entry(track_object("Blue Tune", ["Jazz Band"], "USJZ12600001")),  # labelled jazz: conflict
        entry(track_object("Same Title", ["Twin"], None)),  # ambiguous
        entry(track_object("Nobody Has This", ["Stranger"], "GBXX12600001")),  # unmatched
        entry(None),  # a removed track
        {"added_at": "2026-03-01T12:00:00Z", "is_local": False, "track": None},
        entry(local_object("Home Demo", "Me")),
        entry(episode_object("Podcast 1")),
    ]
    fake.playlists[RAP] = rap
    fake.playlists[HIPHOP] = [
        entry(track_object("Song 0", ["Rapper 0"], isrc(0), seed="0")),  # also on the rap playlist
        entry(track_object("Song 1", ["Rapper 1"], isrc(1), seed="1")),
    ]
    cfg = write_config(tmp_path, "genres: [hiphop, jazz, rap]\n")
    return SimpleNamespace(cfg=cfg, root=tmp_path, settings=settings_for(fake))


def run(catalogue, specs=(f"{RAP}=rap",), **kwargs):
    return run_spotify_labels(catalogue.cfg, list(specs), settings=catalogue.settings, **kwargs)


def labels_rows(root: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO((root / "labels.csv").read_text())))


# -- parsing and normalisation --------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        ("37i9dQZF1DX0XUsuxWHRQd", "37i9dQZF1DX0XUsuxWHRQd"),
        ("spotify:playlist:37i9dQZF1DX0XUsuxWHRQd", "37i9dQZF1DX0XUsuxWHRQd"),
        ("https://open.spotify.com/playlist/37i9dQZF1DX0XUsuxWHRQd?si=ab12", "37i9dQZF1DX0XUsuxWHRQd"),
        ("https://open.spotify.com/intl-de/playlist/37i9dQZF1DX0XUsuxWHRQd", "37i9dQZF1DX0XUsuxWHRQd"),
    ],
)
def test_playlist_ids(text, expected):
    assert playlist_id_of(text) == expected


def test_playlist_specs_use_the_configured_spelling_and_split_on_the_last_equals():
    specs = parse_playlist_specs(
        ["https://open.spotify.com/playlist/abc?si=x=RAP", "def=Brazilian Funk"], ["rap", "brazilian funk"]
    )
    assert [(s.playlist_id, s.genre, s.source) for s in specs] == [
        ("abc", "rap", "spotify:playlist:abc"),
        ("def", "brazilian funk", "spotify:playlist:def"),
    ]


@pytest.mark.parametrize(
    "specs, message",
    [
        (["abc=polka"], "genre 'polka' is not in the configured genres"),
        (["abc"], "'abc' is not PLAYLIST_ID=GENRE"),
        (["abc="], "is not PLAYLIST_ID=GENRE"),
        (["a/b=rap"], "'a/b' is not a Spotify playlist id"),
        (["abc=rap", "abc=jazz"], "playlist abc is given two genres"),
        ([], "give at least one --playlist"),
    ],
)
def test_bad_playlist_arguments_are_config_errors(specs, message):
    with pytest.raises(ConfigError, match=message):
        parse_playlist_specs(specs, ["rap", "jazz"])


@pytest.mark.parametrize(
    "a, b",
    [
        ("Señorita", "senorita"),
        ("Don’t Stop (Live)", "Dont Stop"),
        ("Crazy in Love (feat. JAY-Z)", "crazy in love"),
        ("Crazy in Love feat. JAY-Z", "Crazy In Love"),
        ("Heroes - 2017 Remaster", "Heroes"),
        ("Heroes - Single Version", "heroes"),
        ("Rock & Roll!", "rock and roll"),
    ],
)
def test_titles_that_name_one_recording_normalise_alike(a, b):
    assert normalise_title(a) == normalise_title(b)


@pytest.mark.parametrize(
    "a, b",
    [("Song - Remix", "Song"), ("Live", "Love"), ("Song (Part 2)", "Song")],
)
def test_titles_of_different_recordings_stay_apart(a, b):
    assert normalise_title(a) != normalise_title(b)


def test_artist_keys_cover_each_credited_artist():
    assert {"beyonce", "jay z", "beyonce and jay z"} <= artist_keys("Beyoncé & JAY-Z")
    assert "beatles" in artist_keys("The Beatles")
    assert "a" in artist_keys("A feat. B") and "b" in artist_keys("A feat. B")
    assert normalise_text("  Mötley   Crüe ") == "motley crue"


@pytest.mark.parametrize("raw, key", [("us-rc1-76-07839 ", "USRC17607839"), ("USRC1760783", None), ("", None)])
def test_isrc_normalisation(raw, key):
    assert normalise_isrc(raw) == key


@pytest.mark.parametrize(
    "item, expected",
    [
        (None, "null"),
        (entry(None), "null"),
        ({"is_local": False, "track": None}, "null"),
        (entry(local_object("x", "y")), "local"),
        (entry(episode_object("e")), "episode"),
        (entry(track_object("t", ["a"], "USRC17607839"), "item"), "track"),
        (entry(track_object("t", ["a"], "USRC17607839"), "track"), "track"),
    ],
)
def test_playlist_entries_are_tracks_or_skipped(item, expected):
    got = classify_entry(item)
    assert (got if isinstance(got, str) else "track") == expected
    if expected == "track":
        assert (got.title, got.artists, got.isrc) == ("t", ["a"], "USRC17607839")


# -- merging --------------------------------------------------------------------------------
def test_merge_keeps_existing_bytes_and_extends_an_old_header():
    old = '\ufefftrack_id,genre\r\na,jazz\r\n"b, quoted",hiphop\r\n'
    proposals = {"a": {"jazz": ["spotify:playlist:P"]}, "c": {"rap": ["spotify:playlist:P"]}}
    text, added, already, conflicts = merge_labels("l.csv", old, proposals, {"c": 'MC, "C"\n'}, ["jazz", "rap"])
    assert (
        text == '\ufefftrack_id,genre,artist,source\r\na,jazz\r\n"b, quoted",hiphop\r\n'
        'c,rap,"MC, ""C""",spotify:playlist:P\r\n'
    )
    assert (len(added), already, conflicts) == (1, 1, [])
    labels, rejects = parse_labels(text.lstrip("\ufeff"), "l.csv", ["jazz", "rap", "hiphop"])
    assert labels["c"].artist == 'MC, "C"' and labels["a"].artist is None and rejects == []


def test_merge_without_new_labels_changes_nothing():
    assert merge_labels("l.csv", "track_id,genre\na,jazz\n", {"a": {"jazz": ["s"]}}, {}, ["jazz"])[0] is None


def test_merge_refuses_a_file_that_is_not_labels():
    with pytest.raises(JobError, match="l.csv: header must name track_id and genre"):
        merge_labels("l.csv", "id,label\n", {"a": {"jazz": ["s"]}}, {"a": ""}, ["jazz"])


# -- against the fake Web API ---------------------------------------------------------------
def test_paging_matching_skips_and_report(catalogue, fake):
    summary = run(catalogue, specs=(f"{RAP}=rap", f"{HIPHOP}=HipHop"))
    pages = fake.served(fake.items_path(RAP), 200)
    assert [r.query["offset"] for r in pages] == ["0", "50", "100"]
    assert all(r.query["limit"] == "50" and r.query["additional_types"] == "track,episode" for r in pages)
    assert len(fake.served("/api/token")) == 1  # one token, cached in memory

    rap = summary.playlists[0]
    assert rap.items == N_ISRC_TRACKS + 10
    assert dict(rap.skipped) == {"null": 2, "local": 1, "episode": 1}
    assert rap.matched_isrc == N_ISRC_TRACKS + 1  # jazz/j00 too
    assert rap.matched_name == 3 and rap.unmatched == 2

    added = {r["track_id"]: r for r in summary.added}
    # ISRC (any spelling), then artist+title: accents, feat., "- Remastered", "- Live", "&".
    assert {"rap/r002", "rap/r003", "rap/crazy-in-love", "rap/senorita", "rap/the-boxer"} <= set(added)
    assert added["rap/r003"] == {
        "track_id": "rap/r003",
        "genre": "rap",
        "artist": "Rapper 3",
        "source": f"spotify:playlist:{RAP}",
    }
    # Conflicts: reported, never written.
    conflicts = {c["track_id"]: c for c in summary.conflicts}
    assert conflicts["jazz/j00"]["kind"] == "existing" and conflicts["jazz/j00"]["existing"] == ["jazz"]
    assert conflicts["rap/r000"]["kind"] == "playlists"
    assert conflicts["rap/r000"]["genres"] == {
        "rap": [f"spotify:playlist:{RAP}"],
        "hiphop": [f"spotify:playlist:{HIPHOP}"],
    }
    assert set(conflicts) == {"jazz/j00", "rap/r000", "rap/r001"}
    assert len(summary.added) == N_ISRC_TRACKS - 2 + 3

    rows = labels_rows(catalogue.root)
    assert rows[0] == {"track_id": "jazz/j00", "genre": "jazz", "artist": "Jazz Band", "source": None}
    assert [r["track_id"] for r in rows].count("jazz/j00") == 1
    assert not {"rap/r000", "rap/r001"} & {r["track_id"] for r in rows}

    report = json.loads(Path(summary.report_uri).read_text())
    unmatched = {u["title"]: u for u in report["unmatched"]}
    assert set(unmatched) == {"Nobody Has This", "Same Title"}
    assert unmatched["Nobody Has This"]["isrc"] == "GBXX12600001"
    assert unmatched["Nobody Has This"]["spotify_id"] and unmatched["Nobody Has This"]["playlist"] == RAP
    assert unmatched["Same Title"]["reason"].startswith("ambiguous: 2 catalogue tracks")
    assert {c["track_id"] for c in report["conflicts"]} == set(conflicts)
    assert report["index_rejects"][0]["where"].endswith("catalogue_index.csv#line=112")
    text = "\n".join(summary.lines())
    assert "matched 105 by ISRC + 3 by artist+title, 2 unmatched, skipped 1 episode, 1 local, 2 null" in text
    assert "3 conflicts (not written)" in text and "conflict: jazz/j00: labels.csv says jazz" in text


def test_merged_labels_still_parse_for_ingest_and_reruns_change_nothing(catalogue):
    first = run(catalogue)
    labels, rejects = load_labels(Storage(), catalogue.cfg.catalogue.labels_uri, catalogue.cfg.genres)
    assert rejects == []
    assert labels["rap/crazy-in-love"].genre == "rap" and labels["rap/crazy-in-love"].artist == "Beyonce, Jay Z"
    assert labels["jazz/j00"].genre == "jazz"
    assert len(labels) == 1 + len(first.added)
    before = (catalogue.root / "labels.csv").read_bytes()
    again = run(catalogue)
    assert again.added == [] and again.already_labelled == len(first.added)
    assert (catalogue.root / "labels.csv").read_bytes() == before


def test_dry_run_writes_the_report_only(catalogue):
    before = (catalogue.root / "labels.csv").read_bytes()
    summary = run(catalogue, dry_run=True, report_uri=str(catalogue.root / "r.json"))
    assert summary.added and (catalogue.root / "labels.csv").read_bytes() == before
    assert json.loads((catalogue.root / "r.json").read_text())["dry_run"] is True
    assert "would add" in "\n".join(summary.lines())


@pytest.mark.parametrize(
    "path, status, offset, headers, min_seconds",
    [
        ("items", 429, 50, {"Retry_After": "1"}, 0.9),  # rate limited on page 2: wait, retry
        ("items", 500, 100, {}, 0.0),  # one transient server error on page 3
        ("items", 503, 0, {"Retry_After": "1"}, 0.9),
        ("token", 502, None, {}, 0.0),  # the token request is retried too
    ],
)
def test_rate_limits_and_transient_errors_are_retried(catalogue, fake, path, status, offset, headers, min_seconds):
    target = fake.items_path(RAP) if path == "items" else "/api/token"
    fake.fail(target, status, offset=offset, **headers)
    started = time.monotonic()
    summary = run(catalogue)
    assert time.monotonic() - started >= min_seconds
    assert summary.playlists[0].items == N_ISRC_TRACKS + 10
    served = [(r.query.get("offset"), r.status) for r in fake.served(target)]
    failed_at = served.index((str(offset) if offset is not None else None, status))
    assert served[failed_at + 1] == (served[failed_at][0], 200)


def test_a_long_retry_after_fails_fast_and_clearly(catalogue, fake):
    fake.fail(fake.items_path(RAP), 429, offset=0, times=5, Retry_After="3600")
    started = time.monotonic()
    with pytest.raises(JobError, match=rf"playlist {RAP}: rate limited by Spotify \(HTTP 429, Retry-After 3600s"):
        run(catalogue)
    assert time.monotonic() - started < 5
    assert len(fake.served(fake.items_path(RAP))) == 1
    assert (catalogue.root / "labels.csv").read_text() == "track_id,genre,artist\njazz/j00,jazz,Jazz Band\n"


@pytest.mark.parametrize(
    "setup, error, message",
    [
        ("persistent-500", JobError, "HTTP 500"),
        ("forbidden", JobError, "HTTP 403 Forbidden .*Development Mode"),
        ("missing", JobError, "not found \\(HTTP 404\\)"),
        ("bad-secret", ConfigError, "token request to http://127.0.0.1:\\d+/api/token failed \\(invalid_client\\)"),
        ("no-credentials", ConfigError, "set SPOTIPY_CLIENT_ID and SPOTIPY_CLIENT_SECRET in the environment"),
    ],
)
def test_api_failures_are_one_clear_line(catalogue, fake, monkeypatch, setup, error, message):
    if setup == "persistent-500":
        fake.fail(fake.items_path(RAP), 500, times=10)
    elif setup == "forbidden":
        fake.forbidden.add(RAP)
    elif setup == "missing":
        del fake.playlists[RAP]
    elif setup == "bad-secret":
        monkeypatch.setenv("SPOTIPY_CLIENT_SECRET", "wrong-" + CLIENT_SECRET)
    else:
        monkeypatch.delenv("SPOTIPY_CLIENT_ID")
        monkeypatch.delenv("SPOTIPY_CLIENT_SECRET")
    with pytest.raises(error, match=message) as info:
        run(catalogue)
    assert "\n" not in str(info.value) and CLIENT_SECRET not in str(info.value)


def test_credentials_never_reach_logs_or_files(catalogue, fake, caplog, monkeypatch, tmp_path):
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)  # spotipy's default token cache would write ./.cache here
    caplog.set_level(logging.DEBUG)
    fake.fail("/api/token", 503)  # spotipy's retry warning path too
    run(catalogue)
    spotipy_lines = [r.getMessage() for r in caplog.records if r.name.startswith("spotipy")]
    assert any("Authorization" in line and "***" in line for line in spotipy_lines)  # debug lines were redacted
    basic = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    secrets = [CLIENT_ID, CLIENT_SECRET, basic, fake.access_token]
    assert not [s for s in secrets if s in caplog.text]
    assert os.listdir(workdir) == []
    for path in tmp_path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not [s for s in secrets if s.encode() in data], path


def test_settings_come_from_the_spotify_config_section(catalogue):
    assert SpotifySettings.from_config(catalogue.cfg) == SpotifySettings()  # defaults
    cfg = catalogue.cfg.model_copy(deep=True)
    cfg.spotify.api_prefix, cfg.spotify.retries = "http://proxy.internal/v1/", 2
    settings = SpotifySettings.from_config(cfg)
    assert (settings.api_prefix, settings.retries, settings.auth_url) == ("http://proxy.internal/v1/", 2, DEFAULT_AUTH)


def test_cli_labels_spotify(catalogue, fake, monkeypatch, capsys):
    from genrecast.cli import main

    monkeypatch.setenv("GENRECAST__SPOTIFY__API_PREFIX", fake.api_prefix)
    monkeypatch.setenv("GENRECAST__SPOTIFY__AUTH_URL", fake.auth_url)
    monkeypatch.setenv("GENRECAST__SPOTIFY__BACKOFF_FACTOR", "0.01")
    conf = str(catalogue.root / "conf.yaml")
    assert main(["labels", "spotify", "--conf", conf, "--playlist", f"{RAP}=rap", "--dry-run"]) == 0
    assert "rap" in capsys.readouterr().out
    assert main(["labels", "spotify", "--conf", conf, "--playlist", f"{RAP}=polka"]) == 2
    assert "genre 'polka'" in capsys.readouterr().err


# -- adding a genre end to end --------------------------------------------------------------
SOUNDS = {"hiphop": "low", "jazz": "high", "rap": "noise"}  # conftest.synthetic_track's kinds


def test_a_new_genre_needs_only_config_and_labels(tmp_path, fake, spark):
    rng = np.random.default_rng(0)
    labels, index, rap_entries = ["track_id,genre,artist"], ["track_id,isrc,artist,title"], []
    for kind in ("hiphop", "jazz", "rap"):
        for i in range(4):
            track_id, artist = f"{kind}/{kind}{i}", f"{kind} artist {i}"
            write_audio(tmp_path / "audio" / f"{track_id}.wav", synthetic_track(SOUNDS[kind], rng, seconds=4.0))
            code = f"QZ{kind[:3].upper()}26{i:05d}"
            index.append(f"{track_id},{code if i % 2 else ''},{artist},{kind} song {i}")
            if kind == "rap":  # half match by ISRC, half by artist + title
                rap_entries.append(entry(track_object(f"{kind} song {i}", [artist], code)))
            else:
                labels.append(f"{track_id},{kind},{artist}")
    (tmp_path / "labels.csv").write_text("\n".join(labels) + "\n")
    (tmp_path / "catalogue_index.csv").write_text("\n".join(index) + "\n")
    fake.playlists[RAP] = [*rap_entries, entry(None)]
    extra = "ingest: {tracks_per_partition: 4}\ntrain: {batch_size: 4, patience: 1}\n"

    before = write_config(tmp_path, "genres: [hiphop, jazz]\n" + extra)
    assert run_ingest(before, spark).tracks_ok == 12
    with pytest.raises(ConfigError, match="genre 'rap' is not in the configured genres"):
        run_spotify_labels(before, [f"{RAP}=rap"], settings=settings_for(fake))

    after = write_config(tmp_path, "genres: [hiphop, jazz, rap]\n" + extra)  # the only config change
    summary = run_spotify_labels(after, [f"{RAP}=rap"], settings=settings_for(fake))
    assert sorted(r["track_id"] for r in summary.added) == [f"rap/rap{i}" for i in range(4)]
    assert summary.playlists[0].matched_isrc == 2 and summary.playlists[0].matched_name == 2

    assert run_ingest(after, spark).tracks_ok == 4  # only the newly labelled tracks are re-read
    genres = {row[0]: row[2] for row in index_dataset(spark, after)}
    assert {genres[f"rap/rap{i}"] for i in range(4)} == {"rap"}
    assert set(genres.values()) == {"hiphop", "jazz", "rap"}

    result = run_train(after, spark, workers=1, epochs=1)
    assert registry.read_model_json(after, result.model_id)["genres"] == ["hiphop", "jazz", "rap"]
