"""Genre over time: clip times against the clip cutting, timelines and compare (pure), and
classify --timeline-png / compare through the CLI with the session's tiny trained model."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from genrecast import cli
from genrecast.classify import classify_files
from genrecast.config import AudioConf
from genrecast.features import clip_starts, log_mel, log_mel_clips
from genrecast.timeline import (
    Timeline,
    clip_rows,
    clip_times,
    compare,
    compare_png,
    distribution,
    png_names,
    segments,
    timeline_png,
)

from conftest import TRAINED_GENRES, synthetic_track, write_audio

AUDIO = AudioConf()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("seconds", "n_clips"), [(3.0, 1), (9.2, 4), (600.0, 199)])
def test_clip_times_match_the_clip_cutting(seconds, n_clips):
    sr, hop, frames = AUDIO.sample_rate, AUDIO.hop_length, AUDIO.clip_frames
    rng = np.random.default_rng(0)
    y = rng.normal(scale=0.3, size=int(round(seconds * sr))).astype(np.float32)  # every frame differs
    clips, mel = log_mel_clips(y, AUDIO), log_mel(y, AUDIO)
    start_s, end_s = clip_times(len(y), AUDIO)
    assert len(start_s) == len(end_s) == len(clips) == n_clips
    # Each clip is the mel frames whose centres fall in [start_s, end_s): the cutting, from the times.
    centres = np.arange(mel.shape[1]) * hop / sr
    for k in range(n_clips):
        inside = np.flatnonzero((centres >= start_s[k]) & (centres < end_s[k]))
        if k == n_clips - 1:  # the last clip ends at the track's end: its last frame centre is inside too
            inside = np.flatnonzero((centres >= start_s[k]) & (centres <= end_s[k]))
        assert inside[0] == clip_starts(mel.shape[1], frames)[k]
        np.testing.assert_array_equal(clips[k], mel[:, inside[0] : inside[0] + frames])
    assert start_s[0] == 0.0 and end_s[-1] == pytest.approx(seconds, abs=1e-9)
    np.testing.assert_allclose(end_s[:-2], start_s[1:-1], atol=1e-12)  # tiled without gaps
    assert np.all(end_s[:-1] > start_s[1:] - 1e-12) and np.all(np.diff(start_s) > 0)
    full = frames * hop / sr  # 3.019 s: what a clip of 130 frames stands for
    np.testing.assert_allclose((end_s - start_s)[1:-1], full, atol=1e-9)
    if seconds == 3.0:
        assert (start_s.tolist(), end_s.tolist()) == ([0.0], [3.0])


def test_clip_times_of_a_track_shorter_than_one_clip_are_empty():
    start_s, end_s = clip_times(AUDIO.sample_rate * 2, AUDIO)
    assert start_s.size == end_s.size == 0


def timeline(path: str, genres: list[str], top: list[int], seed: int = 0) -> Timeline:
    """A hand-made timeline: clip k's top genre is ``top[k]`` (3 s clips), random unit embeddings."""
    rng = np.random.default_rng(seed)
    n = len(top)
    probs = np.full((n, len(genres)), 0.1 / max(1, len(genres) - 1), np.float32)
    probs[np.arange(n), top] = 0.9
    emb = rng.normal(size=(n, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    mean = emb.mean(axis=0)
    starts = np.arange(n) * 3.0
    return Timeline(
        path, genres, starts, starts + 3.0, probs, emb, probs.mean(axis=0), mean / np.linalg.norm(mean), 3.0 * n
    )


def test_segments_distribution_and_rows():
    tl = timeline("a.wav", ["pop", "funk", "jazz"], [0, 0, 1, 1, 1, 0])
    assert [(s["genre"], s["start_s"], s["end_s"], s["clips"]) for s in segments(tl)] == [
        ("pop", 0.0, 6.0, 2),
        ("funk", 6.0, 15.0, 3),
        ("pop", 15.0, 18.0, 1),
    ]
    assert distribution(tl) == {"pop": 0.5, "funk": 0.5, "jazz": 0.0}
    rows = clip_rows(tl)
    assert [r["genre"] for r in rows] == ["pop", "pop", "funk", "funk", "funk", "pop"]
    assert list(rows[0]) == ["start_s", "end_s", "genre", "confidence", "probabilities"]
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-5 for r in rows)


def test_compare_with_itself_and_the_summary_sentence():
    genres = ["pop", "funk"]
    a = timeline("original.wav", genres, [0] * 9 + [1], seed=1)
    doc = compare(a, a)
    assert doc["similarity"]["tracks"] == pytest.approx(1.0, abs=1e-6)
    assert doc["similarity"]["clip_pairs"][0]["similarity"] == pytest.approx(1.0, abs=1e-6)
    assert doc["a"]["distribution"] == doc["b"]["distribution"]
    assert doc["summary"].startswith("A and B have the same genre distribution: pop 90 %, funk 10 %.")

    b = timeline("remix.wav", genres, [0, 0, 1, 1, 1, 1, 1, 1, 1, 0], seed=2)
    doc = compare(a, b)
    assert doc["summary"].startswith("B spends 70 % of its clips in funk, A 10 %.")
    assert "top genre changes 2x" in doc["summary"]
    pairs = doc["similarity"]["clip_pairs"]
    sims = a.embeddings @ b.embeddings.T
    assert pairs[0]["similarity"] == pytest.approx(float(sims.max()), abs=1e-6)
    assert [p["similarity"] for p in pairs] == sorted((p["similarity"] for p in pairs), reverse=True)
    json.dumps(doc)  # the --format json document is plain JSON


def test_pictures_are_pngs_and_names_are_unique():
    a = timeline("x/a.wav", ["pop", "funk"], [0, 1, 1])
    b = timeline("y/b.mp3", ["pop", "funk"], [1, 1, 1, 0, 0])
    for data in (timeline_png(a), compare_png(a, b, compare(a, b))):
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
    assert png_names(["x/a.wav", "y/a.mp3", "s3://b/k/c.flac", "a"]) == ["a.png", "a-2.png", "c.png", "a-3.png"]


# -- with the tiny trained model (conftest.trained) -----------------------------------------
@pytest.fixture(scope="module")
def files(tmp_path_factory, trained):
    """(config, model_id, folder) with a 3.0 s, a 9.2 s, a too-short and an undecodable file."""
    _root, cfg, model_id = trained
    folder = tmp_path_factory.mktemp("timeline")
    rng = np.random.default_rng(5)
    write_audio(folder / "three.wav", synthetic_track("low", rng, seconds=3.0))
    write_audio(folder / "long.flac", synthetic_track("noise", rng, seconds=9.2))
    write_audio(folder / "short.wav", synthetic_track("high", rng, seconds=1.0))
    (folder / "bad.mp3").write_text("not audio\n" * 50)
    return cfg, model_id, folder


def test_classify_timeline_follows_the_clips(files):
    cfg, model_id, folder = files
    results = classify_files(cfg, [str(folder / "three.wav"), str(folder / "long.flac")], model_id, timeline=True)
    for r, seconds in zip(results, (3.0, 9.2), strict=True):
        assert list(r) == ["path", "genre", "confidence", "probabilities", "clips", "timeline"]
        tl = r["timeline"]
        start_s, end_s = clip_times(int(round(seconds * AUDIO.sample_rate)), AUDIO)
        assert len(tl) == r["clips"] == len(start_s)
        np.testing.assert_allclose([c["start_s"] for c in tl], start_s, atol=1e-4)
        np.testing.assert_allclose([c["end_s"] for c in tl], end_s, atol=1e-4)
        probs = np.array([list(c["probabilities"].values()) for c in tl])
        np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
        assert [c["genre"] for c in tl] == [TRAINED_GENRES[i] for i in probs.argmax(axis=1)]
        # The track-level result is the mean of the clips it lists.
        np.testing.assert_allclose(probs.mean(axis=0), list(r["probabilities"].values()), atol=1e-5)
    assert "timeline" not in classify_files(cfg, [str(folder / "three.wav")], model_id)[0]


def _conf(cfg, folder):
    """A YAML file for the CLI with this config's storage and catalogue."""
    conf = folder / "cli.yaml"
    conf.write_text(
        f"storage: {{root: {cfg.storage.root}}}\n"
        f"catalogue: {{audio_uri: {cfg.catalogue.audio_uri}, labels_uri: null}}\n"
        f"genres: {TRAINED_GENRES}\n"
    )
    return str(conf)


def test_classify_cli_writes_one_png_per_classified_file(files, tmp_path, capsys):
    cfg, model_id, folder = files
    out = tmp_path / "pngs"
    inputs = [str(folder / "three.wav"), str(folder / "short.wav"), str(folder / "long.flac")]
    args = ["classify", *inputs, "--conf", _conf(cfg, tmp_path), "--format", "jsonl", "--timeline-png", str(out)]
    code = cli.main(args)
    captured = capsys.readouterr()
    assert code == 1
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert [len(r.get("timeline", [])) for r in lines] == [1, 0, 4]
    assert "too short" in lines[1]["error"]
    assert captured.err.strip().splitlines() == [f"genrecast classify: {inputs[1]}: {lines[1]['error']}"]
    pngs = sorted(p.name for p in out.iterdir())
    assert pngs == ["long.png", "three.png"]  # none for the failed file, no temporary leftovers
    assert all((out / p).read_bytes().startswith(PNG_MAGIC) and (out / p).stat().st_size > 5000 for p in pngs)


def test_compare_cli_by_track_id_and_file(files, trained, tmp_path, capsys):
    cfg, model_id, folder = files
    conf = _conf(cfg, tmp_path)
    track = "low/low01"
    same_file = f"{cfg.catalogue.audio_uri}/{track}.wav"
    png = tmp_path / "cmp.png"
    assert cli.main(["compare", track, same_file, "--conf", conf, "--format", "json", "--png", str(png)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["a"]["path"] == track and doc["b"]["path"] == same_file
    assert doc["similarity"]["tracks"] == pytest.approx(1.0, abs=1e-5)
    assert doc["a"]["distribution"] == doc["b"]["distribution"]
    assert doc["a"]["timeline"] == doc["b"]["timeline"]
    assert png.read_bytes().startswith(PNG_MAGIC)

    other = ["compare", track, str(folder / "long.flac"), "--conf", conf]
    assert cli.main(other) == 0
    table = capsys.readouterr().out
    assert cli.main([*other, "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    lines = table.splitlines()
    assert lines[0].startswith(f"A: {track}  {doc['a']['genre']} ") and lines[-1] == doc["summary"]
    assert f"embedding cosine similarity: tracks {doc['similarity']['tracks']:.3f}" in lines
    axis = [ln.split() for ln in lines if re.match(r"^\s*\d+\.\d-\s*\d+\.\d  ", ln)]  # one time axis, 0-9.2 s
    assert axis[0][0] == "0.0-" and axis[-1][1] == "9.2" and axis[-1][2] == "-"  # A (4.5 s) has ended


@pytest.mark.parametrize(
    ("b", "code", "message"),
    [
        ("no/such-track", 2, "no/such-track: no such file, and no track with that id in "),
        ("short.wav", 1, "too short"),
        ("bad.mp3", 1, "undecodable"),
    ],
)
def test_compare_bad_input_is_one_line_and_writes_nothing(files, tmp_path, capsys, b, code, message):
    cfg, model_id, folder = files
    b = str(folder / b) if "." in b else b
    png = tmp_path / "cmp.png"
    args = ["compare", str(folder / "three.wav"), b, "--conf", _conf(cfg, tmp_path), "--png", str(png)]
    assert cli.main(args) == code
    captured = capsys.readouterr()
    assert captured.out == "" and not png.exists()
    assert len(captured.err.strip().splitlines()) == 1 and message in captured.err


def test_compare_track_id_with_two_files_is_refused(files, tmp_path, capsys):
    cfg, model_id, folder = files
    audio = tmp_path / "audio"
    shutil.copytree(cfg.catalogue.audio_uri, audio)
    shutil.copy(audio / "low/low01.wav", audio / "low/low01.flac")
    conf = tmp_path / "two.yaml"
    conf.write_text(
        f"storage: {{root: {cfg.storage.root}}}\ncatalogue: {{audio_uri: {audio}, labels_uri: null}}\n"
        f"genres: {TRAINED_GENRES}\n"
    )
    assert cli.main(["compare", "low/low01", "low/low02", "--conf", str(conf)]) == 2
    assert "track id 'low/low01' names 2 files" in capsys.readouterr().err
