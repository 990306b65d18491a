"""Shared fixtures: generated audio (never downloaded) and one local[2] Spark session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from genrecast.config import Config, load_config

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
def spark():
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
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
    return load_config(conf)
