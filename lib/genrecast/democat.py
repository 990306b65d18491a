"""Demo catalogue: genre-labelled music rendered offline, no downloads.

Two sources, both rendered to audio by ``fluidsynth`` with one of several General MIDI soundfonts:

- ``mma`` (Musical MIDI Accompaniment) style grooves for blues, country, disco, hiphop, jazz,
  metal, pop, reggae and rock. Drum-only grooves get a genre "kit" of bass and chord tracks, so
  every track has drums, bass and harmony. Tempo, key, chord progression and groove variant
  vary per track.
- the score corpus bundled with the ``music21`` wheel (Bach chorales, string quartets, a few
  keyboard pieces) for classical: an excerpt per track, the score's own instruments (chorales
  are voiced for strings, organ, choir or winds).

Planning (:func:`plan_tracks`) is pure and deterministic; rendering (:func:`render_catalogue`)
runs every external tool under a time and file-size limit, ends every MIDI with "all sound off"
(a hanging note makes fluidsynth render forever) and checks the rendered length against the
MIDI. The same seed gives byte-identical files (mma gets a fixed RndSeed, Ogg a fixed stream
serial). Renders can be cached in a local folder keyed by everything that decides them. Layout:
``<audio_uri>/<genre>/<genre>-<NNN>.<wav|flac|ogg|mp3>`` plus ``labels.csv``
(``track_id,genre,artist,source``; artist = the mma library file, plus the bass/chord kit added
to a drum-only groove, or the composer: ``mma:stdlib/swing``, ``mma:zoom/hiphop+hiphop``,
``music21:bach``, so a train/test split by artist keeps one library's sound on one side; source =
renderer and the soundfont that played the track, ``mma/FluidR3_GM``, ``music21/TimGM6mb``:
train reports accuracy per source).

Each track also gets its own *production* (:class:`Production`, drawn from the track's seed): which
installed GM soundfont plays it, instrument programs swapped within the genre's families (mma
``VoiceTr``), humanised timing and velocity (mma ``RTime``/``RVolume``/``RSkip``), drum balance,
fluidsynth reverb and chorus, a gentle spectral tilt and a gain over 12 dB below the -1 dBFS peak.
One soundfont and one voicing per groove made every "band" sound alike, which a genre model
learns instead of genre.

Besides the per-genre tracks, a *cover pair* (:func:`plan_covers`): one song - the same melody,
chord progression, key and tempo - played over a pop groove and over a reggae groove,
``covers/song-000-pop`` and ``covers/song-000-reggae``, labelled with their groove's genre and
one shared artist (``demo-cover:song-000``) so both land on the same side of a split. It is
what ``genrecast compare`` is shown on (README, notebook 3).
"""

from __future__ import annotations

import concurrent.futures
import csv
import hashlib
import io
import json
import logging
import math
import os
import random
import re
import resource
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import soundfile as sf

from genrecast.errors import ConfigError, JobError
from genrecast.storage import Storage, join, normalize_uri

log = logging.getLogger(__name__)

# Bump when rendering or post-processing changes: it is part of every cache key.
RENDER_VERSION = "2"
SAMPLE_RATE = 22050
FORMATS = ("wav", "flac", "ogg", "mp3")
LOSSY = frozenset({"ogg", "mp3"})
# General MIDI soundfonts a track may be played with (Debian packages in scripts/apt-packages.txt).
# Each track draws one by name (the file's stem); one that is not installed is replaced by one
# that is, so any one of them is enough. fluidsynth reads .sf3 (Vorbis-compressed samples) too.
SOUNDFONTS = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",  # fluid-soundfont-gm (MIT)
    "/usr/share/sounds/sf2/TimGM6mb.sf2",  # timgm6mb-soundfont (GPL-2)
    "/usr/share/sounds/sf3/MuseScore_General_Lite.sf3",  # musescore-general-soundfont-small (MIT)
)
# Guards on every external render: wall-clock seconds and the largest file it may write.
MMA_TIMEOUT_S = 60.0
FLUIDSYNTH_TIMEOUT_S = 120.0
MAX_RENDER_BYTES = 50 * 2**20
# fluidsynth renders a few seconds past the MIDI's end (release, reverb): allowed up to this.
MAX_TAIL_S = 30.0
PEAK = 0.89  # output peak after normalisation (about -1 dBFS)
FADE_IN_S, FADE_OUT_S = 0.01, 0.25
OGG_SERIAL = 0x67656E72  # fixed Ogg stream serial ("genr"): libsndfile picks a random one
DRUM_CHANNEL = 9  # General MIDI percussion (channel 10)


class RenderError(RuntimeError):
    """One track could not be rendered; ``str(exc)`` is the reason kept in the summary."""


# -- recipes: which grooves / scores make a genre ------------------------------------------
@dataclass(frozen=True)
class MmaStyle:
    """Grooves of one mma library file, e.g. ``stdlib/swing``: one family of sound."""

    name: str  # library file without ``.mma``, relative to mma's lib dir
    grooves: tuple[str, ...]
    tempo: tuple[int, int]  # quarter notes per minute, inclusive range
    beats: int = 4  # quarter-note beats per bar
    kits: tuple[str, ...] = ()  # KITS added to drum-only grooves (one picked per track)
    family_per_groove: bool = False  # distinct drum patterns in one file: one groove per track


@dataclass(frozen=True)
class ScoreStyle:
    """Works of one composer in the music21 corpus: ``(corpus path, quarter notes per minute)``."""

    composer: str
    works: tuple[tuple[str, int], ...]
    arrangements: tuple[str, ...] = ("score",)  # "score" keeps the score's instruments


@dataclass(frozen=True)
class GenreRecipe:
    styles: tuple[MmaStyle | ScoreStyle, ...]
    progressions: tuple[str, ...] = ()  # roman numerals, one token a bar ("I7 IV7 ..."; "I-V" splits a bar)
    keys: tuple[str, ...] = ()


def _zoom(name: str, grooves: str, tempo: tuple[int, int], kits: tuple[str, ...]) -> MmaStyle:
    return MmaStyle(f"zoom/{name}", tuple(grooves.split()), tempo, kits=kits, family_per_groove=True)


# Accompaniment added to drum-only grooves (mma track definitions; 4/4 patterns).
KITS: dict[str, str] = {
    "blues": """
Begin Bass-GcBass
  Voice FingeredBass
  Octave 3
  Articulate 85
  Volume f
  Sequence { 1 4 1 100; 2 4 3 85; 3 4 5 95; 4 4 6 85 }
End
Begin Chord-GcPiano
  Voice Piano1
  Octave 5
  Voicing Mode=Optimal
  Articulate 70
  Volume mf
  Sequence { 1 4 85; 2.66 8 70; 3 4 85; 4.66 8 70 }
End
Begin Chord-GcOrgan
  Voice Organ3
  Octave 5
  Voicing Mode=Optimal
  Volume mp
  Sequence { 1 1 60 }
End
""",
    "country": """
Begin Bass-GcBass
  Voice AcousticBass
  Octave 3
  Articulate 80
  Volume f
  Sequence { 1 4 1 100; 3 4 5 90 }
End
Begin Chord-GcStrum
  Voice SteelGuitar
  Octave 5
  Voicing Mode=Optimal
  Strum 12
  Articulate 60
  Volume mf
  Sequence { 2 8 90; 2.5 8 70; 4 8 90; 4.5 8 70 }
End
Begin Arpeggio-GcBanjo
  Voice Banjo
  Octave 5
  Articulate 80
  Volume mp
  Sequence { 1 8 80; 1.5 8 70; 2 8 75; 2.5 8 70; 3 8 80; 3.5 8 70; 4 8 75; 4.5 8 70 }
End
""",
    "disco": """
Begin Bass-GcBass
  Voice SlapBass1
  Octave 3
  Articulate 70
  Volume f
  Sequence { 1 8 1 105; 1.5 8 1+ 90; 2 8 1 100; 2.5 8 1+ 90; 3 8 1 105; 3.5 8 1+ 90; 4 8 1 100; 4.5 8 1+ 90 }
End
Begin Chord-GcGuitar
  Voice MutedGuitar
  Octave 5
  Voicing Mode=Optimal
  Articulate 50
  Volume mf
  Sequence { 1.5 16 85; 2.5 16 85; 2.75 16 70; 3.5 16 85; 4.5 16 85; 4.75 16 70 }
End
Begin Chord-GcStrings
  Voice Strings
  Octave 5
  Voicing Mode=Optimal
  Volume mp
  Sequence { 1 2 70; 3 2 65 }
End
""",
    "hiphop": """
Begin Bass-GcBass
  Voice SynthBass2
  Octave 2
  Articulate 90
  Volume f
  Sequence { 1 4. 1 115; 2.75 16 1 90; 3.5 8 5 95 }
End
Begin Chord-GcKeys
  Voice EPiano
  Octave 5
  Voicing Mode=Optimal
  Articulate 90
  Volume mf
  Sequence { 1 2 75; 3.5 4 65 }
End
Begin Chord-GcPad
  Voice WarmPad
  Octave 5
  Voicing Mode=Optimal
  Volume p
  Sequence { 1 1 55 }
End
""",
    "jazz": """
Begin Walk-GcWalk
  Voice AcousticBass
  Octave 3
  Articulate 80
  Volume f
  Sequence { 1 4 100; 2 4 90; 3 4 95; 4 4 90 }
End
Begin Chord-GcComp
  Voice Piano2
  Octave 5
  Voicing Mode=Optimal
  Articulate 75
  Volume mf
  Sequence { 1 4 80; 2.66 8 70; 4 8 75 }
End
""",
    "metal": """
Begin Bass-GcBass
  Voice PickedBass
  Octave 2
  Articulate 70
  Volume f
  Sequence { 1 8 1 110; 1.5 8 1 95; 2 8 1 100; 2.5 8 1 95; 3 8 1 110; 3.5 8 1 95; 4 8 1 100; 4.5 8 1 95 }
End
Begin Chord-GcRiff
  Voice DistortionGuitar
  Octave 4
  Articulate 55
  Volume f
  Sequence { 1 8 110; 1.5 8 90; 2 8 100; 2.5 8 90; 3 8 110; 3.5 8 90; 4 8 100; 4.5 8 90 }
End
Begin Chord-GcLead
  Voice OverDriveGuitar
  Octave 5
  Volume mp
  Sequence { 1 1 70 }
End
""",
    "pop": """
Begin Bass-GcBass
  Voice FingeredBass
  Octave 3
  Articulate 80
  Volume f
  Sequence { 1 8 1 100; 1.5 8 1 80; 2.5 8 1 85; 3 8 1 95; 3.5 8 5 80; 4.5 8 1 85 }
End
Begin Chord-GcPiano
  Voice Piano1
  Octave 5
  Voicing Mode=Optimal
  Articulate 85
  Volume mf
  Sequence { 1 4 90; 2.5 8 80; 3.5 4 85 }
End
Begin Chord-GcPad
  Voice WarmPad
  Octave 5
  Voicing Mode=Optimal
  Volume p
  Sequence { 1 1 60 }
End
""",
    "reggae-guitar": """
Begin Bass-GcBass
  Voice FingeredBass
  Octave 3
  Articulate 85
  Volume f
  Sequence { 1 4. 1 110; 2.5 8 5 90; 3 4 1 100; 4 8 3 90; 4.5 8 5 85 }
End
Begin Chord-GcSkank
  Voice CleanGuitar
  Octave 5
  Voicing Mode=Optimal
  Articulate 35
  Volume mf
  Sequence { 2 8 100; 4 8 100 }
End
Begin Chord-GcBubble
  Voice Organ2
  Octave 5
  Voicing Mode=Optimal
  Articulate 40
  Volume mp
  Sequence { 1.5 16 70; 2.5 16 60; 3.5 16 70; 4.5 16 60 }
End
""",
    "reggae-organ": """
Begin Bass-GcBass
  Voice FingeredBass
  Octave 3
  Articulate 90
  Volume f
  Sequence { 1 4 1 105; 2 8 1 85; 3 4. 5 100; 4.5 8 1+ 85 }
End
Begin Chord-GcSkank
  Voice Organ1
  Octave 5
  Voicing Mode=Optimal
  Articulate 40
  Volume mf
  Sequence { 2 8 95; 4 8 95 }
End
Begin Chord-GcPiano
  Voice Piano1
  Octave 5
  Voicing Mode=Optimal
  Articulate 30
  Volume mp
  Sequence { 2 8 80; 4 8 80 }
End
""",
    "ska": """
Begin Walk-GcWalk
  Voice AcousticBass
  Octave 3
  Articulate 80
  Volume f
  Sequence { 1 4 100; 2 4 90; 3 4 95; 4 4 90 }
End
Begin Chord-GcUpstroke
  Voice CleanGuitar
  Octave 5
  Voicing Mode=Optimal
  Articulate 35
  Volume mf
  Sequence { 1.5 8 95; 2.5 8 95; 3.5 8 95; 4.5 8 95 }
End
""",
    "rock": """
Begin Bass-GcBass
  Voice PickedBass
  Octave 3
  Articulate 80
  Volume f
  Sequence { 1 8 1 105; 1.5 8 1 90; 2 8 1 95; 2.5 8 1 90; 3 8 1 105; 3.5 8 1 90; 4 8 5 95; 4.5 8 1 90 }
End
Begin Chord-GcGuitar
  Voice OverDriveGuitar
  Octave 5
  Voicing Mode=Optimal
  Articulate 80
  Volume f
  Sequence { 1 4 100; 2 8 80; 2.5 8 90; 3 4 100; 4 8 80; 4.5 8 90 }
End
Begin Chord-GcOrgan
  Voice Organ1
  Octave 5
  Voicing Mode=Optimal
  Volume p
  Sequence { 1 1 55 }
End
""",
}

