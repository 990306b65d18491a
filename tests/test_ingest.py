"""The ingest job for real: local[2] Spark, Petastorm write and read, every bad input."""

from __future__ import annotations

import collections

import numpy as np
import pandas as pd
import pytest

from genrecast import commit
from genrecast.dataset import make_mel_reader, mels_uri, rejects_uri
from genrecast.errors import ConfigError, JobError
from genrecast.ingest import run_ingest
from genrecast.lease import TableBusy
from genrecast.storage import Storage

from conftest import killed_mid_commit, run_while_staging, tone, write_audio, write_config

LABELS = """track_id,genre,artist
rock/r1,rock,band-a
rock/r2,rock,band-b
jazz/j1,jazz,trio-a
jazz/j2,Jazz,trio-b
jazz/j3,jazz,trio-c
ghost/none,rock,nobody
odd/eight_bit,polka,x
"""

GOOD = {  # track_id: expected clips
    "rock/r1": 2,
    "rock/r2": 2,
    "jazz/j1": 2,
    "jazz/j2": 2,
    "jazz/j3": 2,
    "odd/eight_bit": 2,
    "odd/48k": 2,
    "odd/stereo": 2,
    "odd/six_channels": 2,
    "long/ten_minutes": 199,
}
BAD = {  # file: reason fragment
    "bad/empty.mp3": "empty file",
    "bad/truncated.wav": "truncated",
    "bad/text.mp3": "undecodable",
    "bad/silent.wav": "silent",
    "bad/short.wav": "too short",
    "bad/notes.xyz": "unsupported extension",
}


