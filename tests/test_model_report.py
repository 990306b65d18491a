"""`genrecast report`: models' test results side by side (no Spark, no training: model
directories are written here through the registry, as train writes them)."""

from __future__ import annotations

import json

import pytest

from genrecast import cli, registry
from genrecast.errors import ConfigError
from genrecast.model_report import Entry, compare, format_report
from genrecast.storage import Storage, join

from conftest import write_config

GENRES = ["low", "high"]
SPLIT = {"a": "train", "b": "val", "c": "test", "d": "test"}


def _metrics(acc: float, f1_low: float, base_acc: float = 0.5) -> dict:
    per_genre = {"low": {"f1": f1_low}, "high": {"f1": 1.0}}
    return {
        "cnn_track": {"n": 2, "accuracy": acc, "macro_f1": (f1_low + 1.0) / 2, "per_genre": per_genre},
        "cnn_clip": {"n": 6, "accuracy": acc - 0.1},
        "baseline_track": {"n": 2, "accuracy": base_acc, "macro_f1": 0.4, "per_genre": per_genre},
        "training": {"seconds": 12.0},
    }


def _entry(model_id: str, acc: float, f1_low: float, split: dict = SPLIT, **meta) -> Entry:
    return Entry(model_id, {"genres": GENRES, **meta}, _metrics(acc, f1_low), dict(split))


def test_compare_puts_each_models_numbers_side_by_side():
    pooled = {"backbone": {"name": "musicnn-msd"}, "training": {"head": "pooled", "pool_clips": 3, "seconds": 7.5}}
    doc = compare([_entry("m1", 0.5, 0.0), _entry("m2", 1.0, 1.0, **pooled)])
    assert doc["test_tracks"] == 2 and doc["genres"] == GENRES
    first, second = doc["models"]
    assert (first["kind"], second["kind"]) == ("scratch CNN", "musicnn-msd pooled, 3 clips")
    assert (first["track_accuracy"], second["track_accuracy"]) == (0.5, 1.0)
    assert (first["macro_f1"], second["macro_f1"]) == (0.5, 1.0)
    assert first["clip_accuracy"] == pytest.approx(0.4)
    assert second["per_genre_f1"] == {"low": 1.0, "high": 1.0}
    assert (first["train_seconds"], second["train_seconds"]) == (None, 7.5)
    assert doc["baseline"]["track_accuracy"] == 0.5
    text = format_report(doc)
    assert "2 test tracks, the same for every model" in text
    assert "musicnn-msd pooled, 3 clips" in text
    row = next(line for line in text.splitlines() if line.startswith("F1 low"))
    assert row.split()[2:] == ["0.000", "1.000", "0.000"]  # m1, m2, MFCC baseline
    assert "baselines differ" not in text  # both models' MFCC baselines are 0.5
    assert not any(line.startswith("accuracy ") for line in text.splitlines())  # no sources in the labels
    # train.finetune names the depth only where validation kept it (epochs > 0)
    for epochs, kind in ((0, "musicnn-msd pooled, 3 clips"), (4, "musicnn-msd pooled, 3 clips, fine-tuned depth 2")):
        tuned = {**pooled["training"], "finetune": {"depth": 2, "epochs": epochs, "learning_rate": 1e-4}}
        tuned_doc = compare([_entry("m3", 1.0, 1.0, backbone=pooled["backbone"], training=tuned)])
        assert tuned_doc["models"][0]["kind"] == kind
    # train.harmony and train.classifier logistic, as model.json records them
    fitted = {**pooled["training"], "harmony": 24, "classifier": "logistic", "logistic_c": 10.0}
    fitted_doc = compare([_entry("m4", 1.0, 1.0, backbone=pooled["backbone"], training=fitted)])
    assert fitted_doc["models"][0]["kind"] == "musicnn-msd pooled, 3 clips, harmony x 24, logistic C 10"


def test_report_has_a_row_per_labels_source():
    entries = [_entry("m1", 0.5, 0.0), _entry("m2", 1.0, 1.0)]
    entries[0].metrics["per_source"] = {"mma/FluidR3_GM": {"n": 1, "accuracy": 0.0, "baseline_accuracy": 1.0}}
    entries[1].metrics["per_source"] = {
        "mma/FluidR3_GM": {"n": 1, "accuracy": 1.0, "baseline_accuracy": 1.0},
        "unknown": {"n": 1, "accuracy": 1.0, "baseline_accuracy": 0.0},
    }
    lines = format_report(compare(entries)).splitlines()
    assert next(line for line in lines if line.startswith("accuracy mma/")).split()[2:] == ["0.000", "1.000", "1.000"]
    assert next(line for line in lines if line.startswith("accuracy unknown")).split()[2:] == ["-", "1.000", "-"]


def test_compare_refuses_models_tested_on_other_tracks():
    other = {**SPLIT, "a": "test", "c": "train"}
    with pytest.raises(ConfigError, match="models m1 and m2 were tested on different tracks .* 2 in one only"):
        compare([_entry("m1", 0.5, 0.0), _entry("m2", 1.0, 1.0, split=other)])
    with pytest.raises(ConfigError, match="model m3: no test split recorded"):
        compare([_entry("m3", 0.5, 0.0, split={"a": "train"})])
    with pytest.raises(ConfigError, match="model m4: report/metrics.json has no test evaluation"):
        compare([Entry("m4", {"genres": GENRES}, {}, dict(SPLIT))])


def _publish(cfg, model_id: str, acc: float, split: dict) -> None:
    """A finished model as train leaves it: split.parquet, report/metrics.json, model.json."""
    registry.write_split(cfg, model_id, split, {t: t for t in split})
    report = join(registry.report_uri(cfg, model_id), "metrics.json")
    Storage.from_config(cfg).write_bytes(report, json.dumps(_metrics(acc, 0.5)).encode())
    registry.publish(cfg, model_id, {"model_id": model_id, "genres": GENRES, "training": {"seconds": 3.0}})


def test_report_cli_reads_models_under_two_roots(tmp_path, capsys):
    first, second = tmp_path / "one", tmp_path / "two"
    first.mkdir(), second.mkdir()
    cfg1, cfg2 = write_config(first), write_config(second)
    _publish(cfg1, "m-one", 0.5, SPLIT)
    _publish(cfg2, "m-two", 1.0, SPLIT)
    conf1, conf2 = str(first / "conf.yaml"), str(second / "conf.yaml")

    assert cli.main(["report", "--conf", conf1, "latest", f"{conf2}:latest", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(m["model_id"], m["track_accuracy"]) for m in doc["models"]] == [("m-one", 0.5), ("m-two", 1.0)]

    _publish(cfg2, "m-three", 1.0, {**SPLIT, "a": "test"})
    assert cli.main(["report", "--conf", conf1, "m-one", f"{conf2}:m-three"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("genrecast report: error: models m-one and m-three were tested on different tracks")
    assert "\n" not in err
    assert cli.main(["report", "--conf", conf1, "nope"]) == 2
    assert "model 'nope' not found" in capsys.readouterr().err