# SATB chorales of 40-120 quarter notes (BWV numbers), a sample of the corpus's 400.
_BACH_CHORALES = tuple(f"bach/bwv{n}.mxl" for n in (
    "10.7", "101.7", "102.7", "103.6", "104.6", "108.6", "11.6", "110.7", "111.6", "112.5", "113.8",
    "114.7", "115.6", "116.6", "117.4", "119.9", "120.6", "121.6", "122.6", "123.6", "125.6",
    "126.6", "127.5", "13.6", "133.6", "135.6", "139.6", "14.5", "140.7", "144.3", "145.5", "146.8",
    "148.6", "151.5", "153.1", "154.3", "155.5", "156.6", "157.5", "158.4", "159.5", "16.6",
    "164.6", "168.6", "169.7", "17.7", "174.5", "176.6",
))

GENRES: dict[str, GenreRecipe] = {
    "blues": GenreRecipe(
        styles=(
            MmaStyle("stdlib/blues", ("Blues", "Blues1", "BluesTriple"), (70, 110)),
            MmaStyle("stdlib/fastblues", ("FastBlues", "FastBluesWalk", "FastBlues1"), (120, 160)),
            MmaStyle("stdlib/slowblues", ("SlowBlues", "SlowBluesWalk4", "SlowBluesWalk8"), (56, 76)),
            MmaStyle("stdlib/shuffleboggie", ("ShuffleBoggie", "ShuffleBoggie1"), (100, 140)),
            MmaStyle("stdlib/boggiewoggie", ("BoggieWoggie", "BoggieWoggie1", "BoggieWoggie2"), (110, 150)),
            MmaStyle("stdlib/blues128", ("Blues128", "Blues128Plus"), (50, 70)),
            MmaStyle("casio/blues", ("Blues",), (80, 120)),
            MmaStyle("casio/shuffleboogie", ("ShuffleBoogie",), (100, 140)),
            _zoom("blues", "BLUS01 BLUS02 BLUS03 BLUS05 BLUS06", (80, 120), ("blues",)),
            _zoom("shuffle", "SHFL01 SHFL02 SHFL03 SHFL04 SHFL05", (90, 130), ("blues",)),
        ),
        progressions=(
            "I7 I7 I7 I7 IV7 IV7 I7 I7 V7 IV7 I7 V7",
            "I7 IV7 I7 I7 IV7 IV7 I7 I7 V7 IV7 I7 V7",
            "i7 i7 i7 i7 iv7 iv7 i7 i7 bVI7 V7 i7 V7",
            "I7 V7 IV7 IV7 I7 V7 I7 V7",
        ),
        keys=("E", "A", "G", "C", "Bb", "F", "D"),
    ),
    "classical": GenreRecipe(
        styles=(
            ScoreStyle("bach", tuple((p, 72) for p in _BACH_CHORALES), ("strings", "organ", "choir", "winds")),
            ScoreStyle("mozart", (
                ("mozart/k80/movement1.mxl", 60), ("mozart/k80/movement3.mxl", 120),
                ("mozart/k80/movement4.mxl", 132), ("mozart/k155/movement1.mxl", 132),
                ("mozart/k155/movement2.mxl", 66), ("mozart/k155/movement3.mxl", 120),
                ("mozart/k156/movement1.mxl", 144), ("mozart/k156/movement3.mxl", 108),
                ("mozart/k156/movement4.mxl", 100), ("mozart/k458/movement2.mxl", 120),
                ("mozart/k545/movement1_exposition.mxl", 132),
            )),
            ScoreStyle("haydn", (
                ("haydn/opus1no1/movement1.mxl", 200), ("haydn/opus1no1/movement2.mxl", 120),
                ("haydn/opus1no1/movement3.mxl", 56), ("haydn/opus1no1/movement4.mxl", 100),
                ("haydn/opus1no1/movement5.mxl", 144), ("haydn/opus74no1/movement1.mxl", 132),
                ("haydn/opus74no1/movement3.mxl", 144),
            )),
            ScoreStyle("beethoven", (
                ("beethoven/opus18no1/movement1.mxl", 168), ("beethoven/opus18no1/movement3.mxl", 200),
                ("beethoven/opus59no2/movement3.mxl", 120),
            )),
            ScoreStyle("baroque", (
                ("corelli/opus3no1/1grave.xml", 60), ("cpebach/h186.mxl", 120),
            )),
            ScoreStyle("chopin", (("chopin/mazurka06-2.krn", 150),)),
        ),
    ),
    "country": GenreRecipe(
        styles=(
            MmaStyle("stdlib/countryswing", ("CountrySwing", "CountrySwing1", "CountrySwing2"), (110, 150)),
            MmaStyle("stdlib/countrywaltz", ("CountryWaltz", "CountryWaltz1", "CountryWaltz2"), (90, 130), beats=3),
            MmaStyle("stdlib/slowcountry", ("SlowCountry", "SlowCountryPlus", "SlowCountryWalk"), (60, 84)),
            MmaStyle("stdlib/bluegrass", ("BlueGrass", "BlueGrassClap"), (140, 180)),
            MmaStyle("stdlib/hillcountry", ("HillCountry", "HillCountryPlus"), (100, 130)),
            MmaStyle("stdlib/westernswing", ("WesternSwing", "WesternSwingPlus"), (110, 150)),
            MmaStyle("yamaha/western", ("WesternMainA", "WesternMainB"), (100, 140)),
            MmaStyle("kara/kwestballad", ("kwestballadA", "kwestballadB", "kwestballadC", "kwestballadD"), (64, 84)),
            _zoom("country", "CNTR01 CNTR02 CNTR03 CNTR04", (100, 140), ("country",)),
        ),
        progressions=("I I IV IV V V I I", "I IV I V", "I I IV I V V I I", "I V vi IV", "I IV V IV"),
        keys=("G", "D", "A", "C", "E"),
    ),
    "disco": GenreRecipe(
        styles=(
            MmaStyle("casio/discosoul", ("DiscoSoul",), (110, 126)),
            MmaStyle("stdlib/dsoul", ("DSoul", "DSoulPlus"), (110, 126)),
            MmaStyle("stdlib/boneym", ("BoneyM", "BoneyMPlus"), (114, 130)),
            MmaStyle("casio/8beatdance", ("8BeatDance",), (114, 128)),
            _zoom("dance", "DANC01 DANC02 DANC03 DANC04 DANC05 DANC06 DANCE", (112, 128), ("disco",)),
        ),
        progressions=("i7 iv7", "i7 i7 bVII bVII", "ii7 V7 Imaj7 vi7", "I IV vi V", "i7 bVImaj7 bVII i7"),
        keys=("A", "D", "E", "G", "C", "F"),
    ),
    "hiphop": GenreRecipe(
        styles=(
            MmaStyle("alexis/hiphop", ("HipHop", "HipHopPlus1", "HipHopPlus2", "HipHopSus"), (84, 100)),
            MmaStyle("casio/hip-hop", ("Hip-Hop",), (80, 100)),
            MmaStyle("casio/triphop", ("TripHop",), (72, 92)),
            _zoom("hiphop", " ".join(f"HIP{i:02d}" for i in range(1, 24)), (80, 100), ("hiphop",)),
        ),
        progressions=("i7 iv7", "i bVI bIII bVII", "i7 i7 bVI7 V7", "i iv v i", "i7 bVImaj7"),
        keys=("C#", "D", "Eb", "F", "G", "A"),
    ),
    "jazz": GenreRecipe(
        styles=(
            MmaStyle("stdlib/swing", ("Swing", "SwingWalk", "Swing1", "Swing2", "SwingPlus"), (110, 180)),
            MmaStyle("stdlib/jazzwaltz", ("JazzWaltz", "JazzWaltz1", "JazzWaltz2"), (110, 160), beats=3),
            MmaStyle("stdlib/bebop", ("Bebop", "BebopPlus"), (180, 240)),
            MmaStyle("stdlib/modernjazz", ("ModernJazz", "ModernJazz1", "ModernJazz2"), (120, 170)),
            MmaStyle("stdlib/nitejazz", ("NiteJazz", "NiteJazzPlus"), (70, 100)),
            MmaStyle("stdlib/jazzcombo", ("JazzCombo", "JazzCombo1", "JazzCombo2"), (110, 150)),
            MmaStyle("stdlib/slowjazz", ("SlowJazz", "SlowJazz1", "SlowJazzPlus"), (60, 80)),
            MmaStyle("stdlib/evansish", ("Evansish", "Evansish1"), (100, 140)),
            MmaStyle("yamaha/jazzswing", ("JazzSwingMainA", "JazzSwingMainB"), (120, 170)),
            MmaStyle("yamaha/jazztrio", ("JazzTrioMainA", "JazzTrioMainB"), (100, 150)),
            MmaStyle("yamaha/jazzbasie", ("JazzBasieA", "JazzBasieB"), (110, 150)),
            _zoom("jazz", "JAZZ01 JAZZ02 JAZZ03 JAZZ04 JAZZ05 JAZZ06", (120, 180), ("jazz",)),
        ),
        progressions=(
            "ii7 V7 Imaj7 Imaj7",
            "Imaj7 vi7 ii7 V7",
            "iii7 vi7 ii7 V7",
            "iim7b5 V7 i7 i7",
            "Imaj7 IV7 iii7 VI7 ii7 V7 Imaj7 Imaj7",
        ),
        keys=("F", "Bb", "Eb", "C", "G", "Ab"),
    ),
    "metal": GenreRecipe(
        styles=(
            MmaStyle("casio/heavymetal", ("HeavyMetal",), (120, 170)),
            MmaStyle("pflib/metal1", ("metal1A", "metal1B"), (120, 180)),
            MmaStyle("pflib/metal2", ("metal2A", "metal2B"), (120, 180)),
            MmaStyle("casio/digitalrock", ("DigitalRock",), (110, 150)),
            _zoom("mtl", "MTL01 MTL02 MTL03 MTL04", (120, 190), ("metal",)),
            _zoom("hrk", "HRK01 HRK02 HRK03 HRK04 HRK05 HRK06 HRK07", (110, 160), ("metal",)),
        ),
        progressions=(
            "i5 bVI5 bVII5 i5", "i5 i5 bII5 i5", "i5 bVII5 bVI5 bVII5", "i5 iv5 bVI5 V5", "i5 bIII5 bVII5 iv5",
        ),
        keys=("E", "D", "C#", "B", "A"),
    ),
    "pop": GenreRecipe(
        styles=(
            MmaStyle("casio/pop", ("Pop",), (96, 124)),
            MmaStyle("casio/60spop", ("60sPop",), (100, 130)),
            MmaStyle("casio/80spop", ("80sPop",), (100, 126)),
            MmaStyle("casio/8beatpop1", ("8BeatPop1",), (96, 124)),
            MmaStyle("casio/popballad", ("PopBallad",), (66, 84)),
            MmaStyle("stdlib/popballad", ("PopBallad", "PopBallad1", "PopBallad2"), (66, 84)),
            MmaStyle("stdlib/8beat", ("8Beat", "8Beat1", "8BeatPlus"), (96, 124)),
            MmaStyle("kara/8beatmotown", ("8beatmotownA", "8beatmotownB", "8beatmotownC", "8beatmotownD"), (100, 126)),
            MmaStyle("casio/electricpop", ("ElectricPop",), (104, 126)),
            _zoom("pop", " ".join(f"POP{i:02d}" for i in range(1, 13)), (96, 126), ("pop",)),
        ),
        progressions=("I V vi IV", "vi IV I V", "I vi IV V", "I IV vi V", "I iii IV V"),
        keys=("C", "G", "D", "A", "E", "F", "Bb"),
    ),
    "reggae": GenreRecipe(
        styles=(
            _zoom("reggae", "REGG01 REGG02 REGG03 REGG04", (66, 90), ("reggae-guitar", "reggae-organ")),
            _zoom("ska", "SKA01 SKA02 SKA03 SKA04", (70, 96), ("reggae-guitar", "ska")),
            MmaStyle("stdlib/ska", ("Ska", "Ska1", "SkaClap"), (70, 92)),
        ),
        progressions=("I IV", "I V IV I", "i bVII", "I vi IV V", "I IV I V", "ii V I I"),
        keys=("A", "D", "G", "C", "F", "Bb"),
    ),
    "rock": GenreRecipe(
        styles=(
            MmaStyle("stdlib/50srock", ("50sRock", "50sRock1", "50sRockPlus"), (140, 180)),
            MmaStyle("stdlib/60srock", ("60sRock", "60sRock1"), (110, 140)),
            MmaStyle("stdlib/basicrock", ("BasicRock", "BasicRock4"), (100, 140)),
            MmaStyle("stdlib/rock-128", ("Rock128", "Rock128Plain"), (60, 80)),
            MmaStyle("kara/K50s_rock", ("50s_RockA", "50s_RockB", "50s_RockC", "50s_RockD"), (140, 180)),
            MmaStyle("casio/rock2", ("Rock2",), (110, 140)),
            MmaStyle("casio/poprock1", ("PopRock1",), (110, 140)),
            MmaStyle("casio/shufflerock", ("ShuffleRock",), (110, 140)),
            MmaStyle("yamaha/w-rock", ("W-RockMainA", "W-RockMainB"), (110, 140)),
            MmaStyle("pflib/rock1", ("rock1A", "rock1B"), (110, 150)),
            MmaStyle("pflib/highfive", ("highfiveA", "highfiveB"), (100, 130)),
            _zoom("rock", " ".join(f"ROCK{i:02d}" for i in range(1, 28)), (100, 150), ("rock",)),
            _zoom("punk", "PUNK01 PUNK02", (160, 200), ("rock",)),
        ),
        progressions=("I IV V IV", "I bVII IV I", "I V IV IV", "i bVII bVI bVII", "I IV I V", "vi IV I V"),
        keys=("E", "A", "D", "G", "C", "B"),
    ),
}

