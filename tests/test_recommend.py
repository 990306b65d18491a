"""Recommend: exact and ANN neighbours over a scores table, the neighbours table and its report,
genre precision@k with the artist filter, and the ``similar`` look-ups (stored and cold start)."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest

from genrecast import commit, registry
from genrecast.dataset import neighbours_uri, scores_uri
from genrecast.errors import JobError
from genrecast.ingest import run_ingest
from genrecast.neighbours import Exclusion, build_index, exact_topk, l2_normalise
from genrecast.neighbours_table import report_uri
from genrecast.recommend import run_recommend
from genrecast.recommend_quality import genre_precision
from genrecast.search_files import shipped
from genrecast.similar import format_similar, similar_for_audio, similar_for_track
from genrecast.storage import Storage, join
from genrecast.train import run_train

from conftest import fetches, run_while_staging, synthetic_track, write_audio, write_config

DIM = 128


def publish_model(cfg, model_id: str, genres: list[str]) -> None:
    """A registry entry with just the model.json keys recommend reads (no weights needed)."""
    registry.publish(cfg, model_id, {"model_id": model_id, "genres": genres, "split": {"tracks": {}}})


def write_scores(
    cfg,
    model_id: str,
    ids: list[str],
    emb: np.ndarray,
    shas: list[str],
    genres: list[str],
    scored_at: list[datetime] | None = None,
) -> None:
    """A scores table with the contract columns, spread over two files like a real run
    (``scored_at``: per track, default now)."""
    storage = Storage()
    n = len(ids)
    when = scored_at or [datetime.now(UTC)] * n
    for part, rows in enumerate(np.array_split(np.arange(n), 2)):
        table = pa.table(
            {
                "track_id": pa.array([ids[i] for i in rows], pa.string()),
                "model_id": pa.array([model_id] * len(rows), pa.string()),
                "genre": pa.array([genres[i] for i in rows], pa.string()),
                "confidence": pa.array(np.full(len(rows), 0.9), pa.float32()),
                "probabilities": pa.array([[0.9, 0.1]] * len(rows), pa.list_(pa.float32())),
                "embedding": pa.array([emb[i].tolist() for i in rows], pa.list_(pa.float32())),
                "n_clips": pa.array(np.full(len(rows), 3), pa.int32()),
                "audio_sha256": pa.array([shas[i] for i in rows], pa.string()),
                "scored_at": pa.array([when[i] for i in rows], pa.timestamp("us", tz="UTC")),
            }
        )
        storage.write_parquet(join(scores_uri(cfg, model_id), f"part-{part:05d}.parquet"), table)


def clusters(n_clusters: int, per: int, noise: float, seed: int = 0) -> np.ndarray:
    """(n_clusters * per, DIM) unit vectors around random centres; row i is in cluster i // per."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, DIM))
    return l2_normalise(np.repeat(centres, per, axis=0) + noise * rng.normal(size=(n_clusters * per, DIM)))


def read_table(cfg, model_id: str) -> list[dict]:
    storage = Storage()
    files = commit.table_files(storage, neighbours_uri(cfg, model_id))
    return [r for f in files for r in storage.read_parquet(f).to_pylist()]


# -- pure functions ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "block_elements"),
    [(50, 7 * 50), (50, 1 << 24), (6000, 1 << 24)],  # several blocks; one block; rows wide enough to prune
    ids=["blocks", "one-block", "wide"],
)
def test_exact_topk_matches_brute_force_under_exclusions(n, block_elements):
    x = l2_normalise(np.random.default_rng(1).normal(size=(n, 8)))
    q = np.arange(50)
    keys = np.arange(n)
    keys[[3, 4, 5]] = 3  # rows 3, 4, 5 are duplicates of each other
    idx, sim = exact_topk(
        x[q], x, 6, [Exclusion(q, np.arange(n)), Exclusion(keys[q], keys)], block_elements=block_elements
    )
    s = x[q] @ x.T
    s[keys[q][:, None] == keys[None, :]] = -np.inf  # self and duplicates
    expected = np.argsort(-s, axis=1, kind="stable")[:, :6]
    assert (idx == expected).all()
    assert np.allclose(sim, np.take_along_axis(s, expected, 1), atol=1e-6)
    # fewer candidates than k: the tail is empty (-1 / NaN), not padding with excluded rows
    idx, sim = exact_topk(x[:1], x[:3], 5, [Exclusion([0], [0, 1, 2])])
    assert idx[0, :2].tolist() != [-1, -1] and idx[0, 2:].tolist() == [-1, -1, -1] and np.isnan(sim[0, 2:]).all()


