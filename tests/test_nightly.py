"""``genrecast nightly`` for real: ingest -> score -> recommend -> compact on local[2] Spark."""

from __future__ import annotations

import contextlib
import json
import shutil

from test_score import fresh

from genrecast import cli
from genrecast.nightly import STAGES, run_nightly

from conftest import TRAINED_GENRES, TRAINED_PER_GENRE, tone, write_audio, write_config

N_TRACKS = len(TRAINED_GENRES) * TRAINED_PER_GENRE


def test_nightly_runs_every_stage_and_writes_one_report(trained, tmp_path, spark):
    cfg, model_id = fresh(trained, tmp_path)
    shutil.copytree(trained[0] / "out" / "datasets", tmp_path / "out" / "datasets")  # ingested: an incremental night
    report = run_nightly(cfg, spark)
    assert report.exit_code == 0
    doc = json.loads((tmp_path / "out" / "reports" / "nightly" / f"{report.run_id}.json").read_text())
    assert report.report_uri.endswith(f"reports/nightly/{report.run_id}.json")
    assert [s["name"] for s in doc["stages"]] == list(STAGES)
    assert [s["exit_code"] for s in doc["stages"]] == [0, 0, 0, 0] and doc["exit_code"] == 0
    ingest, score, recommend, compact = (s["counts"] for s in doc["stages"])
    assert ingest["tracks_listed"] == N_TRACKS + 1 and ingest["skipped_unchanged"] == N_TRACKS
    assert ingest["tracks_ok"] == 0 and ingest["rejected"] == {"ingest": 1}
    assert score["scored"] == N_TRACKS and score["table_tracks"] == N_TRACKS
    assert recommend["tracks"] == N_TRACKS and recommend["rows"] == N_TRACKS * cfg.recommend.k
    assert compact["files_merged"] == 0  # a handful of files: under compact.min_files
    assert all(s["seconds"] > 0 and s["summary"] for s in doc["stages"])
    assert doc["seconds"] >= sum(s["seconds"] for s in doc["stages"]) - 0.01  # rounded to ms


def test_a_failed_stage_skips_the_rest_and_sets_the_exit_code(tmp_path, spark, monkeypatch, capsys):
    write_config(tmp_path)  # a catalogue of two tracks, and no trained model
    for i in range(2):
        write_audio(tmp_path / "audio" / f"g/t{i}.wav", tone(4, freq=300 + 100 * i))
    (tmp_path / "labels.csv").write_text("track_id,genre\n")

    @contextlib.contextmanager
    def shared_session(_cfg):  # the test session's Spark, not stopped afterwards
        yield spark

    monkeypatch.setattr("genrecast.spark.spark_session", shared_session)
    code = cli.main(["nightly", "--conf", str(tmp_path / "conf.yaml")])
    assert code == 2  # no model: bad configuration
    out = capsys.readouterr().out
    path = out.strip().splitlines()[-1].split("report ", 1)[1]
    doc = json.loads(open(path).read())
    codes = {s["name"]: (s["exit_code"], s["skipped"]) for s in doc["stages"]}
    assert codes == {
        "ingest": (0, None),
        "score": (2, None),
        "recommend": (None, "score failed"),
        "compact": (None, "score failed"),
    }
    assert doc["exit_code"] == 2 and doc["stages"][0]["counts"]["tracks_ok"] == 2
    assert "no trained model yet" in doc["stages"][1]["error"]
