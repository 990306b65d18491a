"""Compaction: merge a table's small Parquet files into files of about ``compact.target_file_mb``.

Nightly appends add files to every table without bound. For one table, holding its lease: finish
an interrupted commit -> plan on the driver from file names and sizes only (:func:`plan`) ->
merge each group on a Spark executor, one tmp file per group (:func:`merge_files`; the driver
never sees a row) -> one journalled commit that adds the merged files and removes the small
ones. For the mel dataset the merged files keep ingest's row-group size and the Petastorm
``_common_metadata`` for the new file set is committed in the same step.

Files are only merged with files of the same kind, told by their name: the same prefix
(``part``, ``ingest``, ``score``: what :func:`genrecast.dataset.previous_rejects` selects by) and,
for the neighbours table, the same hash bucket (``-<bucket>-of-<buckets>``), so that a
``similar --track`` look-up still reads one file.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

from genrecast import commit, lease, registry
from genrecast.config import Config
from genrecast.dataset import mel_rows_per_group, mels_uri, neighbours_uri, rejects_uri, scores_uri, timelines_uri
from genrecast.errors import ConfigError, JobError
from genrecast.storage import Storage, join

log = logging.getLogger(__name__)

TABLES = ("mels", "scores", "timelines", "neighbours", "rejects")
MODEL_TABLES = ("scores", "timelines", "neighbours")
_BUCKET = re.compile(r"-(\d+)-of-(\d+)\.parquet$")  # recommend's part names (genrecast.neighbours_table.PART)


def group_key(name: str) -> tuple[str, str]:
    """``(prefix, bucket suffix)`` of a table file's name: only files with the same key are merged."""
    m = _BUCKET.search(name)
    suffix = f"-{int(m.group(1)):05d}-of-{int(m.group(2)):05d}" if m else ""
    return name.split("-", 1)[0], suffix


def plan(files: list[tuple[str, int]], target_bytes: int, min_files: int) -> list[list[str]]:
    """Groups of files to merge, each into one file: files under ``target_bytes``, binned in name
    order (oldest run first) up to ``target_bytes`` per group, same :func:`group_key` only. Empty
    unless at least ``min_files`` files are small; a group is never a single file."""
    small = sorted((uri, size) for uri, size in files if size < target_bytes)
    if len(small) < min_files:
        return []
    by_key: dict[tuple[str, str], list[tuple[str, int]]] = {}
    for uri, size in small:
        by_key.setdefault(group_key(uri.rsplit("/", 1)[-1]), []).append((uri, size))
    groups: list[list[str]] = []
    for key in sorted(by_key):
        current: list[str] = []
        total = 0
        for uri, size in by_key[key]:
            if current and total + size > target_bytes:
                groups.append(current)
                current, total = [], 0
            current.append(uri)
            total += size
        groups.append(current)
    return [g for g in groups if len(g) > 1]


def merge_files(storage: Storage, files: list[str], out_uri: str, rows_per_group: int | None) -> tuple[int, int]:
    """Executor side: concatenate ``files`` (one schema) into ``out_uri``; ``(rows in, rows written)``
    (the second read back from the written file's footer)."""
    import pyarrow as pa

    tables = [storage.read_parquet(f) for f in files]
    schema = tables[0].schema
    for f, t in zip(files[1:], tables[1:], strict=True):
        if not t.schema.equals(schema, check_metadata=False):
            raise JobError(f"{f}: its schema differs from {files[0]}'s: not merged (rewrite the table with a full run)")
    merged = pa.concat_tables([t.replace_schema_metadata(schema.metadata) for t in tables])
    storage.write_parquet(out_uri, merged, row_group_size=rows_per_group)
    return sum(t.num_rows for t in tables), storage.parquet_metadata(out_uri).num_rows


@dataclass
class TableResult:
    """What compaction did to one table."""

    table: str
    uri: str
    files_before: int = 0
    files_after: int = 0
    merged: int = 0  # small files replaced
    written: int = 0  # merged files written
    rows: int = 0  # rows moved into merged files
    bytes_before: int = 0
    bytes_after: int = 0
    seconds: float = 0.0
    note: str = ""  # why nothing was done, when nothing was

    def line(self) -> str:
        head = f"  {self.table:<10} {self.uri}: "
        if self.note:
            return head + self.note
        return head + (
            f"{self.files_before} -> {self.files_after} files ({self.merged} merged into {self.written}, "
            f"{self.rows} rows), {self.bytes_before / 1e6:.1f} -> {self.bytes_after / 1e6:.1f} MB "
            f"in {self.seconds:.1f}s"
        )


@dataclass
class CompactSummary:
    run_id: str
    tables: list[TableResult] = field(default_factory=list)
    wall_seconds: float = 0.0

    @property
    def files_merged(self) -> int:
        return sum(t.merged for t in self.tables)

    @property
    def files_written(self) -> int:
        return sum(t.written for t in self.tables)

    def lines(self) -> list[str]:
        head = (
            f"compact {self.run_id}: {len(self.tables)} table(s), {self.files_merged} small files merged into "
            f"{self.files_written} in {self.wall_seconds:.1f}s"
        )
        return [head, *(t.line() for t in self.tables)]


