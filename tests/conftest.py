"""Shared fixtures: generated audio (never downloaded) and one local[2] Spark session."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from genrecast.config import Config, load_config
from genrecast.storage import FETCH_LOG_ENV, Storage

REPO = Path(__file__).resolve().parents[1]

# soundfile format/subtype per extension; m4a goes through ffmpeg.
FORMATS = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "opus": ("OGG", "OPUS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}


def tone(seconds: float, sr: int = 22050, freq: float = 440.0, channels: int = 1, amp: float = 0.5) -> np.ndarray:
    """(frames, channels) float32 sine; channel k is at freq * (k + 1)."""
    t = np.arange(int(round(seconds * sr))) / sr
    cols = [amp * np.sin(2 * np.pi * freq * (k + 1) * t) for k in range(channels)]
    return np.stack(cols, axis=1).astype(np.float32)


def synthetic_track(kind: str, rng: np.random.Generator, seconds: float = 6.2, sr: int = 22050) -> np.ndarray:
    """(frames, 1) float32 of three clearly separable 'genres' with within-class variation
    (pitch and level jitter): ``low`` a drone with slow pulses, ``high`` a whistle, anything
    else fast broadband noise bursts. Small models learn them in an epoch or two."""
    t = np.arange(int(seconds * sr)) / sr
    jitter = rng.uniform(0.97, 1.03)
    if kind == "low":
        y = sum(0.3 / h * np.sin(2 * np.pi * 110 * jitter * h * t) for h in (1, 2, 3)) * (
            1 + np.sin(2 * np.pi * 1.5 * t)
        )
    elif kind == "high":
        y = 0.4 * np.sin(2 * np.pi * 1760 * jitter * t) + 0.02 * rng.normal(size=t.size)
    else:
        y = 0.5 * rng.normal(size=t.size) * (np.sin(2 * np.pi * 8 * jitter * t) > 0.3)
    return (y * rng.uniform(0.5, 1.0)).astype(np.float32)[:, None]


def write_audio(path: Path, y: np.ndarray, sr: int = 22050, subtype: str | None = None) -> Path:
    """Write samples in the format named by the extension (m4a via ffmpeg)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ext = path.suffix.lstrip(".")
    if ext == "m4a":
        wav = path.with_suffix(".tmp.wav")
        sf.write(wav, y, sr)
        subprocess.run(
            ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(wav), "-c:a", "aac", str(path)], check=True
        )
        wav.unlink()
        return path
    fmt, default_subtype = FORMATS[ext]
    if ext == "opus" and sr not in (8000, 12000, 16000, 24000, 48000):
        raise ValueError("opus needs 8/12/16/24/48 kHz")
    sf.write(path, y, sr, format=fmt, subtype=subtype or default_subtype)
    return path


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # Every object read, by the driver or a Python worker, is logged here (see fetches()); set
    # before the JVM starts, whose environment the workers inherit.
    os.environ[FETCH_LOG_ENV] = str(tmp_path_factory.mktemp("fetches") / "fetches.log")
    # Executors inherit the environment the JVM starts with: give them the throwaway
    # credentials of the loopback S3 server (tests/s3server.py) through the AWS env chain.
    from s3server import CREDENTIALS

    for key, value in CREDENTIALS.items():
        os.environ.setdefault(key, value)
    cfg = Config()
    cfg.spark.conf = {"spark.driver.memory": "2g", "spark.sql.shuffle.partitions": "4"}
    from genrecast.spark import get_spark

    session = get_spark(cfg)
    yield session
    session.stop()


def write_config(folder: Path, extra: str = "") -> Config:
    """A config whose catalogue (audio/, labels.csv) and storage root (out/) live in ``folder``."""
    conf = folder / "conf.yaml"
    conf.write_text(
        f"storage: {{root: {folder / 'out'}}}\n"
        f"catalogue: {{audio_uri: {folder / 'audio'}, labels_uri: {folder / 'labels.csv'}}}\n"
        "ingest: {tracks_per_partition: 3}\n" + extra
    )
    cfg = load_config(conf)
    # A later section in ``extra`` replaces the whole section above (YAML: the last key wins); a
    # `storage:` one would drop the root and send the test's writes to the repo's data/genrecast.
    assert cfg.storage.root.startswith(str(folder)), f"{conf}: storage.root {cfg.storage.root} left the test folder"
    return cfg


TRAINED_GENRES = ["low", "high", "noise"]  # the ``trained`` fixture's labels (see synthetic_track)
TRAINED_PER_GENRE = 6
TRAINED_SOURCES = ("synth-a", "synth-b", "")  # the ``trained`` fixture's labels.csv sources ("": unknown)


