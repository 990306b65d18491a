"""Demo catalogue: pure planning, MIDI/Ogg helpers, guards, and a tiny real render (mma,
fluidsynth, music21) checked for formats, lengths, labels and byte-for-byte determinism."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import os
import shutil
import stat
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from genrecast import democat
from genrecast.democat import (
    FORMATS,
    GENRES,
    RenderError,
    chord_symbol,
    encode,
    genre_dir,
    midi_facts,
    midi_with_sound_off,
    ogg_with_serial,
    plan_tracks,
    recipe_for,
    render_catalogue,
    render_demo_catalogue,
    run_guarded,
)
from genrecast.errors import ConfigError
from genrecast.storage import Storage

ALL_GENRES = ["blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock"]


def _have_renderers() -> bool:
    try:
        import music21  # noqa: F401
    except ImportError:
        return False
    return bool(shutil.which("mma") and shutil.which("fluidsynth") and any(map(os.path.isfile, democat.SOUNDFONTS)))


needs_renderers = pytest.mark.skipif(not _have_renderers(), reason="mma, fluidsynth, a GM soundfont and music21 needed")


# -- planning ------------------------------------------------------------------------------
def test_plan_is_deterministic_and_covers_every_genre_family_and_format():
    plans = plan_tracks(ALL_GENRES, 12, seed=3)
    assert plans == plan_tracks(ALL_GENRES, 12, seed=3)
    assert plans != plan_tracks(ALL_GENRES, 12, seed=4)
    assert len({p.track_id for p in plans}) == len(plans) == 120
    for genre in ALL_GENRES:
        mine = [p for p in plans if p.genre == genre]
        assert [p.track_id for p in mine] == [f"{genre}/{genre}-{i:03d}" for i in range(12)]
        assert {p.ext for p in mine} == set(FORMATS)  # formats rotate within a genre
        assert len({p.artist for p in mine}) >= 3  # families take turns
        assert all(p.artist.startswith(("mma:", "music21:")) for p in mine)
    for p in plans:
        if p.renderer == "mma":
            assert p.progression and p.key and p.beats in (3, 4) and len(p.source) == 2
        else:
            assert p.genre == "classical" and p.source[0].endswith((".mxl", ".xml", ".krn"))
            assert p.arrangement in {"score", *democat.ARRANGEMENTS} and -2 <= p.transpose <= 2


def test_artist_is_the_mma_library_plus_kit_or_the_composer():
    # A zoom library's drum patterns share its bass/chord kit: one artist, not one per pattern.
    plans = plan_tracks(ALL_GENRES, 20, seed=0)
    for p in plans:
        if p.renderer == "mma":
            library = p.source[0].rsplit(":", 1)[0]
            assert p.artist == f"mma:{library}" + (f"+{p.arrangement}" if p.arrangement else "")
        else:
            assert p.artist.startswith("music21:") and "+" not in p.artist
    zoom_hiphop = {p.source[0] for p in plans if p.artist == "mma:zoom/hiphop+hiphop"}
    assert len(zoom_hiphop) >= 2  # several drum patterns, one artist
    for genre in ALL_GENRES:  # enough artists per genre for a stratified split by artist
        assert len({p.artist for p in plans if p.genre == genre}) >= 4


def test_more_tracks_only_add_tracks():
    assert plan_tracks(["jazz", "rock"], 5, seed=1)[:5] == plan_tracks(["jazz", "rock"], 8, seed=1)[:5]


def test_genres_without_recipe_are_left_out_and_names_become_ids():
    assert genre_dir("Brazilian Funk") == "brazilian_funk"
    assert recipe_for("Hip-Hop") is GENRES["hiphop"] and recipe_for("brazilian funk") is None
    plans = plan_tracks(["Jazz", "brazilian funk"], 2, seed=0)
    assert [(p.track_id, p.genre) for p in plans] == [("jazz/jazz-000", "Jazz"), ("jazz/jazz-001", "Jazz")]
    with pytest.raises(ConfigError):
        plan_tracks(["rock", "Rock"], 1, seed=0)


@pytest.mark.parametrize(
    ("numeral", "key", "chord"),
    [("I", "C", "C"), ("ii7", "F", "Gm7"), ("V7", "Bb", "F7"), ("bVII", "E", "D"), ("i5", "E", "E5"),
     ("bVI5", "C#", "A5"), ("iim7b5", "C", "Dm7b5"), ("Imaj7", "Eb", "Ebmaj7"), ("vi", "G", "Em")],
)
def test_chord_symbols(numeral, key, chord):
    assert chord_symbol(numeral, key) == chord


def test_every_recipe_names_known_kits_and_parsable_progressions():
    for recipe in GENRES.values():
        for prog in recipe.progressions:
            for key in recipe.keys:
                democat.progression_chords(prog, key)
        for style in recipe.styles:
            assert set(getattr(style, "kits", ())) <= set(democat.KITS)


def test_mma_song_covers_the_length_and_adds_the_kit():
    plan = next(p for p in plan_tracks(["reggae"], 12, seed=0) if p.arrangement)
    song, bars = democat.mma_song(plan, 30.0)
    assert bars * plan.beats * 60 / plan.tempo >= 31.0
    assert f"RndSeed {plan.variation}" in song and democat.KITS[plan.arrangement].strip() in song
    assert song.count("\n") > bars


# -- MIDI / encoding helpers ---------------------------------------------------------------
def _midi(events: bytes, ppq: int = 480) -> bytes:
    track = events + b"\x00\xff\x2f\x00"
    return b"MThd" + struct.pack(">IHHH", 6, 0, 1, ppq) + b"MTrk" + struct.pack(">I", len(track)) + track


def test_midi_facts_apply_the_tempo_map_and_sound_off_keeps_the_length():
    # 1 quarter at 120 bpm (0.5 s), then tempo 60 bpm, then 1 quarter (1 s); notes on ch 0 and 9.
    events = (b"\x00\x90\x3c\x64" + b"\x00\x99\x24\x64" + b"\x83\x60\x80\x3c\x00"
              + b"\x00\xff\x51\x03\x0f\x42\x40" + b"\x83\x60\x89\x24\x00")
    data = _midi(events)
    facts = midi_facts(data)
    assert facts.seconds == pytest.approx(1.5)
    assert facts.notes == {0: 1, 9: 1} and facts.pitched_channels == 1
    fixed = midi_with_sound_off(data)
    assert struct.unpack(">HH", fixed[8:12]) == (1, 2)
    assert midi_facts(fixed).seconds == pytest.approx(1.5)
    with pytest.raises(RenderError):
        midi_facts(data[:30])


@pytest.mark.parametrize("ext", FORMATS)
def test_encoding_is_deterministic_and_readable(ext):
    t = np.arange(22050 * 2) / 22050
    pcm = (np.sin(2 * np.pi * 440 * t) * 20000).astype(np.int16)
    first, second = encode(pcm, ext), encode(pcm, ext)
    assert first == second
    decoded, rate = sf.read(io.BytesIO(first), dtype="int16")
    assert rate == 22050 and len(decoded) == len(pcm)


def test_ogg_serial_rewrite_is_idempotent_and_valid():
    data = encode(np.zeros(22050, dtype=np.int16) + 1000, "ogg")
    assert ogg_with_serial(data) == data
    assert struct.unpack_from("<I", data, 14)[0] == democat.OGG_SERIAL
    sf.read(io.BytesIO(ogg_with_serial(data, serial=7)))  # CRCs recomputed: still decodable


# -- guards --------------------------------------------------------------------------------
def _script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_guard_stops_a_render_that_runs_too_long(tmp_path):
    slow = _script(tmp_path / "slow", "exec sleep 30\n")
    started = time.monotonic()
    with pytest.raises(RenderError, match="timed out after 1s"):
        run_guarded([slow], "fake", 1, 2**20, str(tmp_path))
    assert time.monotonic() - started < 10


def test_guard_caps_the_file_size(tmp_path):
    filler = _script(tmp_path / "filler", "exec head -c 50000000 /dev/zero > out.wav\n")
    with pytest.raises(RenderError, match="file-size limit"):
        run_guarded([filler], "fake", 30, 2**20, str(tmp_path))
    assert (tmp_path / "out.wav").stat().st_size <= 2**20


def test_guard_reports_a_failing_tool(tmp_path):
    failing = _script(tmp_path / "failing", "echo 'Error: no such groove' >&2; exit 3\n")
    with pytest.raises(RenderError, match="exit 3.*no such groove"):
        run_guarded([failing], "fake", 30, 2**20, str(tmp_path))


# -- real renders --------------------------------------------------------------------------
def _sha256s(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@needs_renderers
def test_tiny_catalogue_formats_lengths_labels_determinism_and_cache(tmp_path):
    genres, per_genre, seconds = ["jazz", "classical"], 2, 4.0
    # A seed whose plan uses all four formats (formats rotate per genre from a seeded start).
    seed = next(s for s in range(100) if {p.ext for p in plan_tracks(genres, per_genre, s)} == set(FORMATS))
    storage, cache = Storage(), str(tmp_path / "cache")
    a = tmp_path / "a"
    lines: list[str] = []
    summary = render_demo_catalogue(storage, str(a / "audio"), str(a / "labels.csv"), genres, per_genre, seconds,
                                    seed, cache_dir=cache, progress=lines.append)
    assert summary.failures == [] and summary.tracks == summary.written == 4 and len(lines) == 4
    assert summary.per_genre == {"jazz": 2, "classical": 2}

    files = sorted(p for p in (a / "audio").rglob("*") if p.is_file())
    assert {p.suffix.lstrip(".") for p in files} == set(FORMATS)
    assert summary.total_bytes == sum(p.stat().st_size for p in files)
    for path in files:
        info = sf.info(str(path))
        assert abs(info.frames / info.samplerate - seconds) < 0.1, path
        samples, _ = sf.read(str(path), dtype="float32")
        assert np.abs(samples).max() > 0.1, path  # not silent
    with open(a / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["track_id", "genre", "artist", "source"]
    assert sorted(r["track_id"] for r in rows) == sorted(str(p.relative_to(a / "audio").with_suffix("")) for p in files)
    assert {r["genre"] for r in rows} == set(genres) and all(r["artist"] for r in rows)
    # source: the renderer and the soundfont that played the track.
    tools, plans = democat.find_tools(), {p.track_id: p for p in plan_tracks(genres, per_genre, seed)}
    for r in rows:
        renderer = "music21" if r["genre"] == "classical" else "mma"
        played = democat.soundfont_name(tools.soundfont_for(plans[r["track_id"]].production))
        assert r["source"] == f"{renderer}/{played}"

    # Same seed, fresh directory, no cache: byte-identical audio and labels.
    b = tmp_path / "b"
    render_demo_catalogue(storage, str(b / "audio"), str(b / "labels.csv"), genres, per_genre, seconds, seed)
    assert _sha256s(a) == _sha256s(b)

    # Again into the first directory: everything from the cache, nothing rewritten; a stale copy of
    # a track in another format is removed.
    first = files[0]
    stale = first.with_suffix(".wav" if first.suffix != ".wav" else ".mp3")
    stale.write_bytes(b"old")
    started = time.monotonic()
    again = render_demo_catalogue(storage, str(a / "audio"), str(a / "labels.csv"), genres, per_genre, seconds,
                                  seed, cache_dir=cache)
    assert time.monotonic() - started < 5
    assert (again.unchanged, again.written, again.cache_hits) == (4, 0, 4)
    assert not stale.exists() and _sha256s(a) == _sha256s(b)


class MemoryStorage(Storage):
    """Objects in a dict: shows that every output goes through Storage, s3:// URIs included."""

    def __init__(self) -> None:
        super().__init__()
        self.objects: dict[str, bytes] = {}

    def list_files(self, prefix):
        return iter(sorted((u, len(d)) for u, d in self.objects.items() if u.startswith(prefix.rstrip("/") + "/")))

    def exists(self, uri):
        return uri in self.objects

    def read_bytes(self, uri):
        return self.objects[uri]

    def write_bytes(self, uri, data):
        self.objects[uri] = bytes(data)

    def delete(self, uri):
        self.objects.pop(uri, None)


