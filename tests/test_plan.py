"""The driver's planning step of ingest and score (which listed tracks are fetched), as pure
functions over metadata: no Spark, no storage. The end-to-end runs are in test_manifest.py."""

from __future__ import annotations

from genrecast.catalogue import Label, Track
from genrecast.ingest import plan_ingest, track_index
from genrecast.manifest import Entry
from genrecast.score import plan_score
from genrecast.tasks import spread

KEY, OLD_KEY = "f2-new", "f1-old"


def track(tid: str, version: str = "mtime_ns:1") -> Track:
    return Track(tid, f"/audio/{tid}.wav", 1000, version)


def entry(tid: str, sha: str, genre: str | None = "rock", key: str = KEY, status: str = "ok") -> Entry:
    return Entry(tid, f"/audio/{tid}.wav", 1000, "mtime_ns:1", sha, genre, key, status)


def labels(**genres: str) -> dict[str, Label]:
    return {tid: Label(g, None) for tid, g in genres.items()}


def test_track_index_groups_rows_by_track():
    rows = [("a", "sa", "rock", "p1"), ("b", "sb", None, "p1"), ("a", "sa", "rock", "p2")]
    assert track_index(rows) == {"a": ("sa", "rock", {"p1", "p2"}), "b": ("sb", None, {"p1"})}


def test_unchanged_track_is_kept_without_a_fetch():
    m = entry("a", "sa")
    plan = plan_ingest([track("a")], labels(a="rock"), {"a": ("sa", "rock", {"p1"})}, {"a": m}, {}, KEY, KEY)
    assert plan.tasks == [] and plan.kept == [m]
    assert (plan.skipped_unchanged, plan.skipped_rejected) == (1, 0)


def test_changed_label_is_fetched_with_the_new_genre_and_no_skip():
    # Same bytes, but the held clips carry the old genre: they must be rewritten, not skipped.
    plan = plan_ingest(
        [track("a")], labels(a="jazz"), {"a": ("sa", "rock", {"p1"})}, {"a": entry("a", "sa")}, {}, KEY, KEY
    )
    assert [(t.track_id, t.genre, t.skip_sha) for t in plan.tasks] == [("a", "jazz", None)]
    assert plan.kept == [] and plan.skipped_unchanged == 0


def test_changed_features_key_refetches_and_never_skips_old_rows():
    m = entry("a", "sa", key=OLD_KEY)
    plan = plan_ingest([track("a")], labels(a="rock"), {"a": ("sa", "rock", {"p1"})}, {"a": m}, {}, KEY, OLD_KEY)
    assert [(t.track_id, t.skip_sha, t.rejected_sha) for t in plan.tasks] == [("a", None, None)]
    assert plan.kept == []


def test_previously_rejected_same_listing_is_kept_as_rejected():
    m = entry("bad", "sx", genre=None, status="rejected")
    plan = plan_ingest([track("bad")], {}, {}, {"bad": m}, {"/audio/bad.wav": "sx"}, KEY, KEY)
    assert plan.tasks == [] and plan.kept == [m]
    assert (plan.skipped_unchanged, plan.skipped_rejected) == (0, 1)


def test_rejected_file_whose_listing_changed_is_retried_with_its_rejected_sha():
    m = entry("bad", "sx", genre=None, status="rejected")
    plan = plan_ingest([track("bad", "mtime_ns:2")], {}, {}, {"bad": m}, {"/audio/bad.wav": "sx"}, KEY, KEY)
    assert [(t.track_id, t.skip_sha, t.rejected_sha) for t in plan.tasks] == [("bad", None, "sx")]


def test_touched_file_is_fetched_with_the_held_sha_to_skip():
    plan = plan_ingest(
        [track("a", "mtime_ns:2")],
        labels(a="rock"),
        {"a": ("sa", "rock", {"p1"})},
        {"a": entry("a", "sa")},
        {},
        KEY,
        KEY,
    )
    assert [(t.track_id, t.skip_sha) for t in plan.tasks] == [("a", "sa")]
    assert plan.kept == []


def test_rows_without_a_manifest_row_skip_only_under_the_datasets_key():
    idx = {"a": ("sa", "rock", {"p1"})}
    same = plan_ingest([track("a")], labels(a="rock"), idx, {}, {}, KEY, KEY)
    other = plan_ingest([track("a")], labels(a="rock"), idx, {}, {}, KEY, OLD_KEY)
    assert [t.skip_sha for t in same.tasks] == ["sa"] and [t.skip_sha for t in other.tasks] == [None]


def test_full_run_fetches_everything_with_nothing_to_skip():
    m = entry("a", "sa")
    plan = plan_ingest(
        [track("a"), track("new")],
        labels(a="rock"),
        {"a": ("sa", "rock", {"p1"})},
        {"a": m},
        {"/audio/new.wav": "sn"},
        KEY,
        KEY,
        full=True,
    )
    assert sorted((t.track_id, t.skip_sha, t.rejected_sha) for t in plan.tasks) == [
        ("a", None, None),
        ("new", None, None),
    ]


def test_tasks_come_in_spread_order():
    tracks = [track(f"g{i % 3}/t{i:03d}") for i in range(60)]
    plan = plan_ingest(tracks, {}, {}, {}, {}, KEY, None)
    assert [t.track_id for t in plan.tasks] == [t.track_id for t in spread(plan.tasks)]
    assert [t.track_id for t in plan.tasks] != sorted(t.track_id for t in plan.tasks)


def test_score_plan_skips_only_what_the_manifest_vouches_for():
    tracks = [track("same"), track("touched", "mtime_ns:2"), track("bad"), track("new")]
    manifest = {"same": entry("same", "s1"), "touched": entry("touched", "s2"), "bad": entry("bad", "s3")}
    index = {"same": ("s1", {"p1"}), "touched": ("s2", {"p1"})}
    plan = plan_score(tracks, index, manifest, {"/audio/bad.wav": "s3"})
    assert (plan.skipped_unchanged, plan.skipped_rejected) == (1, 1)
    assert sorted((t.track_id, t.skip_sha) for t in plan.tasks) == [("new", None), ("touched", "s2")]
    backfill = plan_score(tracks, index, manifest, {"/audio/bad.wav": "s3"}, backfill=True)
    assert sorted((t.track_id, t.skip_sha, t.rejected_sha) for t in backfill.tasks) == [
        (t.track_id, None, None) for t in sorted(tracks, key=lambda t: t.track_id)
    ]
