"""The score job and classify for real: a tiny trained model, local[2] Spark, real TensorFlow."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from genrecast import commit
from genrecast.classify import classify_files, exit_code, format_jsonl, format_table
from genrecast.dataset import rejects_uri, scores_uri, timelines_uri
from genrecast.errors import ConfigError
from genrecast.lease import TableBusy
from genrecast.score import SCORE_COLUMNS, TIMELINE_COLUMNS, aggregate_clips, run_score
from genrecast.storage import Storage
from genrecast.timeline import clip_times

from conftest import (
    TRAINED_GENRES,
    TRAINED_PER_GENRE,
    killed_mid_commit,
    run_while_staging,
    synthetic_track,
    write_audio,
)

GENRES = TRAINED_GENRES
N_TRACKS = len(GENRES) * TRAINED_PER_GENRE


def fresh(trained, folder, scored=None):
    """A config on a copy of the catalogue and the model registry; no scores yet, or a copy of
    the ``scored`` fixture's scores (one full scoring run saved; its rejects name other paths)."""
    root, cfg, model_id = trained
    shutil.copytree(root / "audio", folder / "audio")
    shutil.copytree(root / "out" / "models", folder / "out" / "models")
    if scored is not None:
        shutil.copytree(f"{scored[0].storage.root}/scores", folder / "out" / "scores")
    out = cfg.model_copy(deep=True)
    out.storage.root = str(folder / "out")
    out.catalogue.audio_uri = str(folder / "audio")
    return out, model_id


def scores(cfg, model_id) -> pd.DataFrame:
    """The score table as pandas reads it (the folder, as a user would)."""
    return pd.read_parquet(scores_uri(cfg, model_id)).sort_values("track_id").reset_index(drop=True)


def score_rejects(cfg) -> pd.DataFrame:
    df = pd.read_parquet(rejects_uri(cfg))
    return df[df.stage == "score"]


@pytest.fixture(scope="module")
def scored(trained, tmp_path_factory, spark):
    cfg, model_id = fresh(trained, tmp_path_factory.mktemp("scored"))
    return cfg, model_id, run_score(cfg, spark, "nightly")


def test_aggregate_clips_means_probabilities_and_renormalises_the_embedding():
    probs = np.array([[0.8, 0.2], [0.4, 0.6]], np.float32)
    emb = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    p, e = aggregate_clips(probs, emb)
    np.testing.assert_allclose(p, [0.6, 0.4], rtol=1e-6)
    np.testing.assert_allclose(e, [2**-0.5, 2**-0.5], rtol=1e-6)
    assert p.dtype == e.dtype == np.float32


