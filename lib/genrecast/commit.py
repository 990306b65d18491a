"""Crash-safe changes to a table directory (a folder of Parquet files), local or S3.

Only the holder of the table's lease (:mod:`genrecast.lease`) writes. Writers put new files under
``<table>/_tmp/<run_id>/`` (readers ignore ``_`` paths), then :func:`commit` writes a journal
``<table>/_commit.json`` naming every move and delete and the table's next state, applies it, and
removes it. A run killed before the journal leaves the table as it was; one killed after is rolled
forward by :func:`recover` at the start of the next run (which holds the lease, so the dead run's
lease has expired). Every step is idempotent, so a table never holds half a run or a duplicate.

``<table>/_table.json`` (written by each commit's journal step) holds a version that grows by one
per commit and, for the mel dataset, the sha256 of the Petastorm ``_common_metadata`` committed
with the data. Readers use :func:`snapshot` to get the file set of one committed version.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from genrecast.errors import JobError
from genrecast.storage import Storage, join

if TYPE_CHECKING:
    from genrecast.lease import TableLease

log = logging.getLogger(__name__)
T = TypeVar("T")
JOURNAL = "_commit.json"
STATE = "_table.json"
TMP = "_tmp"
SNAPSHOT_ATTEMPTS = 5


def new_run_id() -> str:
    """Sortable, unique: ``20261122T072100Z-3fa9c1``."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def tmp_uri(table_uri: str, run_id: str, name: str) -> str:
    return join(table_uri, TMP, run_id, name)


def read_state(storage: Storage, table_uri: str) -> dict[str, Any]:
    """The table's ``_table.json`` (``{"version": 0}`` for a table never committed to)."""
    uri = join(table_uri, STATE)
    if not storage.exists(uri):
        return {"version": 0}
    return json.loads(storage.read_bytes(uri))


def _apply(storage: Storage, table_uri: str, journal: dict) -> None:
    for src, dst in journal["add"]:
        if storage.exists(src):
            storage.move(src, dst)
        elif not storage.exists(dst):
            # Never silently: a staged file deleted by someone else would be rows lost.
            raise JobError(
                f"{table_uri}: commit of run {journal.get('run_id')} cannot finish: staged {src} is gone "
                f"and {dst} does not exist (was the table written by a process without its lease?)"
            )
    for uri in journal["remove"]:
        storage.delete(uri)
    if "state" in journal:
        storage.write_bytes(join(table_uri, STATE), json.dumps(journal["state"], indent=1).encode())


def _require(lease: TableLease, table_uri: str) -> None:
    if lease.table_uri != table_uri:
        raise JobError(f"internal: the lease of {lease.table_uri} does not cover {table_uri}")
    lease.check()


def recover(storage: Storage, table_uri: str, lease: TableLease) -> bool:
    """Roll forward an interrupted commit, then drop the staged files of other (dead) runs.
    Needs the table's lease: any other run that staged files here has lost its lease. True if a
    commit was rolled forward."""
    _require(lease, table_uri)
    journal_uri = join(table_uri, JOURNAL)
    rolled = False
    if storage.exists(journal_uri):
        journal = json.loads(storage.read_bytes(journal_uri))
        log.warning("%s: completing interrupted commit of run %s", table_uri, journal.get("run_id"))
        _apply(storage, table_uri, journal)
        storage.delete(journal_uri)
        rolled = True
    tmp_root = join(table_uri, TMP) + "/"
    removed = 0
    for uri, _size in storage.list_files(join(table_uri, TMP)):
        if uri[len(tmp_root) :].split("/", 1)[0] != lease.run_id:
            storage.delete(uri)
            removed += 1
    if removed:
        log.info("%s: removed %d file(s) left by an interrupted run", table_uri, removed)
    return rolled


def commit(
    storage: Storage,
    table_uri: str,
    run_id: str,
    add: list[tuple[str, str]],
    remove: list[str],
    lease: TableLease,
    state: dict[str, Any] | None = None,
) -> None:
    """Atomically (by journal) move ``add`` (tmp -> final) into the table, delete ``remove`` and
    write the next ``_table.json`` (``state`` merged into ``{"version", "run_id", "committed_at"}``).
    Refuses (:class:`~genrecast.lease.LeaseLost`) unless ``lease`` still holds the table."""
    if not add and not remove and state is None:
        return
    _require(lease, table_uri)
    previous = read_state(storage, table_uri)
    next_state = {
        **{k: v for k, v in previous.items() if k not in ("version", "run_id", "committed_at")},
        **(state or {}),
        "version": int(previous.get("version", 0)) + 1,
        "run_id": run_id,
        "committed_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    journal_uri = join(table_uri, JOURNAL)
    journal = {"run_id": run_id, "add": add, "remove": remove, "state": next_state}
    storage.write_bytes(journal_uri, json.dumps(journal, indent=1).encode())
    _apply(storage, table_uri, journal)
    storage.delete(journal_uri)
    storage.delete_prefix(join(table_uri, TMP, run_id))


def snapshot(storage: Storage, table_uri: str, wait_seconds: float = 60.0, poll_seconds: float = 0.5) -> list[str]:
    """The committed files of one table version, never a commit half applied: waits while a
    commit's journal exists, and lists again if a commit happened while listing."""
    deadline = time.monotonic() + wait_seconds
    journal_uri = join(table_uri, JOURNAL)
    while True:
        if not storage.exists(journal_uri):
            before = read_state(storage, table_uri).get("version", 0)
            files = table_files(storage, table_uri)
            if not storage.exists(journal_uri) and read_state(storage, table_uri).get("version", 0) == before:
                return files
        if time.monotonic() >= deadline:
            raise JobError(
                f"{table_uri}: a commit has been in progress for over {wait_seconds:g}s "
                "(if its writer died, the table's next writer completes it)"
            )
        time.sleep(poll_seconds)


def read_snapshot(storage: Storage, table_uri: str, read: Callable[[list[str]], T]) -> T:
    """``read(files)`` over one committed version of the table. Files are immutable once
    committed; if a later commit removed one while we read (FileNotFoundError), read again."""
    for attempt in range(1, SNAPSHOT_ATTEMPTS + 1):
        files = snapshot(storage, table_uri)
        try:
            return read(files)
        except FileNotFoundError:
            if attempt == SNAPSHOT_ATTEMPTS:
                raise
            log.info("%s: changed by a commit while reading; reading the new version", table_uri)
    raise AssertionError("unreachable")


def table_files(storage: Storage, table_uri: str) -> list[str]:
    """The table's committed Parquet files (not ``_``/``.`` paths such as tmp or metadata)."""
    return [uri for uri, _size in table_file_sizes(storage, table_uri)]


def table_file_sizes(storage: Storage, table_uri: str) -> list[tuple[str, int]]:
    """``(uri, bytes)`` of each of the table's committed Parquet files (as :func:`table_files`)."""
    out = []
    for uri, size in storage.list_files(table_uri):
        rel = uri[len(table_uri.rstrip("/")) + 1 :]
        if rel.endswith(".parquet") and not any(p.startswith(("_", ".")) for p in rel.split("/")):
            out.append((uri, size))
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
