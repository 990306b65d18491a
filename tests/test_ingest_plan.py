"""Ingest's planning on Spark (genrecast.ingest_plan) decides exactly what the pure
``plan_ingest`` decides from the same state, read from real files (local[2] Spark; the audio
files are empty: planning never opens them)."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from genrecast import commit
from genrecast.catalogue import Track, list_tracks, load_labels
from genrecast.dataset import _index_file, manifest_uri, mels_uri, previous_rejects, rejects_uri
from genrecast.errors import ConfigError
from genrecast.ingest import plan_ingest, track_index
from genrecast.ingest_plan import plan_on_spark, write_manifest_parts
from genrecast.manifest import Entry, manifest_table, read_manifest
from genrecast.plan_frames import planning_conf, task_rdd
from genrecast.schema import rejects_table
from genrecast.storage import Storage

from conftest import write_config

KEY, OLD_KEY = "f2", "f1"


def build_state(folder, storage: Storage):  # noqa: ANN201
    """A catalogue and the tables an earlier run left, covering each of plan_ingest's cases."""
    cfg = write_config(folder)
    cfg.genres = ["rock", "jazz"]
    audio = folder / "audio"
    for rel in ("rock/same.wav", "rock/relabelled.wav", "rock/touched.wav", "rock/oldkey.wav", "rock/bad.wav",
                "rock/badchanged.wav", "rock/new.wav", "rock/killed.wav", "jazz/dup.wav", "jazz/dup.mp3",
                "jazz/notes.txt"):  # fmt: skip
        (audio / rel).parent.mkdir(parents=True, exist_ok=True)
        (audio / rel).write_bytes(b"")
    (folder / "labels.csv").write_text(
        "track_id,genre\nrock/same,rock\nrock/relabelled,jazz\nrock/touched,rock\nrock/oldkey,rock\n"
        "rock/new,rock\nrock/killed,rock\nghost/track,rock\nrock/same,ROCK\nrock/bad,polka\n"
    )
    listed = {e.uri: e for e in storage.list_entries(str(audio))}

    def entry(tid: str, sha: str, genre: str | None, key: str = KEY, status: str = "ok", changed: bool = False):
        e = listed[str(audio / f"{tid}.wav")]
        return Entry(tid, e.uri, e.size + changed, e.version, sha, genre, key, status)

    manifest = [
        entry("rock/same", "s-same", "rock"),
        entry("rock/relabelled", "s-rel", "rock"),
        entry("rock/touched", "s-touch", "rock", changed=True),
        entry("rock/oldkey", "s-old", "rock", key=OLD_KEY),
        entry("rock/bad", "s-bad", None, status="rejected"),
        entry("rock/badchanged", "s-bc", None, status="rejected", changed=True),
        Entry("rock/deleted", str(audio / "rock/deleted.wav"), 1, "mtime_ns:1", "s-del", "rock", KEY, "ok"),
    ]
    storage.write_parquet(f"{manifest_uri(cfg)}/part-a.parquet", manifest_table(manifest[:4]))
    storage.write_parquet(f"{manifest_uri(cfg)}/part-b.parquet", manifest_table(manifest[4:]))
    index = {  # two mel parts; "killed" has rows but no manifest row (a run killed between commits)
        "part-1": [("rock/same", "s-same"), ("rock/relabelled", "s-rel"), ("rock/deleted", "s-del")],
        "part-2": [("rock/touched", "s-touch"), ("rock/oldkey", "s-old"), ("rock/killed", "s-k")]
        + [("rock/same", "s-same")],
    }
    for name, rows in index.items():
        cols = list(zip(*rows, strict=True))
        table = pa.table({"track_id": cols[0], "audio_sha256": cols[1], "genre": ["rock"] * len(rows)})
        storage.write_parquet(f"{mels_uri(cfg)}/{name}.parquet", table)
    storage.write_bytes(f"{mels_uri(cfg)}/_table.json", json.dumps({"version": 1, "features_key": KEY}).encode())
    bad = str(audio / "rock/bad.wav")
    bc = str(audio / "rock/badchanged.wav")
    rejects = [
        {"source_uri": bad, "stage": "ingest", "reason": "too short", "audio_sha256": "s-bad", "features_key": KEY},
        {"source_uri": bc, "stage": "ingest", "reason": "too short", "audio_sha256": "s-bc", "features_key": KEY},
    ]
    storage.write_parquet(f"{rejects_uri(cfg, 'ingest')}/ingest-1.parquet", rejects_table(rejects))
    return cfg