def test_genre_precision_with_and_without_artist_filter_hand_made():
    # Six tracks on a circle (angles in degrees); nearest by angle = most similar.
    angles = {"a1": 0, "a2": 12, "b1": 20, "a3": 45, "b2": 60, "b3": 78}
    names = list(angles)
    vectors = np.asarray([[np.cos(np.radians(a)), np.sin(np.radians(a))] for a in angles.values()], np.float32)
    genres = [n[0] for n in names]
    artists = {"a1": "X", "a2": "X", "a3": "Y", "b1": "Z", "b2": "Z", "b3": "Z"}
    test = np.asarray([n in ("a1", "b2") for n in names])
    got = genre_precision(
        vectors, genres, [artists[n] for n in names], np.arange(6), 2, {"all": np.ones(6, bool), "test": test}
    )
    # k=2 neighbours, plain:        a1: a2 b1  a2: b1 a1  b1: a2 a1  a3: b2 b1  b2: a3 b3  b3: b2 a3
    #     -> hits                        1/2        1/2        0/2        0/2        1/2        1/2
    # same artist removed first:    a1: b1 a3  a2: b1 a3  b1: a2 a1  a3: b2 b1  b2: a3 a2  b3: a3 a2
    #     -> hits                        1/2        1/2        0/2        0/2        0/2        0/2
    assert got["all"] == pytest.approx({"queries": 6, "plain": 2 / 6, "artist_filtered": 1 / 6})
    assert got["test"] == pytest.approx({"queries": 2, "plain": 0.5, "artist_filtered": 0.25})


def test_format_similar():
    rows = [{"rank": 1, "track_id": "rock/a b", "similarity": 0.91234, "genre": "rock"}]
    assert json.loads(format_similar(rows, "jsonl")) == rows[0]
    table = format_similar(rows, "table").splitlines()
    assert table[0].split() == ["rank", "similarity", "genre", "track_id"]
    assert table[1].split(None, 3) == ["1", "0.9123", "rock", "rock/a b"]


# -- the job on a synthetic scores table -------------------------------------------------------

GENRES = ["g0", "g1", "g2", "g3"]
PER = 40
DUPLICATES = {"g0/copy-of-t000": "g0/t000", "g2/copy-of-t007": "g2/t007", "g2/copy2-of-t007": "g2/t007"}


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    """4 well-separated clusters of 40 tracks (one genre each), plus exact copies of two tracks
    (same audio hash and embedding). Most tracks labelled, with 5 artists per genre."""
    root = tmp_path_factory.mktemp("recommend")
    cfg = write_config(root, f"genres: [{', '.join(GENRES)}]\n")
    ids = [f"{g}/t{i:03d}" for g in GENRES for i in range(PER)]
    emb = clusters(len(GENRES), PER, noise=0.05)
    shas = [f"sha-{t}" for t in ids]
    for copy, original in DUPLICATES.items():
        i = ids.index(original)
        ids.append(copy)
        emb = np.vstack([emb, emb[i]])
        shas.append(shas[i])
    genres = [t.split("/")[0] for t in ids]
    labelled = [f"{t},{t[:2]},{t[:2]}-artist{i % 5}" for i, t in enumerate(ids) if "t039" not in t]
    rows = ["track_id,genre,artist", *labelled]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    publish_model(cfg, "m1", GENRES)
    write_scores(cfg, "m1", ids, emb, shas, genres)
    return cfg, ids


@pytest.fixture(scope="module")
def first_run(catalogue, spark):
    cfg, _ = catalogue
    return run_recommend(cfg, spark, model="latest", k=5, method="exact")


