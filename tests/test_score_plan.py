"""Score's planning on Spark (genrecast.score_plan) decides exactly what the pure ``plan_score``
decides from the same state, read from real files (local[2] Spark; the audio files are empty:
planning never opens them)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from genrecast import commit
from genrecast.catalogue import Track, list_tracks
from genrecast.dataset import manifest_uri, previous_rejects, rejects_uri, scores_uri, timelines_uri
from genrecast.errors import ConfigError
from genrecast.manifest import Entry, manifest_table, read_manifest
from genrecast.plan_frames import planning_conf, stale_files, task_rdd
from genrecast.schema import rejects_table
from genrecast.score import REJECT_PREFIX, plan_score
from genrecast.score_plan import plan_on_spark, table_tracks
from genrecast.storage import Storage

from conftest import write_config

KEY = "f2"
MODEL = "m1"


def build_state(folder, storage: Storage):  # noqa: ANN201
    """A catalogue and the tables earlier runs left, covering each of plan_score's cases."""
    cfg = write_config(folder)
    audio = folder / "audio"
    for rel in ("rock/same.wav", "rock/touched.wav", "rock/bad.wav", "rock/new.wav", "rock/split.wav",
                "rock/noclips.wav", "rock/oldclips.wav", "jazz/dup.wav", "jazz/dup.mp3", "jazz/notes.txt"):  # fmt: skip
        (audio / rel).parent.mkdir(parents=True, exist_ok=True)
        (audio / rel).write_bytes(b"")
    listed = {e.uri: e for e in storage.list_entries(str(audio))}

    def entry(tid: str, sha: str, status: str = "ok", changed: bool = False) -> Entry:
        e = listed[str(audio / f"{tid}.wav")]
        return Entry(tid, e.uri, e.size + changed, e.version, sha, "rock", KEY, status)

    manifest = [
        entry("rock/same", "s-same"),
        entry("rock/touched", "s-touch", changed=True),  # the listing shows another file now
        entry("rock/bad", "s-bad", status="rejected"),
        entry("rock/split", "s-split"),
        entry("rock/noclips", "s-nc"),
        entry("rock/oldclips", "s-oc"),
    ]
    storage.write_parquet(f"{manifest_uri(cfg)}/part-a.parquet", manifest_table(manifest))
    table, tl = scores_uri(cfg, MODEL), timelines_uri(cfg, MODEL)
    scores = {  # "split" has two rows that disagree; "deleted" is gone from the listing
        "part-1": [("rock/same", "s-same"), ("rock/touched", "s-touch"), ("rock/split", "s-split")],
        "part-2": [("rock/split", "s-other"), ("rock/deleted", "s-del"), ("rock/noclips", "s-nc")]
        + [("rock/oldclips", "s-oc")],
    }
    clips = {  # "noclips" has no clip rows, "oldclips" clip rows of other audio
        "part-1": [("rock/same", "s-same"), ("rock/same", "s-same"), ("rock/touched", "s-touch")],
        "part-2": [("rock/split", "s-split"), ("rock/deleted", "s-del"), ("rock/oldclips", "s-old")],
    }
    for uri, files in ((table, scores), (tl, clips)):
        for name, rows in files.items():
            cols = list(zip(*rows, strict=True))
            storage.write_parquet(f"{uri}/{name}.parquet", pa.table({"track_id": cols[0], "audio_sha256": cols[1]}))
    bad = str(audio / "rock/bad.wav")
    rejects = [
        {"source_uri": bad, "stage": "score", "reason": "too short", "audio_sha256": "s-bad", "features_key": KEY}
    ]
    storage.write_parquet(f"{rejects_uri(cfg, 'score', MODEL)}/{REJECT_PREFIX}1.parquet", rejects_table(rejects))
    return cfg