# Re-voicing of scores without their own instruments (chorales): GM programs top part down.
ARRANGEMENTS: dict[str, tuple[int, ...]] = {
    "strings": (40, 40, 41, 42, 43),  # violin, violin, viola, cello, contrabass
    "organ": (19,),  # church organ
    "choir": (52,),  # choir aahs
    "winds": (68, 71, 60, 70),  # oboe, clarinet, french horn, bassoon
}
_PART_PROGRAMS = (  # part name -> GM program, for "score"
    (re.compile(r"viola", re.IGNORECASE), 41),
    (re.compile(r"violon?cello|cello", re.IGNORECASE), 42),
    (re.compile(r"violone|contrabass|double bass", re.IGNORECASE), 42),
    (re.compile(r"violin|violino", re.IGNORECASE), 40),
    (re.compile(r"voice|choir|soprano|alto|tenor|bass", re.IGNORECASE), 52),
)


# -- production: how a track is played and mixed -------------------------------------------
# Instrument families per genre (mma voice names, GM programs): every voice of a family that a
# groove or kit uses is swapped for one drawn from the same family, per track (mma VoiceTr).
# Families stay within what the genre plausibly uses (no distorted guitar in jazz). Disjoint
# within a genre; voices in no family keep the library's choice.
VOICE_FAMILIES: dict[str, tuple[tuple[str, ...], ...]] = {
    "blues": (
        ("AcousticBass", "FingeredBass", "PickedBass", "FretlessBass"),
        ("Piano1", "Piano2", "Piano3", "Honky-TonkPiano", "RhodesPiano"),
        ("Organ1", "Organ2", "Organ3"),
        ("CleanGuitar", "JazzGuitar", "MutedGuitar", "OverDriveGuitar"),
        ("TenorSax", "AltoSax", "Harmonica", "Clarinet", "Trumpet"),
    ),
    "country": (
        ("AcousticBass", "FingeredBass", "PickedBass"),
        ("SteelGuitar", "NylonGuitar", "CleanGuitar", "JazzGuitar"),
        ("Piano1", "Piano2", "Honky-TonkPiano"),
        ("Violin", "Fiddle"),
        ("Accordion", "Harmonica"),
    ),
    "disco": (
        ("FingeredBass", "PickedBass", "SlapBass1", "SlapBass2", "SynthBass1", "FretlessBass"),
        ("CleanGuitar", "MutedGuitar", "JazzGuitar"),
        ("Piano1", "Piano2", "EPiano", "RhodesPiano", "Clavinet"),
        ("Strings", "SlowStrings", "SynthStrings1", "SynthStrings2"),
        ("Organ1", "Organ2", "Organ3"),
    ),
    "hiphop": (
        ("SynthBass1", "SynthBass2", "FingeredBass", "AcousticBass", "FretlessBass"),
        ("Piano1", "EPiano", "RhodesPiano"),
        ("WarmPad", "PolySynth", "HaloPad", "SweepPad", "SynthStrings1"),
        ("SquareWave", "SawWave", "Bass&Lead"),
        ("MutedGuitar", "JazzGuitar", "CleanGuitar"),
    ),
    "jazz": (
        ("AcousticBass", "FretlessBass", "FingeredBass"),
        ("Piano1", "Piano2", "EPiano", "RhodesPiano"),
        ("JazzGuitar", "CleanGuitar", "NylonGuitar"),
        ("Organ1", "Organ2", "Organ3"),
        ("AltoSax", "TenorSax", "Clarinet", "Trumpet", "MutedTrumpet", "Trombone"),
        ("Vibraphone", "Celesta", "Marimba"),
        ("TremoloStrings", "Strings", "SlowStrings"),
    ),
    "metal": (
        ("FingeredBass", "PickedBass"),
        ("DistortionGuitar", "OverDriveGuitar"),
        ("Piano1", "Piano2", "Organ3"),
    ),
    "pop": (
        ("FingeredBass", "PickedBass", "FretlessBass", "SynthBass1", "AcousticBass"),
        ("Piano1", "Piano2", "EPiano", "RhodesPiano", "Honky-TonkPiano"),
        ("CleanGuitar", "MutedGuitar", "SteelGuitar", "JazzGuitar", "NylonGuitar"),
        ("SlowStrings", "Strings", "SynthStrings1", "TremoloStrings"),
        ("WarmPad", "PolySynth", "SweepPad", "Atmosphere", "HaloPad"),
    ),
    "reggae": (
        ("FingeredBass", "AcousticBass", "FretlessBass", "SynthBass1"),
        ("CleanGuitar", "MutedGuitar", "JazzGuitar"),
        ("Organ1", "Organ2", "Organ3"),
        ("Piano1", "Piano2", "EPiano"),
        ("AltoSax", "TenorSax", "Trumpet", "Trombone"),
    ),
    "rock": (
        ("AcousticBass", "FingeredBass", "PickedBass"),
        ("OverDriveGuitar", "DistortionGuitar"),
        ("SteelGuitar", "CleanGuitar", "MutedGuitar"),
        ("Piano1", "Piano2", "Piano3", "Honky-TonkPiano"),
        ("Organ1", "Organ2", "Organ3"),
        ("TenorSax", "AltoSax", "BaritoneSax"),
    ),
}
# Other spellings the mma libraries use (VoiceTr matches the name as written, case ignored).
VOICE_ALIASES = {"DistortionGuitar": ("DistortonGuitar",)}
GAIN_DB = (-12.0, 0.0)  # per-track gain below the normalised peak (PEAK, about -1 dBFS)
TILT_DB_PER_OCTAVE = (-1.0, 1.0)  # gentle spectral tilt around TILT_PIVOT_HZ
TILT_PIVOT_HZ = 1000.0


