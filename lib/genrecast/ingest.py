"""Ingest job: catalogue audio -> Spark executors -> Petastorm mel dataset (+ rejects).

Flow (driver): take the dataset's, ingest rejects' and manifest's leases -> recover interrupted
commits -> plan on Spark (:mod:`genrecast.ingest_plan`: the listing, labels, dataset index,
manifest and rejects meet as DataFrames; :func:`decide_ingest` per track on the executors) ->
one Spark task per batch of the tracks to fetch, built on the executors -> one journalled commit
of the data files with their Petastorm metadata -> the rejects -> the manifest, whose parts the
executors write. Executors do all byte I/O and DSP (the plan's reads,
:func:`ingest_partition`); the driver holds counts, file lists, and what the tasks report back
(tracks written, rejects: proportional to the change, not to the catalogue).
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from genrecast import commit, lease
from genrecast.catalogue import Label, Track, load_labels
from genrecast.config import AudioConf, Config, IngestConf
from genrecast.dataset import (
    METADATA,
    METADATA_SHA_KEY,
    manifest_uri,
    mel_rows_per_group,
    mels_uri,
    metadata_row_groups,
    petastorm_metadata,
    reject_key,
    rejects_uri,
)
from genrecast.errors import ConfigError, JobError
from genrecast.features import features_key, log_mel_clips, usable_samples, warm_up
from genrecast.manifest import Entry, manifest_table
from genrecast.schema import mel_rows_table, mel_schema, rejects_table
from genrecast.storage import Storage, join
from genrecast.tasks import (
    FETCH,
    KEPT_REJECTED,
    KEPT_UNCHANGED,
    PartitionResult,
    Plan,
    TrackTask,
    changed_inputs,
    spread,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
# In the dataset's _table.json: the features_key of the rows its last commit added (for rows whose
# manifest row is missing because a run was killed between the two commits).
FEATURES_KEY = "features_key"


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
        rows_per_group = mel_rows_per_group(audio, ingest)
        res.tmp_file = f"{tmp_prefix}/part-{index:05d}.parquet"
        storage.write_parquet(res.tmp_file, table, row_group_size=rows_per_group)
        res.seconds["write"] += time.perf_counter() - t4
    yield res


def stage_metadata(
    spark: Any, storage: Storage, cfg: Config, run_id: str, add: list[tuple[str, str]], remove: list[str]
) -> tuple[list[tuple[str, str]], dict[str, str | None]]:
    """Stage the ``_common_metadata`` valid for the table as it will be after this commit (the
    current files minus ``remove`` plus the finals of ``add``): ``([(tmp, final)], state)`` for
    :func:`genrecast.commit.commit`, ``([], {})`` when the committed metadata already fits, or
    ``([], {METADATA_SHA_KEY: None})`` when no file is left (the caller removes the metadata).

    Row groups of files already committed come from the committed metadata (its hash checked);
    only new files' footers are read (two range reads each). A dataset without a trusted
    metadata file (written before this version) has every footer read once, on executors.
    """
    ds_uri = mels_uri(cfg)
    meta_uri = join(ds_uri, METADATA)
    state = commit.read_state(storage, ds_uri)
    current = storage.read_versioned(meta_uri)
    trusted = current is not None and hashlib.sha256(current[0]).hexdigest() == state.get(METADATA_SHA_KEY)
    if trusted and not add and not remove:
        return [], {}

    def rel(uri: str) -> str:
        return uri[len(ds_uri) + 1 :]

    removed = {rel(u) for u in remove}
    if trusted:
        row_groups = {f: n for f, n in metadata_row_groups(current[0]).items() if f not in removed}
    else:
        files = [f for f in commit.table_files(storage, ds_uri) if rel(f) not in removed]
        pairs = (
            spark.sparkContext.parallelize(files, max(1, min(len(files), 64)))
            .map(lambda f: (rel(f), storage.parquet_metadata(f).num_row_groups))
            .collect()
            if files
            else []
        )
        row_groups = dict(pairs)
    arrow_schema = None
    for tmp, final in add:
        footer = storage.parquet_metadata(tmp)
        row_groups[rel(final)] = footer.num_row_groups
        arrow_schema = arrow_schema or footer.schema.to_arrow_schema()
    if not row_groups:  # an emptied table (every track deleted): its metadata goes too
        return [], ({METADATA_SHA_KEY: None} if current is not None else {})
    if arrow_schema is None:  # only removals: same schema as before
        import pyarrow.parquet as pq

        if current is not None:
            arrow_schema = pq.read_metadata(io.BytesIO(current[0])).schema.to_arrow_schema()
        else:
            arrow_schema = storage.parquet_metadata(join(ds_uri, next(iter(row_groups)))).schema.to_arrow_schema()
    data = petastorm_metadata(mel_schema(cfg.audio), arrow_schema, row_groups)
    tmp = commit.tmp_uri(ds_uri, run_id, METADATA)
    storage.write_bytes(tmp, data)
    return [(tmp, meta_uri)], {METADATA_SHA_KEY: hashlib.sha256(data).hexdigest()}


def read_labels(
    storage: Storage,
    cfg: Config,
    labelled_tracks: int,
    labels_missing_ok: bool,
    load: Callable[[Storage, str, list[str]], tuple[T, list[dict]]] = load_labels,
) -> tuple[T | None, list[dict]]:
    """labels.csv through ``load`` (:func:`~genrecast.catalogue.load_labels`, or ingest's
    executor-side parse), refusing (exit 2) to go on without it while ``labelled_tracks`` in the
    dataset have a genre that an unlabelled run would erase (a typo in the URI, a lost file).
    ``(None, [])`` when the run goes on unlabelled."""
    uri = cfg.catalogue.labels_uri
    problem = None
    try:
        if uri and not storage.exists(uri):
            problem = "is missing"
        elif uri:
            return load(storage, uri, cfg.genres)
        else:
            return None, []
    except JobError as exc:
        problem = f"is unreadable ({exc})"
    if labelled_tracks and not labels_missing_ok:
        raise ConfigError(
            f"labels file {uri} {problem}, but {labelled_tracks} track(s) in the dataset are labelled: refusing to "
            "erase their genres (fix catalogue.labels_uri, or pass --labels-missing-ok)"
        )
    log.warning("ingest: labels file %s %s: ingesting without labels", uri, problem)
    return None, []


# track_id -> (audio_sha256, genre, files holding its rows), from the dataset's index rows
TrackIndex = dict[str, tuple[str, str | None, set[str]]]


def track_index(rows: Iterable[tuple[str, str, str | None, str]]) -> TrackIndex:
    """Group :func:`genrecast.dataset.index_dataset` rows ``(track_id, sha256, genre, file)`` by
    track (the first row's sha256 and genre; every file)."""
    index: TrackIndex = {}
    for track_id, sha, genre, f in rows:
        index.setdefault(track_id, (sha, genre, set()))[2].add(f)
    return index


@dataclass
class IngestPlan(Plan):
    """A :class:`~genrecast.tasks.Plan` with the manifest rows of the tracks not fetched
    (``kept``, as they are: skipped_unchanged + skipped_rejected of them)."""

    kept: list[Entry] = field(default_factory=list)


def plan_ingest(
    tracks: Iterable[Track],
    labels: dict[str, Label],
    index: TrackIndex,
    manifest: dict[str, Entry],
    rejected_shas: dict[str, str],
    fkey: str,
    ds_key: str | None,
    full: bool = False,
) -> IngestPlan:
    """Decide, from metadata alone (no Spark, no storage), what an ingest run fetches: the
    reference for :mod:`genrecast.ingest_plan`, which applies the same :func:`decide_ingest`
    per row on Spark (tests/test_ingest_plan.py checks that both agree).

    ``index``: the mel dataset by track (:func:`track_index`); ``manifest``: the committed
    manifest; ``rejected_shas``: ``{source_uri: sha256}`` rejected under ``fkey`` (the current
    features_key); ``ds_key``: the features_key of the dataset's last commit. ``full``: ignore
    all of those (every track fetched, nothing skipped on the executors either).

    A track whose file (uri, size, ETag/mtime), label and feature settings are those of its
    manifest row, and whose outcome is still on record, is kept. Otherwise it is fetched and
    hashed; its task's ``skip_sha`` (bytes whose clips are held under ``fkey`` with this label)
    lets the executor skip equal bytes without decoding (a touched file).
    """
    if full:
        index, manifest, rejected_shas = {}, {}, {}
    plan = IngestPlan()
    for t in tracks:
        genre = labels[t.track_id].genre if t.track_id in labels else None
        have = index.get(t.track_id)
        m = manifest.get(t.track_id)
        kind, skip_sha = decide_ingest(t, genre, have[:2] if have else None, m, rejected_shas.get(t.uri), fkey, ds_key)
        if kind == FETCH:
            plan.tasks.append(TrackTask(t.track_id, t.uri, genre, skip_sha, rejected_shas.get(t.uri)))
        elif kind == KEPT_UNCHANGED:
            plan.skipped_unchanged += 1
            plan.kept.append(m)
        else:
            plan.skipped_rejected += 1
            plan.kept.append(m)
    plan.tasks = spread(plan.tasks)
    return plan


def decide_ingest(
    t: Track,
    genre: str | None,
    have: tuple[str, str | None] | None,
    m: Entry | None,
    rejected_sha: str | None,
    fkey: str,
    ds_key: str | None,
) -> tuple[str, str | None]:
    """One track's plan (see :func:`plan_ingest`; the Spark planning in
    :mod:`genrecast.ingest_plan` applies this per row): ``(FETCH, skip_sha)``,
    ``(KEPT_UNCHANGED, None)`` or ``(KEPT_REJECTED, None)``. ``have``: (sha256, genre) of the
    track in the mel dataset; ``m``: its manifest row; ``rejected_sha``: its source's reject
    under ``fkey``."""
    current = m is not None and m.features_key == fkey
    if m is not None:
        held_ok = current and m.status == "ok" and have is not None and have[0] == m.sha256
    else:  # rows a run killed before its manifest commit wrote: under the last commit's key
        held_ok = have is not None and ds_key == fkey
    if current and m.same_listing(t) and m.genre == genre:
        if held_ok and have[1] == genre:
            return KEPT_UNCHANGED, None
        if m.status == "rejected" and rejected_sha == m.sha256:
            return KEPT_REJECTED, None
    # Rows made under other feature settings (or of unknown ones) are never kept as they are.
    return FETCH, (have[0] if held_ok and have[1] == genre else None)


@dataclass
class IngestSummary:
    run_id: str
    tracks_listed: int = 0
    tracks_ok: int = 0
    clips: int = 0
    rejected: Counter = field(default_factory=Counter)  # by stage
    skipped_unchanged: int = 0
    skipped_rejected: int = 0
    fetched: int = 0  # audio files read (the rest were known unchanged from the manifest)
    deleted: int = 0  # tracks gone from the listing, their rows dropped
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    stage_seconds: Counter = field(default_factory=Counter)
    dataset_uri: str = ""
    rejects_uri: str = ""
    manifest_uri: str = ""
    features_key: str = ""

    def lines(self) -> list[str]:
        rej = sum(self.rejected.values())
        by_stage = ", ".join(f"{k} {v}" for k, v in sorted(self.rejected.items()))
        out = [
            f"ingest {self.run_id}: {self.tracks_listed} tracks listed in {self.wall_seconds:.1f}s",
            f"  ok {self.tracks_ok} ({self.clips} clips, {self.audio_seconds:.0f}s of audio)",
            f"  rejected {rej}" + (f" ({by_stage})" if rej else ""),
            f"  skipped {self.skipped_unchanged + self.skipped_rejected} "
            f"({self.skipped_unchanged} unchanged, {self.skipped_rejected} previously rejected)",
            f"  fetched {self.fetched} audio file(s); deleted {self.deleted} (gone from the catalogue)",
            f"  dataset {self.dataset_uri}",
            f"  rejects {self.rejects_uri}",
            f"  manifest {self.manifest_uri} (features {self.features_key})",
        ]
        if self.stage_seconds:
            spent = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(self.stage_seconds.items()))
            out.append(f"  executor time: {spent}")
        return out