@needs_renderers
def test_a_failed_render_is_skipped_and_recorded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    good = plan_tracks(["rock"], 1, seed=0)[0]
    bogus = dataclasses.replace(good, track_id="rock/rock-001", source=("stdlib/nosuchfile:Nope",) * 2)
    storage = MemoryStorage()
    summary = render_catalogue(storage, [good, bogus], "s3://bucket/demo/audio", "s3://bucket/demo/labels.csv", 2.0)
    assert summary.tracks == 1 and [f.track_id for f in summary.failures] == ["rock/rock-001"]
    assert "mma failed" in summary.failures[0].reason
    assert sorted(storage.objects) == ["s3://bucket/demo/audio/" + f"{good.track_id}.{good.ext}",
                                       "s3://bucket/demo/labels.csv"]
    labels = storage.objects["s3://bucket/demo/labels.csv"].decode().splitlines()
    played = democat.soundfont_name(democat.find_tools().soundfont_for(good.production))
    assert labels == ["track_id,genre,artist,source", f"{good.track_id},rock,{good.artist},mma/{played}"]
    assert list(tmp_path.iterdir()) == []  # nothing written locally


def test_cover_pair_is_one_song_over_two_grooves():
    pair = democat.plan_covers(ALL_GENRES, seed=0)
    assert pair == democat.plan_covers(ALL_GENRES, seed=0) != democat.plan_covers(ALL_GENRES, seed=1)
    assert [(p.track_id, p.genre) for p in pair] == [
        ("covers/song-000-pop", "pop"),
        ("covers/song-000-reggae", "reggae"),
    ]
    pop, reggae = pair
    same = ("artist", "tempo", "key", "progression", "transpose", "variation", "melody")
    assert all(getattr(pop, f) == getattr(reggae, f) for f in same) and pop.source != reggae.source
    songs = [democat.mma_song(p, 30.0)[0] for p in pair]
    assert all(f"Transpose {pop.transpose}" in s and "Begin Solo" in s and "{4e;8e;8f;4g;4e;}" in s for s in songs)
    # Past the comment line naming the track, the two songs differ only in the groove.
    assert songs[0].replace(pop.source[0], reggae.source[0]).split("\n", 1)[1] == songs[1].split("\n", 1)[1]
    # Absent when either genre is not configured; genre names match as recipes do.
    assert democat.plan_covers(["pop", "jazz"], seed=0) == [] and democat.plan_covers(["Reggae", "POP"], 0)
    # Other tracks' mma text is untouched by the melody support (their renders stay cached).
    plain = plan_tracks(["pop"], 1, seed=0)[0]
    assert "Solo" not in democat.mma_song(plain, 30.0)[0] and "Transpose" not in democat.mma_song(plain, 30.0)[0]