@dataclass(frozen=True)
class Production:
    """How one track is played and mixed; the defaults are the plain render (one soundfont, the
    library's voices, no humanising, fluidsynth's own reverb/chorus, no EQ, full level)."""

    soundfont: str = "FluidR3_GM"  # stem of a SOUNDFONTS file (a missing one: see Tools.soundfont_for)
    voices: tuple[tuple[str, str], ...] = ()  # mma VoiceTr pairs (library voice, voice played)
    rtime: int = 0  # mma RTime: ticks (192 a quarter note) each note's start may move, +-
    rvolume: int = 0  # mma RVolume: % each note's velocity may vary, +-
    rskip: int = 0  # mma RSkip on drum tracks: % of hits left out
    drums: int = 0  # % change of the drum tracks' volume (the band's balance)
    reverb: tuple[float, float, float] = (0.2, 0.0, 0.9)  # fluidsynth reverb room-size, damp, level
    chorus: float = 2.0  # fluidsynth chorus level
    tilt_db: float = 0.0  # dB per octave around TILT_PIVOT_HZ (+ brighter)
    gain_db: float = 0.0  # level of the peak below PEAK, in GAIN_DB


def soundfont_name(path: str) -> str:
    """A soundfont's name in a :class:`Production`: its file's stem (``TimGM6mb``)."""
    return os.path.splitext(os.path.basename(path))[0]


def draw_production(rng: random.Random, genre_family: str | None) -> Production:
    """A random :class:`Production`: soundfont, voices within ``genre_family``'s families
    (:data:`VOICE_FAMILIES`; None: the library's voices), humanising, mix, reverb, EQ, gain."""
    soundfont = rng.choice([soundfont_name(p) for p in SOUNDFONTS])
    voices: list[tuple[str, str]] = []
    for family in VOICE_FAMILIES.get(genre_family or "", ()):
        for voice in family:
            played = rng.choice(family)
            voices += [(name, played) for name in (voice, *VOICE_ALIASES.get(voice, ())) if name != played]
    return Production(
        soundfont=soundfont, voices=tuple(voices), rtime=rng.randint(2, 12), rvolume=rng.randint(5, 15),
        rskip=rng.randint(0, 4), drums=rng.randint(-30, 10),
        reverb=(round(rng.uniform(0.1, 0.7), 2), round(rng.uniform(0.0, 0.5), 2), round(rng.uniform(0.3, 0.9), 2)),
        chorus=round(rng.uniform(0.0, 2.5), 2), tilt_db=round(rng.uniform(*TILT_DB_PER_OCTAVE), 2),
        gain_db=round(rng.uniform(*GAIN_DB), 1),
    )


# -- planning (pure) -----------------------------------------------------------------------
@dataclass(frozen=True)
class TrackPlan:
    """Everything that decides one track's audio; rendering adds only the length."""

    track_id: str  # "<genre dir>/<genre dir>-NNN"
    genre: str  # as configured (labels.csv spelling)
    artist: str  # mma library [+ kit] or composer: "mma:stdlib/swing", "mma:zoom/pop+pop", "music21:bach"
    ext: str  # output format: wav | flac | ogg | mp3
    renderer: str  # "mma" | "music21"
    source: tuple[str, ...]  # mma: "lib/file:Groove" per section; music21: (corpus path,)
    tempo: int  # quarter notes per minute
    beats: int  # quarter-note beats per bar (mma)
    key: str  # tonic of the progression (mma), "" for music21
    progression: tuple[str, ...]  # chord symbols, one cycle, one entry a bar (mma)
    arrangement: str  # mma: kit added to a drum-only groove ("" = none); music21: ensemble
    transpose: int  # semitones (music21; mma: the cover pair, whose song is written in C)
    variation: int  # seeds the renderer's own choices (mma RndSeed, music21 excerpt start)
    melody: tuple[str, ...] = ()  # mma solo notes, one entry a progression bar (cover pair only)
    production: Production = Production()  # soundfont, voices, humanising, mix (drawn per track)


def genre_dir(genre: str) -> str:
    """Directory / id form of a genre name: lower case, runs of other characters -> ``_``."""
    slug = re.sub(r"[^a-z0-9]+", "_", genre.strip().lower()).strip("_")
    if not slug:
        raise ConfigError(f"genre {genre!r} has no usable characters for a directory name")
    return slug


def recipe_name(genre: str) -> str:
    """A configured genre name as :data:`GENRES` spells it: case, spaces, '-' and '_' ignored."""
    return re.sub(r"[\s_-]+", "", genre.casefold())


def recipe_for(genre: str) -> GenreRecipe | None:
    """The recipe for a configured genre name (:func:`recipe_name`), or None."""
    return GENRES.get(recipe_name(genre))


_NOTES = ("C", "Db", "D", "Eb", "E", "F", "Gb", "G", "Ab", "A", "Bb", "B")
_PITCH = {n: i for i, n in enumerate(_NOTES)} | {"C#": 1, "D#": 3, "F#": 6, "G#": 8, "A#": 10}
_ROMAN = {"I": 0, "II": 2, "III": 4, "IV": 5, "V": 7, "VI": 9, "VII": 11}
_ROMAN_RE = re.compile(r"^([b#]?)(VII|VI|IV|V|III|II|I|vii|vi|iv|v|iii|ii|i)(.*)$")


def chord_symbol(numeral: str, key: str) -> str:
    """A roman numeral in ``key`` -> an mma chord name: ``("ii7", "F")`` -> ``"Gm7"``.

    Lower case means minor (``m`` is added unless the suffix is ``5``, ``dim`` or ``m7b5``);
    ``b``/``#`` before the numeral shift the root by a semitone.
    """
    m = _ROMAN_RE.match(numeral)
    if not m or key not in _PITCH:
        raise ValueError(f"bad chord numeral {numeral!r} in key {key!r}")
    accidental, roman, suffix = m.groups()
    root = (_PITCH[key] + _ROMAN[roman.upper()] + {"b": -1, "#": 1, "": 0}[accidental]) % 12
    if roman.islower() and not suffix.startswith(("5", "dim", "m7b5")):
        suffix = "m" + suffix
    return _NOTES[root] + suffix


def progression_chords(progression: str, key: str) -> tuple[str, ...]:
    """``"I-V vi"`` -> one entry a bar, chords within a bar separated by spaces: ``("C G", "Am")``."""
    return tuple(" ".join(chord_symbol(n, key) for n in bar.split("-")) for bar in progression.split())


