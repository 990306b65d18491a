"""Table leases and journalled commits: one writer per table, on local disk and on a real S3 API
(SeaweedFS on 127.0.0.1), including takeover after a holder dies and a holder that lost its lease."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import threading
import time

import pytest

from genrecast import commit
from genrecast.errors import JobError
from genrecast.lease import LEASE, LeaseLost, TableBusy, TableLease, current_holder
from genrecast.storage import Storage, join

from s3server import CREDENTIALS, SeaweedS3

BUCKET = "genrecast-lease"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    for key, value in CREDENTIALS.items():
        mp.setenv(key, value)
    server = SeaweedS3(tmp_path_factory.mktemp("weed")).start()
    server.client().create_bucket(Bucket=BUCKET)
    yield server
    server.stop()
    mp.undo()


@pytest.fixture(params=["local", "s3"])
def table(request, tmp_path):
    """(storage, table uri) on a local folder or an S3 bucket."""
    if request.param == "local":
        return Storage(), str(tmp_path / "table")
    server = request.getfixturevalue("s3")
    return Storage(endpoint_url=server.endpoint_url, region="us-east-1"), f"s3://{BUCKET}/{tmp_path.name}/table"


def lease(storage, uri, run_id, **kw) -> TableLease:
    kw = {"ttl_seconds": 30.0, "wait_seconds": 0.0, "poll_seconds": 0.1, **kw}
    return TableLease(storage, uri, run_id, "test", **kw)


def test_second_writer_is_refused_with_the_holder_named(table):
    storage, uri = table
    with lease(storage, uri, "run-a"):
        holder = current_holder(storage, uri)
        assert holder is not None and holder.run_id == "run-a"
        started = time.monotonic()
        with pytest.raises(TableBusy, match=r"being written by run run-a \(test on .+, pid \d+\) since 20") as err:
            lease(storage, uri, "run-b", wait_seconds=0.5).acquire()
        assert time.monotonic() - started >= 0.5  # it waited as configured
        assert err.value.exit_code == 2
    assert current_holder(storage, uri) is None  # released
    with lease(storage, uri, "run-b") as b:  # free again
        assert b.held


def test_a_waiting_writer_gets_the_table_when_the_holder_finishes(table):
    storage, uri = table
    a = lease(storage, uri, "run-a").acquire()
    threading.Timer(0.5, a.release).start()
    with lease(storage, uri, "run-b", wait_seconds=20) as b:
        assert b.held and current_holder(storage, uri).run_id == "run-b"


def test_concurrent_writers_exactly_one_holds(table):
    storage, uri = table
    winners, busy, held = [], [], []

    def try_acquire(i: int) -> None:
        try:
            held.append(lease(storage, uri, f"run-{i}").acquire())
            winners.append(i)
        except TableBusy:
            busy.append(i)

    threads = [threading.Thread(target=try_acquire, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1 and len(busy) == 7
    assert current_holder(storage, uri).run_id == f"run-{winners[0]}"
    held[0].release()  # else its heartbeat outlives the test (and the S3 server), logging failures


def test_heartbeat_keeps_a_short_lease_alive(table):
    storage, uri = table
    with lease(storage, uri, "run-a", ttl_seconds=1.5) as a:
        time.sleep(3.5)  # over twice the ttl: only renewals keep it
        a.check()
        with pytest.raises(TableBusy):
            lease(storage, uri, "run-b").acquire()


def _hold_and_die(uri: str, endpoint: str | None) -> None:
    """A child process that takes the lease, stages a file and is then killed."""
    storage = Storage(endpoint_url=endpoint, region="us-east-1" if endpoint else None)
    TableLease(storage, uri, "run-dead", "test", ttl_seconds=2.0, wait_seconds=0).acquire()
    storage.write_bytes(commit.tmp_uri(uri, "run-dead", "part-0.parquet"), b"staged by a run that died")
    time.sleep(600)


def test_a_killed_holder_is_taken_over_after_expiry_and_its_leftovers_cleaned(table):
    storage, uri = table
    proc = multiprocessing.get_context("spawn").Process(target=_hold_and_die, args=(uri, storage.endpoint_url))
    proc.start()
    deadline = time.monotonic() + 60
    while not list(storage.list_files(join(uri, commit.TMP))):
        assert time.monotonic() < deadline and proc.is_alive()
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    with pytest.raises(TableBusy, match="run-dead"):  # not yet expired
        lease(storage, uri, "run-next").acquire()
    with lease(storage, uri, "run-next", wait_seconds=10) as nxt:
        assert nxt.taken_over is not None and nxt.taken_over.run_id == "run-dead"
        commit.recover(storage, uri, nxt)
        assert list(storage.list_files(join(uri, commit.TMP))) == []


def test_a_holder_that_lost_its_lease_cannot_commit(table):
    storage, uri = table
    a = lease(storage, uri, "run-a", ttl_seconds=30.0).acquire()
    # Someone took the lease over (as after a stall longer than the ttl): overwrite it.
    data, version = storage.read_versioned(join(uri, LEASE))
    hijacked = json.loads(data) | {"run_id": "run-b"}
    assert storage.replace_if(join(uri, LEASE), json.dumps(hijacked).encode(), version)
    a.renew()
    staged = commit.tmp_uri(uri, "run-a", "part.parquet")
    storage.write_bytes(staged, b"x")
    with pytest.raises(LeaseLost, match="lost its lease"):
        commit.commit(storage, uri, "run-a", [(staged, join(uri, "part.parquet"))], [], a)
    assert not storage.exists(join(uri, "part.parquet")) and not storage.exists(join(uri, commit.JOURNAL))
    a.release()
    assert current_holder(storage, uri).run_id == "run-b"  # a lost lease is not deleted by its old holder


def test_commit_fails_loudly_when_a_staged_file_vanished(table):
    storage, uri = table
    with lease(storage, uri, "run-a") as a:
        good = commit.tmp_uri(uri, "run-a", "good.parquet")
        storage.write_bytes(good, b"good")
        gone = commit.tmp_uri(uri, "run-a", "gone.parquet")
        with pytest.raises(JobError, match="gone.parquet is gone"):
            commit.commit(
                storage, uri, "run-a", [(good, join(uri, "good.parquet")), (gone, join(uri, "g.parquet"))], [], a
            )


def test_recover_rolls_forward_and_cleans_only_other_runs(table):
    storage, uri = table
    staged = commit.tmp_uri(uri, "run-old", "part.parquet")
    storage.write_bytes(staged, b"rows")
    journal = {"run_id": "run-old", "add": [[staged, join(uri, "part.parquet")]], "remove": [], "state": {"version": 1}}
    storage.write_bytes(join(uri, commit.JOURNAL), json.dumps(journal).encode())  # killed mid-commit
    storage.write_bytes(commit.tmp_uri(uri, "run-older", "x.parquet"), b"never committed")
    with lease(storage, uri, "run-new") as new:
        mine = commit.tmp_uri(uri, "run-new", "mine.parquet")
        storage.write_bytes(mine, b"mine")
        assert commit.recover(storage, uri, new)
        assert storage.read_bytes(join(uri, "part.parquet")) == b"rows"
        assert commit.read_state(storage, uri)["version"] == 1
        assert [u for u, _ in storage.list_files(join(uri, commit.TMP))] == [mine]


def test_snapshot_waits_for_a_commit_in_progress(table):
    storage, uri = table
    storage.write_bytes(join(uri, "part-1.parquet"), b"1")
    storage.write_bytes(join(uri, commit.JOURNAL), b"{}")  # a commit being applied
    threading.Timer(0.5, lambda: storage.delete(join(uri, commit.JOURNAL))).start()
    started = time.monotonic()
    assert commit.snapshot(storage, uri, wait_seconds=10, poll_seconds=0.05) == [join(uri, "part-1.parquet")]
    assert time.monotonic() - started >= 0.4
    storage.write_bytes(join(uri, commit.JOURNAL), b"{}")
    with pytest.raises(JobError, match="commit has been in progress"):
        commit.snapshot(storage, uri, wait_seconds=0.2, poll_seconds=0.05)