# -- production: soundfont, voices, humanising, mix ------------------------------------------
def _mma_voices() -> dict[str, int] | None:
    """mma's voice names (upper case, aliases included) -> GM program, or None without its sources."""
    import sys

    if not os.path.isdir("/usr/share/mma/MMA"):
        return None
    sys.path.insert(0, "/usr/share/mma")
    try:
        from MMA import miditables
    except ImportError:
        return None
    finally:
        sys.path.remove("/usr/share/mma")
    return dict(miditables.voiceInx)  # canonical names first, then aliases


def test_voice_families_are_disjoint_known_and_cover_the_mma_genres():
    known = _mma_voices()
    for genre, families in democat.VOICE_FAMILIES.items():
        assert genre in GENRES
        names = [v for family in families for v in family]
        assert len(names) == len(set(names)), genre  # a voice in two families would be drawn twice
        if known is not None:
            aliases = [a for v in names for a in democat.VOICE_ALIASES.get(v, ())]
            assert {n.upper() for n in names + aliases} <= set(known), genre
    assert set(democat.VOICE_FAMILIES) == {g for g, r in GENRES.items() if g != "classical"}


def test_productions_are_per_track_seeded_and_within_their_ranges():
    plans = plan_tracks(ALL_GENRES, 20, seed=0)
    assert plans == plan_tracks(ALL_GENRES, 20, seed=0)
    # Productions draw from their own stream: sources, tempi, keys and artists are unchanged by them.
    bare = [dataclasses.replace(p, production=democat.Production()) for p in plans]
    assert [p.artist for p in bare] == [p.artist for p in plans]
    names = {democat.soundfont_name(p) for p in democat.SOUNDFONTS}
    for genre in ALL_GENRES:
        mine = [p.production for p in plans if p.genre == genre]
        assert {m.soundfont for m in mine} == names  # 20 tracks use every soundfont
        assert len({m.gain_db for m in mine}) > 10 and all(-12 <= m.gain_db <= 0 for m in mine)
        gains = [m.gain_db for m in mine]
        assert max(gains) - min(gains) > 8  # loudness spread over most of the 12 dB
        assert all(-1 <= m.tilt_db <= 1 and 0.1 <= m.reverb[0] <= 0.7 for m in mine)
        # voice -> its family, aliases included: a voice is only ever played by one of its family
        family_of = {name: f for f in democat.VOICE_FAMILIES.get(genre, ()) for v in f
                     for name in (v, *democat.VOICE_ALIASES.get(v, ()))}
        for m in mine:
            for voice, played in m.voices:
                assert played in family_of[voice] and voice != played
            if genre == "classical":  # a score keeps its own instruments and timing
                assert not m.voices and m.rtime == m.rvolume == m.rskip == m.drums == 0
            else:
                assert 2 <= m.rtime <= 12 and 5 <= m.rvolume <= 15
        if genre != "classical":
            assert len({m.voices for m in mine}) >= 15  # nearly every track its own band