def test_neighbours_come_from_the_same_cluster_never_self_never_a_duplicate(catalogue, first_run):
    cfg, ids = catalogue
    assert first_run.method == "exact" and first_run.tracks == len(ids) and first_run.rows == len(ids) * 5
    rows = read_table(cfg, "m1")
    assert len(rows) == len(ids) * 5
    assert {(r["track_id"], r["rank"]) for r in rows} == {(t, k) for t in ids for k in range(1, 6)}
    assert all(r["model_id"] == "m1" for r in rows)
    assert all(r["neighbour_id"] != r["track_id"] for r in rows)
    assert all(r["neighbour_id"][:2] == r["track_id"][:2] for r in rows)
    by_rank = sorted(rows, key=lambda r: (r["track_id"], r["rank"]))
    sims = np.asarray([r["similarity"] for r in by_rank]).reshape(-1, 5)
    assert (np.diff(sims, axis=1) <= 1e-6).all() and (sims > 0.9).all()
    groups = [{"g0/t000", "g0/copy-of-t000"}, {"g2/t007", "g2/copy-of-t007", "g2/copy2-of-t007"}]
    for r in rows:
        assert not any({r["track_id"], r["neighbour_id"]} <= g for g in groups), r


def test_duplicates_are_reported(catalogue, first_run):
    cfg, _ = catalogue
    assert first_run.duplicates == [["g0/copy-of-t000", "g0/t000"], ["g2/copy-of-t007", "g2/copy2-of-t007", "g2/t007"]]
    text = Storage().read_bytes(join(report_uri(cfg, "m1"), "duplicates.csv")).decode()
    listed = list(csv.DictReader(io.StringIO(text)))
    assert {r["track_id"] for r in listed} == {t for g in first_run.duplicates for t in g}
    assert {r["audio_sha256"] for r in listed} == {"sha-g0/t000", "sha-g2/t007"}
    assert any("duplicates: 2 groups" in line for line in first_run.lines())


def test_quality_file_and_map(catalogue, first_run):
    cfg, _ = catalogue
    storage = Storage()
    quality = json.loads(storage.read_bytes(join(report_uri(cfg, "m1"), "quality.json")))
    precision = quality["precision_at_k"]
    # labelled pool: 39 of 40 per genre, plus the 3 copies (labelled too)
    assert precision["pool"] == 4 * 39 + 3 and precision["embedding"]["all"]["plain"] == pytest.approx(1.0)
    assert precision["mfcc_baseline"] is None and "baseline skipped" in precision["note"]
    assert quality["duplicates"] == {"groups": 2, "tracks": 5} and quality["recall_at_k"] is None
    assert storage.read_bytes(join(report_uri(cfg, "m1"), "embedding_map.png"))[:8] == b"\x89PNG\r\n\x1a\n"
    assert any("model embedding" in line for line in first_run.lines())


def test_rerun_replaces_the_table(catalogue, first_run, spark):
    cfg, ids = catalogue
    storage = Storage()
    before = set(commit.table_files(storage, neighbours_uri(cfg, "m1")))
    again = run_recommend(cfg, spark, model="m1", k=3, method="exact")
    after = set(commit.table_files(storage, neighbours_uri(cfg, "m1")))
    assert before and after and not before & after  # every part is new, every old part gone
    rows = read_table(cfg, "m1")
    assert len(rows) == len(ids) * 3 == again.rows
    assert len({(r["track_id"], r["rank"]) for r in rows}) == len(rows)
    leftovers = [u for u, _ in storage.list_files(neighbours_uri(cfg, "m1")) if "/_tmp/" in u or "_commit" in u]
    assert not leftovers
    assert sorted(u.rsplit("/", 1)[1] for u, _ in storage.list_files(report_uri(cfg, "m1"))) == [
        "duplicates.csv",
        "embedding_map.png",
        "quality.json",
    ]


