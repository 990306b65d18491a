"""The catalogue manifest: ``<root>/manifest/``, one row per catalogue track that ingest has
read - its listing entry (uri, size, version = ETag or mtime), the sha256 of those bytes, its
label, the features_key it was processed under and the outcome (``ok``: clips in the mel
dataset; ``rejected``: a row in ingest's rejects).

It lets a nightly run tell, from the listing alone, that a track is unchanged: an equal listing
entry is taken to mean equal bytes (S3 gives a new ETag, a local write a new mtime), so the
file is not fetched at all. Ingest owns it (its lease, journalled commits; rewritten when
anything changed, as part files sorted by track id that its executors write:
:func:`genrecast.ingest_plan.write_manifest_parts`); score only reads a snapshot (every part).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa

from genrecast import commit
from genrecast.catalogue import Track
from genrecast.lease import TableLease
from genrecast.storage import Storage, join

STATUSES = ("ok", "rejected")
MANIFEST_ARROW_SCHEMA = pa.schema(
    [
        pa.field("track_id", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("size", pa.int64(), nullable=False),  # bytes, from the listing
        pa.field("version", pa.string(), nullable=False),  # "etag:<ETag>" or "mtime_ns:<int>"
        pa.field("sha256", pa.string(), nullable=False),  # of the bytes at this listing entry
        pa.field("genre", pa.string(), nullable=True),  # the label when it was read
        pa.field("features_key", pa.string(), nullable=False),  # genrecast.features.features_key
        pa.field("status", pa.string(), nullable=False),  # ok | rejected
        pa.field("updated_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)


@dataclass(frozen=True)
class Entry:
    """One manifest row."""

    track_id: str
    uri: str
    size: int
    version: str
    sha256: str
    genre: str | None
    features_key: str
    status: str
    updated_at: datetime | None = None

    def same_listing(self, track: Track) -> bool:
        """The listing still shows the very file this row was made from."""
        return bool(track.version) and (self.uri, self.size, self.version) == (track.uri, track.size, track.version)


def read_manifest(storage: Storage, uri: str) -> dict[str, Entry]:
    """``{track_id: Entry}`` of one committed version ({} when there is none)."""

    def read(files: list[str]) -> dict[str, Entry]:
        out: dict[str, Entry] = {}
        for f in files:
            for row in storage.read_parquet(f).to_pylist():
                out[row["track_id"]] = Entry(**row)
        return out

    return commit.read_snapshot(storage, uri, read)


def manifest_table(entries: list[Entry]) -> pa.Table:
    now = datetime.now(UTC)
    rows = [{**e.__dict__, "updated_at": e.updated_at or now} for e in sorted(entries, key=lambda e: e.track_id)]
    return pa.Table.from_pylist(rows, schema=MANIFEST_ARROW_SCHEMA)


def write_manifest(
    storage: Storage, uri: str, run_id: str, entries: list[Entry], old: dict[str, Entry], lease: TableLease
) -> bool:
    """Replace the manifest with ``entries`` (one file, journalled) unless they equal ``old``
    (then nothing is written). True if a new version was committed. The driver-side writer
    (one object per track in memory); ingest writes parts on executors instead."""
    if {e.track_id: e for e in entries} == old:
        return False
    name = f"part-{run_id}.parquet"
    tmp = commit.tmp_uri(uri, run_id, name)
    storage.write_parquet(tmp, manifest_table(entries))
    commit.commit(storage, uri, run_id, [(tmp, join(uri, name))], commit.table_files(storage, uri), lease)
    return True


def dataset_features_key(storage: Storage, manifest_uri: str, dataset_key: str | None, tracks: dict[str, str]) -> str:
    """The features_key of the mel rows of ``tracks`` (``{track_id: audio_sha256}``): from their
    manifest rows, or ``dataset_key`` (the mel dataset's last commit) for rows the manifest does
    not describe; ``"unknown"`` if neither says, several keys joined by ``+`` if they differ."""
    manifest = read_manifest(storage, manifest_uri)
    keys: set[str] = set()
    for track_id, sha in tracks.items():
        m = manifest.get(track_id)
        if m is not None and m.status == "ok" and m.sha256 == sha:
            keys.add(m.features_key)
        else:
            keys.add(dataset_key or "unknown")
    return "+".join(sorted(keys)) or "unknown"