def test_mma_song_carries_the_production():
    plan = next(p for p in plan_tracks(["jazz"], 12, seed=0) if p.production.rskip and p.production.drums)
    prod = plan.production
    song, _bars = democat.mma_song(plan, 30.0)
    lines = song.splitlines()
    voicetr = next(ln for ln in lines if ln.startswith("VoiceTr "))
    assert lines.index(voicetr) < next(i for i, ln in enumerate(lines) if ln.startswith("Groove "))
    assert voicetr.split()[1:] == [f"{a}={b}" for a, b in prod.voices]
    for line in (f"AllTracks RTime {prod.rtime}", f"AllTracks RVolume {prod.rvolume}",
                 f"AllTracks Drum RSkip {prod.rskip}", f"AllTracks Drum Volume {prod.drums:+d}%"):
        assert song.count(line) == len(set(plan.source))  # once per groove section, before DefGroove
    plain = democat.mma_song(dataclasses.replace(plan, production=democat.Production()), 30.0)[0]
    assert "VoiceTr" not in plain and "AllTracks" not in plain


def test_tilt_is_a_gentle_slope_around_the_pivot():
    t = np.arange(democat.SAMPLE_RATE) / democat.SAMPLE_RATE

    def level(freq, slope):
        tone = np.sin(2 * np.pi * freq * t)
        out = democat.tilt(tone, slope)[2000:-2000]  # the ends ring a little
        return 20 * np.log10(np.sqrt(np.mean(out**2)) / np.sqrt(0.5))

    assert level(4000, 1.0) == pytest.approx(2.0, abs=0.1)  # 2 octaves up: +2 dB
    assert level(250, 1.0) == pytest.approx(-2.0, abs=0.1)
    assert level(4000, -0.5) == pytest.approx(-1.0, abs=0.1)
    assert level(1000, 0.8) == pytest.approx(0.0, abs=0.05)
    tone = np.sin(2 * np.pi * 440 * t)
    assert democat.tilt(tone, 0.0) is tone


