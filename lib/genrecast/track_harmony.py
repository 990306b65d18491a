"""Harmony statistics of tracks already in the mel dataset, for ``train.harmony``: train, its
evaluation and the notebooks need each labelled track's :func:`genrecast.harmony.harmony_stats`
beside its clips, and the mel dataset keeps no audio. Each track's audio is fetched again from its
``source_uri`` and decoded as ingest, score and classify decode it
(:func:`genrecast.features.track_clips_length_harmony`'s samples).
"""

from __future__ import annotations

import hashlib
from collections.abc import Container, Iterator
from typing import Any

import numpy as np

from genrecast.audio import AudioRejected
from genrecast.config import Config
from genrecast.errors import JobError
from genrecast.storage import Storage


def stored_track_harmony(storage: Storage, cfg: Config, track_id: str, uri: str, sha: str) -> np.ndarray:
    """(53,) float32 harmony statistics of one ingested track, from its audio at ``uri``. The audio
    must still be the bytes the clips were made from (``sha``, the dataset's ``audio_sha256``):
    statistics of other audio beside these clips would train or test on a mixture. Raises
    :class:`JobError` naming the track when it is not (or no longer decodes)."""
    from genrecast.features import usable_samples
    from genrecast.harmony import harmony_stats

    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        raise JobError(f"track {track_id}: its audio {uri} is gone since ingest; run genrecast ingest") from None
    if hashlib.sha256(data).hexdigest() != sha:
        raise JobError(f"track {track_id}: its audio {uri} changed since ingest; run genrecast ingest")
    try:
        y = usable_samples(data, uri, cfg.audio, cfg.ingest)
    except AudioRejected as exc:  # e.g. ingest.max_seconds lowered since: the clips' settings are not these
        raise JobError(f"track {track_id}: its audio {uri} no longer passes ingest's checks ({exc})") from None
    return harmony_stats(y, cfg.audio.sample_rate)


def _file_harmony(
    uri: str, cfg: Config, storage: Storage, wanted: Container[str]
) -> Iterator[tuple[str, np.ndarray | str]]:
    """Executor: the ``wanted`` tracks of one mel part file -> (track_id, statistics, or why there
    are none), each track once. Other errors (storage after its retries) fail the task: Spark
    retries it."""
    columns = ["track_id", "source_uri", "audio_sha256"]
    seen: set[str] = set()
    for table in storage.iter_row_groups(uri, columns, where=("track_id", wanted)):
        for track_id, source, sha in zip(*(table.column(c).to_pylist() for c in columns), strict=True):
            if track_id not in seen:
                seen.add(track_id)
                try:
                    yield track_id, stored_track_harmony(storage, cfg, track_id, source, sha)
                except JobError as exc:
                    yield track_id, str(exc)


def harmony_pass(
    spark: Any, cfg: Config, files: list[str], tracks: frozenset[str], parts: int
) -> dict[str, np.ndarray]:
    """Spark: the harmony statistics of ``tracks`` (ids in the mel dataset ``files``), in ``parts``
    tasks over the files -> {track_id: (53,) float32}. The driver holds 212 bytes a track: train's
    labelled tracks, not the catalogue. Raises one :class:`JobError` naming the first track whose
    audio is gone, changed or no longer decodes, or that has no clips in ``files``."""
    storage = Storage.from_config(cfg)
    rows = (
        spark.sparkContext.parallelize(files, max(1, parts))
        .flatMap(lambda f: _file_harmony(f, cfg, storage, tracks))
        .reduceByKey(lambda a, _b: a)  # a track written twice (two files) gets one row
        .collect()
    )
    return checked_rows(rows, tracks)


def checked_rows(rows: list[tuple[str, np.ndarray | str]], tracks: frozenset[str]) -> dict[str, np.ndarray]:
    """:func:`_file_harmony`'s rows of every file -> {track_id: statistics}, or one
    :class:`JobError` naming the first track that failed or that no file held."""
    problems = sorted((t, why) for t, why in rows if isinstance(why, str))
    if problems:
        raise JobError(f"harmony statistics of {len(problems)} track(s) failed, first {problems[0][1]}")
    out = dict(rows)
    missing = sorted(tracks - out.keys())
    if missing:
        raise JobError(f"harmony statistics: no clips of track {missing[0]} ({len(missing)} in all) in the mel dataset")
    return out
