"""Table leases: at most one writer per table at a time, local or S3.

A writer holds ``<table>/_lease.json`` (owner run id, job, host, pid, since, expiry) for its whole
run and renews it from a heartbeat thread. The lease is created with an exclusive create (S3:
``PUT`` with ``If-None-Match: *``; local: a hard link under an flock) and renewed, taken over or
released only by compare-and-swap on its version (S3: ``If-Match`` on the ETag), so two writers
can never both believe they hold it. A second writer polls until ``wait_seconds`` pass, then
stops with :class:`TableBusy` (exit 2) naming the holder. A lease whose holder died expires after
``ttl_seconds`` and the next writer takes it over; :func:`genrecast.commit.recover` then finishes
or cleans that run's leftovers. A holder that could not renew in time (a store outage, a stalled
driver) loses the lease and refuses to commit (:class:`LeaseLost`).

Expiry uses wall clocks: keep ``ttl_seconds`` well above the clock skew between hosts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from genrecast.errors import GenrecastError, JobError
from genrecast.storage import Storage, join

log = logging.getLogger(__name__)
LEASE = "_lease.json"


class TableBusy(GenrecastError):
    """Another run holds the table's lease and did not let go within the wait."""

    exit_code = 2


class LeaseLost(JobError):
    """This run's lease expired or was taken over: it must not commit."""


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Holder:
    """What a lease file says about its owner."""

    run_id: str
    job: str
    host: str
    pid: int
    since: float  # epoch seconds
    expires: float  # epoch seconds

    @classmethod
    def parse(cls, data: bytes) -> Holder | None:
        try:
            d = json.loads(data)
            return cls(
                str(d["run_id"]), str(d["job"]), str(d["host"]), int(d["pid"]), float(d["since"]), float(d["expires"])
            )
        except (ValueError, KeyError, TypeError):
            return None

    def encode(self) -> bytes:
        d = {**self.__dict__, "since_utc": _iso(self.since), "expires_utc": _iso(self.expires)}
        return json.dumps(d, indent=1).encode()

    def describe(self) -> str:
        return f"run {self.run_id} ({self.job} on {self.host}, pid {self.pid}) since {_iso(self.since)}"


