"""Streamed training and evaluation: the split table beside the model, validation shards, and the
executors' per-track test evaluation checked against a direct computation on the driver."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from genrecast import registry
from genrecast.split import TEST, TRAIN, VAL
from genrecast.storage import Storage, join
from genrecast.train import val_shards

from conftest import TRAINED_SOURCES, write_config


def test_split_table_round_trip_and_old_embedded_split(tmp_path):
    cfg = write_config(tmp_path)
    assignment = {"b/2": TEST, "a/1": TRAIN, "c/3": VAL}
    groups = {"a/1": "artist:x", "b/2": "track:b/2", "c/3": "artist:x"}
    uri = registry.write_split(cfg, "m1", assignment, groups)
    registry.publish(cfg, "m1", {"model_id": "m1", "split": {"seed": 0, "table": registry.SPLIT_FILE}})
    assert uri == join(registry.model_uri(cfg, "m1"), registry.SPLIT_FILE)
    table = Storage().read_parquet(uri)
    assert table.column_names == ["track_id", "split", "group"]
    assert table.column("track_id").to_pylist() == ["a/1", "b/2", "c/3"]
    assert table.column("group").to_pylist() == ["artist:x", "track:b/2", "artist:x"]
    assert registry.read_split(cfg, "m1") == assignment
    # A model trained before the table: its model.json embeds the split, read the same way.
    registry.publish(cfg, "m0", {"model_id": "m0", "split": {"seed": 0, "tracks": {"a/1": TEST}}})
    assert registry.read_split(cfg, "m0") == {"a/1": TEST}
    registry.publish(cfg, "m2", {"model_id": "m2"})  # neither (e.g. a model made by a bench)
    assert registry.read_split(cfg, "m2") == {}


@pytest.mark.parametrize(
    "clips, workers, expected",
    [
        ({}, 2, [[], []]),
        ({"a": 3}, 2, [["a"], ["a"]]),  # fewer tracks than workers: every worker reads them all
        ({"a": 5, "b": 3, "c": 2, "d": 1}, 2, [["a", "d"], ["b", "c"]]),
        ({"a": 1, "b": 1, "c": 1}, 3, [["a"], ["b"], ["c"]]),
    ],
)
def test_val_shards_cover_every_track_and_balance_clips(clips, workers, expected):
    assert val_shards(clips, workers) == expected


def test_iter_row_groups_reads_only_matching_rows(tmp_path):
    path = str(tmp_path / "t.parquet")
    ids = [f"t{i // 3}" for i in range(12)]  # 4 tracks of 3 rows, row groups of 4 rows
    Storage().write_parquet(path, pa.table({"track_id": ids, "v": list(range(12))}), row_group_size=4)
    groups = list(Storage().iter_row_groups(path, ["track_id", "v"], where=("track_id", {"t0", "t3"})))
    assert [g.column("v").to_pylist() for g in groups] == [[0, 1, 2], [9, 10, 11]]  # the middle group skipped
    assert sum(g.num_rows for g in Storage().iter_row_groups(path, ["v"])) == 12


def test_per_source_accuracy_counts_each_source_and_the_unknown_bucket():
    from genrecast import report

    true = {"a": 0, "b": 1, "c": 2, "d": 0, "e": 1, "f": 2}
    model = {"a": 0, "b": 1, "c": 0, "d": 1, "e": 1, "f": 2}
    baseline = {"a": 1, "b": 1, "c": 2, "d": 0, "e": 0, "f": 2}
    # d has an empty source, e none; "train-only" is not a test track.
    source_of = {"a": "mma/FluidR3_GM", "b": "mma/FluidR3_GM", "c": "music21/TimGM6mb", "d": "", "f": "zzz"}
    per_source = report.per_source_accuracy(true, model, baseline, source_of | {"train-only": "x"})
    assert per_source == {
        "mma/FluidR3_GM": {"n": 2, "accuracy": 1.0, "baseline_accuracy": 0.5},
        "music21/TimGM6mb": {"n": 1, "accuracy": 0.0, "baseline_accuracy": 1.0},
        "zzz": {"n": 1, "accuracy": 1.0, "baseline_accuracy": 1.0},
        "unknown": {"n": 2, "accuracy": 0.5, "baseline_accuracy": 0.5},  # always last
    }
    with pytest.raises(ValueError, match="different tracks"):
        report.per_source_accuracy(true, model, {"a": 0}, source_of)

    genres = ["x", "y", "z"]
    y, p = list(true.values()), list(model.values())
    metrics = {
        "cnn_track": report.classification_metrics(y, p, genres),
        "cnn_clip": report.classification_metrics(y, p, genres),
        "baseline_track": report.classification_metrics(y, list(baseline.values()), genres),
    }
    assert "source" not in report.format_report(metrics)  # no sources: no table
    text = report.format_report(metrics | {"per_source": per_source}).splitlines()
    assert text[-5].split() == ["source", "n", "accuracy", "baseline"]
    assert text[-4].split() == ["mma/FluidR3_GM", "2", "1.000", "0.500"]
    assert text[-1].split() == ["unknown", "2", "0.500", "0.500"]


def test_evaluation_on_executors_matches_a_direct_computation(trained):
    """The conftest model's report (train.evaluate: executors, one row per test track) against
    the model run on the driver over every test clip (the pre-streaming way)."""
    from genrecast import report
    from genrecast.score import Predictor
    from genrecast.train_worker import load_clips

    _root, cfg, model_id = trained
    meta = registry.read_model_json(cfg, model_id)
    assert "tracks" not in meta["split"] and meta["split"]["table"] == registry.SPLIT_FILE
    split = registry.read_split(cfg, model_id, meta)
    test = sorted(t for t, s in split.items() if s == TEST)
    assert test and sum(meta["split"]["counts"].values()) == len(split)
    genres = meta["genres"]
    x, y, clip_tracks = load_clips(cfg, test, genres)
    probs, embeddings = Predictor(registry.load_keras_file(cfg, model_id), genres).predict(x)
    order, track_probs = report.track_mean(clip_tracks, probs)
    true = dict(zip(clip_tracks, y, strict=True))
    direct_track = report.classification_metrics([true[t] for t in order], track_probs.argmax(1), genres)
    direct_clip = report.classification_metrics(y, probs.argmax(1), genres)

    metrics = json.loads(Storage().read_bytes(join(registry.report_uri(cfg, model_id), "metrics.json")))
    assert order == test and metrics["cnn_track"]["n"] == len(test)
    assert metrics["cnn_clip"]["n"] == len(y)
    assert metrics["cnn_track"]["confusion"] == direct_track["confusion"]
    assert metrics["cnn_track"]["accuracy"] == pytest.approx(direct_track["accuracy"])
    assert metrics["cnn_clip"]["confusion"] == direct_clip["confusion"]
    assert meta["metrics"]["cnn_track"] == pytest.approx(direct_track["accuracy"])
    # Per labels.csv source (conftest.TRAINED_SOURCES by track number, "" = unknown): the same
    # tracks' model accuracy as computed directly; the baseline's buckets add up to its total.
    source_of = {t: TRAINED_SOURCES[int(t[-2:]) % len(TRAINED_SOURCES)] or "unknown" for t in test}
    right = dict(zip(order, track_probs.argmax(1) == np.asarray([true[t] for t in order]), strict=True))
    per_source = metrics["per_source"]
    assert list(per_source) == sorted(set(source_of.values()), key=lambda s: (s == "unknown", s))
    for source, m in per_source.items():
        mine = [t for t in test if source_of[t] == source]
        assert m["n"] == len(mine) and m["accuracy"] == pytest.approx(np.mean([right[t] for t in mine]))
    base_right = sum(m["n"] * m["baseline_accuracy"] for m in per_source.values())
    assert base_right == pytest.approx(metrics["baseline_track"]["accuracy"] * len(test))
    text = Storage().read_bytes(join(registry.report_uri(cfg, model_id), "report.txt")).decode().splitlines()
    assert all([s, str(m["n"])] in [line.split()[:2] for line in text] for s, m in per_source.items())
    # Validation ran streamed, every epoch, and the worker reported its peak RSS.
    assert len(metrics["history"]["val_accuracy"]) == meta["training"]["epochs_run"]
    assert all(np.isfinite(metrics["history"]["val_loss"]))
    assert meta["training"]["worker_peak_rss_mb"][0] > 100
