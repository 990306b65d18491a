"""Ingest job: catalogue audio -> Spark executors -> Petastorm mel dataset (+ rejects).

Flow (driver): recover interrupted commits -> read labels -> stream the catalogue listing ->
index what the dataset already holds -> one Spark task per batch of tracks -> journalled commit
-> Petastorm metadata. Executors do all byte I/O and DSP (:func:`ingest_partition`); the driver
only handles metadata-sized lists (URIs, hashes, counts).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from genrecast import commit
from genrecast.catalogue import Track, list_tracks, load_labels
from genrecast.config import AudioConf, Config, IngestConf
from genrecast.dataset import index_dataset, mels_uri, previous_rejects, rejects_uri
from genrecast.features import log_mel_clips, usable_samples, warm_up
from genrecast.schema import mel_rows_table, mel_schema, rejects_table
from genrecast.storage import Storage, join, petastorm_url
from genrecast.tasks import PartitionResult, TrackTask, changed_inputs

log = logging.getLogger(__name__)

UNISCHEMA_KEY = b"dataset-toolkit.unischema.v1"
ROW_GROUPS_KEY = b"dataset-toolkit.num_row_groups_per_file.v1"


@dataclass
class IngestPartitionResult(PartitionResult):
    """``seconds`` by stage: fetch / decode / mel / write."""

    audio_seconds: float = 0.0  # of the tracks written


_WARM: set[tuple] = set()


def _warm_once(audio: AudioConf) -> None:
    """librosa import + mel filterbank once per Python worker (workers are reused)."""
    key = (audio.sample_rate, audio.n_fft, audio.n_mels)
    if key not in _WARM:
        warm_up(audio)
        _WARM.add(key)


def ingest_partition(
    index: int,
    tasks: Iterable[TrackTask],
    storage: Storage,
    audio: AudioConf,
    ingest: IngestConf,
    tmp_prefix: str,
) -> Iterator[IngestPartitionResult]:
    """Executor side: fetch, hash, decode, mel, clip each track; write one Parquet file."""
    _warm_once(audio)
    schema = mel_schema(audio)
    res = IngestPartitionResult(partition=index)
    cols: dict[str, list] = {k: [] for k in ("track_id", "clip_index", "genre", "mel", "source_uri", "audio_sha256")}
    for task, data, sha in changed_inputs(storage, tasks, res, "ingest"):
        t1 = time.perf_counter()
        try:
            y = usable_samples(data, task.uri, audio, ingest)
            t2 = time.perf_counter()
            clips = log_mel_clips(y, audio)
        except Exception as exc:  # AudioRejected or a decoder bug: a reject; MemoryError: re-raised there
            res.reject_error(task, "ingest", exc, sha)
            res.seconds["decode"] += time.perf_counter() - t1
            continue
        t3 = time.perf_counter()
        res.seconds["decode"] += t2 - t1
        res.seconds["mel"] += t3 - t2
        res.audio_seconds += y.size / audio.sample_rate
        n = len(clips)
        cols["track_id"] += [task.track_id] * n
        cols["clip_index"] += list(range(n))
        cols["genre"] += [task.genre] * n
        cols["mel"] += list(clips)
        cols["source_uri"] += [task.uri] * n
        cols["audio_sha256"] += [sha] * n
        res.tracks.append((task.track_id, sha))
        res.clips += n
    if res.clips:
        t4 = time.perf_counter()
        table = mel_rows_table(
            schema,
            cols["track_id"],
            cols["clip_index"],
            cols["genre"],
            cols["mel"],
            cols["source_uri"],
            cols["audio_sha256"],
        )
        clip_bytes = audio.n_mels * audio.clip_frames * 4
        rows_per_group = max(1, ingest.row_group_size_mb * 2**20 // clip_bytes)
        res.tmp_file = f"{tmp_prefix}/part-{index:05d}.parquet"
        storage.write_parquet(res.tmp_file, table, row_group_size=rows_per_group)
        res.seconds["write"] += time.perf_counter() - t4
    yield res


def _metadata_is_current(storage: Storage, ds_uri: str, files: list[str]) -> bool:
    """True when ``_common_metadata`` holds the unischema and row-group counts for exactly ``files``."""
    import pyarrow.parquet as pq

    meta_uri = join(ds_uri, "_common_metadata")
    if not storage.exists(meta_uri):
        return False
    kv = pq.read_metadata(io.BytesIO(storage.read_bytes(meta_uri))).metadata or {}
    if UNISCHEMA_KEY not in kv or ROW_GROUPS_KEY not in kv:
        return False
    listed = set(json.loads(kv[ROW_GROUPS_KEY]))
    return listed == {f[len(ds_uri) + 1 :] for f in files}


def write_petastorm_metadata(spark: Any, storage: Storage, cfg: Config) -> None:
    """Write ``_common_metadata`` (unischema + row groups per file) with petastorm's
    ``materialize_dataset``; the data files were already committed."""
    from petastorm.etl.dataset_metadata import materialize_dataset

    ds_uri = mels_uri(cfg)
    url = petastorm_url(ds_uri)
    factory = storage.petastorm_filesystem_factory(ds_uri)
    with materialize_dataset(
        spark, url, mel_schema(cfg.audio), cfg.ingest.row_group_size_mb, filesystem_factory=factory
    ):
        pass


@dataclass
class IngestSummary:
    run_id: str
    tracks_listed: int = 0
    tracks_ok: int = 0
    clips: int = 0
    rejected: Counter = field(default_factory=Counter)  # by stage
    skipped_unchanged: int = 0
    skipped_rejected: int = 0
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    stage_seconds: Counter = field(default_factory=Counter)
    dataset_uri: str = ""
    rejects_uri: str = ""

    def lines(self) -> list[str]:
        rej = sum(self.rejected.values())
        by_stage = ", ".join(f"{k} {v}" for k, v in sorted(self.rejected.items()))
        out = [
            f"ingest {self.run_id}: {self.tracks_listed} tracks listed in {self.wall_seconds:.1f}s",
            f"  ok {self.tracks_ok} ({self.clips} clips, {self.audio_seconds:.0f}s of audio)",
            f"  rejected {rej}" + (f" ({by_stage})" if rej else ""),
            f"  skipped {self.skipped_unchanged + self.skipped_rejected} "
            f"({self.skipped_unchanged} unchanged, {self.skipped_rejected} previously rejected)",
            f"  dataset {self.dataset_uri}",
            f"  rejects {self.rejects_uri}",
        ]
        if self.stage_seconds:
            spent = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(self.stage_seconds.items()))
            out.append(f"  executor time: {spent}")
        return out


def run_ingest(cfg: Config, spark: Any, full: bool = False) -> IngestSummary:
    """Ingest the configured catalogue; incremental unless ``full``. Safe to kill and re-run."""
    started = time.monotonic()
    storage = Storage.from_config(cfg)
    ds_uri, rj_uri = mels_uri(cfg), rejects_uri(cfg)
    run_id = commit.new_run_id()
    summary = IngestSummary(run_id=run_id, dataset_uri=ds_uri, rejects_uri=rj_uri)
    sc = spark.sparkContext
    commit.recover(storage, ds_uri)
    commit.recover(storage, rj_uri)

    labels, new_rejects = load_labels(storage, cfg.catalogue.labels_uri, cfg.genres)
    tracks: list[Track] = []
    for item in list_tracks(storage, cfg.catalogue.audio_uri, cfg.ingest.extensions):
        if isinstance(item, Track):
            tracks.append(item)
        else:
            new_rejects.append(item)
    summary.tracks_listed = len(tracks)
    listed_ids = {t.track_id for t in tracks}
    for track_id in sorted(set(labels) - listed_ids):
        new_rejects.append(
            {
                "source_uri": f"{cfg.catalogue.labels_uri}#track_id={track_id}",
                "stage": "labels",
                "reason": f"labels.csv names track '{track_id}', which is not in {cfg.catalogue.audio_uri}",
            }
        )
    log.info(
        "ingest: listed %d tracks, %d labelled, in %.1fs",
        len(tracks),
        len(listed_ids & set(labels)),
        time.monotonic() - started,
    )

    old_files = commit.table_files(storage, ds_uri)
    index: dict[str, tuple[str, str | None, set[str]]] = {}
    if old_files and not full:
        for track_id, sha, genre, f in index_dataset(spark, cfg, old_files):
            entry = index.setdefault(track_id, (sha, genre, set()))
            entry[2].add(f)
    reject_files, rejected_shas, reject_keys = previous_rejects(storage, rj_uri, "ingest-")

    tasks = []
    for t in tracks:
        genre = labels[t.track_id].genre if t.track_id in labels else None
        have = index.get(t.track_id)
        skip_sha = have[0] if have and have[1] == genre else None
        tasks.append(TrackTask(t.track_id, t.uri, genre, skip_sha, None if full else rejected_shas.get(t.uri)))

    # Catalogues are laid out by genre; spread each folder over all partitions (deterministic
    # order) so every file, row group and training shard mixes genres and track lengths.
    tasks.sort(key=lambda t: hashlib.sha256(t.track_id.encode()).digest())
    results: list[IngestPartitionResult] = []
    if tasks:
        n_parts = max(
            math.ceil(len(tasks) / cfg.ingest.tracks_per_partition), min(len(tasks), 2 * sc.defaultParallelism)
        )
        tmp_prefix = f"{ds_uri}/{commit.TMP}/{run_id}"
        audio_conf, ingest_conf = cfg.audio, cfg.ingest
        rdd = sc.parallelize(tasks, n_parts).mapPartitionsWithIndex(
            lambda i, it: ingest_partition(i, it, storage, audio_conf, ingest_conf, tmp_prefix)
        )
        log.info("ingest: %d tracks in %d partitions on %s", len(tasks), n_parts, sc.master)
        from genrecast.spark import with_progress

        t_tasks = time.monotonic()
        results = with_progress(spark, "ingest", rdd.collect)
        log.info("ingest: executors done in %.1fs", time.monotonic() - t_tasks)

    written: dict[str, str] = {}
    add: list[tuple[str, str]] = []
    for r in results:
        written.update(dict(r.tracks))
        summary.clips += r.clips
        summary.skipped_unchanged += r.skipped_unchanged
        summary.skipped_rejected += r.skipped_rejected
        summary.audio_seconds += r.audio_seconds
        summary.stage_seconds.update(r.seconds)
        new_rejects.extend(r.rejects)
        if r.tmp_file:
            add.append((r.tmp_file, f"{ds_uri}/part-{run_id}-{r.partition:05d}.parquet"))
    summary.tracks_ok = len(written)

    # Tracks re-ingested with new audio or a new label: drop their old rows.
    if full:
        remove = old_files
    else:
        stale: dict[str, set[str]] = {}
        for track_id in written:
            for f in index.get(track_id, (None, None, set()))[2]:
                stale.setdefault(f, set()).add(track_id)
        remove = sorted(stale)
        if stale:
            add += commit.stage_without(sc, storage, ds_uri, run_id, stale)
            log.info("ingest: replacing %d changed track(s) in %d file(s)", sum(map(len, stale.values())), len(stale))
    t_commit = time.monotonic()
    commit.commit(storage, ds_uri, run_id, add, remove)
    files = commit.table_files(storage, ds_uri)
    if files and not _metadata_is_current(storage, ds_uri, files):
        write_petastorm_metadata(spark, storage, cfg)
    log.info(
        "ingest: committed %d file(s), removed %d, Petastorm metadata for %d file(s) in %.1fs",
        len(add),
        len(remove),
        len(files),
        time.monotonic() - t_commit,
    )

    fresh = [r for r in new_rejects if (r["source_uri"], r["stage"], r["reason"]) not in reject_keys or full]
    if fresh or (full and reject_files):
        name = f"ingest-{run_id}.parquet"
        tmp = commit.tmp_uri(rj_uri, run_id, name)
        adds = []
        if fresh:
            storage.write_parquet(tmp, rejects_table(fresh))
            adds = [(tmp, join(rj_uri, name))]
        commit.commit(storage, rj_uri, run_id, adds, reject_files if full else [])
    for r in new_rejects:
        summary.rejected[r["stage"]] += 1
    for r in fresh:
        log.warning("rejected %s (%s): %s", r["source_uri"], r["stage"], r["reason"])
    summary.wall_seconds = time.monotonic() - started
    return summary
