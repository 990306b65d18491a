"""Classify a few audio files or URIs in one process, no Spark: the same decode + mel as ingest
and the same model call and per-track aggregation as the score job.

Results are dicts in the DESIGN.md jsonl shape ``{"path", "genre", "confidence",
"probabilities": {genre: p}, "clips"}``; a file that cannot be classified gives
``{"path", "error"}`` instead, and the others are still classified.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from genrecast import registry
from genrecast.audio import AudioRejected
from genrecast.config import Config
from genrecast.errors import GenrecastError
from genrecast.score import clip_batches, predictor_for
from genrecast.storage import Storage

log = logging.getLogger(__name__)
DECIMALS = 6  # float32 carries ~7 significant digits; more in the output would be noise


def _read_clips(storage: Storage, cfg: Config, path: str) -> np.ndarray:
    """(n_clips, n_mels, clip_frames) float32 dB of one file; raises with a one-line reason."""
    from genrecast.features import track_clips

    try:
        data = storage.read_bytes(path)
    except FileNotFoundError:
        raise AudioRejected("file not found") from None
    except IsADirectoryError:
        raise AudioRejected("is a directory, not an audio file") from None
    except PermissionError:
        raise AudioRejected("permission denied") from None
    return track_clips(data, path, cfg.audio, cfg.ingest)


def _result(path: str, genres: list[str], probs: np.ndarray, n_clips: int) -> dict[str, Any]:
    best = int(np.argmax(probs))
    return {
        "path": path,
        "genre": genres[best],
        "confidence": round(float(probs[best]), DECIMALS),
        "probabilities": {g: round(float(p), DECIMALS) for g, p in zip(genres, probs, strict=True)},
        "clips": int(n_clips),
    }


def classify_files(
    cfg: Config, paths_or_uris: Sequence[str], model: str = "latest", threads: int | None = None
) -> list[dict[str, Any]]:
    """One result dict per input, in input order (see the module docstring).

    ``model`` is a model id or ``latest``; ``threads`` caps TensorFlow's thread pools (None:
    TensorFlow's default, all cores). A bad model or config raises ConfigError; a bad file
    never raises, it yields ``{"path", "error"}``.
    """
    model_id = registry.resolve_model_id(cfg, model)
    meta = registry.read_model_json(cfg, model_id)
    registry.check_audio_params(meta, cfg.audio, model_id)
    genres = list(meta["genres"])
    storage = Storage.from_config(cfg)
    results: list[dict[str, Any] | None] = [None] * len(paths_or_uris)

    def decoded() -> Iterator[tuple[int, np.ndarray]]:  # (input position, clips)
        for i, path in enumerate(paths_or_uris):
            try:
                clips = _read_clips(storage, cfg, path)
            except (AudioRejected, GenrecastError) as exc:  # GenrecastError: e.g. an invalid URI
                results[i] = {"path": path, "error": str(exc)}
                continue
            except MemoryError:  # the process, not this input: fail loudly rather than report it as the file's
                raise
            except Exception as exc:  # storage or decoder failure on this input only: report it, go on
                log.debug("classify: %s", path, exc_info=True)
                first = (str(exc).strip().splitlines() or [""])[0]
                results[i] = {"path": path, "error": f"{type(exc).__name__}: {first}"[:300]}
                continue
            yield i, clips

    for batch in clip_batches(decoded()):  # batched across files
        predictor = predictor_for(cfg, model_id, genres, threads)
        predictions = predictor.predict_tracks([clips for _i, clips in batch])
        for (i, clips), (probs, _emb) in zip(batch, predictions, strict=True):
            results[i] = _result(paths_or_uris[i], genres, probs, len(clips))
    return [r for r in results if r is not None]


def exit_code(results: Sequence[dict[str, Any]]) -> int:
    """0 when every input was classified, 1 when any failed (the CLI's job-failure code)."""
    return 1 if any("error" in r for r in results) else 0


def format_jsonl(results: Sequence[dict[str, Any]]) -> str:
    """One JSON object per line (no trailing newline); keys in the DESIGN.md order."""
    return "\n".join(json.dumps(r, ensure_ascii=False) for r in results)


def format_table(results: Sequence[dict[str, Any]], top: int = 3) -> str:
    """A fixed-width table: path, genre, confidence, clips and the ``top`` most likely genres."""
    width = min(60, max([len("path"), *(len(r["path"]) for r in results)]))
    lines = [f"{'path':<{width}}  {'genre':<14} {'conf':>5} {'clips':>5}  top {top}"]
    for r in results:
        path = r["path"] if len(r["path"]) <= width else "..." + r["path"][-(width - 3) :]
        if "error" in r:
            lines.append(f"{path:<{width}}  ERROR: {r['error']}")
            continue
        best = sorted(r["probabilities"].items(), key=lambda kv: -kv[1])[:top]
        ranked = ", ".join(f"{g} {p:.2f}" for g, p in best)
        lines.append(f"{path:<{width}}  {r['genre']:<14} {r['confidence']:>5.2f} {r['clips']:>5}  {ranked}")
    return "\n".join(lines)