def test_a_missing_soundfont_leaves_the_others_and_is_logged(tmp_path, monkeypatch, caplog):
    present = next((p for p in democat.SOUNDFONTS if os.path.isfile(p)), None)
    if present is None or not shutil.which("fluidsynth"):
        pytest.skip("fluidsynth and a GM soundfont needed")
    missing = str(tmp_path / "NotInstalled_GM.sf2")
    monkeypatch.setattr(democat, "SOUNDFONTS", (missing, present))
    with caplog.at_level("INFO", logger="genrecast.democat"):
        tools = democat.find_tools(need_mma=False)
    assert tools.soundfonts == (present,)
    lines = [r.getMessage() for r in caplog.records if "soundfonts" in r.getMessage()]
    assert lines == [f"demo catalogue: soundfonts {democat.soundfont_name(present)} "
                     "(not installed: NotInstalled_GM; their tracks use these)"]
    # A track that drew the missing one is played by an installed one; the set is in every key.
    production = democat.Production(soundfont="NotInstalled_GM")
    assert tools.soundfont_for(production) == present
    assert f"soundfont={os.path.realpath(present)}:" in tools.fingerprint and "NotInstalled" not in tools.fingerprint
    monkeypatch.setattr(democat, "SOUNDFONTS", (missing,))
    with pytest.raises(democat.JobError, match="General MIDI soundfont"):
        democat.find_tools(need_mma=False)