def plan_tracks(genres: Sequence[str], tracks_per_genre: int, seed: int) -> list[TrackPlan]:
    """Which source, tempo, key and progression each track gets: deterministic in ``seed``.

    Families (styles) take turns in a seeded order, so every genre spreads over its families;
    track ``i`` of a genre depends only on (seed, genre, i), so a larger ``tracks_per_genre``
    only adds tracks. Its :class:`Production` comes from a random stream of its own, so the
    source, tempo, key and artist choices are those of a plan without productions. Genres
    without a recipe are left out (see :func:`recipe_for`).
    """
    if tracks_per_genre < 0:
        raise ConfigError(f"tracks_per_genre must be >= 0, not {tracks_per_genre}")
    plans: list[TrackPlan] = []
    seen_dirs: dict[str, str] = {}
    for genre in genres:
        recipe = recipe_for(genre)
        if recipe is None:
            continue
        slug = genre_dir(genre)
        if slug in seen_dirs:
            raise ConfigError(f"genres {seen_dirs[slug]!r} and {genre!r} map to the same directory {slug!r}")
        seen_dirs[slug] = genre
        genre_rng = random.Random(f"genrecast-demo:{seed}:{slug}")
        order = list(range(len(recipe.styles)))
        genre_rng.shuffle(order)
        first_format = genre_rng.randrange(len(FORMATS))
        for i in range(tracks_per_genre):
            rng = random.Random(f"genrecast-demo:{seed}:{slug}:{i}")
            sound_rng = random.Random(f"genrecast-demo:{seed}:{slug}:{i}:production")
            style = recipe.styles[order[i % len(order)]]
            production = draw_production(sound_rng, recipe_name(genre))
            common = {
                "track_id": f"{slug}/{slug}-{i:03d}",
                "genre": genre,
                "ext": FORMATS[(first_format + i) % len(FORMATS)],
                "variation": rng.randrange(1, 2**31),
            }
            if isinstance(style, MmaStyle):
                first, second = rng.choice(style.grooves), rng.choice(style.grooves)
                if style.family_per_groove:
                    second = first
                key = rng.choice(recipe.keys)
                tempo = rng.randint(*style.tempo)
                progression = progression_chords(rng.choice(recipe.progressions), key)
                kit = rng.choice(style.kits) if style.kits else ""
                plans.append(TrackPlan(
                    artist=f"mma:{style.name}" + (f"+{kit}" if kit else ""), renderer="mma",
                    source=(f"{style.name}:{first}", f"{style.name}:{second}"),
                    tempo=tempo, beats=style.beats, key=key, progression=progression,
                    arrangement=kit, transpose=0, production=production, **common,
                ))
            else:
                path, qpm = rng.choice(style.works)
                plans.append(TrackPlan(
                    artist=f"music21:{style.composer}", renderer="music21", source=(path,),
                    tempo=round(qpm * rng.uniform(0.9, 1.1)), beats=0, key="", progression=(),
                    arrangement=rng.choice(style.arrangements), transpose=rng.randint(-2, 2),
                    # a score keeps its own parts' instruments and timing: soundfont, room, EQ, gain
                    production=replace(production, rtime=0, rvolume=0, rskip=0, drums=0), **common,
                ))
    return plans


# -- the cover pair: one song over two genres' grooves ----------------------------------------
COVER_DIR = "covers"
# The song, in C (transposed per seed): one chord and one bar of melody (mma solo notes) per bar.
COVER_PROGRESSION = "I V vi IV I V vi IV"
COVER_MELODY = (
    "4e;8e;8f;4g;4e;", "4d;8d;8e;2d;", "4c;8c;8d;4e;4a;", "2a;4g;4f;",
    "4g;8g;8a;4c+;4g;", "4b;8a;8g;2d;", "4e;4a;4c+;4b;", "2.a;4r;",
)
# (genre, mma groove): both are stdlib grooves with their own bass and chords, no kit needed.
COVER_VERSIONS = (("pop", "stdlib/8beat:8Beat"), ("reggae", "stdlib/ska:Ska"))
COVER_TEMPO = (90, 100)  # shared by both versions: between the two genres' usual ranges
# The melody sits under the groove (mp): the grooves, not the flute, should decide the genre.
SOLO_TRACK = """
Begin Solo
  Voice Flute
  Octave 5
  Articulate 90
  Volume mp
End
"""


def plan_covers(genres: Sequence[str], seed: int) -> list[TrackPlan]:
    """The cover pair (module docstring) when both its genres are configured, else nothing:
    ``covers/song-000-<genre dir>`` per version, same key, tempo, chords, melody and mma seed,
    different groove. Deterministic in ``seed``."""
    configured = {recipe_name(g): g for g in genres}
    names = [configured.get(genre) for genre, _groove in COVER_VERSIONS]
    if any(name is None for name in names):
        return []
    rng = random.Random(f"genrecast-demo:{seed}:covers:0")
    transpose, tempo, variation = rng.randint(-5, 6), rng.randint(*COVER_TEMPO), rng.randrange(1, 2**31)
    # One production for both versions (each groove keeps its own voices): only the groove differs.
    production = draw_production(random.Random(f"genrecast-demo:{seed}:covers:0:production"), None)
    song = f"{COVER_DIR}/song-000"
    return [
        TrackPlan(
            track_id=f"{song}-{genre_dir(name)}", genre=name, artist=f"demo-cover:{song.split('/')[-1]}",
            ext="flac", renderer="mma", source=(groove, groove), tempo=tempo, beats=4, key="C",
            progression=progression_chords(COVER_PROGRESSION, "C"), arrangement="", transpose=transpose,
            variation=variation, melody=COVER_MELODY, production=production,
        )
        for name, (_genre, groove) in zip(names, COVER_VERSIONS, strict=True)
        if name is not None
    ]


# -- MIDI facts ----------------------------------------------------------------------------
@dataclass(frozen=True)
class MidiFacts:
    seconds: float  # time of the last event
    notes: dict[int, int]  # note-ons per channel (0-based; 9 = percussion)
    programs: frozenset[tuple[int, int]] = frozenset()  # (channel, GM program) of every program change

    @property
    def pitched_channels(self) -> int:
        return sum(1 for ch, n in self.notes.items() if n and ch != DRUM_CHANNEL)


def _varlen(data: bytes, i: int) -> tuple[int, int]:
    value = 0
    for _ in range(4):
        b = data[i]
        i += 1
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            return value, i
    raise ValueError("variable-length quantity longer than 4 bytes")


def _parse_midi(data: bytes) -> tuple[int, list[tuple[int, int]], Counter[int], int, set[tuple[int, int]]]:
    """(track count, tempo changes as (tick, microseconds per quarter), note-ons per channel,
    tick of the last event, (channel, program) changes) of a Standard MIDI File."""
    if data[:4] != b"MThd":
        raise ValueError("no MThd header")
    _fmt, ntracks = struct.unpack(">HH", data[8:12])
    pos = 8 + int.from_bytes(data[4:8], "big")
    tempos: list[tuple[int, int]] = []
    notes: Counter[int] = Counter()
    programs: set[tuple[int, int]] = set()
    end_tick = 0
    for _ in range(ntracks):
        while True:
            chunk, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "big")
            body, pos = data[pos + 8 : pos + 8 + size], pos + 8 + size
            if len(chunk) < 4 or len(body) < size:
                raise ValueError("file ends inside a chunk")
            if chunk == b"MTrk":
                break
        i, tick, status = 0, 0, 0
        while i < len(body):
            delta, i = _varlen(body, i)
            tick += delta
            b = body[i]
            if b == 0xFF:
                kind = body[i + 1]
                length, i = _varlen(body, i + 2)
                if kind == 0x51 and length == 3:
                    tempos.append((tick, int.from_bytes(body[i : i + 3], "big")))
                i += length
            elif b in (0xF0, 0xF7):
                length, i = _varlen(body, i + 1)
                i += length
            else:
                if b & 0x80:
                    status, i = b, i + 1
                elif not status:
                    raise ValueError("running status without a status byte")
                if status & 0xF0 == 0x90 and body[i + 1] > 0:
                    notes[status & 0x0F] += 1
                elif status & 0xF0 == 0xC0:
                    programs.add((status & 0x0F, body[i]))
                i += 1 if status & 0xF0 in (0xC0, 0xD0) else 2
            end_tick = max(end_tick, tick)
    return ntracks, tempos, notes, end_tick, programs


def midi_facts(data: bytes) -> MidiFacts:
    """Length (tempo map applied) and note counts of a Standard MIDI File."""
    try:
        _ntracks, tempos, notes, end_tick, programs = _parse_midi(data)
        division = data[12:14]
    except (IndexError, ValueError, struct.error) as exc:
        raise RenderError(f"malformed MIDI file: {exc}") from None
    if division[0] & 0x80:  # SMPTE: frames per second and ticks per frame
        seconds = end_tick / ((256 - division[0]) * division[1])
    else:
        ppq = int.from_bytes(division, "big") or 480
        seconds, last_tick, uspq = 0.0, 0, 500_000
        for tick, value in sorted(tempos):
            if tick >= end_tick:
                break
            seconds += (tick - last_tick) * uspq / ppq / 1e6
            last_tick, uspq = tick, value
        seconds += (end_tick - last_tick) * uspq / ppq / 1e6
    return MidiFacts(seconds, dict(notes), frozenset(programs))


def _varlen_bytes(value: int) -> bytes:
    out = [value & 0x7F]
    while value := value >> 7:
        out.append(0x80 | (value & 0x7F))
    return bytes(reversed(out))


