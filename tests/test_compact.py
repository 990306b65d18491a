"""Compaction for real: small appends by real ingest runs, merged on local[2] Spark executors."""

from __future__ import annotations

import collections
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genrecast import commit
from genrecast.compact import group_key, plan, run_compact
from genrecast.config import load_config
from genrecast.dataset import check_mel_metadata, make_mel_reader, mel_rows_per_group, mels_uri, metadata_row_groups
from genrecast.ingest import run_ingest
from genrecast.lease import TableBusy, TableLease
from genrecast.storage import Storage

from conftest import killed_mid_commit, tone, write_audio, write_config

APPENDS = 4  # ingest runs, each adding one track (one file)


def test_plan_bins_small_files_by_kind_up_to_the_target():
    mb = 2**20
    files = [
        (f"/t/part-r1-{i:05d}-of-00002.parquet", 10 * mb)
        for i in range(2)  # neighbours buckets 0 and 1
    ] + [
        ("/t/part-r2-00000-of-00002.parquet", 10 * mb),
        ("/t/part-r2-00001-of-00002.parquet", 10 * mb),
        ("/t/part-r3-00000.parquet", 30 * mb),
        ("/t/part-r4-00000.parquet", 30 * mb),
        ("/t/part-r5-00000.parquet", 30 * mb),
        ("/t/part-r6-00000.parquet", 200 * mb),  # over the target: left alone
        ("/t/ingest-r1.parquet", 1 * mb),
        ("/t/ingest-r2.parquet", 1 * mb),
        ("/t/score-r1.parquet", 1 * mb),  # alone of its kind: not merged
    ]
    groups = plan(files, 64 * mb, min_files=4)
    assert sorted(groups) == sorted(
        [
            ["/t/ingest-r1.parquet", "/t/ingest-r2.parquet"],
            ["/t/part-r3-00000.parquet", "/t/part-r4-00000.parquet"],  # 60 MB; the third would pass 64
            ["/t/part-r1-00000-of-00002.parquet", "/t/part-r2-00000-of-00002.parquet"],
            ["/t/part-r1-00001-of-00002.parquet", "/t/part-r2-00001-of-00002.parquet"],
        ]
    )
    assert plan(files[:3], 64 * mb, min_files=4) == []  # under the threshold
    assert group_key("part-r-c00001-00003-of-00008.parquet") == ("part", "-00003-of-00008")  # stays in its bucket


def _appended(tmp_path, spark, extra: str = "", appends: int = APPENDS):
    """A mel dataset built by ``appends`` ingest runs of one new 12.5 s track each."""
    cfg = write_config(
        tmp_path, "ingest: {tracks_per_partition: 3, row_group_size_mb: 1}\ncompact: {min_files: 3}\n" + extra
    )
    (tmp_path / "labels.csv").write_text("track_id,genre\n")
    for i in range(appends):
        write_audio(tmp_path / "audio" / f"g/t{i}.wav", tone(12.5, freq=200 + 50 * i))
        assert run_ingest(cfg, spark).tracks_ok == 1
    return cfg


def _rows(cfg) -> pa.Table:
    """Every row of the committed files, in a fixed order (read file by file)."""
    storage = Storage()
    table = pa.concat_tables(storage.read_parquet(f) for f in commit.snapshot(storage, mels_uri(cfg)))
    return table.sort_by([("track_id", "ascending"), ("clip_index", "ascending")])


def test_compaction_keeps_every_row_once_in_fewer_files(tmp_path, spark):
    cfg = _appended(tmp_path, spark)
    uri = mels_uri(cfg)
    before, files_before = _rows(cfg), commit.table_files(Storage(), uri)
    per_group = mel_rows_per_group(cfg.audio, cfg.ingest)
    assert len(files_before) == APPENDS and before.num_rows > per_group  # so the merged file needs 2+ row groups

    summary = run_compact(cfg, spark, table="mels")
    (result,) = summary.tables
    assert (result.files_before, result.files_after, result.merged, result.written) == (APPENDS, 1, APPENDS, 1)
    files = commit.table_files(Storage(), uri)
    assert len(files) == 1 and not set(files) & set(files_before)
    after = _rows(cfg)
    assert after.equals(before)  # every column, mels included, exactly
    keys = list(zip(after.column("track_id").to_pylist(), after.column("clip_index").to_pylist(), strict=True))
    assert len(keys) == len(set(keys))

    footer = pq.read_metadata(files[0])  # ingest's row-group size kept, and Petastorm metadata follows
    assert footer.num_row_groups == math.ceil(before.num_rows / per_group)
    meta = Storage().read_bytes(f"{uri}/_common_metadata")
    assert metadata_row_groups(meta) == {files[0][len(uri) + 1 :]: footer.num_row_groups}
    check_mel_metadata(Storage(), cfg)
    with make_mel_reader(cfg, num_epochs=1, workers_count=1, schema_fields=["track_id", "clip_index"]) as reader:
        read = sorted((r.track_id, r.clip_index) for r in reader)
    assert read == sorted(keys)

    again = run_compact(cfg, spark, table="mels").tables[0]  # one file: under min_files, nothing to do
    assert again.merged == 0 and "nothing to merge" in again.note
    assert run_ingest(cfg, spark).skipped_unchanged == APPENDS  # the index still finds every track


