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

from genrecast.config import Config
from genrecast.errors import JobError
from genrecast.storage import Storage


def stored_track_harmony(storage: Storage, cfg: Config, track_id: str, uri: str, sha: str) -> np.ndarray:
    """(53,) float32 harmony statistics of one ingested track, from its audio at ``uri``. The audio
    must still be the bytes the clips were made from (``sha``, the dataset's ``audio_sha256``):
    statistics of other audio beside these clips would train or test on a mixture."""
    from genrecast.features import usable_samples
    from genrecast.harmony import harmony_stats

    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        raise JobError(f"track {track_id}: its audio {uri} is gone since ingest; run genrecast ingest") from None
    if hashlib.sha256(data).hexdigest() != sha:
        raise JobError(f"track {track_id}: its audio {uri} changed since ingest; run genrecast ingest")
    return harmony_stats(usable_samples(data, uri, cfg.audio, cfg.ingest), cfg.audio.sample_rate)


def _file_harmony(uri: str, cfg: Config, storage: Storage, wanted: Container[str]) -> Iterator[tuple[str, np.ndarray]]:
    """Executor: the ``wanted`` tracks of one mel part file -> (track_id, statistics), each track once."""
    columns = ["track_id", "source_uri", "audio_sha256"]
    seen: set[str] = set()
    for table in storage.iter_row_groups(uri, columns, where=("track_id", wanted)):
        for track_id, source, sha in zip(*(table.column(c).to_pylist() for c in columns), strict=True):
            if track_id not in seen:
                seen.add(track_id)
                yield track_id, stored_track_harmony(storage, cfg, track_id, source, sha)


def harmony_pass(spark: Any, cfg: Config, files: list[str], tracks: frozenset[str]) -> dict[str, np.ndarray]:
    """Spark: the harmony statistics of ``tracks`` (ids in the mel dataset ``files``), a task per
    file -> {track_id: (53,) float32}. The driver holds 212 bytes a track: train's labelled
    tracks, not the catalogue. Raises :class:`JobError` naming a track it found no clips of."""
    storage = Storage.from_config(cfg)
    out = dict(
        spark.sparkContext.parallelize(files, max(1, len(files)))
        .flatMap(lambda f: _file_harmony(f, cfg, storage, tracks))
        .reduceByKey(lambda a, _b: a)  # a track written twice (two files) gets one row
        .collect()
    )
    missing = sorted(tracks - out.keys())
    if missing:
        raise JobError(f"harmony statistics: no clips of track {missing[0]} ({len(missing)} in all) in the mel dataset")
    return out
