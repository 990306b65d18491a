"""Crash-safe changes to a table directory (a folder of Parquet files), local or S3.

Writers put new files under ``<table>/_tmp/<run_id>/`` (readers ignore ``_`` paths), then
:func:`commit` writes a journal ``<table>/_commit.json`` naming every move and delete, applies
it, and removes it. A run killed before the journal leaves the table as it was; one killed
after is rolled forward by :func:`recover` at the start of the next run. Every step is
idempotent, so a table never holds half a run or a duplicate.
"""

from __future__ import annotations

import json
import logging
import secrets
from datetime import UTC, datetime
from typing import Any

from genrecast.storage import Storage, join

log = logging.getLogger(__name__)
JOURNAL = "_commit.json"
TMP = "_tmp"


def new_run_id() -> str:
    """Sortable, unique: ``20261122T072100Z-3fa9c1``."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def tmp_uri(table_uri: str, run_id: str, name: str) -> str:
    return join(table_uri, TMP, run_id, name)


def _apply(storage: Storage, journal: dict) -> None:
    for src, dst in journal["add"]:
        if storage.exists(src):
            storage.move(src, dst)
    for uri in journal["remove"]:
        storage.delete(uri)


def recover(storage: Storage, table_uri: str) -> bool:
    """Roll forward an interrupted commit, then drop leftovers of killed runs. True if rolled."""
    journal_uri = join(table_uri, JOURNAL)
    rolled = False
    if storage.exists(journal_uri):
        journal = json.loads(storage.read_bytes(journal_uri))
        log.warning("%s: completing interrupted commit of run %s", table_uri, journal.get("run_id"))
        _apply(storage, journal)
        storage.delete(journal_uri)
        rolled = True
    removed = storage.delete_prefix(join(table_uri, TMP))
    if removed:
        log.info("%s: removed %d file(s) left by an interrupted run", table_uri, removed)
    return rolled


def commit(storage: Storage, table_uri: str, run_id: str, add: list[tuple[str, str]], remove: list[str]) -> None:
    """Atomically (by journal) move ``add`` (tmp -> final) into the table and delete ``remove``."""
    if not add and not remove:
        return
    journal_uri = join(table_uri, JOURNAL)
    journal = {"run_id": run_id, "add": add, "remove": remove}
    storage.write_bytes(journal_uri, json.dumps(journal, indent=1).encode())
    _apply(storage, journal)
    storage.delete(journal_uri)
    storage.delete_prefix(join(table_uri, TMP, run_id))


def table_files(storage: Storage, table_uri: str) -> list[str]:
    """The table's committed Parquet files (not ``_``/``.`` paths such as tmp or metadata)."""
    out = []
    for uri, _size in storage.list_files(table_uri):
        rel = uri[len(table_uri.rstrip("/")) + 1 :]
        if rel.endswith(".parquet") and not any(p.startswith(("_", ".")) for p in rel.split("/")):
            out.append(uri)
    return out


def rewrite_without(storage: Storage, uri: str, drop: frozenset[str], out_uri: str) -> str | None:
    """Copy one table file minus the rows whose ``track_id`` is in ``drop`` (to stage a
    replacement for :func:`commit`); None if nothing is left."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = storage.read_parquet(uri)
    kept = table.filter(pc.invert(pc.is_in(table.column("track_id"), value_set=pa.array(sorted(drop)))))
    if kept.num_rows == 0:
        return None
    storage.write_parquet(out_uri, kept)
    return out_uri


def stage_without(
    sc: Any, storage: Storage, table_uri: str, run_id: str, stale: dict[str, set[str]]
) -> list[tuple[str, str]]:
    """Stage, on Spark executors, each file of ``stale`` minus its listed track ids: the
    ``(tmp, final)`` pairs for :func:`commit` (which also removes the stale files)."""
    jobs = [
        (f, frozenset(ids), tmp_uri(table_uri, run_id, f"keep-{i:05d}.parquet"))
        for i, (f, ids) in enumerate(sorted(stale.items()))
    ]
    if not jobs:
        return []
    kept = sc.parallelize(jobs, len(jobs)).map(lambda j: rewrite_without(storage, *j)).collect()
    return [(k, f"{table_uri}/part-{run_id}-keep-{i:05d}.parquet") for i, k in enumerate(kept) if k]