def run_ingest(
    cfg: Config, spark: Any, full: bool = False, labels_missing_ok: bool = False, allow_mass_delete: bool = False
) -> IngestSummary:
    """Ingest the configured catalogue; incremental unless ``full``. Safe to kill and re-run, and
    to start twice: the dataset, ingest rejects and the manifest have one writer at a time."""
    started = time.monotonic()
    storage = Storage.from_config(cfg)
    ds_uri, rj_uri, mf_uri = mels_uri(cfg), rejects_uri(cfg, "ingest"), manifest_uri(cfg)
    run_id = commit.new_run_id()
    summary = IngestSummary(
        run_id=run_id,
        dataset_uri=ds_uri,
        rejects_uri=rj_uri,
        manifest_uri=mf_uri,
        features_key=features_key(cfg.audio, cfg.ingest),
    )
    from genrecast.plan_frames import planning

    plan_tmp = commit.tmp_uri(mf_uri, run_id, "plan")
    with (
        lease.hold(storage, cfg, run_id, "ingest", ds_uri, rj_uri, mf_uri) as leases,
        planning(spark, storage, plan_tmp) as frames,
    ):
        for uri in (ds_uri, rj_uri, mf_uri):
            commit.recover(storage, uri, leases[uri])
        _ingest(cfg, spark, storage, summary, full, labels_missing_ok, allow_mass_delete, leases, frames)
    summary.wall_seconds = time.monotonic() - started
    return summary