def midi_with_sound_off(data: bytes) -> bytes:
    """The MIDI plus a track that silences every channel (all sound / notes off, pedal up) at
    its last event. A note left hanging (no note-off) otherwise keeps fluidsynth rendering
    forever, and reverb tails add seconds nobody keeps."""
    try:
        ntracks, _tempos, _notes, end_tick, _programs = _parse_midi(data)
    except (IndexError, ValueError, struct.error) as exc:
        raise RenderError(f"malformed MIDI file: {exc}") from None
    events = bytearray(_varlen_bytes(end_tick))
    for channel in range(16):
        for n, (control, value) in enumerate(((64, 0), (120, 0), (123, 0))):
            events += (b"" if channel == 0 and n == 0 else b"\x00") + bytes((0xB0 | channel, control, value))
    events += b"\x00\xff\x2f\x00"
    header = data[:8] + struct.pack(">HH", 1, ntracks + 1) + data[12:]
    return header + b"MTrk" + struct.pack(">I", len(events)) + bytes(events)


# -- guarded external tools ----------------------------------------------------------------
@dataclass(frozen=True)
class Tools:
    """Paths of the renderers and a fingerprint of their versions (part of every cache key)."""

    mma: str | None
    fluidsynth: str | None
    soundfonts: tuple[str, ...]  # installed SOUNDFONTS, in that order (at least one)
    fingerprint: str  # renderer versions and the installed soundfont set

    def soundfont_for(self, production: Production) -> str:
        """The soundfont file that plays a track: the one it drew, or when that one is not
        installed, one of those that are (fixed by its name, so the same on every run)."""
        by_name = {soundfont_name(p): p for p in self.soundfonts}
        if production.soundfont in by_name:
            return by_name[production.soundfont]
        digest = hashlib.sha256(production.soundfont.encode()).digest()
        return self.soundfonts[digest[0] % len(self.soundfonts)]


def _tool_env(cwd: str) -> dict[str, str]:
    """Environment for the renderers: fixed hash seed (mma is Python), and no sound server.

    fluidsynth links libpulse, whose client maps a 64 MiB memfd at start-up (which the file-size
    limit counts) and may autospawn a daemon: a client.conf in ``cwd`` turns both off.
    """
    conf = os.path.join(cwd, ".pulse-client.conf")
    if not os.path.exists(conf):
        with open(conf, "w") as fh:
            fh.write("autospawn = no\nenable-shm = no\nenable-memfd = no\n")
    return dict(os.environ, PYTHONHASHSEED="0", PULSE_CLIENTCONFIG=conf, JACK_NO_START_SERVER="1")


def run_guarded(cmd: list[str], what: str, timeout_s: float, max_file_bytes: int, cwd: str) -> str:
    """Run ``cmd`` in ``cwd`` with a wall-clock limit and a per-file size limit (RLIMIT_FSIZE);
    returns its output. A process that writes past the limit is killed by SIGXFSZ, so it never
    fills a disk."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    log_path = os.path.join(cwd, f".{what}.log")
    try:
        with open(log_path, "wb") as out:  # a file, not a pipe: the size limit covers it too
            proc = subprocess.run(cmd, cwd=cwd, env=_tool_env(cwd), stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=subprocess.STDOUT, timeout=timeout_s, preexec_fn=limit, check=False)
    except subprocess.TimeoutExpired:
        raise RenderError(f"{what} timed out after {timeout_s:g}s") from None
    except OSError as exc:
        raise RenderError(f"{what} could not start: {exc}") from None
    with open(log_path, "rb") as fh:
        fh.seek(max(0, os.path.getsize(log_path) - 4000))
        output = fh.read().decode(errors="replace")
    os.remove(log_path)
    if proc.returncode in (-signal.SIGXFSZ, 128 + signal.SIGXFSZ):
        raise RenderError(f"{what} exceeded the file-size limit of {max_file_bytes} bytes")
    if proc.returncode != 0:
        lines = [ln.strip() for ln in output.splitlines() if ln.strip() and "PLUGIN" not in ln]
        detail = " ".join(lines[-3:])[-300:] or "no output"
        raise RenderError(f"{what} failed (exit {proc.returncode}): {detail}")
    return output


def find_tools(need_mma: bool = True) -> Tools:
    """Locate mma, fluidsynth and the GM soundfonts (:data:`SOUNDFONTS`) that are installed;
    :class:`JobError` naming what is missing (any one soundfont is enough; the set is logged)."""
    mma, fluidsynth = shutil.which("mma"), shutil.which("fluidsynth")
    soundfonts = tuple(p for p in SOUNDFONTS if os.path.isfile(p))
    missing = [name for name, ok in (("mma (Debian package mma)", mma or not need_mma),
                                     ("fluidsynth (Debian package fluidsynth)", fluidsynth),
                                     ("a General MIDI soundfont (Debian package fluid-soundfont-gm)", soundfonts))
               if not ok]
    if missing:
        raise JobError(f"demo catalogue needs {', '.join(missing)}: run make setup")
    parts = [f"render={RENDER_VERSION}", f"sr={SAMPLE_RATE}"]
    with tempfile.TemporaryDirectory(prefix="genrecast-demo-") as tmp:
        for name, cmd in (("mma", [mma, "-v"]), ("fluidsynth", [fluidsynth, "--version"])):
            if not cmd[0]:
                continue
            try:
                out = run_guarded(cmd, f"{name}-version", 30, 2**20, tmp)
            except RenderError as exc:
                raise JobError(f"demo catalogue: {exc}") from None
            parts.append(f"{name}={' '.join(ln for ln in out.splitlines() if 'PLUGIN' not in ln)[:120]}")
    absent = [soundfont_name(p) for p in SOUNDFONTS if p not in soundfonts]
    log.info("demo catalogue: soundfonts %s%s", ", ".join(map(soundfont_name, soundfonts)),
             f" (not installed: {', '.join(absent)}; their tracks use these)" if absent else "")
    for path in soundfonts:
        stat = os.stat(path)
        parts.append(f"soundfont={os.path.realpath(path)}:{stat.st_size}:{int(stat.st_mtime)}")
    return Tools(mma, fluidsynth, soundfonts, "|".join(parts))


# -- rendering -----------------------------------------------------------------------------
def mma_song(plan: TrackPlan, seconds: float) -> tuple[str, int]:
    """The mma source for a track and its bar count (enough bars to cover ``seconds`` + 1 s)."""
    bar_seconds = plan.beats * 60.0 / plan.tempo
    bars = math.ceil((seconds + 1.0) / bar_seconds) + 1
    kit = KITS[plan.arrangement] if plan.arrangement else ""
    prod = plan.production
    lines = [f"// genrecast demo catalogue: {plan.track_id} ({plan.genre}, {plan.artist})",
             f"RndSeed {plan.variation}", f"Tempo {plan.tempo}"]
    if plan.transpose:
        lines.append(f"Transpose {plan.transpose}")
    if prod.voices:  # before any groove is loaded: VoiceTr applies to Voice lines read after it
        lines.append("VoiceTr " + " ".join(f"{voice}={played}" for voice, played in prod.voices))
    # Humanising and drum balance, set on every track of each groove (its library's own values
    # are replaced) before it is saved as a section.
    human = [f"AllTracks RTime {prod.rtime}" if prod.rtime else "",
             f"AllTracks RVolume {prod.rvolume}" if prod.rvolume else "",
             f"AllTracks Drum RSkip {prod.rskip}" if prod.rskip else "",
             f"AllTracks Drum Volume {prod.drums:+d}%" if prod.drums else ""]
    sections = list(dict.fromkeys(plan.source))
    for n, groove in enumerate(sections):
        lines += [f"Groove {groove}", kit.strip(), *human, f"DefGroove GcSection{n}"]
    if plan.melody:  # after the grooves: a Solo track is not part of any groove, so it survives them
        lines.append(SOLO_TRACK.strip())
    cycle = len(plan.progression)
    for bar in range(bars):
        if bar % cycle == 0:
            lines.append(f"Groove GcSection{sections.index(plan.source[(bar // cycle) % len(plan.source)])}")
        melody = f" {{{plan.melody[bar % cycle]}}}" if plan.melody else ""
        lines.append(f"{bar + 1} {plan.progression[bar % cycle]}{melody}")
    return "\n".join(ln for ln in lines if ln) + "\n", bars


def _score_midi(plan: TrackPlan, seconds: float, midi_path: str) -> None:
    """Write a MIDI excerpt (about ``seconds`` long at ``plan.tempo``) of a music21 corpus work."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import music21  # noqa: F401
    except ImportError:
        raise JobError("demo catalogue (classical) needs music21: pip install -r requirements.txt") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            _write_excerpt(plan, seconds, midi_path)
        except RenderError:
            raise
        except Exception as exc:  # music21 raises many types for a score it cannot handle
            raise RenderError(f"music21 failed on {plan.source[0]}: {type(exc).__name__}: {exc}"[:300]) from None


def _write_excerpt(plan: TrackPlan, seconds: float, midi_path: str) -> None:
    from music21 import bar, corpus, instrument, repeat, tempo

    score = corpus.parse(plan.source[0])
    measures = list(score.parts[0].getElementsByClass("Measure"))
    if not measures:
        raise RenderError(f"{plan.source[0]}: no measures")
    starts = [float(m.offset) for m in measures]
    total = float(score.highestTime)
    needed = seconds * plan.tempo / 60.0 + 2.0  # quarter notes, with a little spare
    fits = [i for i, off in enumerate(starts) if total - off >= needed] or [0]
    first = fits[plan.variation % len(fits)]
    last = next((j for j in range(first, len(measures)) if starts[j] - starts[first] >= needed), len(measures) - 1)
    excerpt = score.measures(measures[first].number, measures[last].number)
    # An excerpt plays straight through: no tempo marks of the score (plan.tempo rules), no repeats.
    for element in list(excerpt.recurse().getElementsByClass((tempo.MetronomeMark, repeat.RepeatExpression))):
        element.activeSite.remove(element)
    for measure in excerpt.recurse().getElementsByClass("Measure"):
        if isinstance(measure.leftBarline, bar.Repeat):
            measure.leftBarline = None
        if isinstance(measure.rightBarline, bar.Repeat):
            measure.rightBarline = None
    if plan.transpose:
        excerpt = excerpt.transpose(plan.transpose)
    programs = ARRANGEMENTS.get(plan.arrangement)
    for n, part in enumerate(excerpt.parts):
        old = list(part.recurse().getElementsByClass(instrument.Instrument))
        program = programs[min(n, len(programs) - 1)] if programs else _score_program(part, old)
        for inst in old:
            inst.activeSite.remove(inst)
        part.insert(0, instrument.instrumentFromMidiProgram(program))
    excerpt.parts[0].getElementsByClass("Measure").first().insert(0, tempo.MetronomeMark(number=plan.tempo))
    excerpt.write("midi", fp=midi_path)


