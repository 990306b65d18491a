"""Executor-side pieces shared by the per-track Spark jobs (ingest, score): the task the driver
sends for one track, what one partition reports back, and the fetch -> hash -> skip step that
both run before decoding. Small metadata only travels back to the driver, never audio."""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from genrecast.audio import AudioRejected
from genrecast.storage import Storage

log = logging.getLogger(__name__)

# A planned track's verdict (genrecast.ingest.decide_ingest, genrecast.score.decide_score).
FETCH, KEPT_UNCHANGED, KEPT_REJECTED = "fetch", "unchanged", "rejected"


@dataclass(frozen=True)
class TrackTask:
    """One track for an executor. ``genre``: its label (ingest). ``skip_sha``: the audio the job's
    table already holds for it; ``rejected_sha``: audio a previous run rejected. Either matches
    the fetched bytes -> skip."""

    track_id: str
    uri: str
    genre: str | None = None
    skip_sha: str | None = None
    rejected_sha: str | None = None


@dataclass
class Plan:
    """What a run fetches, decided on the driver from metadata alone: ``tasks`` (in
    :func:`spread` order) and how many listed tracks it skips without reading a byte."""

    tasks: list[TrackTask] = field(default_factory=list)
    skipped_unchanged: int = 0  # the job's table holds this very file's output
    skipped_rejected: int = 0  # rejected before: same file (and features)


def spread(tasks: Iterable[TrackTask]) -> list[TrackTask]:
    """Tasks in the order of their track id's sha256: catalogues are laid out by genre and long
    tracks cluster, so this spreads each folder over all partitions (deterministically) and
    every file, row group and training shard mixes genres and track lengths."""
    return sorted(tasks, key=lambda t: hashlib.sha256(t.track_id.encode()).digest())


@dataclass
class PartitionResult:
    """What one executor task reports back to the driver: ids and hashes of the tracks it
    fetched (written, unchanged, rejected), never audio - proportional to the change a run
    makes, not to the catalogue (tracks skipped from the listing never reach a task)."""

    partition: int
    tmp_file: str | None = None
    tracks: list[tuple[str, str]] = field(default_factory=list)  # (track_id, sha256) written
    clips: int = 0
    rejects: list[dict] = field(default_factory=list)  # rows for the rejects table
    rejected_ids: list[str] = field(default_factory=list)  # the tracks of those rows
    skipped_unchanged: int = 0
    skipped_rejected: int = 0
    unchanged: list[tuple[str, str]] = field(default_factory=list)  # (track_id, sha256) fetched, same audio
    still_rejected: list[tuple[str, str]] = field(default_factory=list)  # (track_id, sha256) rejected before
    seconds: Counter = field(default_factory=Counter)  # executor time by stage

    def reject(self, task: TrackTask, stage: str, reason: str, sha: str | None = None) -> None:
        row = {"source_uri": task.uri, "stage": stage, "reason": reason}
        if sha:
            row["audio_sha256"] = sha
        self.rejects.append(row)
        self.rejected_ids.append(task.track_id)

    def reject_error(self, task: TrackTask, stage: str, exc: Exception, sha: str) -> None:
        """Reject for an exception while decoding: AudioRejected carries the reason; anything
        else (a decoder bug) is logged with its traceback and must not fail the batch. A
        MemoryError is re-raised: it says nothing about the file (the executor was short of
        memory), so it fails the task and Spark retries it instead of a permanent reject."""
        if isinstance(exc, MemoryError):
            raise exc
        if isinstance(exc, AudioRejected):
            self.reject(task, stage, str(exc), sha)
        else:
            log.exception("%s: unexpected error on %s", stage, task.uri)
            self.reject(task, stage, f"error: {type(exc).__name__}: {exc}"[:300], sha)


def changed_inputs(
    storage: Storage, tasks: Iterable[TrackTask], res: PartitionResult, stage: str
) -> Iterator[tuple[TrackTask, bytes, str]]:
    """Fetch and hash each task's file; yield ``(task, bytes, sha256)`` for the ones to process.
    Unchanged and previously rejected audio is counted on ``res`` and skipped; a file gone since
    the listing is rejected. Fetch time goes to ``res.seconds["fetch"]``."""
    for task in tasks:
        t0 = time.perf_counter()
        try:
            data = storage.read_bytes(task.uri)
        except FileNotFoundError:
            # Any other error (credentials, an endpoint still down after retries) is not the
            # file's fault: it fails the task, and Spark retries it.
            res.reject(task, stage, "file disappeared after listing")
            continue
        sha = hashlib.sha256(data).hexdigest()
        res.seconds["fetch"] += time.perf_counter() - t0
        if sha == task.skip_sha:  # touched, not changed: hashed, never decoded
            res.skipped_unchanged += 1
            res.unchanged.append((task.track_id, sha))
        elif sha == task.rejected_sha:
            res.skipped_rejected += 1
            res.still_rejected.append((task.track_id, sha))
        else:
            yield task, data, sha