def _ingest(
    cfg: Config,
    spark: Any,
    storage: Storage,
    summary: IngestSummary,
    full: bool,
    labels_missing_ok: bool,
    allow_mass_delete: bool,
    leases: dict[str, lease.TableLease],
    frames: list[Any],
) -> None:
    """Plan on Spark (:mod:`genrecast.ingest_plan`), run the tasks, commit. The driver holds
    counts, the partitions' results and rejects (proportional to the change, not the catalogue)
    and the table's file list; the plan's staged files go with the manifest's tmp folder."""
    from genrecast import ingest_plan as sp
    from genrecast import plan_frames as pf

    started = time.monotonic()
    ds_uri, rj_uri, mf_uri, run_id = summary.dataset_uri, summary.rejects_uri, summary.manifest_uri, summary.run_id
    fkey = summary.features_key
    sc = spark.sparkContext
    plan = sp.plan_on_spark(spark, storage, cfg, run_id, fkey, full, labels_missing_ok, allow_mass_delete, frames)
    index, listing, decided, counts, new_rejects = plan.index, plan.listing, plan.decided, plan.counts, plan.rejects
    old_files, reject_files = plan.old_files, plan.reject_files
    summary.deleted = plan.gone
    summary.tracks_listed = counts.listed
    summary.skipped_unchanged += counts.skipped_unchanged
    summary.skipped_rejected += counts.skipped_rejected
    summary.fetched = n_tasks = counts.fetch
    log.info(
        "ingest: planned %d listed tracks (%d labelled): %d to fetch, in %.1fs",
        counts.listed,
        counts.labelled,
        n_tasks,
        time.monotonic() - started,
    )

    results: list[IngestPartitionResult] = []
    if n_tasks:
        n_parts = max(math.ceil(n_tasks / cfg.ingest.tracks_per_partition), min(n_tasks, 2 * sc.defaultParallelism))
        tmp_prefix = f"{ds_uri}/{commit.TMP}/{run_id}"
        audio_conf, ingest_conf = cfg.audio, cfg.ingest
        rdd = pf.task_rdd(decided, n_parts).mapPartitionsWithIndex(
            lambda i, it: ingest_partition(i, it, storage, audio_conf, ingest_conf, tmp_prefix)
        )
        log.info("ingest: %d tracks in %d partitions on %s", n_tasks, n_parts, sc.master)
        from genrecast.spark import with_progress

        t_tasks = time.monotonic()
        results = with_progress(spark, "ingest", rdd.collect)
        log.info("ingest: executors done in %.1fs", time.monotonic() - t_tasks)

    written: dict[str, str] = {}
    outcome: dict[str, tuple[str, str]] = {}  # track_id -> (sha256, ok | rejected), of what was fetched
    rejected_ids: set[str] = set()
    add: list[tuple[str, str]] = []
    for r in results:
        written.update(dict(r.tracks))
        rejected_ids.update(r.rejected_ids)
        for track_id, row in zip(r.rejected_ids, r.rejects, strict=True):
            if row.get("audio_sha256"):
                row["features_key"] = fkey
                outcome[track_id] = (row["audio_sha256"], "rejected")
        outcome.update((track_id, (sha, "rejected")) for track_id, sha in r.still_rejected)
        outcome.update((track_id, (sha, "ok")) for track_id, sha in r.unchanged + r.tracks)
        summary.clips += r.clips
        summary.skipped_unchanged += r.skipped_unchanged
        summary.skipped_rejected += r.skipped_rejected
        summary.audio_seconds += r.audio_seconds
        summary.stage_seconds.update(r.seconds)
        new_rejects.extend(r.rejects)
        if r.tmp_file:
            add.append((r.tmp_file, f"{ds_uri}/part-{run_id}-{r.partition:05d}.parquet"))
    summary.tracks_ok = len(written)

    # Tracks re-ingested (new audio, label or features), whose new audio is rejected, or gone
    # from the catalogue: drop their old rows.
    if full:
        remove = old_files
    else:
        stale = pf.stale_files(spark, index, listing, set(written) | rejected_ids) if old_files else {}
        remove = sorted(stale)
        if stale:
            add += commit.stage_without(sc, storage, ds_uri, run_id, stale)
            log.info("ingest: replacing %d changed track(s) in %d file(s)", sum(map(len, stale.values())), len(stale))
    t_commit = time.monotonic()
    meta_add, meta_state = stage_metadata(spark, storage, cfg, run_id, add, remove)
    if METADATA_SHA_KEY in meta_state and meta_state[METADATA_SHA_KEY] is None:
        remove = [*remove, join(ds_uri, METADATA)]
    state = {**meta_state, FEATURES_KEY: fkey} if add or remove or meta_add else None
    commit.commit(storage, ds_uri, run_id, add + meta_add, remove, leases[ds_uri], state=state)
    log.info(
        "ingest: committed %d file(s), removed %d%s in %.1fs",
        len(add),
        len(remove),
        " with new Petastorm metadata" if meta_add else "",
        time.monotonic() - t_commit,
    )

    known_keys = set() if full else pf.known_reject_keys(spark, plan.previous, [reject_key(r) for r in new_rejects])
    fresh = [r for r in new_rejects if reject_key(r) not in known_keys]
    if fresh or (full and reject_files):
        name = f"ingest-{run_id}.parquet"
        tmp = commit.tmp_uri(rj_uri, run_id, name)
        adds = []
        if fresh:
            storage.write_parquet(tmp, rejects_table(fresh))
            adds = [(tmp, join(rj_uri, name))]
        commit.commit(storage, rj_uri, run_id, adds, reject_files if full else [], leases[rj_uri])

    # The manifest last: a run killed before this leaves it stale, which costs the next run
    # fetches and hashes, never a wrong skip (a skip also needs the dataset or rejects to agree).
    # Unchanged (nothing fetched had an outcome, every old row kept): not rewritten.
    n_kept = counts.skipped_unchanged + counts.skipped_rejected
    if outcome or n_kept != plan.manifest.count():
        new_tmp = commit.tmp_uri(mf_uri, run_id, "new")
        parts, n_rows = sp.write_manifest_parts(spark, storage, decided, outcome, fkey, new_tmp)
        if not parts:  # every track gone: an empty manifest, as a table of no rows
            parts = [join(new_tmp, "part-00000.parquet")]
            storage.write_parquet(parts[0], manifest_table([]))
        adds = [(p, join(mf_uri, f"part-{run_id}-{i:05d}.parquet")) for i, p in enumerate(parts)]
        commit.commit(storage, mf_uri, run_id, adds, commit.table_files(storage, mf_uri), leases[mf_uri])
        log.info("ingest: manifest %s: %d track(s), %d updated", mf_uri, n_rows, len(outcome))
    for r in new_rejects:
        summary.rejected[r["stage"]] += 1
    for r in fresh:
        log.warning("rejected %s (%s): %s", r["source_uri"], r["stage"], r["reason"])