def test_similar_for_track_reads_the_table(catalogue, first_run, spark):
    cfg, _ = catalogue
    rows = similar_for_track(cfg, "g1/t003", k=3, model="m1")
    assert [r["rank"] for r in rows] == [1, 2, 3]
    assert all(r["track_id"].startswith("g1/") and r["track_id"] != "g1/t003" for r in rows)
    assert {r["genre"] for r in rows} == {"g1"}  # labels.csv, or the predicted genre for t039
    assert rows[0]["similarity"] >= rows[-1]["similarity"]
    with pytest.raises(JobError, match="'g1/nope' is not in the neighbours table"):
        similar_for_track(cfg, "g1/nope", k=3, model="m1")


def test_similar_for_track_reads_one_part_and_the_scores_only_until_it_has_the_genres(catalogue, first_run):
    cfg, _ = catalogue
    # a query with an unlabelled neighbour (the t039 tracks have no labels.csv row)
    query = next(r["track_id"] for r in read_table(cfg, "m1") if r["neighbour_id"] == "g0/t039" and r["rank"] <= 3)
    root = cfg.storage.root
    with fetches(root) as got:
        rows = similar_for_track(cfg, query, k=3, model="m1")
    assert {r["track_id"]: r["genre"] for r in rows}["g0/t039"] == "g0"  # the predicted genre
    parts = [u for u in got if "/neighbours/" in u and u.endswith(".parquet")]
    scores = [u for u in got if "/scores/" in u]
    # Files read (a column read is several range reads of one file: footer, column chunks).
    assert len(set(parts)) == 1 and len(commit.table_files(Storage(), neighbours_uri(cfg, "m1"))) > 1
    assert {u.rsplit("/", 1)[-1] for u in scores} == {"part-00000.parquet"}  # g0 is in the first file: stop there