def _score_program(part: object, instruments: list) -> int:
    """GM program for a part in "score" arrangement: by part name, else the score's own."""
    name = f"{getattr(part, 'partName', '') or ''} " + " ".join(str(i.instrumentName or "") for i in instruments)
    for pattern, program in _PART_PROGRAMS:
        if pattern.search(name):
            return program
    own = next((i.midiProgram for i in instruments if i.midiProgram is not None), None)
    return int(own) if own is not None else 0


def _fluidsynth(tools: Tools, production: Production, midi_path: str, wav_path: str, midi_seconds: float) -> None:
    expected = (midi_seconds + MAX_TAIL_S) * SAMPLE_RATE * 2 * 2  # stereo int16
    limit = int(min(MAX_RENDER_BYTES, expected * 1.2 + 2**20))
    soundfont = tools.soundfont_for(production)
    # Chorus/reverb are deterministic; one core keeps the mixing order fixed. Samples load as
    # the MIDI selects their presets (dynamic loading): the same bytes on every run, and a 30 s
    # track takes 0.4 s with an .sf2 (0.6-0.7 s loading all of it), 1.7 s with the .sf3 (5.3 s
    # decoding all its Vorbis samples); measured on 8 tracks. Against loading everything, the
    # .sf3's renders were identical, FluidR3's differed by under 1 LSB (one track compared).
    room, damp, level = production.reverb
    cmd = [tools.fluidsynth, "-n", "-i", "-q", "-F", wav_path, "-T", "wav", "-O", "s16",
           "-r", str(SAMPLE_RATE), "-g", "0.5", "-o", "synth.cpu-cores=1",
           "-o", "synth.dynamic-sample-loading=1",
           "-o", f"synth.reverb.room-size={room}", "-o", f"synth.reverb.damp={damp}",
           "-o", f"synth.reverb.level={level}", "-o", f"synth.chorus.level={production.chorus}",
           soundfont, midi_path]
    run_guarded(cmd, "fluidsynth", FLUIDSYNTH_TIMEOUT_S, limit, os.path.dirname(wav_path))


def tilt(samples: np.ndarray, db_per_octave: float) -> np.ndarray:
    """A gentle EQ: ``db_per_octave`` dB gain per octave above :data:`TILT_PIVOT_HZ` (and the
    opposite below), flat below 40 Hz and above 10 kHz; samples at ``SAMPLE_RATE``, float64."""
    import scipy.fft

    if not db_per_octave or not len(samples):
        return samples
    n = len(samples)
    # Zero padding (0.4 s, longer than the filter rings) so the end does not wrap onto the start.
    size = scipy.fft.next_fast_len(n + 8192, real=True)
    freqs = np.fft.rfftfreq(size, 1.0 / SAMPLE_RATE)
    octaves = np.log2(np.clip(freqs, 40.0, 10_000.0) / TILT_PIVOT_HZ)
    spectrum = scipy.fft.rfft(samples, size) * 10.0 ** (db_per_octave * octaves / 20.0)
    return scipy.fft.irfft(spectrum, size)[:n]


def _finish(wav_path: str, seconds: float, midi_seconds: float, loop: bool,
            production: Production = Production()) -> np.ndarray:
    """Rendered WAV -> mono int16 of exactly ``seconds``, tilted (EQ), peak-normalised to
    ``production.gain_db`` below :data:`PEAK` (never clipping), faded at the ends."""
    try:
        data, rate = sf.read(wav_path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise RenderError(f"fluidsynth output unreadable: {exc}") from None
    rendered = len(data) / rate
    if rate != SAMPLE_RATE or not midi_seconds - 0.5 <= rendered <= midi_seconds + MAX_TAIL_S:
        raise RenderError(f"rendered {rendered:.1f}s at {rate} Hz for a {midi_seconds:.1f}s MIDI")
    mono = data.mean(axis=1)
    n = round(seconds * SAMPLE_RATE)
    if len(mono) < n:
        if not loop:
            raise RenderError(f"rendered {rendered:.1f}s, shorter than {seconds:g}s")
        period = min(len(mono), max(1, round(midi_seconds * SAMPLE_RATE)))
        mono = np.tile(mono[:period], math.ceil(n / period))
    mono = tilt(mono[:n].astype(np.float64), production.tilt_db)
    peak = float(np.max(np.abs(mono))) if n else 0.0
    if peak < 1e-4:
        raise RenderError("silent render")
    mono *= PEAK * 10.0 ** (min(0.0, production.gain_db) / 20.0) / peak
    fade_in, fade_out = min(n, round(FADE_IN_S * SAMPLE_RATE)), min(n, round(FADE_OUT_S * SAMPLE_RATE))
    mono[:fade_in] *= np.linspace(0.0, 1.0, fade_in)
    mono[n - fade_out :] *= np.linspace(1.0, 0.0, fade_out)
    return np.clip(np.round(mono * 32767), -32768, 32767).astype(np.int16)


_MUSIC21_LOCK = threading.Lock()


def render_pcm(plan: TrackPlan, seconds: float, tools: Tools) -> np.ndarray:
    """Render one planned track: mono int16 samples at ``SAMPLE_RATE``, exactly ``seconds`` long."""
    with tempfile.TemporaryDirectory(prefix="genrecast-demo-") as tmp:
        midi_path, wav_path = os.path.join(tmp, "track.mid"), os.path.join(tmp, "track.wav")
        facts = write_midi(plan, seconds, tools, midi_path)
        _fluidsynth(tools, plan.production, midi_path, wav_path, facts.seconds)
        return _finish(wav_path, seconds, facts.seconds, loop=plan.renderer == "music21", production=plan.production)


def write_midi(plan: TrackPlan, seconds: float, tools: Tools, midi_path: str) -> MidiFacts:
    """Write a planned track's MIDI (ending in "all sound off") to ``midi_path``, in a folder
    of its own; its facts, checked: drums, bass and chords (mma) or notes (music21), the length."""
    tmp = os.path.dirname(midi_path)
    if plan.renderer == "mma":
        song, _bars = mma_song(plan, seconds)
        with open(os.path.join(tmp, "track.mma"), "w") as fh:
            fh.write(song)
        run_guarded([tools.mma, "-w", "-f", midi_path, "track.mma"], "mma", MMA_TIMEOUT_S, 10 * 2**20, tmp)
    elif plan.renderer == "music21":
        with _MUSIC21_LOCK:  # music21 keeps process-wide caches; one score at a time
            _score_midi(plan, seconds, midi_path)
    else:
        raise RenderError(f"unknown renderer {plan.renderer!r}")
    if not os.path.isfile(midi_path):
        raise RenderError(f"{plan.renderer} wrote no MIDI file")
    with open(midi_path, "rb") as fh:
        midi = fh.read()
    facts = midi_facts(midi)
    with open(midi_path, "wb") as fh:
        fh.write(midi_with_sound_off(midi))
    if plan.renderer == "mma":
        if facts.pitched_channels < 2:
            raise RenderError(f"{' '.join(plan.source)}: {facts.pitched_channels} pitched channel(s), "
                              "need bass and chords besides drums")
        if facts.seconds < seconds:
            raise RenderError(f"MIDI is {facts.seconds:.1f}s, shorter than {seconds:g}s (time signature?)")
    elif facts.pitched_channels < 1:
        raise RenderError(f"{plan.source[0]}: excerpt has no notes")
    return facts


# -- encoding ------------------------------------------------------------------------------
def _crc_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) if r & 0x80000000 else r << 1
        table.append(r & 0xFFFFFFFF)
    return tuple(table)


_OGG_CRC = _crc_table()  # Ogg's CRC-32: polynomial 0x04C11DB7, not reflected, initial 0


def _ogg_crc(data: bytes | bytearray) -> int:
    crc = 0
    for b in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _OGG_CRC[((crc >> 24) ^ b) & 0xFF]
    return crc


def ogg_with_serial(data: bytes, serial: int = OGG_SERIAL) -> bytes:
    """Rewrite every Ogg page's stream serial (and its CRC): libsndfile draws a random serial,
    the only thing that made two encodings of the same samples differ."""
    out, pos = bytearray(data), 0
    while pos < len(out):
        if out[pos : pos + 4] != b"OggS" or pos + 27 > len(out):
            raise RenderError("Ogg encoder wrote an unexpected page layout")
        nseg = out[pos + 26]
        size = 27 + nseg + sum(out[pos + 27 : pos + 27 + nseg])
        struct.pack_into("<II", out, pos + 14, serial, struct.unpack_from("<I", out, pos + 18)[0])
        struct.pack_into("<I", out, pos + 22, 0)
        struct.pack_into("<I", out, pos + 22, _ogg_crc(out[pos : pos + size]))
        pos += size
    return bytes(out)


def encode(pcm: np.ndarray, ext: str) -> bytes:
    """Mono int16 samples -> file bytes (wav/flac: PCM 16; ogg: Vorbis; mp3: LAME), deterministic."""
    formats = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "ogg": ("OGG", "VORBIS"),
               "mp3": ("MP3", "MPEG_LAYER_III")}
    if ext not in formats:
        raise ValueError(f"unsupported demo format {ext!r}")
    buf = io.BytesIO()
    sf.write(buf, pcm, SAMPLE_RATE, format=formats[ext][0], subtype=formats[ext][1])
    data = buf.getvalue()
    return ogg_with_serial(data) if ext == "ogg" else data


