"""``genrecast similar``: look-ups without Spark. ``--track`` reads the stored neighbours table
(one part file: the track's bucket) and the genres it needs; ``--audio`` embeds a new file with
the model and searches the scores table's embeddings exactly (cold start)."""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np

from genrecast import commit, registry
from genrecast.catalogue import load_labels, validate_track_id
from genrecast.config import Config
from genrecast.dataset import neighbours_uri, scores_uri
from genrecast.errors import ConfigError, JobError
from genrecast.neighbours import Exclusion, exact_topk, group_keys
from genrecast.neighbours_table import bucket_of, part_bucket, read_scores
from genrecast.storage import Storage, normalize_uri

log = logging.getLogger(__name__)


def _row(rank: int, track_id: str, similarity: float, genre: str | None) -> dict[str, Any]:
    """One output row of ``similar`` (the jsonl keys)."""
    return {"rank": int(rank), "track_id": track_id, "similarity": round(float(similarity), 6), "genre": genre}


def _genres_for(cfg: Config, storage: Storage, model_id: str, track_ids: list[str]) -> dict[str, str | None]:
    """labels.csv genre where known, else the model's predicted genre from the scores table: only
    its ``track_id`` and ``genre`` columns, file by file until every missing track is found."""
    labels, _ = load_labels(storage, cfg.catalogue.labels_uri, cfg.genres)
    out: dict[str, str | None] = {t: labels[t].genre for t in track_ids if t in labels}
    missing = set(track_ids) - set(out)
    if missing:

        def predicted(files: list[str]) -> dict[str, str]:
            found: dict[str, str] = {}
            for f in files:
                t = storage.read_parquet(f, columns=["track_id", "genre"])
                for tid, g in zip(t.column("track_id").to_pylist(), t.column("genre").to_pylist(), strict=True):
                    if tid in missing:
                        found[tid] = g
                if len(found) == len(missing):
                    break  # the rest of the table holds nothing we need
            return found

        out.update(commit.read_snapshot(storage, scores_uri(cfg, model_id), predicted))
    return {t: out.get(t) for t in track_ids}


def similar_for_track(cfg: Config, track_id: str, k: int = 10, model: str = "latest") -> list[dict[str, Any]]:
    """Rows ``{rank, track_id, similarity, genre}`` of a scored track, read from the stored
    neighbours table (only the part file of the track's bucket)."""
    import pyarrow.compute as pc

    validate_track_id(track_id)
    if k < 1:
        raise ConfigError(f"k must be at least 1, not {k}")
    storage = Storage.from_config(cfg)
    model_id = registry.resolve_model_id(cfg, model)
    table_uri = neighbours_uri(cfg, model_id)

    def matching(files: list[str]) -> list[Any]:
        if not files:
            raise JobError(f"no neighbours table for model {model_id} at {table_uri}: run genrecast recommend")
        hits = []
        for f in files:
            part = part_bucket(f)
            if part is None or part[0] == bucket_of(track_id, part[1]):
                t = storage.read_parquet(f)
                hits.append(t.filter(pc.equal(t.column("track_id"), track_id)))
        return hits

    hits = commit.read_snapshot(storage, table_uri, matching)
    rows = sorted((r for t in hits for r in t.to_pylist()), key=lambda r: r["rank"])
    if not rows:
        raise JobError(f"track {track_id!r} is not in the neighbours table {table_uri} (not scored by {model_id}?)")
    if k > len(rows):
        log.warning("neighbours table holds %d neighbours per track; re-run genrecast recommend -k %d", len(rows), k)
    rows = rows[:k]
    genres = _genres_for(cfg, storage, model_id, [r["neighbour_id"] for r in rows])
    return [_row(r["rank"], r["neighbour_id"], r["similarity"], genres[r["neighbour_id"]]) for r in rows]


def embed_audio_bytes(cfg: Config, data: bytes, uri: str, predictor: Any) -> np.ndarray:
    """(d,) float32 unit embedding of one audio file, made exactly as the scoring job makes it
    (:func:`genrecast.features.track_clips_length_harmony`, then :class:`genrecast.score.Predictor`)."""
    from genrecast.audio import AudioRejected
    from genrecast.features import track_clips_length_harmony

    try:
        clips, _samples, stats = track_clips_length_harmony(data, uri, cfg.audio, cfg.ingest, predictor.harmony)
    except AudioRejected as exc:
        raise JobError(f"{uri}: {exc}") from None
    return predictor.predict_tracks([clips], None if stats is None else [stats])[0][1]


def similar_for_audio(cfg: Config, path_or_uri: str, k: int = 10, model: str = "latest") -> list[dict[str, Any]]:
    """Cold start: rows ``{rank, track_id, similarity, genre}`` of catalogue tracks most similar
    to a new audio file, by exact search over the scores table's embeddings. A catalogue track
    with the very same audio bytes is left out (it is the file itself)."""
    import hashlib

    from genrecast.score import predictor_for

    if k < 1:
        raise ConfigError(f"k must be at least 1, not {k}")
    storage = Storage.from_config(cfg)
    uri = normalize_uri(path_or_uri)
    try:
        data = storage.read_bytes(uri)
    except (FileNotFoundError, IsADirectoryError):
        raise JobError(f"audio file not found: {uri}") from None
    model_id = registry.resolve_model_id(cfg, model)
    frame = read_scores(storage, scores_uri(cfg, model_id), model_id)
    meta = registry.read_model_json(cfg, model_id)
    registry.check_audio_params(meta, cfg.audio, model_id)
    vec = embed_audio_bytes(cfg, data, uri, predictor_for(cfg, model_id, meta["genres"], threads=None))
    if vec.shape[0] != frame.embeddings.shape[1]:
        raise JobError(
            f"model {model_id} embeds {uri} in {vec.shape[0]} dimensions, its scores table holds "
            f"{frame.embeddings.shape[1]}: re-run genrecast score --mode backfill"
        )
    sha = hashlib.sha256(data).hexdigest()
    keys = group_keys([sha, *frame.shas])
    idx, sim = exact_topk(vec[None, :], frame.embeddings, k, [Exclusion(keys[:1], keys[1:])])
    labels, _ = load_labels(storage, cfg.catalogue.labels_uri, cfg.genres)
    rows = []
    for rank, (i, s) in enumerate(zip(idx[0], sim[0], strict=True), start=1):
        if i < 0:
            break
        t = frame.track_ids[i]
        rows.append(_row(rank, t, s, labels[t].genre if t in labels else frame.genres[i]))
    return rows


def format_similar(rows: list[dict[str, Any]], fmt: str = "table") -> str:
    """``table``: aligned columns for people; ``jsonl``: one JSON object a line for scripts."""
    if fmt == "jsonl":
        return "\n".join(json.dumps(r, ensure_ascii=False) for r in rows)
    if fmt != "table":
        raise ConfigError(f"unknown format {fmt!r} (table or jsonl)")
    width = max([5, *(len(r["genre"] or "-") for r in rows)])
    lines = [f"{'rank':>4}  {'similarity':>10}  {'genre':<{width}}  track_id"]
    lines += [f"{r['rank']:>4}  {r['similarity']:>10.4f}  {r['genre'] or '-':<{width}}  {r['track_id']}" for r in rows]
    return "\n".join(lines)