def pure_plan(cfg, storage: Storage, backfill: bool, keep_timeline: bool):  # noqa: ANN201
    """plan_score from driver-side reads of the same state (the index as score built it before
    its planning moved to Spark)."""
    tracks = [t for t in list_tracks(storage, cfg.catalogue.audio_uri, cfg.ingest.extensions) if isinstance(t, Track)]

    def by_track(uri: str) -> dict[str, tuple[set[str], set[str]]]:
        out: dict[str, tuple[set[str], set[str]]] = {}
        for f in commit.table_files(storage, uri):
            t = storage.read_parquet(f)
            for tid, sha in zip(t.column("track_id").to_pylist(), t.column("audio_sha256").to_pylist(), strict=True):
                shas, files = out.setdefault(tid, (set(), set()))
                shas.add(sha)
                files.add(f)
        return out

    scored = by_track(scores_uri(cfg, MODEL))
    clips = by_track(timelines_uri(cfg, MODEL)) if keep_timeline else None
    index = {}
    for tid, (shas, files) in scored.items():
        sha = next(iter(shas)) if len(shas) == 1 else None
        if clips is not None and clips.get(tid, (set(), set()))[0] != {sha}:
            sha = None
        index[tid] = (sha, files)
    _files, rejected, _keys = previous_rejects(storage, rejects_uri(cfg, "score", MODEL), REJECT_PREFIX, KEY)
    manifest = read_manifest(storage, manifest_uri(cfg))
    return plan_score(tracks, index, manifest, rejected, backfill), index


def spark_plan(spark, storage: Storage, cfg, backfill: bool, keep_timeline: bool, frames: list):  # noqa: ANN201
    tl = timelines_uri(cfg, MODEL) if keep_timeline else None
    run_id = commit.new_run_id()
    return plan_on_spark(
        spark, storage, cfg, scores_uri(cfg, MODEL), rejects_uri(cfg, "score", MODEL), tl, run_id, KEY, backfill,
        False, frames,
    )  # fmt: skip


@pytest.mark.parametrize(("backfill", "keep_timeline"), [(False, False), (False, True), (True, True)])
def test_spark_plan_equals_the_pure_plan(tmp_path, spark, backfill, keep_timeline):
    storage = Storage()
    cfg = build_state(tmp_path, storage)
    cfg.catalogue.max_delete_share = 0.5
    expected, index = pure_plan(cfg, storage, backfill, keep_timeline)
    frames: list = []
    with planning_conf(spark):
        plan = spark_plan(spark, storage, cfg, backfill, keep_timeline, frames)
        tasks = task_rdd(plan.decided, 2).glom().collect()
    assert spark.conf.get("spark.sql.shuffle.partitions") == "4"  # the session's own setting is back
    assert (plan.counts.fetch, plan.counts.skipped_unchanged, plan.counts.skipped_rejected) == (
        len(expected.tasks),
        expected.skipped_unchanged,
        expected.skipped_rejected,
    )
    assert [t for part in tasks for t in part] == expected.tasks  # same tasks, in spread order
    assert (plan.known, plan.gone, plan.counts.listed) == (6, 1, 8)
    if not backfill:  # the cases are all there
        skips = {t.track_id: t.skip_sha for t in expected.tasks}
        assert skips == {
            "jazz/dup": None, "rock/new": None, "rock/split": None, "rock/touched": "s-touch",
            **({"rock/noclips": None, "rock/oldclips": None} if keep_timeline else {}),
        }  # fmt: skip
        assert [t.rejected_sha for t in expected.tasks if t.track_id == "rock/touched"] == [None]

        # After the run: the files holding rows to drop (replaced or gone), the table's size.
        written, rejected = ["rock/touched", "rock/new"], ["rock/split"]
        stale = stale_files(spark, plan.index, plan.listing, written + rejected)
        want: dict[str, set[str]] = {}
        for tid in ["rock/deleted", *written, *rejected]:
            for f in index.get(tid, (None, set()))[1]:
                want.setdefault(f, set()).add(tid)
        assert stale == want
        held = (set(index) - {"rock/deleted", *rejected}) | set(written)
        assert table_tracks(spark, plan, written, rejected) == len(held)
    for frame in frames:
        frame.unpersist()


def test_spark_plan_refuses_a_mass_delete(tmp_path, spark):
    storage = Storage()
    cfg = build_state(tmp_path, storage)
    cfg.catalogue.max_delete_share = 0.1  # 1 of the 6 tracks the table holds is gone: 17 %
    with planning_conf(spark), pytest.raises(ConfigError, match="1 of the 6 tracks"):
        spark_plan(spark, storage, cfg, True, False, [])  # backfill too: it would drop them
