"""``recommend --mode nightly``: after tracks are added, changed and deleted, the updated
neighbours table equals a full recompute (exact search), only the buckets that change are
rewritten, and too many changes fall back to a full run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest
from test_recommend import DIM, clusters, publish_model, read_table, write_scores

from genrecast import commit, recommend
from genrecast.dataset import neighbours_uri
from genrecast.neighbours import exact_topk, group_keys, l2_normalise
from genrecast.neighbours_table import catalogue_exclusions, part_bucket
from genrecast.recommend import run_recommend
from genrecast.recommend_nightly import find_changes, neighbours_part, update_bucket
from genrecast.storage import Storage

from conftest import write_config

K = 3


def _exact_lists(x: np.ndarray, shas: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    keys = group_keys(shas)
    rows = np.arange(len(x))
    return exact_topk(x, x, k, catalogue_exclusions(rows, keys))


@pytest.mark.parametrize("seed", range(6))
def test_update_bucket_equals_exact_search_on_the_new_catalogue(seed):
    """Pure: random catalogues, random adds / embedding changes / sha changes / deletes."""
    rng = np.random.default_rng(seed)
    n, k = 150, 4
    ids = np.asarray([f"t{i:04d}" for i in range(n)], dtype=object)
    x = l2_normalise(rng.normal(size=(n, 16)))
    shas = [f"s{i}" for i in range(n)]
    for i in rng.choice(n, 6, replace=False):  # a few duplicate pairs
        j = int(rng.integers(n))
        shas[i] = shas[j]
    old_idx, old_sim = _exact_lists(x, shas, k)
    old = neighbours_part(np.arange(n), old_idx, old_sim, pa.array(ids.tolist()), "m")

    keep = np.sort(rng.choice(n, n - 5, replace=False))  # 5 deleted
    new_ids = [f"t{i:04d}" for i in keep] + [f"t{n + i:04d}" for i in range(7)]  # 7 new
    new_x = np.vstack([x[keep], l2_normalise(rng.normal(size=(7, 16)))])
    new_shas = [shas[i] for i in keep] + [f"s{n + i}" for i in range(7)]
    new_shas[-1] = new_shas[3]  # a new duplicate of a kept track
    moved = rng.choice(len(keep), 4, replace=False)  # 4 kept tracks re-scored: new embeddings
    new_x[moved] = l2_normalise(new_x[moved] + rng.normal(size=(4, 16)))
    new_shas[int(moved[0])] = new_shas[int(moved[1])]  # ...one now the same audio as another
    order = np.argsort(np.asarray(new_ids, dtype=object), kind="stable")
    new_ids_arr = np.asarray(new_ids, dtype=object)[order]
    new_ids_pa = pa.array(new_ids_arr.tolist())  # as the executors map it
    new_x, new_shas = new_x[order], [new_shas[i] for i in order]
    versions_old = {f"t{i:04d}": 0 for i in range(n)}
    versions = np.zeros(len(new_ids_arr), np.int64)
    versions[np.isin(new_ids_arr, [new_ids[i] for i in moved])] = 1
    changes = find_changes(versions_old, list(new_ids_arr), versions)
    assert len(changes.changed_rows) == 11 and len(changes.deleted) == 5

    rows = np.arange(len(new_ids_arr))
    keys = group_keys(new_shas)
    out = update_bucket(old, rows, new_x, keys, new_ids_pa, changes.changed_rows, k, block_elements=37 * 160)
    assert out is not None
    idx, sim, counts = out
    want_idx, want_sim = _exact_lists(new_x, new_shas, k)
    assert (idx == want_idx).all()
    assert np.allclose(sim, want_sim, atol=1e-6, equal_nan=True)
    assert counts["dropped"] == 5 and counts["recomputed"] < len(rows) // 2  # most lists were kept
    # the same catalogue again: nothing changes
    same = neighbours_part(rows, idx, sim, new_ids_pa, "m")
    none = np.zeros(0, np.int64)
    assert update_bucket(same, rows, new_x, keys, new_ids_pa, none, k) is None


def _parts(cfg, model_id: str) -> set[str]:
    return {f.rsplit("/", 1)[-1] for f in commit.table_files(Storage(), neighbours_uri(cfg, model_id))}


def _by_bucket(rows: list[dict], buckets: int) -> dict[int, dict[tuple, float]]:
    """{bucket: {(track, rank, neighbour): similarity}}."""
    from genrecast.neighbours_table import bucket_of

    out: dict[int, dict[tuple, float]] = {}
    for r in rows:
        key = (r["track_id"], r["rank"], r["neighbour_id"])
        out.setdefault(bucket_of(r["track_id"], buckets), {})[key] = r["similarity"]
    return out


def _differ(a: dict[tuple, float], b: dict[tuple, float]) -> bool:
    """Another neighbour or rank, or a similarity changed by more than float32 noise (a full
    recompute's matrix products can differ from the first run's in the last bit)."""
    return a.keys() != b.keys() or any(abs(a[key] - b[key]) > 1e-6 for key in a)


def _key(rows: list[dict]) -> list[tuple]:
    return sorted((r["track_id"], r["rank"], r["neighbour_id"]) for r in rows)


def test_nightly_equals_a_full_recompute_and_rewrites_only_changed_buckets(tmp_path, spark, monkeypatch):
    monkeypatch.setattr(recommend, "QUERIES_PER_PARTITION", 8)  # 120 tracks -> 15 buckets
    cfg = write_config(tmp_path, "recommend: {baseline: false}\n")
    (tmp_path / "labels.csv").write_text("track_id,genre\n")
    publish_model(cfg, "m", ["a", "b"])
    ids = [f"c{i // 10:02d}/t{i % 10}" for i in range(120)]
    emb = clusters(12, 10, noise=0.3, seed=3)
    shas = [f"sha-{t}" for t in ids]
    t0 = datetime(2026, 12, 1, tzinfo=UTC)
    at = [t0] * len(ids)
    write_scores(cfg, "m", ids, emb, shas, ["a"] * len(ids), at)
    first = run_recommend(cfg, spark, model="m", k=K, method="exact", mode="nightly")
    assert first.mode == "full" and first.fallback == "no state from an earlier run"
    buckets = {part_bucket(f)[1] for f in _parts(cfg, "m")}
    assert buckets == {15}
    before_parts, before_rows = _parts(cfg, "m"), read_table(cfg, "m")

    # In cluster 0: one new track, one new copy of t1 (same audio), t2 re-scored with a new
    # embedding, t3 re-scored as a copy of t4's audio, t5 deleted.
    rng = np.random.default_rng(9)
    pos = {t: i for i, t in enumerate(ids)}
    new_ids = [t for t in ids if t != "c00/t5"] + ["c00/new", "c00/dup-of-t1"]
    new_emb = np.vstack(
        [
            emb[[pos[t] for t in ids if t != "c00/t5"]],
            l2_normalise(emb[pos["c00/t0"]] + 0.2 * rng.normal(size=(1, DIM))),
            l2_normalise(emb[pos["c00/t1"]] + 0.01 * rng.normal(size=(1, DIM))),
        ]
    )
    new_emb[new_ids.index("c00/t2")] = l2_normalise(emb[pos["c00/t6"]] + 0.1 * rng.normal(size=(1, DIM)))[0]
    new_shas = [shas[pos[t]] if t in pos else f"sha-{t}" for t in new_ids]
    new_shas[new_ids.index("c00/dup-of-t1")] = "sha-c00/t1"
    new_shas[new_ids.index("c00/t3")] = "sha-c00/t4"
    new_at = [t0 if t in pos and t not in ("c00/t2", "c00/t3") else t0 + timedelta(days=1) for t in new_ids]
    write_scores(cfg, "m", new_ids, new_emb, new_shas, ["a"] * len(new_ids), new_at)

    night = run_recommend(cfg, spark, model="m", k=K, method="exact", mode="nightly")
    assert night.mode == "nightly" and night.fallback is None, night.lines()
    assert (night.changed, night.deleted) == (4, 1) and night.tracks == 121
    assert any("4 new or changed, 1 deleted" in line for line in night.lines())
    night_parts, night_rows = _parts(cfg, "m"), read_table(cfg, "m")
    assert night.rows == len(night_rows) == 121 * K

    run_recommend(cfg, spark, model="m", k=K, method="exact", mode="full")
    full_rows = read_table(cfg, "m")
    assert _key(night_rows) == _key(full_rows)
    sims = {(r["track_id"], r["rank"]): r["similarity"] for r in full_rows}
    assert all(abs(r["similarity"] - sims[(r["track_id"], r["rank"])]) < 1e-6 for r in night_rows)

    # Rewritten: exactly the buckets (of the table's 15) whose rows differ between before and after
    # (a neighbour, or the similarity of a re-scored one).
    old, new = _by_bucket(before_rows, 15), _by_bucket(full_rows, 15)
    differ = {b for b in range(15) if _differ(old.get(b, {}), new.get(b, {}))}
    rewritten = {part_bucket(f)[0] for f in night_parts - before_parts}
    assert rewritten == differ and night.buckets_rewritten == len(differ)
    assert 0 < len(differ) < 15, differ  # a real subset: the others kept their files
    assert {part_bucket(f)[0] for f in before_parts - night_parts} == differ
    assert "c00/t5" not in {r["neighbour_id"] for r in night_rows} | {r["track_id"] for r in night_rows}
    for r in night_rows:  # never self, never the same audio
        assert r["neighbour_id"] != r["track_id"]
        assert new_shas[new_ids.index(r["neighbour_id"])] != new_shas[new_ids.index(r["track_id"])]


def test_nightly_with_nothing_changed_commits_nothing_and_many_changes_run_full(tmp_path, spark):
    cfg = write_config(tmp_path, "recommend: {baseline: false, full_recompute_share: 0.1}\n")
    (tmp_path / "labels.csv").write_text("track_id,genre\n")
    publish_model(cfg, "m", ["a", "b"])
    ids = [f"g/t{i:02d}" for i in range(40)]
    emb = clusters(4, 10, noise=0.3, seed=1)
    at = [datetime(2026, 12, 1, tzinfo=UTC)] * 40
    write_scores(cfg, "m", ids, emb, [f"s{i}" for i in range(40)], ["a"] * 40, at)
    run_recommend(cfg, spark, model="m", k=K, method="exact", mode="full")
    storage, uri = Storage(), neighbours_uri(cfg, "m")
    version = commit.read_state(storage, uri)["version"]
    quiet = run_recommend(cfg, spark, model="m", k=K, mode="nightly")
    assert quiet.mode == "nightly" and (quiet.changed, quiet.deleted, quiet.rows) == (0, 0, 40 * K)
    assert commit.read_state(storage, uri)["version"] == version  # no commit
    # 5 of 40 re-scored: over the 10 % share -> a full recompute, said in the summary
    at[:5] = [datetime(2026, 12, 2, tzinfo=UTC)] * 5
    write_scores(cfg, "m", ids, emb, [f"s{i}" for i in range(40)], ["a"] * 40, at)
    busy = run_recommend(cfg, spark, model="m", k=K, mode="nightly")
    assert busy.mode == "full" and "over recommend.full_recompute_share (0.1)" in busy.fallback
    assert any("full recompute instead of nightly" in line for line in busy.lines())
    # a different k cannot be updated in place either
    assert run_recommend(cfg, spark, model="m", k=K + 1, mode="nightly").fallback == f"k changed ({K} -> {K + 1})"
