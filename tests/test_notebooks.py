"""The notebooks in notebooks/ run headless (nbclient, this venv's ipykernel) against a tiny
generated run - ingest, train, score, recommend for real - and are committed without outputs."""

from __future__ import annotations

import re

import nbformat
import numpy as np
import pytest

from genrecast.ingest import run_ingest
from genrecast.notebook_helpers import execute_notebook
from genrecast.recommend import run_recommend
from genrecast.score import run_score
from genrecast.split import TEST, LabelledTrack, assign_splits
from genrecast.train import run_train

from conftest import REPO, synthetic_track, write_audio, write_config

GENRES = ["low", "high", "noise"]
PER_GENRE = 5
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
LABELLED = [LabelledTrack(f"{kind}/{kind}{i}", kind) for kind in GENRES for i in range(PER_GENRE)]


def sides_with_twins(split, twins: list[str]) -> dict[str, str]:
    """The split training makes: the twins' identical audio joins them into one group."""
    tracks = [LabelledTrack(t.track_id, t.genre, None, "twin" if t.track_id in twins else t.track_id) for t in LABELLED]
    return assign_splits(tracks, test=split.test, val=split.val, seed=split.seed, by=split.by)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, spark):
    """(folder, model id, two test tracks of identical audio, number of test tracks) of a complete
    tiny run, config in folder/conf.yaml: 15 labelled 4-6 s tracks, one unlabelled, one undecodable file; ingested,
    a 2-epoch model, scored (backfill) and recommended (k=3)."""
    root = tmp_path_factory.mktemp("notebooks")
    cfg = write_config(
        root,
        f"genres: {GENRES}\n"
        "ingest: {tracks_per_partition: 4, row_group_size_mb: 1}\n"
        "train: {epochs: 2, batch_size: 8, workers: 1}\n",
    )
    labelled = LABELLED
    # The "low" and the "high" test-split tracks are the very same audio, so whatever the tiny
    # model says, one of them is a mistake for notebook 2 to show (and recommend sees a duplicate).
    split = cfg.train.split
    sides = assign_splits(labelled, test=split.test, val=split.val, seed=split.seed, by=split.by)
    twins = [next(t.track_id for t in labelled if t.genre == g and sides[t.track_id] == TEST) for g in GENRES[:2]]
    assert all(sides_with_twins(split, twins)[t] == TEST for t in twins)
    rng = np.random.default_rng(3)
    twin_audio = synthetic_track("high", rng, 4.5)
    for t in labelled:
        y = twin_audio if t.track_id in twins else synthetic_track(t.genre, rng, rng.uniform(4.0, 6.0))
        write_audio(root / "audio" / f"{t.track_id}.wav", y)
    write_audio(root / "audio" / "new" / "mystery.flac", synthetic_track("high", rng, 4.5))
    (root / "audio" / "bad").mkdir()
    (root / "audio" / "bad" / "text.mp3").write_text("not audio\n" * 50)
    (root / "labels.csv").write_text(
        "\n".join(["track_id,genre"] + [f"{t.track_id},{t.genre}" for t in labelled]) + "\n"
    )
    assert run_ingest(cfg, spark).tracks_ok == len(GENRES) * PER_GENRE + 1
    model_id = run_train(cfg, spark, workers=1, epochs=2).model_id
    assert run_score(cfg, spark, mode="backfill").scored == len(GENRES) * PER_GENRE + 1
    run_recommend(cfg, spark, model="latest", k=3)
    return root, model_id, twins, sum(s == TEST for s in sides_with_twins(split, twins).values())


def test_the_three_notebooks_are_there():
    assert [p.name for p in NOTEBOOKS] == [
        "01_explore_catalogue.ipynb",
        "02_model_results.ipynb",
        "03_recommendations.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebooks_are_stripped(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, f"{path.name} has no code cells"
    for cell in code:
        assert cell.outputs == [], f"{path.name} cell {cell.id}: outputs committed (run nbstripout or re-save stripped)"
        assert cell.execution_count is None, f"{path.name} cell {cell.id}: execution count committed"
    assert "notebook_config()" in code[0].source, f"{path.name} must read the config from $GENRECAST_CONF"


def _texts(nb) -> str:
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            out.append(o.get("text", "") if o.output_type == "stream" else o.get("data", {}).get("text/plain", ""))
    return "\n".join(out)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_headless_on_a_tiny_run(path, tiny_run, tmp_path, monkeypatch):
    root, model_id, twins, n_test = tiny_run
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))  # connection files
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    before = path.read_bytes()
    # Any failing cell raises nbclient's CellExecutionError, with the cell and its traceback.
    nb = execute_notebook(path, tmp_path / path.name, conf=root / "conf.yaml", timeout=120)
    assert path.read_bytes() == before, "executing must not touch the committed notebook"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code)
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    images = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert images, f"{path.name} drew nothing"
    text = _texts(nb)
    assert str(root) in text if path.name.startswith("01") else model_id in text  # the tiny run, not the demo
    if path.name.startswith("03"):  # genre over time: the tiny run has no demo cover pair
        assert "no demo cover pair in this catalogue" in text and "embedding cosine similarity: tracks" in text
    if path.name.startswith("02"):
        m = re.search(r"track accuracy ([\d.]+) on (\d+) test tracks \(report: ([\d.]+)\)", text)
        assert m and m.group(1) == m.group(3) and int(m.group(2)) == n_test, text
        shown = re.findall(r"^(\S+): labelled (\w+), heard as (\w+)$", text, re.M)  # mistakes drawn and played
        assert shown and {t for t, _true, _heard in shown} & set(twins), text
        audio = [o for c in code for o in c.outputs if "<audio" in o.get("data", {}).get("text/html", "")]
        assert audio