def test_labels_source_names_the_renderer_and_the_soundfont_that_played():
    tools = democat.Tools(None, None, ("/sf/TimGM6mb.sf2",), "fingerprint")  # the only one installed
    jazz, classical = plan_tracks(["jazz", "classical"], 1, seed=0)
    drew = dataclasses.replace(jazz, production=democat.Production(soundfont="FluidR3_GM"))  # not installed
    rows = list(csv.reader(io.StringIO(democat.labels_csv([drew, classical], tools))))
    assert rows == [
        ["track_id", "genre", "artist", "source"],
        [jazz.track_id, "jazz", jazz.artist, "mma/TimGM6mb"],
        [classical.track_id, "classical", classical.artist, "music21/TimGM6mb"],
    ]


@needs_renderers
def test_two_tracks_of_a_genre_differ_in_soundfont_and_programs(tmp_path):
    tools = democat.find_tools()
    plans = plan_tracks(["pop"], 20, seed=0)
    # The same groove and song with the productions of two tracks whose seeds drew different
    # soundfonts (among the installed ones) and different pianos and basses.
    def piano(p):
        return dict(p.production.voices).get("Piano1", "Piano1")

    base = plans[0]
    other = next(p for p in plans[1:] if piano(p) != piano(base)
                 and tools.soundfont_for(p.production) != tools.soundfont_for(base.production))
    programs = []
    for n, production in enumerate((democat.Production(), base.production, other.production)):
        folder = tmp_path / str(n)
        folder.mkdir()
        plan = dataclasses.replace(base, source=("casio/pop:Pop",) * 2, arrangement="", production=production)
        programs.append(dict(democat.write_midi(plan, 4.0, tools, str(folder / "track.mid")).programs))
    plain, first, second = programs
    assert first != second and set(plain) == set(first) == set(second)  # same channels, other programs
    voices = _mma_voices()
    if voices is not None:  # each channel plays what its production's VoiceTr says
        names: dict[int, str] = {}
        for name, program in voices.items():
            names.setdefault(program, name)
        for production, played in ((base.production, first), (other.production, second)):
            swap = {a.upper(): b.upper() for a, b in production.voices}
            expected = {ch: p if ch == democat.DRUM_CHANNEL else voices[swap.get(names[p], names[p])]
                        for ch, p in plain.items()}  # the drum kit is not a voice
            assert played == expected


def _peak_dbfs(pcm: np.ndarray) -> float:
    return 20 * np.log10(np.abs(pcm.astype(np.int32)).max() / 32767)


@needs_renderers
def test_renders_are_byte_identical_and_loudness_varies_without_clipping():
    tools = democat.find_tools()
    plan = plan_tracks(["rock"], 1, seed=0)[0]
    peaks = {}
    # One track per installed soundfont, each at its own gain; an .sf3 (its samples loaded as the
    # MIDI selects them) twice: the same bytes. (.sf2 renders repeat: the tiny catalogue test.)
    for n, soundfont in enumerate(tools.soundfonts):
        gain = (-11.5, -6.0, -0.5)[n % 3]
        production = dataclasses.replace(plan.production, soundfont=democat.soundfont_name(soundfont), gain_db=gain)
        track = dataclasses.replace(plan, production=production)
        pcm = democat.render_pcm(track, 3.0, tools)
        if soundfont.endswith(".sf3"):
            assert np.array_equal(pcm, democat.render_pcm(track, 3.0, tools)), soundfont
        peaks[soundfont] = _peak_dbfs(pcm)
        peak_db = 20 * np.log10(democat.PEAK)
        assert peaks[soundfont] == pytest.approx(peak_db + gain, abs=0.05), soundfont
        assert np.abs(pcm.astype(np.int32)).max() < 32767  # never clipped
    if len(tools.soundfonts) > 1:
        assert max(peaks.values()) - min(peaks.values()) > 5