@pytest.mark.parametrize("method", ["hnsw", "ivf"])
def test_ann_recall_against_exact(tmp_path, spark, method):
    if method == "hnsw":
        pytest.importorskip("hnswlib")
    cfg = write_config(tmp_path)
    n = 3000
    emb = clusters(30, n // 30, noise=0.12, seed=2)
    ids = [f"c{i // 100:02d}/t{i:04d}" for i in range(n)]
    publish_model(cfg, "ann", ["a", "b"])
    write_scores(cfg, "ann", ids, emb, [f"s{i}" for i in range(n)], ["a"] * n)
    summary = run_recommend(cfg, spark, model="ann", k=10, method=method)
    assert summary.method == method and summary.recall_queries == 1000
    assert summary.recall >= 0.9, summary.lines()
    assert any(f"recall@10 {summary.recall:.3f}" in line for line in summary.lines())
    rows = read_table(cfg, "ann")
    assert len(rows) == n * 10 and all(r["track_id"] != r["neighbour_id"] for r in rows)


@pytest.mark.parametrize("method", ["exact", "hnsw", "ivf"])
def test_search_files_reach_executors_as_read_only_maps(spark, method):
    """The arrays and index a recommend task searches arrive as files (no broadcast): vectors
    and keys mapped read-only, ids zero-copy Arrow, and the loaded index answers as the
    driver's does."""
    if method == "hnsw":
        pytest.importorskip("hnswlib")
    x = l2_normalise(np.random.default_rng(5).normal(size=(400, 16)).astype(np.float32))
    ids, keys = [f"t{i:04d}" for i in range(400)], np.arange(400, dtype=np.int64) // 2
    index = None if method == "exact" else build_index(x, method)
    queries = x[:7]
    want = exact_topk(queries, x, 5)[0] if index is None else index.search(queries, 5)[0]
    sc = spark.sparkContext
    with shipped(sc, f"test-{method}", x, keys, ids, index) as files:

        def task(_):
            vectors, ann = files.vectors(), files.index()
            found = exact_topk(vectors[:7], vectors, 5)[0] if ann is None else ann.search(vectors[:7], 5)[0]
            return (
                isinstance(vectors, np.memmap) and not vectors.flags.writeable,
                isinstance(files.sha_keys(), np.memmap),
                files.track_ids().take(pa.array([3, 399])).to_pylist(),
                found.tolist(),
            )

        got = sc.parallelize([0, 1], 2).map(task).collect()
    for mapped, keys_mapped, some_ids, found in got:
        assert mapped and keys_mapped and some_ids == ["t0003", "t0399"]
        assert found == want.tolist()


def test_missing_scores_is_a_clear_error(tmp_path, spark):
    cfg = write_config(tmp_path)
    publish_model(cfg, "empty", ["a", "b"])
    with pytest.raises(JobError, match="no scores for model empty at .*run genrecast score"):
        run_recommend(cfg, spark, model="empty")


# -- cold start with a real (tiny) model -------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, spark):
    """Ingest 3 x 5 generated tracks, train one epoch on one worker, score the catalogue."""
    from genrecast.score import run_score

    root = tmp_path_factory.mktemp("coldstart")
    rng = np.random.default_rng(0)
    rows = ["track_id,genre"]
    for kind in ("low", "high", "noise"):
        for i in range(5):
            write_audio(root / "audio" / kind / f"{kind}{i}.wav", synthetic_track(kind, rng, seconds=4.0))
            rows.append(f"{kind}/{kind}{i},{kind}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    cfg = write_config(root, "genres: [low, high, noise]\ntrain: {epochs: 1, batch_size: 8, workers: 1}\n")
    assert run_ingest(cfg, spark).tracks_ok == 15
    run_train(cfg, spark, workers=1, epochs=1)
    assert run_score(cfg, spark, mode="backfill").scored == 15
    ids = [r.split(",")[0] for r in rows[1:]]
    return cfg, root, ids


def test_similar_for_audio_returns_catalogue_tracks(tiny_model, tmp_path):
    cfg, root, ids = tiny_model
    new = write_audio(tmp_path / "new.wav", synthetic_track("high", np.random.default_rng(7), seconds=4.0))
    rows = similar_for_audio(cfg, str(new), k=4)
    assert [r["rank"] for r in rows] == [1, 2, 3, 4]
    assert all(r["track_id"] in ids for r in rows) and len({r["track_id"] for r in rows}) == 4
    assert all(r["genre"] in ("low", "high", "noise") for r in rows)
    assert [r["similarity"] for r in rows] == sorted((r["similarity"] for r in rows), reverse=True)
    # a file that is in the catalogue is not its own neighbour
    rows = similar_for_audio(cfg, str(root / "audio" / "low" / "low0.wav"), k=14)
    assert len(rows) == 14 and "low/low0" not in {r["track_id"] for r in rows}
    short = write_audio(tmp_path / "short.wav", synthetic_track("low", np.random.default_rng(1), seconds=1.0))
    with pytest.raises(JobError, match=r"short\.wav: too short"):
        similar_for_audio(cfg, str(short), k=3)


def test_recommend_compares_with_the_mfcc_baseline(tiny_model, spark):
    cfg, _, ids = tiny_model
    summary = run_recommend(cfg, spark, k=3)
    quality = summary.quality
    assert quality["pool"] == len(ids)
    for key in ("embedding", "mfcc_baseline"):
        assert 0 <= quality[key]["all"]["plain"] <= 1 and quality[key]["all"]["queries"] == len(ids)
    assert any("MFCC baseline" in line for line in summary.lines())


def test_two_recommends_at_once_leave_one_complete_table(tmp_path, spark):
    cfg = write_config(tmp_path, f"genres: [{', '.join(GENRES)}]\nrecommend: {{baseline: false}}\n")
    ids = [f"{g}/t{i:03d}" for g in GENRES for i in range(30)]
    publish_model(cfg, "m2", GENRES)
    write_scores(cfg, "m2", ids, clusters(len(GENRES), 30, noise=0.05), [f"sha-{t}" for t in ids], list(GENRES) * 30)
    cfg.storage.lease.wait_seconds = 300
    first, second = run_while_staging(
        lambda: run_recommend(cfg, spark, model="m2", k=4, method="exact"),
        lambda: run_recommend(cfg, spark, model="m2", k=4, method="exact"),
        neighbours_uri(cfg, "m2"),
    )
    assert first.rows == second.rows == len(ids) * 4, (first, second)
    rows = read_table(cfg, "m2")
    assert len(rows) == len(ids) * 4 and len({(r["track_id"], r["rank"]) for r in rows}) == len(rows)
    assert all(second.run_id in f for f in commit.table_files(Storage(), neighbours_uri(cfg, "m2")))
