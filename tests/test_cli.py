"""The CLI end to end, as a user runs it: a separate process with its own Spark."""

import subprocess
import sys

from genrecast.dataset import make_mel_reader

from conftest import tone, write_audio, write_config


def test_ingest_command_writes_a_readable_dataset(tmp_path):
    write_audio(tmp_path / "audio/rock/a.flac", tone(4, freq=220))
    write_audio(tmp_path / "audio/jazz/b.mp3", tone(4, freq=440))
    (tmp_path / "audio/jazz/c.mp3").write_bytes(b"")
    (tmp_path / "labels.csv").write_text("track_id,genre\nrock/a,rock\njazz/b,jazz\n")
    cfg = write_config(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "genrecast", "ingest", "--conf", str(tmp_path / "conf.yaml")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ok 2 (4 clips" in proc.stdout and "rejected 1 (ingest 1)" in proc.stdout
    assert "rejected " in proc.stderr and "empty file (0 bytes)" in proc.stderr  # the reason is logged
    with make_mel_reader(cfg, num_epochs=1, workers_count=1) as reader:
        assert sorted((r.track_id, r.genre) for r in reader) == [("jazz/b", "jazz")] * 2 + [("rock/a", "rock")] * 2


def test_help_lists_the_commands():
    out = subprocess.run(
        [sys.executable, "-m", "genrecast", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in ("demo-catalogue", "ingest", "train"):
        assert command in out