def write_labelled_catalogue(
    folder: Path,
    rng: np.random.Generator,
    per_genre: int,
    seconds: float = 6.2,
    artists: int | None = None,
    sources: tuple[str, ...] = (),
) -> None:
    """``per_genre`` synthetic wav tracks of each of TRAINED_GENRES under ``folder/audio`` (track
    ids ``<genre>/<genre><i:02d>``) and ``folder/labels.csv``; with ``artists``, an artist column
    ``<genre>-artist<i % artists>``; with ``sources``, a source column ``sources[i % len(sources)]``."""
    rows = ["track_id,genre" + (",artist" if artists else "") + (",source" if sources else "")]
    for kind in TRAINED_GENRES:
        for i in range(per_genre):
            track_id = f"{kind}/{kind}{i:02d}"
            write_audio(folder / "audio" / f"{track_id}.wav", synthetic_track(kind, rng, seconds=seconds))
            rows.append(
                f"{track_id},{kind}"
                + (f",{kind}-artist{i % artists}" if artists else "")
                + (f",{sources[i % len(sources)]}" if sources else "")
            )
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="session")
def trained(tmp_path_factory, spark):
    """(folder, config, model_id): 18 labelled 4.5 s tracks (TRAINED_SOURCES in turn) + one bad
    file, a 2-epoch model.
    Once per session: test_score and test_timeline share it (copy what a test changes)."""
    from genrecast.ingest import run_ingest
    from genrecast.train import run_train

    root = tmp_path_factory.mktemp("score")
    write_labelled_catalogue(root, np.random.default_rng(1), TRAINED_PER_GENRE, seconds=4.5, sources=TRAINED_SOURCES)
    (root / "audio/bad").mkdir()
    (root / "audio/bad/text.mp3").write_text("not audio\n" * 50)
    cfg = write_config(root, f"genres: {TRAINED_GENRES}\ntrain: {{epochs: 2, batch_size: 8, workers: 1}}\n")
    assert run_ingest(cfg, spark).tracks_ok == len(TRAINED_GENRES) * TRAINED_PER_GENRE
    return root, cfg, run_train(cfg, spark, workers=1, epochs=2).model_id


@contextlib.contextmanager
def fetch_ops(prefix: str) -> Iterator[list[tuple[str, str, int | None]]]:
    """``with fetch_ops(uri) as got: run_job(...)``; then ``got`` lists ``(op, uri, bytes)`` for
    every storage read below ``prefix`` by any process during the block (op ``read``: a whole
    object, bytes None; ``range``: a range read of ``bytes``), from the log the ``spark``
    fixture turns on."""
    path = Path(os.environ[FETCH_LOG_ENV])
    start = path.stat().st_size if path.exists() else 0
    got: list[tuple[str, str, int | None]] = []
    yield got
    with open(path) if path.exists() else contextlib.nullcontext(None) as fh:
        if fh is not None:
            fh.seek(start)
            for line in fh.read().splitlines():  # "op uri[\tbytes]"
                op, rest = line.split(" ", 1)
                uri, _, nbytes = rest.partition("\t")
                if uri.startswith(prefix.rstrip("/") + "/"):
                    got.append((op, uri, int(nbytes) if nbytes else None))


@contextlib.contextmanager
def fetches(prefix: str) -> Iterator[list[str]]:
    """``with fetches(audio_uri) as got: run_job(...)``; then ``got`` lists the URIs below
    ``prefix`` that any process read (``Storage.read_bytes`` / ``read_range``) during the block,
    one entry per read."""
    got: list[str] = []
    with fetch_ops(prefix) as ops:
        yield got
    got.extend(uri for _op, uri, _n in ops)


@contextlib.contextmanager
def killed_mid_commit(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``with killed_mid_commit(monkeypatch): run_job(...)``: the job's second ``Storage.move``
    (a commit half done) raises KeyboardInterrupt - what a kill looks like to the driver - and
    the block expects it. Moves work normally again afterwards."""
    real_move = Storage.move
    moves: list[str] = []

    def dying_move(self: Storage, src: str, dst: str) -> None:
        if len(moves) == 1:
            raise KeyboardInterrupt("killed")
        moves.append(dst)
        real_move(self, src, dst)

    monkeypatch.setattr(Storage, "move", dying_move)
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        monkeypatch.setattr(Storage, "move", real_move)


def run_while_staging(first: Callable[[], Any], second: Callable[[], Any], table_uri: str, timeout: float = 300):
    """Start ``first`` (a job) in a thread; as soon as it has staged a file under
    ``<table_uri>/_tmp`` (it holds the lease and is writing), start ``second`` in another thread.
    Returns both outcomes, each a result or the exception raised. Fails if ``first`` ended
    before it was seen staging (the overlap this helper exists for did not happen)."""
    import threading
    import time

    outcomes: dict[str, Any] = {}

    def run(name: str, fn: Callable[[], Any]) -> None:
        try:
            outcomes[name] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test as the outcome
            outcomes[name] = exc

    storage = Storage()
    a = threading.Thread(target=run, args=("first", first))
    a.start()
    deadline = time.monotonic() + timeout
    while not any(True for _ in storage.list_files(f"{table_uri}/_tmp")):
        assert a.is_alive(), f"first job ended before it staged anything: {outcomes.get('first')!r}"
        assert time.monotonic() < deadline, "first job never staged a file"
        time.sleep(0.02)
    b = threading.Thread(target=run, args=("second", second))
    b.start()
    a.join(timeout)
    b.join(timeout)
    return outcomes["first"], outcomes["second"]


def layers_that_differ(reference, model) -> set[str]:
    """Names of ``reference``'s weighted layers whose weights differ in ``model``'s layer of that name."""
    return {
        layer.name
        for layer in reference.layers
        if layer.weights
        and any(
            not np.array_equal(a, b)
            for a, b in zip(layer.get_weights(), model.get_layer(layer.name).get_weights(), strict=True)
        )
    }
