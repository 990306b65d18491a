"""Catalogue manifest, deletions and versioned features (issue 13, items 1, 3, 4), for real:
local[2] Spark, real TensorFlow scoring. Audio fetches are counted by the storage layer's fetch
log (GENRECAST_FETCH_LOG, written by the driver and every Python worker)."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from genrecast import commit, registry
from genrecast.dataset import manifest_uri, mels_uri, rejects_uri, scores_uri
from genrecast.errors import ConfigError
from genrecast.features import features_key
from genrecast.ingest import run_ingest
from genrecast.manifest import read_manifest
from genrecast.score import run_score
from genrecast.storage import Storage

from conftest import fetch_ops, fetches, synthetic_track, tone, write_audio, write_config

N = 18  # labelled tracks of the ``trained`` fixture (+ bad/text.mp3)


def copy_trained(trained, folder):
    """A config on a copy of the ``trained`` catalogue, labels and model; no dataset yet."""
    root, cfg, model_id = trained
    shutil.copytree(root / "audio", folder / "audio")
    shutil.copy(root / "labels.csv", folder / "labels.csv")
    shutil.copytree(root / "out" / "models", folder / "out" / "models")
    out = cfg.model_copy(deep=True)
    out.storage.root = str(folder / "out")
    out.catalogue.audio_uri = str(folder / "audio")
    out.catalogue.labels_uri = str(folder / "labels.csv")
    return out, model_id


def track_ids(uri: str) -> set[str]:
    s = Storage()
    files = commit.table_files(s, uri)
    return {t for f in files for t in s.read_parquet(f, columns=["track_id"]).column("track_id").to_pylist()}


def table_state(cfg, model_id) -> dict[str, list[str]]:
    s = Storage()
    return {u: commit.table_files(s, u) for u in (mels_uri(cfg), scores_uri(cfg, model_id), manifest_uri(cfg))}


def test_nightly_runs_fetch_only_what_changed_and_drop_deleted_tracks(trained, tmp_path, spark):
    cfg, model_id = copy_trained(trained, tmp_path)
    cfg.catalogue.max_delete_share = 0.1  # 1 of 18 tracks is 5.6 %: over the 5 % default
    audio = cfg.catalogue.audio_uri
    with fetches(audio) as got:
        first = run_ingest(cfg, spark)
        scored = run_score(cfg, spark, "nightly")
    assert (first.tracks_ok, scored.scored) == (N, N)
    assert len(got) == 2 * (N + 1)  # every file once per job: the counter sees executor reads
    manifest = read_manifest(Storage(), manifest_uri(cfg))
    assert len(manifest) == N + 1 and manifest["bad/text"].status == "rejected"
    assert {e.features_key for e in manifest.values()} == {features_key(cfg.audio, cfg.ingest)}

    # Unchanged: not one audio file opened by either job, and no mel part read whole: the
    # dataset index takes its three columns by range reads.
    with fetches(audio) as got, fetch_ops(mels_uri(cfg)) as mel_reads:
        ingest = run_ingest(cfg, spark)
        score = run_score(cfg, spark, "nightly")
    assert got == []
    parts = commit.table_files(Storage(), mels_uri(cfg))
    assert [op for op, uri, _n in mel_reads if uri in parts] and all(
        op == "range" for op, uri, _n in mel_reads if uri in parts
    ), mel_reads
    for part in parts:  # per part, fewer bytes read than its mel column alone holds
        meta = pq.read_metadata(part)
        mel = meta.schema.to_arrow_schema().get_field_index("mel")
        mel_bytes = sum(meta.row_group(g).column(mel).total_compressed_size for g in range(meta.num_row_groups))
        read = sum(n for _op, uri, n in mel_reads if uri == part)
        assert read < mel_bytes, (part, read, mel_bytes, os.path.getsize(part))
    assert (ingest.fetched, ingest.skipped_unchanged, ingest.skipped_rejected, ingest.tracks_ok) == (0, N, 1, 0)
    assert (score.fetched, score.skipped_unchanged, score.skipped_rejected, score.scored) == (0, N, 1, 0)

    # Two tracks added, one deleted: each job reads exactly the two new files.
    rng = np.random.default_rng(7)
    new = [
        write_audio(tmp_path / "audio/low/new_a.wav", synthetic_track("low", rng, seconds=4.5)),
        write_audio(tmp_path / "audio/noise/new_b.wav", synthetic_track("noise", rng, seconds=4.5)),
    ]
    os.remove(tmp_path / "audio/high/high03.wav")
    with fetches(audio) as got_ingest:
        ingest = run_ingest(cfg, spark)
    with fetches(audio) as got_score:
        score = run_score(cfg, spark, "nightly")
    assert sorted(got_ingest) == sorted(got_score) == sorted(str(p) for p in new)
    assert (ingest.tracks_ok, ingest.deleted, score.scored, score.deleted) == (2, 1, 2, 1)
    assert "deleted 1" in "\n".join(ingest.lines()) and "deleted 1" in "\n".join(score.lines())
    expected = {f"{g}/{g}{i:02d}" for g in ("low", "high", "noise") for i in range(6)} - {"high/high03"}
    expected |= {"low/new_a", "noise/new_b"}
    assert track_ids(mels_uri(cfg)) == expected
    assert track_ids(scores_uri(cfg, model_id)) == expected
    assert score.table_tracks == len(expected)
    assert "high/high03" not in read_manifest(Storage(), manifest_uri(cfg))

    # Touched (new mtime, same bytes): ingest hashes it, decodes nothing, and records the new
    # listing entry; score then trusts the manifest again and reads nothing.
    touched = tmp_path / "audio/low/low01.wav"
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with fetches(audio) as got_ingest:
        ingest = run_ingest(cfg, spark)
    with fetches(audio) as got_score:
        score = run_score(cfg, spark, "nightly")
    assert got_ingest == [str(touched)] and got_score == []
    assert (ingest.fetched, ingest.tracks_ok, ingest.clips, ingest.skipped_unchanged) == (1, 0, 0, len(expected))
    assert read_manifest(Storage(), manifest_uri(cfg))["low/low01"].version == f"mtime_ns:{touched.stat().st_mtime_ns}"

    # An empty listing (audio_uri pointing at an empty folder) must not wipe anything.
    (tmp_path / "empty").mkdir()
    wrong = cfg.model_copy(deep=True)
    wrong.catalogue.audio_uri = str(tmp_path / "empty")
    before = table_state(cfg, model_id)
    for job in (lambda: run_ingest(wrong, spark), lambda: run_score(wrong, spark, "nightly")):
        with pytest.raises(ConfigError) as exc:
            job()
        assert exc.value.exit_code == 2 and "--allow-mass-delete" in str(exc.value)
        assert "\n" not in str(exc.value) and "catalogue.max_delete_share" in str(exc.value)
    with pytest.raises(ConfigError):
        run_score(wrong, spark, "backfill")
    assert table_state(cfg, model_id) == before
    assert track_ids(mels_uri(cfg)) == track_ids(scores_uri(cfg, model_id)) == expected

    # With the flag, it proceeds.
    score = run_score(wrong, spark, "nightly", allow_mass_delete=True)
    ingest = run_ingest(wrong, spark, allow_mass_delete=True)
    assert (score.deleted, score.table_tracks, ingest.deleted) == (len(expected), 0, len(expected))
    assert track_ids(scores_uri(cfg, model_id)) == track_ids(mels_uri(cfg)) == set()


def test_changed_feature_settings_reingest_and_retry_rejects(tmp_path, spark):
    a = tmp_path / "audio"
    write_audio(a / "x/short.wav", tone(4, freq=220))
    write_audio(a / "x/other.wav", tone(4, freq=330))
    write_audio(a / "x/long.wav", tone(8, freq=440))
    (tmp_path / "labels.csv").write_text("track_id,genre\nx/short,rock\nx/other,jazz\nx/long,rock\n")
    cfg = write_config(tmp_path, "ingest: {tracks_per_partition: 3, max_seconds: 6}\n")
    audio = cfg.catalogue.audio_uri

    first = run_ingest(cfg, spark)
    assert (first.tracks_ok, sum(first.rejected.values())) == (2, 1)
    rejects = pd.read_parquet(rejects_uri(cfg, "ingest"))
    assert list(rejects.features_key) == [first.features_key]

    with fetches(audio) as got:  # unchanged config: skipped from the listing
        again = run_ingest(cfg, spark)
    assert got == [] and (again.skipped_unchanged, again.skipped_rejected, again.tracks_ok) == (2, 1, 0)

    cfg.ingest.max_seconds = 10  # every track's clips may differ now, and the long one fits
    with fetches(audio) as got:
        changed = run_ingest(cfg, spark)
    assert changed.features_key != first.features_key
    assert len(got) == 3 and (changed.tracks_ok, changed.skipped_unchanged, changed.skipped_rejected) == (3, 0, 0)
    s = Storage()
    df = pd.concat([s.read_parquet(f).to_pandas() for f in commit.table_files(s, mels_uri(cfg))])
    assert df.groupby("track_id").size().to_dict() == {"x/long": 3, "x/other": 2, "x/short": 2}
    assert {e.features_key for e in read_manifest(s, manifest_uri(cfg)).values()} == {changed.features_key}

    with fetches(audio) as got:
        assert run_ingest(cfg, spark).skipped_unchanged == 3
    assert got == []


def test_model_json_names_the_features_key_of_its_dataset(trained):
    _root, cfg, model_id = trained
    meta = registry.read_model_json(cfg, model_id)
    assert meta["features_key"] == features_key(cfg.audio, cfg.ingest)