def test_compaction_killed_mid_commit_is_completed_by_the_next_run(tmp_path, spark, monkeypatch):
    cfg = _appended(tmp_path, spark)
    uri = mels_uri(cfg)
    before = _rows(cfg)
    with killed_mid_commit(monkeypatch):  # merged file moved in, metadata not yet: the journal remains
        run_compact(cfg, spark, table="mels")
    assert Storage().exists(f"{uri}/{commit.JOURNAL}")
    result = run_compact(cfg, spark, table="mels").tables[0]
    assert result.files_before == 1 and result.merged == 0  # rolled forward, then nothing left to merge
    assert not Storage().exists(f"{uri}/{commit.JOURNAL}")
    assert _rows(cfg).equals(before)
    check_mel_metadata(Storage(), cfg)  # the metadata committed with the merged file


def test_compaction_of_a_table_another_run_writes_exits_2(tmp_path, spark):
    cfg = _appended(tmp_path, spark, appends=1)
    # Set here, not as YAML: a second `storage:` section would replace the one holding the root.
    cfg.storage.lease.wait_seconds, cfg.storage.lease.poll_seconds = 0.3, 0.1
    with TableLease(Storage(), mels_uri(cfg), "20260101T000000Z-other0", "ingest", wait_seconds=0):
        with pytest.raises(TableBusy, match="being written by run 20260101T000000Z-other0") as busy:
            run_compact(cfg, spark, table="mels")
    assert busy.value.exit_code == 2
    assert len(commit.table_files(Storage(), mels_uri(cfg))) == 1  # untouched


@pytest.mark.s3
def test_compaction_on_s3_keeps_every_clip_in_one_file(tmp_path, spark):
    from s3server import SeaweedS3

    server = SeaweedS3(tmp_path / "weed").start()  # a free loopback port; credentials: the spark fixture's env
    try:
        server.client().create_bucket(Bucket="compact")
        write_config(tmp_path)
        cfg = load_config(
            tmp_path / "conf.yaml",
            environ={
                "GENRECAST__STORAGE__ROOT": "s3://compact/root",
                "GENRECAST__STORAGE__S3__ENDPOINT_URL": server.endpoint_url,
                "GENRECAST__INGEST__TRACKS_PER_PARTITION": "1",  # one file per track
                "GENRECAST__COMPACT__MIN_FILES": "2",
            },
        )
        (tmp_path / "labels.csv").write_text("track_id,genre\n")
        for i in range(3):
            write_audio(tmp_path / "audio" / f"g/t{i}.wav", tone(4, freq=300 + 100 * i))
        assert run_ingest(cfg, spark).tracks_ok == 3
        storage = Storage.from_config(cfg)
        before = len(commit.table_files(storage, mels_uri(cfg)))
        result = run_compact(cfg, spark, table="mels").tables[0]
        assert before >= 2 and (result.files_before, result.files_after, result.merged) == (before, 1, before)
        assert len(commit.table_files(storage, mels_uri(cfg))) == 1
        with make_mel_reader(cfg, num_epochs=1, workers_count=1, schema_fields=["track_id", "clip_index"]) as reader:
            keys = collections.Counter((row.track_id, row.clip_index) for row in reader)
        assert len(keys) == 6 and set(keys.values()) == {1}  # every clip once (two per 4 s track)
        assert run_ingest(cfg, spark).skipped_unchanged == 3
    finally:
        server.stop()