# -- cache ---------------------------------------------------------------------------------
def render_key(plan: TrackPlan, seconds: float, tools: Tools) -> str:
    """Hash of everything that decides a track's samples (not its format or id)."""
    if plan.renderer == "mma":
        what: dict[str, object] = {"mma": mma_song(plan, seconds)[0]}
    else:
        try:
            from importlib.metadata import version

            m21 = version("music21")
        except Exception:  # noqa: BLE001 - not installed: rendering will say so
            m21 = "?"
        what = {"music21": m21, "source": plan.source, "tempo": plan.tempo, "transpose": plan.transpose,
                "arrangement": plan.arrangement, "variation": plan.variation}
    # The production's mma part is in the mma text; its soundfont, mix and EQ are here.
    what |= {"renderer": plan.renderer, "seconds": seconds, "tools": tools.fingerprint,
             "production": asdict(plan.production), "soundfont": tools.soundfont_for(plan.production)}
    # The mma text names the track in a comment: drop it so identical songs share a render.
    blob = json.dumps(what, sort_keys=True).replace(plan.track_id, "")
    return hashlib.sha256(blob.encode()).hexdigest()


class _Cache:
    """Rendered samples and encoded files under ``cache_dir`` (a local folder), by key."""

    def __init__(self, cache_dir: str | None) -> None:
        self.dir = os.path.abspath(cache_dir) if cache_dir else None

    def _path(self, key: str, ext: str) -> str:
        assert self.dir
        return os.path.join(self.dir, key[:2], f"{key}.{ext}")

    def load(self, key: str, ext: str) -> bytes | None:
        if not self.dir:
            return None
        try:
            with open(self._path(key, ext), "rb") as fh:
                return fh.read()
        except OSError:
            return None

    def store(self, key: str, ext: str, data: bytes) -> None:
        if not self.dir:
            return
        path = self._path(key, ext)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.tmp-{os.getpid()}"
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except OSError as exc:  # a full or read-only cache must not fail the catalogue
            log.warning("demo cache: cannot write %s: %s", path, exc)


# -- the catalogue -------------------------------------------------------------------------
@dataclass(frozen=True)
class TrackFailure:
    track_id: str
    reason: str


@dataclass
class DemoSummary:
    tracks: int = 0  # tracks in the catalogue (written or already there)
    written: int = 0  # audio objects written (new or changed)
    unchanged: int = 0  # already in storage with identical bytes
    cache_hits: int = 0  # tracks whose audio came from cache_dir
    per_genre: dict[str, int] = field(default_factory=dict)
    failures: list[TrackFailure] = field(default_factory=list)
    unsupported_genres: list[str] = field(default_factory=list)
    total_bytes: int = 0  # audio bytes in the catalogue
    render_seconds: float = 0.0  # wall time spent rendering and encoding
    labels_uri: str = ""


def track_source(plan: TrackPlan, tools: Tools) -> str:
    """labels.csv ``source`` of a track: its renderer and the soundfont that actually plays it
    (:meth:`Tools.soundfont_for`), ``mma/FluidR3_GM``, ``music21/TimGM6mb``."""
    return f"{plan.renderer}/{soundfont_name(tools.soundfont_for(plan.production))}"


def labels_csv(plans: Sequence[TrackPlan], tools: Tools) -> str:
    """``labels.csv`` text for the given tracks: ``track_id,genre,artist,source``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["track_id", "genre", "artist", "source"])
    for plan in plans:
        writer.writerow([plan.track_id, plan.genre, plan.artist, track_source(plan, tools)])
    return buf.getvalue()


def _track_bytes(plan: TrackPlan, seconds: float, tools: Tools, cache: _Cache) -> tuple[bytes, bool]:
    """The track's file bytes and whether they came from the cache. Renders are cached
    losslessly (FLAC); lossy encodings too, as each takes 0.2-0.3 s."""
    key = render_key(plan, seconds, tools)
    enc_key = hashlib.sha256(f"{key}|{plan.ext}|{sf.__libsndfile_version__}".encode()).hexdigest()
    if plan.ext in LOSSY and (data := cache.load(enc_key, plan.ext)) is not None:
        return data, True
    pcm, hit = None, False
    if (raw := cache.load(key, "flac")) is not None:
        try:
            pcm, hit = sf.read(io.BytesIO(raw), dtype="int16")[0], True
        except (sf.LibsndfileError, RuntimeError) as exc:
            log.warning("demo cache: unreadable entry %s, rendering again: %s", key, exc)
    if pcm is None:
        pcm = render_pcm(plan, seconds, tools)
        cache.store(key, "flac", encode(pcm, "flac"))
    data = encode(pcm, plan.ext)
    if plan.ext in LOSSY:
        cache.store(enc_key, plan.ext, data)
    return data, hit


def _store_track(storage: Storage, summary: DemoSummary, existing: dict[str, int], audio_uri: str, uri: str,
                 plan: TrackPlan, data: bytes, hit: bool, secs: float, n: int, total: int,
                 progress: Callable[[str], None] | None) -> None:
    """Write one rendered track unless identical bytes are there; drop its other-format copies."""
    if existing.get(uri) == len(data) and storage.read_bytes(uri) == data:
        summary.unchanged += 1
        state = "unchanged"
    else:
        storage.write_bytes(uri, data)
        summary.written += 1
        state = "written"
    for other in FORMATS:
        sibling = join(audio_uri, f"{plan.track_id}.{other}")
        if other != plan.ext and sibling in existing:
            storage.delete(sibling)
            log.info("demo catalogue: removed %s (now .%s)", sibling, plan.ext)
    summary.cache_hits += hit
    summary.tracks += 1
    summary.total_bytes += len(data)
    summary.per_genre[plan.genre] = summary.per_genre.get(plan.genre, 0) + 1
    if progress:
        progress(f"[{n}/{total}] {plan.track_id}.{plan.ext} {plan.artist} "
                 f"{len(data) / 1e6:.2f} MB {state}{' (cached)' if hit else ''} {secs:.1f}s")


def render_catalogue(storage: Storage, plans: Sequence[TrackPlan], audio_uri: str, labels_uri: str,
                     seconds: float, cache_dir: str | None = None,
                     progress: Callable[[str], None] | None = None, tools: Tools | None = None,
                     workers: int = 1) -> DemoSummary:
    """Render ``plans`` into ``audio_uri`` and write ``labels_uri`` for the tracks that rendered.

    A track that fails (tool error, time or size limit, wrong length, silence) is logged,
    recorded in ``failures`` and left out; the rest of the catalogue is still written. Audio
    already in storage with the same bytes is not rewritten; a copy of the same track in
    another demo format is removed (it would be a second file with the same track_id).
    """
    if not 0 < seconds <= 600:
        raise ConfigError(f"seconds must be in (0, 600], not {seconds:g}")
    audio_uri = normalize_uri(audio_uri)
    summary = DemoSummary(labels_uri=labels_uri)
    if not plans:
        raise ConfigError("demo catalogue: nothing to render (no genre with a recipe, or 0 tracks per genre)")
    tools = tools or find_tools(need_mma=any(p.renderer == "mma" for p in plans))
    cache = _Cache(cache_dir)
    existing: dict[str, int] = {}
    for prefix in sorted({p.track_id.split("/")[0] for p in plans}):
        existing.update(storage.list_files(join(audio_uri, prefix)))
    done: list[TrackPlan] = []

    def render(plan: TrackPlan) -> tuple[bytes | None, bool, RenderError | None, float]:
        started = time.perf_counter()
        try:
            data, hit = _track_bytes(plan, seconds, tools, cache)
            return data, hit, None, time.perf_counter() - started
        except RenderError as exc:
            return None, False, exc, time.perf_counter() - started

    # Renders are external processes (mma, fluidsynth): threads overlap them; results are
    # consumed in plan order, so output and logs stay deterministic.
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        rendered = pool.map(render, plans)
        for n, (plan, (data, hit, exc, secs)) in enumerate(zip(plans, rendered, strict=True), start=1):
            summary.render_seconds += secs
            uri = join(audio_uri, f"{plan.track_id}.{plan.ext}")
            if exc is not None or data is None:
                summary.failures.append(TrackFailure(plan.track_id, str(exc)))
                log.warning("demo catalogue: %s skipped: %s", plan.track_id, exc)
                if progress:
                    progress(f"[{n}/{len(plans)}] {plan.track_id}: FAILED ({exc})")
                continue
            _store_track(storage, summary, existing, audio_uri, uri, plan, data, hit, secs, n, len(plans), progress)
            done.append(plan)
    if not done:
        first = summary.failures[0]
        raise JobError(f"demo catalogue: no track could be rendered ({first.track_id}: {first.reason})")
    text = labels_csv(done, tools).encode()
    if not (storage.exists(labels_uri) and storage.read_bytes(labels_uri) == text):
        storage.write_bytes(labels_uri, text)
    log.info("demo catalogue: %d tracks (%d written, %d unchanged, %d failed), %.1f MB, %.1fs",
             summary.tracks, summary.written, summary.unchanged, len(summary.failures),
             summary.total_bytes / 1e6, summary.render_seconds)
    return summary


def render_demo_catalogue(storage: Storage, audio_uri: str, labels_uri: str, genres: list[str],
                          tracks_per_genre: int, seconds: float, seed: int, cache_dir: str | None = None,
                          progress: Callable[[str], None] | None = None, workers: int = 1) -> DemoSummary:
    """Plan and render a demo catalogue of ``tracks_per_genre`` tracks of ``seconds`` for each
    genre with a recipe (:data:`GENRES`), plus the cover pair (:func:`plan_covers`); other
    genres are reported in ``unsupported_genres``."""
    unsupported = [g for g in genres if recipe_for(g) is None]
    for genre in unsupported:
        log.warning("demo catalogue: no recipe for genre %r (known: %s); skipped", genre, ", ".join(sorted(GENRES)))
    plans = plan_tracks(genres, tracks_per_genre, seed) + plan_covers(genres, seed)
    summary = render_catalogue(storage, plans, audio_uri, labels_uri, seconds, cache_dir, progress, workers=workers)
    summary.unsupported_genres = unsupported
    return summary
