"""Classify a few audio files or URIs in one process, no Spark: the same decode + mel as ingest
and the same model call and per-track aggregation as the score job.

Results are dicts in the DESIGN.md jsonl shape ``{"path", "genre", "confidence",
"probabilities": {genre: p}, "clips"}``, plus ``"timeline"`` (per clip, see
:func:`genrecast.timeline.clip_rows`) when asked for; a file that cannot be classified gives
``{"path", "error"}`` instead, and the others are still classified. :func:`track_timelines`
gives the per-clip detail itself (for pictures and ``genrecast compare``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from genrecast import registry
from genrecast.audio import AudioRejected
from genrecast.catalogue import validate_track_id
from genrecast.config import Config
from genrecast.errors import ConfigError, GenrecastError, InvalidIdentifier, JobError
from genrecast.score import clip_batches, predictor_for, predictor_options
from genrecast.storage import Storage, join
from genrecast.timeline import Timeline, clip_rows, clip_times, compare

log = logging.getLogger(__name__)
DECIMALS = 6  # float32 carries ~7 significant digits; more in the output would be noise


def _read_clips(storage: Storage, cfg: Config, path: str, harmony: bool) -> tuple[np.ndarray, int, np.ndarray | None]:
    """(n_clips, n_mels, clip_frames) float32 dB of one file, its length in samples at
    ``audio.sample_rate`` (for the clip times) and, with ``harmony``, its harmony statistics;
    raises with a one-line reason."""
    from genrecast.features import track_clips_length_harmony

    try:
        data = storage.read_bytes(path)
    except FileNotFoundError:
        raise AudioRejected("file not found") from None
    except IsADirectoryError:
        raise AudioRejected("is a directory, not an audio file") from None
    except PermissionError:
        raise AudioRejected("permission denied") from None
    return track_clips_length_harmony(data, path, cfg.audio, cfg.ingest, harmony)


def _result(path: str, genres: list[str], probs: np.ndarray, n_clips: int) -> dict[str, Any]:
    best = int(np.argmax(probs))
    return {
        "path": path,
        "genre": genres[best],
        "confidence": round(float(probs[best]), DECIMALS),
        "probabilities": {g: round(float(p), DECIMALS) for g, p in zip(genres, probs, strict=True)},
        "clips": int(n_clips),
    }


def classify_result(item: Timeline | dict[str, Any], timeline: bool = False) -> dict[str, Any]:
    """The result dict of one :func:`track_timelines` item; ``timeline`` adds the per-clip list."""
    if isinstance(item, dict):
        return item
    out = _result(item.path, item.genres, item.probabilities, len(item.probs))
    if timeline:
        out["timeline"] = clip_rows(item)
    return out


def classify_files(
    cfg: Config,
    paths_or_uris: Sequence[str],
    model: str = "latest",
    threads: int | None = None,
    timeline: bool = False,
) -> list[dict[str, Any]]:
    """One result dict per input, in input order (see the module docstring); ``timeline``
    adds each file's per-clip ``"timeline"``.

    ``model`` is a model id or ``latest``; ``threads`` caps TensorFlow's thread pools (None:
    TensorFlow's default, all cores). A bad model or config raises ConfigError; a bad file
    never raises, it yields ``{"path", "error"}``.
    """
    return [classify_result(t, timeline) for t in track_timelines(cfg, paths_or_uris, model, threads)]


def track_timelines(
    cfg: Config,
    paths_or_uris: Sequence[str],
    model: str = "latest",
    threads: int | None = None,
    names: Sequence[str] | None = None,
) -> list[Timeline | dict[str, Any]]:
    """Per input, in order: its :class:`~genrecast.timeline.Timeline` (clips, their times,
    probabilities and embeddings, and the track-level result), or ``{"path", "error"}``.
    ``names`` (default: the paths) is what results call each input, e.g. a track id."""
    names = list(names) if names is not None else list(paths_or_uris)
    model_id = registry.resolve_model_id(cfg, model)
    meta = registry.read_model_json(cfg, model_id)
    registry.check_audio_params(meta, cfg.audio, model_id)
    genres = list(meta["genres"])
    harmony = bool(predictor_options(meta)["harmony"])  # the model takes each track's harmony statistics
    storage = Storage.from_config(cfg)
    results: list[Timeline | dict[str, Any] | None] = [None] * len(paths_or_uris)
    samples: dict[int, int] = {}

    def decoded() -> Iterator[tuple[int, np.ndarray | None, np.ndarray]]:  # (input position, harmony, clips)
        for i, path in enumerate(paths_or_uris):
            try:
                clips, samples[i], stats = _read_clips(storage, cfg, path, harmony)
            except (AudioRejected, GenrecastError) as exc:  # GenrecastError: e.g. an invalid URI
                results[i] = {"path": names[i], "error": str(exc)}
                continue
            except MemoryError:  # the process, not this input: fail loudly rather than report it as the file's
                raise
            except Exception as exc:  # storage or decoder failure on this input only: report it, go on
                log.debug("classify: %s", path, exc_info=True)
                first = (str(exc).strip().splitlines() or [""])[0]
                results[i] = {"path": names[i], "error": f"{type(exc).__name__}: {first}"[:300]}
                continue
            yield i, stats, clips

    for batch in clip_batches(decoded()):  # batched across files
        predictor = predictor_for(cfg, model_id, genres, threads)
        stats = [s for _i, s, _clips in batch] if harmony else None
        predictions = predictor.predict_all([clips for _i, _s, clips in batch], harmony=stats)
        for (i, _s, _clips), (probs, embs, track_probs, track_emb) in zip(batch, predictions, strict=True):
            start_s, end_s = clip_times(samples[i], cfg.audio)
            if len(start_s) != len(probs):  # the clip cutting and the times must agree; never guess
                raise JobError(f"{names[i]}: {len(probs)} clips but {len(start_s)} clip times")
            results[i] = Timeline(
                names[i], genres, start_s, end_s, probs, embs, track_probs, track_emb,
                samples[i] / cfg.audio.sample_rate,
            )
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


def resolve_audio(cfg: Config, storage: Storage, name: str) -> str:
    """A file path / URI as given, if that file exists; else a catalogue track id: the one file
    ``<catalogue.audio_uri>/<track_id>.<ext>`` with an ingest extension (catalogue rules).
    Raises ConfigError (exit 2) for a name that is neither."""
    try:
        if storage.exists(name):
            return name
    except InvalidIdentifier:
        pass  # not a usable URI: perhaps a track id
    try:
        track_id = validate_track_id(name)
        candidates = [join(cfg.catalogue.audio_uri, f"{track_id}.{ext}") for ext in cfg.ingest.extensions]
        found = [u for u in candidates if storage.exists(u)]
    except InvalidIdentifier:
        found = []
    if len(found) > 1:
        raise ConfigError(f"track id {name!r} names {len(found)} files: {', '.join(found)}")
    if not found:
        raise ConfigError(f"{name}: no such file, and no track with that id in {cfg.catalogue.audio_uri}")
    return found[0]


def compare_tracks(
    cfg: Config, a: str, b: str, model: str = "latest", threads: int | None = None
) -> tuple[list[Timeline | dict[str, Any]], dict[str, Any] | None]:
    """``genrecast compare``: the two inputs' timelines (each a Timeline or ``{"path", "error"}``)
    and, when both could be classified, the :func:`genrecast.timeline.compare` document."""
    storage = Storage.from_config(cfg)
    uris, problems = [], []
    for name in (a, b):
        try:
            uris.append(resolve_audio(cfg, storage, name))
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:  # both named when both are wrong
        raise ConfigError("; ".join(problems))
    items = track_timelines(cfg, uris, model, threads, names=[a, b])
    if any(isinstance(t, dict) for t in items):
        return items, None
    return items, compare(items[0], items[1])  # type: ignore[arg-type]