def pure_plan(cfg, storage: Storage, full: bool):  # noqa: ANN201
    items = list(list_tracks(storage, cfg.catalogue.audio_uri, cfg.ingest.extensions))
    tracks = [t for t in items if isinstance(t, Track)]
    rows = [row for f in commit.table_files(storage, mels_uri(cfg)) for row in _index_file(f, storage)]
    labels, label_rejects = load_labels(storage, cfg.catalogue.labels_uri, cfg.genres)
    _files, shas, _keys = previous_rejects(storage, rejects_uri(cfg, "ingest"), "ingest-", KEY)
    manifest = read_manifest(storage, manifest_uri(cfg))
    plan = plan_ingest(tracks, labels, track_index(rows), manifest, shas, KEY, KEY, full)
    problems = [i for i in items if not isinstance(i, Track)] + label_rejects
    return plan, problems


@pytest.mark.parametrize("full", [False, True])
def test_spark_plan_equals_the_pure_plan(tmp_path, spark, full):
    storage = Storage()
    cfg = build_state(tmp_path, storage)
    expected, problems = pure_plan(cfg, storage, full)
    run_id = commit.new_run_id()
    frames: list = []
    with planning_conf(spark):
        plan = plan_on_spark(spark, storage, cfg, run_id, KEY, full, False, True, frames)
        tasks = task_rdd(plan.decided, 2).glom().collect()
        kept = plan.decided.filter("kind != 'fetch'").select("track_id").collect()
    assert spark.conf.get("spark.sql.shuffle.partitions") == "4"  # the session's own setting is back
    assert (plan.counts.fetch, plan.counts.skipped_unchanged, plan.counts.skipped_rejected) == (
        len(expected.tasks),
        expected.skipped_unchanged,
        expected.skipped_rejected,
    )
    assert [t for part in tasks for t in part] == expected.tasks  # same tasks, in spread order
    assert sorted(r.track_id for r in kept) == sorted(m.track_id for m in expected.kept)
    assert (plan.known, plan.gone, plan.counts.listed) == (6, 1, 9)
    if not full:  # the cases are all there
        assert {t.track_id: t.skip_sha for t in expected.tasks} == {
            "jazz/dup": None, "rock/relabelled": None, "rock/touched": "s-touch", "rock/oldkey": None,
            "rock/badchanged": None, "rock/new": None, "rock/killed": "s-k",
        }  # fmt: skip
        assert sorted(m.track_id for m in expected.kept) == ["rock/bad", "rock/same"]
    ghost = {
        "source_uri": f"{cfg.catalogue.labels_uri}#track_id=ghost/track",
        "stage": "labels",
        "reason": f"labels.csv names track 'ghost/track', which is not in {cfg.catalogue.audio_uri}",
    }
    key = lambda r: (r["source_uri"], r["reason"])  # noqa: E731
    assert sorted(plan.rejects, key=key) == sorted([*problems, ghost], key=key)

    # The next manifest, written by executors: the kept rows as they were, plus the outcomes.
    outcome = {t.track_id: (f"new-{t.track_id}", "ok") for t in expected.tasks}
    parts, n_rows = write_manifest_parts(spark, storage, plan.decided, outcome, KEY, str(tmp_path / "next"))
    written = {}
    for f in parts:
        written.update({r["track_id"]: r for r in storage.read_parquet(f).to_pylist()})
    old = read_manifest(storage, manifest_uri(cfg))
    assert n_rows == len(written) == len(expected.kept) + len(outcome)
    for m in expected.kept:
        assert Entry(**written[m.track_id]) == old[m.track_id]  # updated_at included
    for t in expected.tasks:
        assert (written[t.track_id]["sha256"], written[t.track_id]["genre"]) == (f"new-{t.track_id}", t.genre)
    for frame in frames:
        frame.unpersist()


def test_spark_plan_refuses_a_mass_delete(tmp_path, spark):
    storage = Storage()
    cfg = build_state(tmp_path, storage)
    cfg.catalogue.max_delete_share = 0.1  # 1 of the 6 tracks in the dataset is gone: 17 %
    with planning_conf(spark), pytest.raises(ConfigError, match="1 of the 6 tracks"):
        plan_on_spark(spark, storage, cfg, commit.new_run_id(), KEY, False, False, False, [])