def build_catalogue(root):
    a = root / "audio"
    write_audio(a / "rock/r1.wav", tone(4, freq=220))
    write_audio(a / "rock/r2.mp3", tone(4, freq=247))
    write_audio(a / "jazz/j1.flac", tone(4, freq=440))
    write_audio(a / "jazz/j2.ogg", tone(4, freq=494))
    write_audio(a / "jazz/j3.m4a", tone(4, freq=523))
    write_audio(a / "odd/eight_bit.wav", tone(4, freq=300), subtype="PCM_U8")
    write_audio(a / "odd/48k.wav", tone(4, sr=48000, freq=300), sr=48000)
    write_audio(a / "odd/stereo.flac", tone(4, freq=300, channels=2))
    write_audio(a / "odd/six_channels.wav", tone(4, freq=100, channels=6, amp=0.15))
    write_audio(a / "long/ten_minutes.wav", tone(600, sr=8000, freq=200), sr=8000, subtype="PCM_U8")
    (a / "bad").mkdir()
    (a / "bad/empty.mp3").write_bytes(b"")
    full = write_audio(root / "full.wav", tone(10)).read_bytes()
    (a / "bad/truncated.wav").write_bytes(full[: len(full) // 2])
    (a / "bad/text.mp3").write_text("this is a text file, not an mp3\n" * 20)
    write_audio(a / "bad/silent.wav", np.zeros((22050 * 5, 1), np.float32))
    write_audio(a / "bad/short.wav", tone(2))
    (a / "bad/notes.xyz").write_text("?")
    (root / "labels.csv").write_text(LABELS)


def dataset_frame(cfg) -> pd.DataFrame:
    s = Storage()
    files = commit.table_files(s, mels_uri(cfg))
    return pd.concat([s.read_parquet(f).to_pandas() for f in files], ignore_index=True) if files else pd.DataFrame()


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, spark):
    root = tmp_path_factory.mktemp("cat")
    build_catalogue(root)
    cfg = write_config(root)
    return cfg, run_ingest(cfg, spark)


def test_counts_and_reasons(ingested):
    cfg, summary = ingested
    assert summary.tracks_listed == len(GOOD) + len(BAD) - 1  # notes.xyz is no track
    assert summary.tracks_ok == len(GOOD)
    assert summary.clips == sum(GOOD.values())
    assert dict(summary.rejected) == {"ingest": 5, "catalogue": 1, "labels": 2}
    rejects = pd.read_parquet(rejects_uri(cfg))
    assert list(rejects.columns[:4]) == ["source_uri", "stage", "reason", "at"]
    by_file = {r.source_uri.split("/audio/")[-1]: r.reason for r in rejects.itertuples() if "/audio/" in r.source_uri}
    for name, fragment in BAD.items():
        assert fragment in by_file[name], (name, by_file.get(name))
    label_reasons = " | ".join(rejects[rejects.stage == "labels"].reason)
    assert "'ghost/none', which is not in" in label_reasons
    assert "genre 'polka' of track 'odd/eight_bit' is not in the configured genres" in label_reasons


def test_petastorm_make_reader_reads_every_clip(ingested):
    cfg, _ = ingested
    seen = collections.Counter()
    genres = {}
    with make_mel_reader(cfg, num_epochs=1, workers_count=2, shuffle_row_groups=False) as reader:
        for row in reader:
            assert row.mel.shape == (128, 130) and row.mel.dtype == np.float32
            assert -100.01 <= row.mel.min() and row.mel.max() < 80
            assert len(row.audio_sha256) == 64 and row.source_uri.startswith(cfg.catalogue.audio_uri)
            seen[row.track_id] += 1
            genres[row.track_id] = row.genre
    assert dict(seen) == GOOD
    assert genres["jazz/j2"] == "jazz"  # label "Jazz" matched to the configured spelling
    # Its label was rejected; the track stays, unlabelled. petastorm's reader yields a null
    # string as None or as 'None' depending on what else shares the row group.
    assert genres["odd/eight_bit"] in (None, "None")


def test_clip_indices_are_complete_and_unique(ingested):
    df = dataset_frame(ingested[0])
    assert not df.duplicated(["track_id", "clip_index"]).any()
    assert df[df.track_id.str.startswith("odd/")].genre.isna().all()  # stored as a real null
    for track_id, group in df.groupby("track_id"):
        assert sorted(group.clip_index) == list(range(GOOD[track_id]))


def test_tensorflow_reads_the_dataset(ingested):
    from petastorm.tf_utils import make_petastorm_dataset

    cfg, _ = ingested
    with make_mel_reader(cfg, num_epochs=1, schema_fields=["track_id", "mel"], workers_count=1) as reader:
        ds = make_petastorm_dataset(reader).batch(16)
        shapes = [tuple(batch.mel.shape) for batch in ds]
    assert shapes[0] == (16, 128, 130)
    assert sum(s[0] for s in shapes) == sum(GOOD.values())


def test_incremental_rerun_adds_nothing(ingested, spark):
    cfg, _ = ingested
    s = Storage()
    before = sorted(commit.table_files(s, mels_uri(cfg)))
    rejects_before = len(pd.read_parquet(rejects_uri(cfg)))
    again = run_ingest(cfg, spark)
    assert again.tracks_ok == 0 and again.clips == 0
    assert again.skipped_unchanged == len(GOOD)
    assert again.skipped_rejected == 5  # unchanged bad files are not decoded again
    assert sorted(commit.table_files(s, mels_uri(cfg))) == before
    assert len(pd.read_parquet(rejects_uri(cfg))) == rejects_before


def _small_catalogue(tmp_path):
    for i, ext in enumerate(["wav", "flac", "mp3", "ogg"]):
        write_audio(tmp_path / "audio" / f"g/t{i}.{ext}", tone(4, freq=200 + 50 * i))
    (tmp_path / "labels.csv").write_text("track_id,genre\ng/t0,rock\ng/t1,rock\ng/t2,jazz\ng/t3,jazz\n")
    return write_config(tmp_path)


def test_changed_audio_and_labels_replace_old_rows(tmp_path, spark):
    cfg = _small_catalogue(tmp_path)
    first = run_ingest(cfg, spark)
    assert first.tracks_ok == 4
    old_sha = dataset_frame(cfg).set_index("track_id").audio_sha256.to_dict()
    write_audio(tmp_path / "audio/g/t0.wav", tone(7, freq=900))  # new audio: 3 clips now
    (tmp_path / "labels.csv").write_text("track_id,genre\ng/t0,rock\ng/t1,jazz\ng/t2,jazz\ng/t3,jazz\ng/t4,rock\n")
    write_audio(tmp_path / "audio/g/t4.wav", tone(4, freq=700))  # a new track
    second = run_ingest(cfg, spark)
    assert (second.tracks_ok, second.skipped_unchanged) == (3, 2)
    df = dataset_frame(cfg)
    assert not df.duplicated(["track_id", "clip_index"]).any()
    per_track = df.groupby("track_id").agg(
        n=("clip_index", "size"), genre=("genre", "first"), sha=("audio_sha256", "first")
    )
    assert per_track.n.to_dict() == {"g/t0": 3, "g/t1": 2, "g/t2": 2, "g/t3": 2, "g/t4": 2}
    assert per_track.genre["g/t1"] == "jazz"
    assert per_track.sha["g/t0"] != old_sha["g/t0"] and per_track.sha["g/t2"] == old_sha["g/t2"]
    with make_mel_reader(cfg, num_epochs=1, workers_count=1) as reader:
        assert sum(1 for _ in reader) == 11  # metadata follows the replaced files


def test_full_rebuild_gives_the_same_rows(tmp_path, spark):
    cfg = _small_catalogue(tmp_path)
    run_ingest(cfg, spark)
    before = dataset_frame(cfg).sort_values(["track_id", "clip_index"]).reset_index(drop=True)
    full = run_ingest(cfg, spark, full=True)
    assert full.tracks_ok == 4
    after = dataset_frame(cfg).sort_values(["track_id", "clip_index"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(before, after)


def test_run_killed_mid_commit_is_completed_by_the_next_run(tmp_path, spark, monkeypatch):
    cfg = _small_catalogue(tmp_path)
    with killed_mid_commit(monkeypatch):
        run_ingest(cfg, spark)
    assert Storage().exists(f"{mels_uri(cfg)}/{commit.JOURNAL}")
    rerun = run_ingest(cfg, spark)
    assert rerun.tracks_ok == 0 and rerun.skipped_unchanged == 4  # the journal was rolled forward
    df = dataset_frame(cfg)
    assert len(df) == 8 and not df.duplicated(["track_id", "clip_index"]).any()
    assert not Storage().exists(f"{mels_uri(cfg)}/{commit.JOURNAL}")
    assert not list(Storage().list_files(f"{mels_uri(cfg)}/{commit.TMP}"))


def test_leftovers_of_a_run_killed_before_commit_are_cleaned(tmp_path, spark):
    cfg = _small_catalogue(tmp_path)
    stale = f"{mels_uri(cfg)}/{commit.TMP}/20200101T000000Z-dead00/part-00000.parquet"
    Storage().write_bytes(stale, b"half a file")
    summary = run_ingest(cfg, spark)
    assert summary.tracks_ok == 4
    assert not Storage().exists(stale)
    assert len(dataset_frame(cfg)) == 8


def _twelve_tracks(tmp_path):
    rows = ["track_id,genre"]
    for i in range(12):
        write_audio(tmp_path / "audio" / f"g/t{i:02d}.wav", tone(6, freq=150 + 40 * i))
        rows.append(f"g/t{i:02d},{'rock' if i % 2 else 'jazz'}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    return write_config(tmp_path)


def _assert_complete(cfg, tracks: int, clips_each: int) -> None:
    df = dataset_frame(cfg)
    assert len(df) == tracks * clips_each and not df.duplicated(["track_id", "clip_index"]).any()
    assert df.genre.notna().all()
    with make_mel_reader(cfg, num_epochs=1, workers_count=1, schema_fields=["track_id"]) as reader:
        assert sum(1 for _ in reader) == tracks * clips_each  # metadata matches the files


def test_second_ingest_waits_for_the_first_then_finds_nothing_to_do(tmp_path, spark, caplog):
    cfg = _twelve_tracks(tmp_path)
    cfg.storage.lease.wait_seconds = 300
    caplog.set_level("INFO", logger="genrecast.lease")
    full, incremental = run_while_staging(
        lambda: run_ingest(cfg, spark, full=True), lambda: run_ingest(cfg, spark), mels_uri(cfg)
    )
    assert full.tracks_ok == 12, full
    assert (incremental.tracks_ok, incremental.skipped_unchanged) == (0, 12), incremental
    assert any("waiting up to 300s" in r.getMessage() for r in caplog.records)  # they did overlap
    _assert_complete(cfg, 12, 2)


def test_second_ingest_exits_2_naming_the_holder_when_it_will_not_wait(tmp_path, spark):
    cfg = _twelve_tracks(tmp_path)
    cfg.storage.lease.wait_seconds = 0
    full, incremental = run_while_staging(
        lambda: run_ingest(cfg, spark, full=True), lambda: run_ingest(cfg, spark), mels_uri(cfg)
    )
    assert full.tracks_ok == 12, full
    assert isinstance(incremental, TableBusy) and incremental.exit_code == 2
    assert f"{mels_uri(cfg)} is being written by run {full.run_id} (ingest on " in str(incremental)
    _assert_complete(cfg, 12, 2)


def test_missing_labels_file_never_erases_labels(tmp_path, spark):
    cfg = _small_catalogue(tmp_path)
    run_ingest(cfg, spark)
    before = dataset_frame(cfg)
    cfg.catalogue.labels_uri = str(tmp_path / "lables.csv")  # a typo
    with pytest.raises(ConfigError, match=r"lables.csv is missing, but 4 track\(s\) in the dataset are labelled") as e:
        run_ingest(cfg, spark)
    assert e.value.exit_code == 2
    pd.testing.assert_frame_equal(dataset_frame(cfg), before)
    (tmp_path / "lables.csv").write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(ConfigError, match="is unreadable"):
        run_ingest(cfg, spark)
    forced = run_ingest(cfg, spark, labels_missing_ok=True)  # the user said so: now unlabelled
    assert forced.tracks_ok == 4 and dataset_frame(cfg).genre.isna().all()


def test_tampered_petastorm_metadata_is_refused_before_unpickling(tmp_path, spark):
    import hashlib
    import io
    import json
    import pickle

    import pyarrow.parquet as pq

    from genrecast.dataset import METADATA, UNISCHEMA_KEY

    cfg = _small_catalogue(tmp_path)
    run_ingest(cfg, spark)
    meta = f"{mels_uri(cfg)}/{METADATA}"
    original = Storage().read_bytes(meta)
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (eval, (f"__import__('pathlib').Path({str(marker)!r}).touch()",))

    schema = pq.read_metadata(io.BytesIO(original)).schema.to_arrow_schema()
    buf = io.BytesIO()
    pq.write_metadata(schema.with_metadata({**schema.metadata, UNISCHEMA_KEY: pickle.dumps(Payload())}), buf)
    Storage().write_bytes(meta, buf.getvalue())
    with pytest.raises(JobError, match="not the metadata committed with the data"):
        make_mel_reader(cfg)
    # Whoever can also rewrite the recorded hash still cannot run code: the pickle is allowlisted.
    state_uri = f"{mels_uri(cfg)}/{commit.STATE}"
    state = json.loads(Storage().read_bytes(state_uri)) | {
        "metadata_sha256": hashlib.sha256(buf.getvalue()).hexdigest()
    }
    Storage().write_bytes(state_uri, json.dumps(state).encode())
    with pytest.raises(JobError, match="names builtins.eval: refusing"):
        make_mel_reader(cfg)
    assert not marker.exists()
    Storage().write_bytes(meta, original)
    state["metadata_sha256"] = hashlib.sha256(original).hexdigest()
    Storage().write_bytes(state_uri, json.dumps(state).encode())
    with make_mel_reader(cfg, num_epochs=1, workers_count=1, schema_fields=["track_id"]) as reader:
        assert sum(1 for _ in reader) == 8