class TableLease:
    """The lease on one table for one run. Use as a context manager, or :func:`hold`."""

    def __init__(
        self,
        storage: Storage,
        table_uri: str,
        run_id: str,
        job: str,
        ttl_seconds: float = 300.0,
        wait_seconds: float = 60.0,
        poll_seconds: float = 1.0,
    ) -> None:
        self.storage, self.table_uri, self.run_id, self.job = storage, table_uri, run_id, job
        self.uri = join(table_uri, LEASE)
        self.ttl, self.wait, self.poll = ttl_seconds, wait_seconds, poll_seconds
        self.taken_over: Holder | None = None  # the expired holder this lease replaced, if any
        self._holder: Holder | None = None
        self._version: str | None = None
        self._lost: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- acquire / release ---------------------------------------------------------------------
    def _new_holder(self, since: float | None = None) -> Holder:
        now = time.time()
        return Holder(self.run_id, self.job, socket.gethostname(), os.getpid(), since or now, now + self.ttl)

    def acquire(self) -> TableLease:
        deadline = time.monotonic() + self.wait
        announced = False
        while True:
            mine = self._new_holder()
            version = self.storage.create_exclusive(self.uri, mine.encode())
            if version is not None:
                break
            current = self.storage.read_versioned(self.uri)
            if current is None:
                continue  # released between our two calls
            data, theirs_version = current
            theirs = Holder.parse(data)
            if theirs and (theirs.run_id, theirs.host, theirs.pid) == (mine.run_id, mine.host, mine.pid):
                mine, version = theirs, theirs_version  # our own write, retried after its answer was lost
                break
            if theirs is None or theirs.expires < time.time():
                version = self.storage.replace_if(self.uri, mine.encode(), theirs_version)
                if version is None:
                    continue  # someone else renewed or took it first: look again
                self.taken_over = theirs
                what = theirs.describe() if theirs else "an unreadable lease"
                log.warning("%s: took over the expired lease of %s", self.table_uri, what)
                break
            if time.monotonic() >= deadline:
                raise TableBusy(
                    f"{self.table_uri} is being written by {theirs.describe()}; its lease runs to "
                    f"{_iso(theirs.expires)} (waited {self.wait:g}s: storage.lease.wait_seconds)"
                )
            if not announced:
                log.info("%s: held by %s; waiting up to %gs", self.table_uri, theirs.describe(), self.wait)
                announced = True
            time.sleep(max(0.05, min(self.poll, deadline - time.monotonic())))
        with self._lock:
            self._holder, self._version = mine, version
        self._thread = threading.Thread(target=self._heartbeat, name=f"lease {self.table_uri}", daemon=True)
        self._thread.start()
        log.debug("%s: lease taken by run %s", self.table_uri, self.run_id)
        return self

    def release(self) -> None:
        """Stop renewing and delete the lease (only if it is still ours)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._lock:
            version, self._version = self._version, None
        if version is not None and self._lost is None:
            try:
                self.storage.delete_if(self.uri, version)
            except Exception as exc:  # it expires by itself; the next writer takes it over
                log.warning("%s: could not release the lease (%s); it expires in %gs", self.table_uri, exc, self.ttl)

    def __enter__(self) -> TableLease:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    # -- keeping it --------------------------------------------------------------------------
    def renew(self) -> None:
        """Push the expiry ``ttl_seconds`` ahead (compare-and-swap); marks the lease lost if
        another run replaced it."""
        with self._lock:
            holder, version = self._holder, self._version
        if holder is None or version is None or self._lost:
            return
        fresh = self._new_holder(since=holder.since)
        new_version = self.storage.replace_if(self.uri, fresh.encode(), version)
        if new_version is None:  # our own write, retried after its answer was lost, is not a loss
            current = self.storage.read_versioned(self.uri)
            if current is not None and current[0] == fresh.encode():
                new_version = current[1]
        with self._lock:
            if new_version is None:
                self._lost = "another run replaced it"
            else:
                self._holder, self._version = fresh, new_version

    def _heartbeat(self) -> None:
        interval = max(0.05, self.ttl / 3)
        while not self._stop.wait(interval):
            try:
                self.renew()
            except Exception as exc:  # a store outage: keep trying until the lease would expire
                log.warning("%s: lease renewal failed (%s); retrying", self.table_uri, type(exc).__name__)
            if self._lost:
                log.error("%s: lost the lease: %s", self.table_uri, self._lost)
                return

    def check(self) -> None:
        """Raise :class:`LeaseLost` unless this run still holds the lease with time to spare
        (called right before a commit's journal is written)."""
        with self._lock:
            holder, lost = self._holder, self._lost
        if holder is None:
            raise LeaseLost(f"{self.table_uri}: run {self.run_id} holds no lease; nothing committed")
        if lost is None and holder.expires - time.time() < min(5.0, self.ttl / 10):
            lost = f"it expired at {_iso(holder.expires)} (renewals failed)"
        if lost:
            raise LeaseLost(f"{self.table_uri}: run {self.run_id} lost its lease ({lost}); nothing committed")

    @property
    def held(self) -> bool:
        return self._holder is not None and self._lost is None


def current_holder(storage: Storage, table_uri: str) -> Holder | None:
    """Who holds ``table_uri``'s lease now (None: nobody, or an unreadable lease file)."""
    current = storage.read_versioned(join(table_uri, LEASE))
    return Holder.parse(current[0]) if current else None


@contextlib.contextmanager
def hold(storage: Storage, cfg: Any, run_id: str, job: str, *table_uris: str) -> Iterator[dict[str, TableLease]]:
    """Hold the leases of ``table_uris`` (taken in sorted order, so two jobs that want the same
    tables never deadlock) for the block; ``{uri: lease}``."""
    settings = cfg.storage.lease
    with contextlib.ExitStack() as stack:
        leases: dict[str, TableLease] = {}
        for uri in sorted(set(table_uris)):
            lease = TableLease(
                storage, uri, run_id, job, settings.ttl_seconds, settings.wait_seconds, settings.poll_seconds
            )
            leases[uri] = stack.enter_context(lease)
        yield leases