def table_uris(cfg: Config, table: str = "all", model: str | None = None) -> list[tuple[str, str]]:
    """``(name, uri)`` of the tables to compact. Model tables need a model: ``model`` (an id or
    ``latest``); with ``table='all'`` and no model given, they are left out when no model exists."""
    if table != "all" and table not in TABLES:
        raise ConfigError(f"unknown table {table!r} (one of {', '.join(TABLES)}, all)")
    wanted = TABLES if table == "all" else (table,)
    model_id = None
    if any(t in MODEL_TABLES or t == "rejects" for t in wanted):
        try:
            model_id = registry.resolve_model_id(cfg, model or "latest")
        except ConfigError:
            if model is not None or table in MODEL_TABLES:
                raise
            log.info("compact: no trained model yet: scores, timelines and neighbours left out")
    out: list[tuple[str, str]] = []
    for name in wanted:
        if name == "mels":
            out.append((name, mels_uri(cfg)))
        elif name == "rejects":
            out.append((name, rejects_uri(cfg, "ingest")))
            if model_id:
                out.append((name, rejects_uri(cfg, "score", model_id)))
        elif model_id:
            uri = {"scores": scores_uri, "timelines": timelines_uri, "neighbours": neighbours_uri}[name](cfg, model_id)
            out.append((name, uri))
    return out


def run_compact(cfg: Config, spark: Any, table: str = "all", model: str | None = None) -> CompactSummary:
    """Compact ``table`` (or all tables; model tables of ``model``, default the latest model) where
    it holds at least ``compact.min_files`` small files. One table's lease at a time; a table
    another run writes makes this wait, then stop with exit 2 (lease.TableBusy)."""
    started = time.monotonic()
    storage = Storage.from_config(cfg)
    summary = CompactSummary(run_id=commit.new_run_id())
    for name, uri in table_uris(cfg, table, model):
        summary.tables.append(compact_table(cfg, spark, storage, name, uri, summary.run_id))
    summary.wall_seconds = time.monotonic() - started
    return summary


def compact_table(cfg: Config, spark: Any, storage: Storage, name: str, uri: str, run_id: str) -> TableResult:
    """Compact one table under its lease (see the module docstring)."""
    started = time.monotonic()
    result = TableResult(name, uri)
    if not storage.exists(join(uri, commit.JOURNAL)) and not commit.table_file_sizes(storage, uri):
        result.note = "no files"  # no lease taken: it would create the table's folder
        return result
    with lease.hold(storage, cfg, run_id, "compact", uri) as leases:
        commit.recover(storage, uri, leases[uri])
        files = commit.table_file_sizes(storage, uri)
        result.files_before = result.files_after = len(files)
        result.bytes_before = result.bytes_after = sum(s for _u, s in files)
        target = int(cfg.compact.target_file_mb * 2**20)
        groups = plan(files, target, cfg.compact.min_files)
        if not groups:
            small = sum(1 for _u, s in files if s < target)
            result.note = f"{len(files)} files, {small} under {cfg.compact.target_file_mb:g} MB: nothing to merge"
            result.seconds = time.monotonic() - started
            return result
        rows_per_group = mel_rows_per_group(cfg.audio, cfg.ingest) if name == "mels" else None
        jobs = []
        for i, group in enumerate(groups):
            prefix, suffix = group_key(group[0].rsplit("/", 1)[-1])
            final = join(uri, f"{prefix}-{run_id}-c{i:05d}{suffix}.parquet")
            jobs.append((group, commit.tmp_uri(uri, run_id, final.rsplit("/", 1)[-1]), final))
        log.info("compact: %s: merging %d files into %d on executors", uri, sum(len(g) for g in groups), len(jobs))
        counts = (
            spark.sparkContext.parallelize(jobs, len(jobs))
            .map(lambda j: merge_files(storage, j[0], j[1], rows_per_group))
            .collect()
        )
        for (group, _tmp, _final), (rows_in, rows_out) in zip(jobs, counts, strict=True):
            if rows_in != rows_out:  # never commit a merge that lost rows
                raise JobError(
                    f"{uri}: merging {len(group)} files wrote {rows_out} of {rows_in} rows; nothing committed"
                )
        add = [(tmp, final) for _g, tmp, final in jobs]
        remove = [f for g in groups for f in g]
        meta_add: list[tuple[str, str]] = []
        meta_state: dict[str, str] = {}
        if name == "mels":
            from genrecast.ingest import stage_metadata

            meta_add, meta_state = stage_metadata(spark, storage, cfg, run_id, add, remove)
        added_bytes = sum(storage.size(tmp) for tmp, _f in add)
        commit.commit(storage, uri, run_id, add + meta_add, remove, leases[uri], state=meta_state or None)
    sizes = dict(files)
    result.merged, result.written, result.rows = len(remove), len(add), sum(r for r, _ in counts)
    result.files_after = len(files) - len(remove) + len(add)
    result.bytes_after = result.bytes_before - sum(sizes[f] for f in remove) + added_bytes
    result.seconds = time.monotonic() - started
    log.info("compact: %s: %d -> %d files", uri, result.files_before, result.files_after)
    return result