def test_first_run_scores_every_track_with_the_contract_columns(scored):
    cfg, model_id, summary = scored
    assert (summary.scored, summary.rejected, summary.tracks_listed) == (N_TRACKS, 1, N_TRACKS + 1)
    assert summary.table_tracks == N_TRACKS and sum(summary.genres.values()) == N_TRACKS
    assert any(line.startswith("  scored 18 (36 clips)") for line in summary.lines())
    df = scores(cfg, model_id)
    assert tuple(df.columns) == SCORE_COLUMNS
    assert len(df) == N_TRACKS and df.track_id.is_unique
    assert (df.model_id == model_id).all() and (df.n_clips == 2).all() and df.n_clips.dtype == np.int32
    assert str(df.scored_at.dt.tz) == "UTC"
    probs = np.stack(df.probabilities)
    emb = np.stack(df.embedding)
    assert probs.shape == (N_TRACKS, 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(df.confidence, probs.max(axis=1), rtol=1e-6)
    assert list(df.genre) == [GENRES[i] for i in probs.argmax(axis=1)]
    audio = cfg.catalogue.audio_uri
    assert all(
        row.audio_sha256 == hashlib.sha256(open(f"{audio}/{row.track_id}.wav", "rb").read()).hexdigest()
        for row in df.itertuples()
    )
    rejects = score_rejects(cfg)
    assert list(rejects.source_uri) == [f"{audio}/bad/text.mp3"]
    assert "undecodable" in rejects.reason.iloc[0]


def test_spark_reads_the_score_table(scored, spark):
    cfg, model_id, _ = scored
    df = spark.read.parquet("file://" + scores_uri(cfg, model_id))
    assert df.count() == N_TRACKS
    types = dict(df.dtypes)
    assert types["probabilities"] == "array<float>" and types["embedding"] == "array<float>"
    assert types["n_clips"] == "int" and types["scored_at"] == "timestamp"
    assert len({row.track_id for row in df.select("track_id").collect()}) == N_TRACKS


def test_nightly_scores_only_new_and_changed_tracks(trained, scored, tmp_path, spark):
    cfg, model_id = fresh(trained, tmp_path, scored)
    files = sorted(commit.table_files(Storage(), scores_uri(cfg, model_id)))
    again = run_score(cfg, spark, "nightly")
    assert (again.scored, again.skipped_unchanged, again.rejected) == (0, N_TRACKS, 1)
    assert sorted(commit.table_files(Storage(), scores_uri(cfg, model_id))) == files

    rng = np.random.default_rng(7)
    write_audio(tmp_path / "audio/low/low00.wav", synthetic_track("low", rng, seconds=6.5))  # changed: 3 clips
    write_audio(tmp_path / "audio/new/a.flac", synthetic_track("high", rng, seconds=4.5))
    write_audio(tmp_path / "audio/new/b.ogg", synthetic_track("noise", rng, seconds=4.5))
    third = run_score(cfg, spark, "nightly")
    assert (third.scored, third.skipped_unchanged, third.table_tracks) == (3, N_TRACKS - 1, N_TRACKS + 2)
    assert (third.skipped_rejected, third.rejected) == (1, 0)
    assert len(score_rejects(cfg)) == 1  # an unchanged bad file is neither decoded nor reported again
    df = scores(cfg, model_id).set_index("track_id")
    assert len(df) == N_TRACKS + 2 and df.index.is_unique
    assert df.n_clips["low/low00"] == 3 and {"new/a", "new/b"} <= set(df.index)
    new_sha = hashlib.sha256((tmp_path / "audio/low/low00.wav").read_bytes()).hexdigest()
    assert df.audio_sha256["low/low00"] == new_sha


def test_backfill_rescores_everything_without_duplicates(trained, scored, tmp_path, spark):
    cfg, model_id = fresh(trained, tmp_path, scored)
    before = scores(cfg, model_id)
    backfill = run_score(cfg, spark, "backfill")
    assert (backfill.scored, backfill.skipped_unchanged, backfill.rejected) == (N_TRACKS, 0, 1)
    after = scores(cfg, model_id)
    assert len(after) == N_TRACKS and after.track_id.is_unique
    assert all(backfill.run_id in f for f in commit.table_files(Storage(), scores_uri(cfg, model_id)))
    # Same inputs, same outputs (up to float32 rounding of differently composed batches).
    np.testing.assert_allclose(np.stack(after.probabilities), np.stack(before.probabilities), atol=1e-5)
    np.testing.assert_allclose(np.stack(after.embedding), np.stack(before.embedding), atol=1e-5)
    assert list(after.genre) == list(before.genre)
    assert len(score_rejects(cfg)) == 1


@pytest.mark.parametrize("killed", ["nightly", "backfill"])
def test_run_killed_mid_commit_leaves_one_row_per_track(trained, scored, tmp_path, spark, monkeypatch, killed):
    # Over a scored table. nightly: a changed and a new track, so the commit adds new files,
    # adds rewrites of old files without the changed track and removes those; backfill: all.
    cfg, model_id = fresh(trained, tmp_path, scored)
    table = scores_uri(cfg, model_id)
    expected = N_TRACKS
    if killed == "nightly":
        rng = np.random.default_rng(3)
        write_audio(tmp_path / "audio/high/high00.wav", synthetic_track("high", rng, seconds=6.5))
        write_audio(tmp_path / "audio/new/c.wav", synthetic_track("low", rng, seconds=4.5))
        expected += 1
    with killed_mid_commit(monkeypatch):
        run_score(cfg, spark, killed)
    assert Storage().exists(f"{table}/{commit.JOURNAL}")
    rerun = run_score(cfg, spark, "nightly")
    assert rerun.scored == 0 and rerun.skipped_unchanged == expected  # the journal was rolled forward
    df = scores(cfg, model_id)
    assert len(df) == expected and df.track_id.is_unique
    if killed == "nightly":
        assert df.set_index("track_id").n_clips["high/high00"] == 3
    assert not Storage().exists(f"{table}/{commit.JOURNAL}")
    assert not list(Storage().list_files(f"{table}/{commit.TMP}"))


def test_classify_matches_the_score_job_and_reports_bad_files(scored, tmp_path, capsys):
    cfg, model_id, _ = scored
    audio = cfg.catalogue.audio_uri
    paths = [f"{audio}/low/low01.wav", f"{audio}/bad/text.mp3", str(tmp_path / "missing.wav"), f"{audio}/noise"]
    results = classify_files(cfg, paths, model=model_id)
    assert [r["path"] for r in results] == paths
    good, bad, missing, folder = results
    assert set(good) == {"path", "genre", "confidence", "probabilities", "clips"}
    assert good["clips"] == 2 and list(good["probabilities"]) == GENRES
    assert good["genre"] == max(good["probabilities"], key=good["probabilities"].get)
    assert good["confidence"] == max(good["probabilities"].values())
    row = scores(cfg, model_id).set_index("track_id").loc["low/low01"]
    assert good["genre"] == row.genre
    np.testing.assert_allclose(list(good["probabilities"].values()), row.probabilities, atol=1e-4)
    assert "undecodable" in bad["error"] and missing["error"] == "file not found" and "directory" in folder["error"]
    assert exit_code(results) == 1 and exit_code([good]) == 0

    lines = format_jsonl(results).splitlines()
    assert len(lines) == 4
    parsed = [json.loads(line) for line in lines]
    assert list(parsed[0]) == ["path", "genre", "confidence", "probabilities", "clips"]
    assert set(parsed[1]) == {"path", "error"}
    table = format_table(results)
    assert good["genre"] in table.splitlines()[1] and "ERROR: file not found" in table


def test_model_with_other_audio_settings_is_refused(scored, spark):
    cfg, model_id, _ = scored
    other = cfg.model_copy(deep=True)
    other.audio.n_mels = 64
    with pytest.raises(ConfigError, match="n_mels: model 128 vs config 64"):
        run_score(other, spark, "nightly", model=model_id)
    with pytest.raises(ConfigError, match="n_mels: model 128 vs config 64"):
        classify_files(other, ["x.wav"])
    with pytest.raises(ConfigError, match="score mode"):
        run_score(cfg, spark, "weekly")
    with pytest.raises(ConfigError, match="model 'nope' not found"):
        classify_files(cfg, ["x.wav"], model="nope")


@pytest.mark.parametrize("wait", [300, 0])
def test_backfill_and_nightly_at_once_lose_and_duplicate_nothing(trained, tmp_path, spark, wait):
    cfg, model_id = fresh(trained, tmp_path)
    cfg.storage.lease.wait_seconds = wait
    backfill, nightly = run_while_staging(
        lambda: run_score(cfg, spark, "backfill"), lambda: run_score(cfg, spark, "nightly"), scores_uri(cfg, model_id)
    )
    assert backfill.scored == N_TRACKS, backfill
    if wait:
        assert (nightly.scored, nightly.skipped_unchanged) == (0, N_TRACKS), nightly
    else:
        assert isinstance(nightly, TableBusy) and nightly.exit_code == 2
        assert f"being written by run {backfill.run_id} (score backfill on " in str(nightly)
    df = scores(cfg, model_id)
    assert len(df) == N_TRACKS and df.track_id.is_unique
    assert len(score_rejects(cfg)) == 1


def test_keep_timeline_writes_clip_rows_and_replaces_a_rescored_tracks_rows(trained, scored, tmp_path, spark):
    # Turned on over a scored table without clip rows: nightly scores every track again so the
    # two tables agree; a changed track's rows are replaced; backfill replaces the table.
    cfg, model_id = fresh(trained, tmp_path, scored)
    cfg.score.keep_timeline = True
    first = run_score(cfg, spark, "nightly")
    assert first.scored == N_TRACKS and first.timelines_uri == timelines_uri(cfg, model_id)

    def clip_rows() -> pd.DataFrame:
        df = pd.read_parquet(timelines_uri(cfg, model_id))
        assert tuple(df.columns) == TIMELINE_COLUMNS
        return df.sort_values(["track_id", "clip_index"]).reset_index(drop=True)

    rows, track = clip_rows(), scores(cfg, model_id).set_index("track_id")
    assert len(rows) == track.n_clips.sum() == 2 * N_TRACKS and not rows.duplicated(["track_id", "clip_index"]).any()
    start_s, end_s = clip_times(int(4.5 * cfg.audio.sample_rate), cfg.audio)
    for track_id, clips in rows.groupby("track_id"):
        np.testing.assert_allclose(clips.start_s, start_s)
        np.testing.assert_allclose(clips.end_s, end_s)
        probs = np.stack(clips.probabilities)
        np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
        np.testing.assert_allclose(probs.mean(axis=0), track.probabilities[track_id], atol=1e-5)
        assert (clips.audio_sha256 == track.audio_sha256[track_id]).all()
        assert list(clips.genre) == [GENRES[i] for i in probs.argmax(axis=1)]

    again = run_score(cfg, spark, "nightly")
    assert again.scored == 0 and len(clip_rows()) == 2 * N_TRACKS
    write_audio(tmp_path / "audio/low/low00.wav", synthetic_track("low", np.random.default_rng(9), seconds=6.5))
    changed = run_score(cfg, spark, "nightly")
    assert changed.scored == 1
    rows = clip_rows()
    assert len(rows) == 2 * N_TRACKS + 1 and not rows.duplicated(["track_id", "clip_index"]).any()
    assert list(rows[rows.track_id == "low/low00"].clip_index) == [0, 1, 2]

    backfill = run_score(cfg, spark, "backfill")
    files = commit.table_files(Storage(), timelines_uri(cfg, model_id))
    assert files and all(backfill.run_id in f for f in files) and len(clip_rows()) == 2 * N_TRACKS + 1
