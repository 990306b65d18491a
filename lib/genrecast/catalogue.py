"""The catalogue: audio files under ``catalogue.audio_uri`` and their optional ``labels.csv``.

A ``track_id`` is the file's path below ``audio_uri`` without its extension, ``/``-separated
(DESIGN.md). Problems become rejects rows (``stage`` = ``catalogue`` or ``labels``), never
silent drops.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from genrecast.audio import extension_of
from genrecast.errors import ConfigError, InvalidIdentifier, JobError
from genrecast.storage import Storage, relative_to, validate_key


@dataclass(frozen=True)
class Track:
    track_id: str
    uri: str
    size: int
    version: str = ""  # the listing's ETag / mtime (storage.FileEntry.version)


@dataclass(frozen=True)
class Label:
    genre: str
    artist: str | None
    # Free text: where the track (or its label) came from - the demo's renderer/soundfont
    # ("mma/FluidR3_GM"), `labels spotify`'s "spotify:playlist:<id>"; train reports accuracy per source.
    source: str | None = None


def validate_track_id(track_id: str) -> str:
    """A track id is a relative ``/``-path: no ``..``, not absolute, no control characters."""
    if not track_id or track_id != track_id.strip():
        raise InvalidIdentifier(f"invalid track_id {track_id!r}: empty or padded with spaces")
    try:
        return validate_key(track_id)
    except InvalidIdentifier as exc:
        raise InvalidIdentifier(f"invalid track_id {track_id!r}: {exc}") from None


def track_id_for(uri: str, audio_uri: str) -> str:
    rel = relative_to(uri, audio_uri)
    ext = extension_of(rel)
    return validate_track_id(rel[: -(len(ext) + 1)] if ext else rel)


def list_tracks(storage: Storage, audio_uri: str, extensions: Iterable[str]) -> Iterator[Track | dict]:
    """Yield a :class:`Track` per usable audio file, or a rejects row (dict) for a file that
    cannot be a track: unsupported extension, invalid id, or a second file with the same id.
    Holds every track id seen (duplicate check): ingest's Spark planning streams
    :func:`listed_files` instead and finds duplicates on Spark."""
    seen: dict[str, str] = {}
    for item in listed_files(storage, audio_uri, extensions):
        if isinstance(item, Track):
            if item.track_id in seen:
                yield duplicate_reject(item.uri, item.track_id, seen[item.track_id])
                continue
            seen[item.track_id] = item.uri
        yield item


def duplicate_reject(uri: str, track_id: str, first_uri: str) -> dict:
    """The rejects row of a second file (``uri``) with the id of ``first_uri``."""
    return {"source_uri": uri, "stage": "catalogue", "reason": f"duplicate track_id '{track_id}' (also {first_uri})"}


def listed_files(storage: Storage, audio_uri: str, extensions: Iterable[str]) -> Iterator[Track | dict]:
    """As :func:`list_tracks` without the duplicate check (streams: holds one entry at a time)."""
    allowed = {e.lower().lstrip(".") for e in extensions}
    for entry in storage.list_entries(audio_uri):
        uri = entry.uri
        ext = extension_of(uri)
        if ext not in allowed:
            yield {
                "source_uri": uri,
                "stage": "catalogue",
                "reason": f"unsupported extension '.{ext}'" if ext else "no file extension",
            }
            continue
        try:
            track_id = track_id_for(uri, audio_uri)
        except InvalidIdentifier as exc:
            yield {"source_uri": uri, "stage": "catalogue", "reason": str(exc)}
            continue
        yield Track(track_id, uri, entry.size, entry.version)


def check_deletions(job: str, table_uri: str, deleted: int, known: int, max_share: float, allowed: bool) -> None:
    """Refuse (:class:`ConfigError`, exit 2) to drop ``deleted`` of a table's ``known`` tracks
    (gone from the listing) when that is more than ``max_share`` of them, unless ``allowed``."""
    if deleted and not allowed and deleted > max_share * known:
        raise ConfigError(
            f"{job}: {deleted} of the {known} tracks in {table_uri} ({deleted / known:.0%}) are gone from the "
            f"catalogue listing, more than catalogue.max_delete_share {max_share:g}: refusing to delete them "
            "(check catalogue.audio_uri, or pass --allow-mass-delete)"
        )


def parse_labels(text: str, source: str, genres: list[str]) -> tuple[dict[str, Label], list[dict]]:
    """Parse labels.csv (``track_id,genre[,artist][,source]``, any column order, header required).

    Genres are matched case-insensitively to the configured spelling. A row with an unknown
    genre, a bad id, or a track given two different genres is rejected; the track itself stays
    in the catalogue, unlabelled. Returns ``(labels by track_id, rejects rows)``.
    """
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = {"track_id", "genre"} - set(header)
    if missing:
        raise JobError(f"{source}: header must name track_id and genre (missing: {', '.join(sorted(missing))})")
    reader.fieldnames = header
    canonical = {g.casefold(): g for g in genres}
    labels: dict[str, Label] = {}
    rows_of: dict[str, list[str]] = {}
    rejects: list[dict] = []
    conflicted: set[str] = set()
    for line, row in enumerate(reader, start=2):
        where = f"{source}#line={line}"
        track_id = (row.get("track_id") or "").strip()
        genre_raw = (row.get("genre") or "").strip()
        artist = (row.get("artist") or "").strip() or None
        track_source = (row.get("source") or "").strip() or None
        try:
            validate_track_id(track_id)
        except InvalidIdentifier as exc:
            rejects.append({"source_uri": where, "stage": "labels", "reason": str(exc)})
            continue
        genre = canonical.get(genre_raw.casefold())
        if genre is None:
            rejects.append(
                {
                    "source_uri": where,
                    "stage": "labels",
                    "reason": f"genre '{genre_raw}' of track '{track_id}' is not in the configured genres",
                }
            )
            continue
        rows_of.setdefault(track_id, []).append(where)
        previous = labels.get(track_id)
        if previous is not None and previous.genre != genre:
            conflicted.add(track_id)
        labels[track_id] = Label(
            genre,
            artist or (previous.artist if previous else None),
            track_source or (previous.source if previous else None),
        )
    for track_id in sorted(conflicted):
        del labels[track_id]
        rejects.append(
            {
                "source_uri": rows_of[track_id][0],
                "stage": "labels",
                "reason": f"conflicting genres for track '{track_id}' on {', '.join(rows_of[track_id])}",
            }
        )
    return labels, rejects


def load_labels(storage: Storage, labels_uri: str | None, genres: list[str]) -> tuple[dict[str, Label], list[dict]]:
    """Labels from ``labels_uri``; no URI or no file means an unlabelled catalogue."""
    if not labels_uri or not storage.exists(labels_uri):
        return {}, []
    raw = storage.read_bytes(labels_uri)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise JobError(f"{labels_uri}: not UTF-8 text") from None
    return parse_labels(text, labels_uri, genres)
