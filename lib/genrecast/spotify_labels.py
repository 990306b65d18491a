"""``genrecast labels spotify``: Spotify playlist membership -> labels.csv rows, metadata only.

Spotify gives no preview audio to new apps and its developer terms forbid training on Spotify
content, so nothing from Spotify reaches the model: a playlist only says "these recordings are
<genre>", and each item is mapped to a track the catalogue owner already holds, through a
catalogue index CSV (``track_id,isrc,artist,title``) - by ISRC first, then by normalised
artist + title. The audio that is ingested and trained on is the owner's own.

Merge rules for labels.csv (columns ``track_id,genre,artist,source``; ``source`` is
``spotify:playlist:<id>``): existing rows are kept byte for byte; a track already labelled
with the playlist's genre gains nothing; a track labelled with another genre, or given two
genres by two playlists, is a *conflict*: reported (summary and report file), and no row is
written for it - never an overwrite, never an order-dependent pick.

Credentials: client-credentials auth from ``SPOTIPY_CLIENT_ID`` / ``SPOTIPY_CLIENT_SECRET``
only (spotipy reads them). They never appear in configuration, logs, files or error messages:
the token is cached in memory (spotipy's default is a ``.cache`` file), and spotipy's debug
lines, which print the ``Authorization`` header, are redacted.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import time
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from genrecast import commit
from genrecast.catalogue import parse_labels, validate_track_id
from genrecast.errors import ConfigError, InvalidIdentifier, JobError
from genrecast.storage import Storage, join

log = logging.getLogger(__name__)

CLIENT_ID_ENV = "SPOTIPY_CLIENT_ID"
CLIENT_SECRET_ENV = "SPOTIPY_CLIENT_SECRET"
DEFAULT_API_PREFIX = "https://api.spotify.com/v1/"
DEFAULT_AUTH_URL = "https://accounts.spotify.com/api/token"
# GET /playlists/{id}/items accepts at most 50 items a page (2026 API reference).
MAX_PAGE_SIZE = 50
LABEL_COLUMNS = ("track_id", "genre", "artist", "source")
INDEX_COLUMNS = ("track_id", "isrc", "artist", "title")
SOURCE_PREFIX = "spotify:playlist:"


# -- settings -------------------------------------------------------------------------------
@dataclass(frozen=True)
class SpotifySettings:
    """Client and retry settings; read from a ``spotify:`` config section when there is one.

    ``api_prefix`` / ``auth_url`` point the client at another server (tests, a proxy).
    ``max_retry_after_s``: a 429 asking to wait longer than this fails at once with a clear
    error instead of blocking the job for hours.
    """

    api_prefix: str = DEFAULT_API_PREFIX
    auth_url: str = DEFAULT_AUTH_URL
    market: str | None = None
    page_size: int = MAX_PAGE_SIZE
    timeout_s: float = 10.0
    retries: int = 5
    backoff_factor: float = 0.5
    max_retry_after_s: float = 120.0
    catalogue_index_uri: str | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> SpotifySettings:
        section = getattr(cfg, "spotify", None)
        if section is None:
            return cls()
        values = section.model_dump() if hasattr(section, "model_dump") else dict(section)
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__ and v is not None}
        return cls(**known)


# -- playlist arguments ---------------------------------------------------------------------
@dataclass(frozen=True)
class PlaylistSpec:
    playlist_id: str
    genre: str

    @property
    def source(self) -> str:
        return SOURCE_PREFIX + self.playlist_id


_BASE62 = re.compile(r"^[0-9A-Za-z]+$")
_PLAYLIST_URI = re.compile(r"^spotify:(?:user:[^:]+:)?playlist:([0-9A-Za-z]+)$")
_PLAYLIST_URL = re.compile(r"^https?://open\.spotify\.com/(?:intl-[\w-]+/)?playlist/([0-9A-Za-z]+)(?:[/?#].*)?$")


def playlist_id_of(text: str) -> str:
    """The base-62 id of a playlist given as an id, ``spotify:playlist:`` URI or open.spotify.com URL."""
    text = text.strip()
    for pattern in (_PLAYLIST_URI, _PLAYLIST_URL):
        m = pattern.match(text)
        if m:
            return m.group(1)
    if _BASE62.match(text):
        return text
    raise ConfigError(f"--playlist: '{text}' is not a Spotify playlist id, URI or URL")


def parse_playlist_specs(specs: Iterable[str], genres: list[str]) -> list[PlaylistSpec]:
    """``PLAYLIST=GENRE`` arguments -> specs, genre in the configured spelling (case-insensitive).

    The last ``=`` splits, so a URL with a query string works. One playlist may not carry two
    genres; repeating it with the same genre is harmless.
    """
    canonical = {g.casefold(): g for g in genres}
    out: dict[str, PlaylistSpec] = {}
    for spec in specs:
        playlist, sep, genre_raw = spec.rpartition("=")
        if not sep or not playlist.strip() or not genre_raw.strip():
            raise ConfigError(f"--playlist: '{spec}' is not PLAYLIST_ID=GENRE")
        genre = canonical.get(genre_raw.strip().casefold())
        if genre is None:
            raise ConfigError(
                f"--playlist {spec}: genre '{genre_raw.strip()}' is not in the configured genres "
                f"({', '.join(genres)}); add it to 'genres' in the config first"
            )
        pid = playlist_id_of(playlist)
        if pid in out and out[pid].genre != genre:
            raise ConfigError(f"--playlist: playlist {pid} is given two genres ({out[pid].genre}, {genre})")
        out[pid] = PlaylistSpec(pid, genre)
    if not out:
        raise ConfigError("labels spotify: give at least one --playlist PLAYLIST_ID=GENRE")
    return list(out.values())


# -- normalisation and the catalogue index --------------------------------------------------
_VERSION_WORDS = r"remaster(?:ed)?|live|version|edit|mono|stereo|single|radio|deluxe|bonus|explicit|clean|anniversary"
_FEAT = r"(?:feat\.?|ft\.?|featuring|with)"
_BRACKETED = re.compile(r"[\(\[]([^\)\]]*)[\)\]]")
_DASH_SUFFIX = re.compile(r"\s+[-\u2013\u2014]\s+(.*)$")
_FEAT_TAIL = re.compile(rf"\s+{_FEAT}\s.*$", re.IGNORECASE)
_VERSION_RE = re.compile(rf"\b(?:{_VERSION_WORDS})\b", re.IGNORECASE)
_FEAT_RE = re.compile(rf"^\s*{_FEAT}\s", re.IGNORECASE)
_ARTIST_SPLIT = re.compile(rf"\s*(?:[,;&/+]|\s{_FEAT}\s|\sx\s)\s*", re.IGNORECASE)
_APOSTROPHES = re.compile(r"['\u2019\u2018`\u00b4]")
_NON_WORD = re.compile(r"[\W_]+")


def normalise_text(text: str) -> str:
    """Casefold, strip accents (NFKD), ``&`` -> ``and``, drop apostrophes, other punctuation ->
    space, collapse whitespace: ``"Beyoncé & Jay-Z"`` -> ``"beyonce and jay z"``."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    plain = _APOSTROPHES.sub("", plain.replace("&", " and "))
    return " ".join(_NON_WORD.sub(" ", plain).split())


def normalise_title(title: str) -> str:
    """Title key: drops "feat." parts and version suffixes ("- Remastered 2011", "(Live)"),
    which Spotify and a catalogue spell differently for the same recording."""

    def bracket(m: re.Match[str]) -> str:
        inner = m.group(1)
        return " " if _FEAT_RE.match(inner) or _VERSION_RE.search(inner) else m.group(0)

    stripped = _BRACKETED.sub(bracket, title)
    dash = _DASH_SUFFIX.search(stripped)
    if dash and (_VERSION_RE.search(dash.group(1)) or _FEAT_RE.match(dash.group(1))):
        stripped = stripped[: dash.start()]
    stripped = _FEAT_TAIL.sub("", stripped)
    key = normalise_text(stripped)
    return key or normalise_text(title)  # a title that is all "suffix" keeps its words


def artist_keys(artist: str) -> set[str]:
    """Keys for one artist credit: the whole credit and each artist in it ("A feat. B", "A & B",
    "A, B"), without a leading "the"."""
    parts = [artist, *_ARTIST_SPLIT.split(artist)]
    keys = set()
    for part in parts:
        key = normalise_text(part)
        key = key[4:] if key.startswith("the ") else key
        if key:
            keys.add(key)
    return keys


def normalise_isrc(isrc: str | None) -> str | None:
    """``"us-rc1-76-07839 "`` -> ``"USRC17607839"``; None unless it has an ISRC's 12 characters."""
    if not isrc:
        return None
    key = re.sub(r"[^0-9A-Za-z]", "", isrc).upper()
    return key if len(key) == 12 else None


@dataclass
class CatalogueIndex:
    """The owner's catalogue metadata, keyed for matching. ``artist_of``: the index's artist
    credit per track (written to labels.csv, so the train split groups by the owner's names)."""

    uri: str
    by_isrc: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    by_name: dict[tuple[str, str], set[str]] = field(default_factory=lambda: defaultdict(set))
    artist_of: dict[str, str] = field(default_factory=dict)
    rejects: list[dict] = field(default_factory=list)

    def add(self, track_id: str, isrc: str | None, artist: str, title: str) -> None:
        self.artist_of.setdefault(track_id, artist)
        key = normalise_isrc(isrc)
        if key:
            self.by_isrc[key].add(track_id)
        title_key = normalise_title(title) if title.strip() else ""
        if title_key:
            for a in artist_keys(artist):
                self.by_name[(a, title_key)].add(track_id)

    def match(self, isrc: str | None, artists: list[str], title: str) -> Match:
        """ISRC first (every holder of the recording), then artist + title (exactly one track)."""
        key = normalise_isrc(isrc)
        if key and self.by_isrc.get(key):
            return Match(sorted(self.by_isrc[key]), "isrc")
        title_key = normalise_title(title) if title else ""
        if not title_key:
            return Match([], None, "no title to match")
        candidates: set[str] = set()
        for name in artists:
            for a in artist_keys(name):
                candidates |= self.by_name.get((a, title_key), set())
        if len(candidates) == 1:
            return Match(sorted(candidates), "artist+title")
        if candidates:
            shown = ", ".join(sorted(candidates)[:5])
            return Match([], None, f"ambiguous: {len(candidates)} catalogue tracks match artist+title ({shown})")
        return Match([], None, "no catalogue track with this ISRC or artist+title")


@dataclass(frozen=True)
class Match:
    track_ids: list[str]
    method: str | None  # "isrc" | "artist+title" | None (unmatched)
    reason: str = ""


def load_catalogue_index(storage: Storage, uri: str) -> CatalogueIndex:
    """Read the catalogue index CSV (header ``track_id`` plus ``isrc`` and/or ``artist,title``).

    Rows with an invalid track id are kept out and listed in ``rejects`` (file#line, reason).
    """
    if not storage.exists(uri):
        raise ConfigError(
            f"catalogue index not found: {uri} (pass --catalogue-index FILE, a CSV track_id,isrc,artist,title)"
        )
    try:
        text = storage.read_bytes(uri).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"{uri}: not UTF-8 text") from None
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    reader.fieldnames = header
    if "track_id" not in header or not ({"isrc"} <= set(header) or {"artist", "title"} <= set(header)):
        raise ConfigError(
            f"{uri}: header must name track_id and isrc and/or artist,title (found: {', '.join(header) or 'nothing'})"
        )
    index = CatalogueIndex(uri)
    for line, row in enumerate(reader, start=2):
        track_id = (row.get("track_id") or "").strip()
        try:
            validate_track_id(track_id)
        except InvalidIdentifier as exc:
            index.rejects.append({"where": f"{uri}#line={line}", "reason": str(exc)})
            continue
        index.add(track_id, row.get("isrc"), (row.get("artist") or "").strip(), (row.get("title") or "").strip())
    return index


# -- the Spotify client ---------------------------------------------------------------------
_AUTH_VALUE = re.compile(r"\b(Basic|Bearer)\s+[A-Za-z0-9+/=._~-]+")


class _RedactCredentials(logging.Filter):
    """spotipy logs request headers at DEBUG (``Authorization: Basic base64(id:secret)`` for
    the token request, the bearer token after): blank those, and the env values themselves."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = _AUTH_VALUE.sub(r"\1 ***", record.getMessage())
        for name in (CLIENT_ID_ENV, CLIENT_SECRET_ENV):
            value = os.environ.get(name)
            if value:
                message = message.replace(value, "***")
        record.msg, record.args = message, ()
        return True


_REDACTOR = _RedactCredentials()


def _install_redaction() -> None:
    # Logger filters are not inherited: each spotipy module logger gets its own.
    for name in ("spotipy", "spotipy.client", "spotipy.oauth2", "spotipy.util", "spotipy.cache_handler"):
        logger = logging.getLogger(name)
        if _REDACTOR not in logger.filters:
            logger.addFilter(_REDACTOR)


def _retry_policy(settings: SpotifySettings) -> Any:
    """urllib3 retries for 429 (honouring Retry-After), 5xx and connection errors.

    ``raise_on_status=False``: when retries run out the last response comes back, so spotipy
    raises with the real status and headers instead of a bare "Max Retries". A Retry-After
    beyond ``max_retry_after_s`` ends the retries at once (see :class:`_SpotifyRetry`).
    """
    from spotipy.util import Retry as SpotipyRetry  # logs each rate-limit wait at WARNING
    from urllib3.exceptions import MaxRetryError

    class _SpotifyRetry(SpotipyRetry):
        max_retry_after = settings.max_retry_after_s

        def increment(
            self,
            method: str | None = None,
            url: str | None = None,
            response: Any = None,
            error: Exception | None = None,
            _pool: Any = None,
            _stacktrace: Any = None,
        ) -> Any:
            header = response.headers.get("Retry-After") if response is not None else None
            if header is not None and self.respect_retry_after_header:
                try:
                    wait = self.parse_retry_after(header)
                except Exception:  # an unparsable header: let urllib3 decide as usual
                    wait = 0.0
                if wait > self.max_retry_after:
                    raise MaxRetryError(_pool, url or "", None)
            return super().increment(method, url, response, error, _pool, _stacktrace)

    return _SpotifyRetry(
        total=settings.retries,
        connect=settings.retries,
        read=settings.retries,  # both calls are safe to repeat (GETs, and a token request)
        status=settings.retries,
        allowed_methods=frozenset(["GET", "POST"]),  # POST: the client-credentials token request
        status_forcelist=(429, 500, 502, 503, 504),
        backoff_factor=settings.backoff_factor,
        respect_retry_after_header=True,
        raise_on_status=False,
    )


def make_client(settings: SpotifySettings) -> Any:
    """A ``spotipy.Spotify`` with client-credentials auth, our retry policy on one session for
    the token and API calls, the token cached in memory, and configurable endpoints."""
    missing = [name for name in (CLIENT_ID_ENV, CLIENT_SECRET_ENV) if not os.environ.get(name)]
    if missing:
        raise ConfigError(
            f"Spotify credentials missing: set {' and '.join(missing)} in the environment "
            "(client credentials of your Spotify app; never put them in the config)"
        )
    import requests
    import spotipy
    from spotipy.cache_handler import MemoryCacheHandler
    from spotipy.oauth2 import SpotifyClientCredentials

    _install_redaction()
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(max_retries=_retry_policy(settings))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    auth = SpotifyClientCredentials(
        requests_session=session, requests_timeout=settings.timeout_s, cache_handler=MemoryCacheHandler()
    )
    auth.OAUTH_TOKEN_URL = settings.auth_url  # spotipy reads it from the instance
    client = spotipy.Spotify(auth_manager=auth, requests_session=session, requests_timeout=settings.timeout_s)
    client.prefix = settings.api_prefix.rstrip("/") + "/"
    return client


def _spotify_error(exc: Exception, what: str, settings: SpotifySettings) -> Exception:
    """One clear line for a spotipy / requests failure; never echoes request headers."""
    from spotipy.exceptions import SpotifyException, SpotifyOauthError

    if isinstance(exc, SpotifyOauthError):
        detail = getattr(exc, "error", None) or "no detail"
        return ConfigError(
            f"Spotify token request to {settings.auth_url} failed ({detail}): check "
            f"{CLIENT_ID_ENV} / {CLIENT_SECRET_ENV}"
        )
    if isinstance(exc, SpotifyException):
        status = exc.http_status
        message = str(exc.msg).splitlines()[-1].strip() if exc.msg else ""
        if status == 429:
            wait = (exc.headers or {}).get("Retry-After", "?")
            return JobError(
                f"{what}: rate limited by Spotify (HTTP 429, Retry-After {wait}s; this run waits at most "
                f"{settings.max_retry_after_s:g}s and retries {settings.retries} times): try again later"
            )
        if status == 403:
            return JobError(
                f"{what}: HTTP 403 Forbidden ({message}). Since February 2026 apps in Development Mode may "
                "read the items of a playlist only for its owner or a collaborator, which a "
                "client-credentials token is not; Extended Quota apps are not restricted"
            )
        if status == 404:
            return JobError(f"{what}: not found (HTTP 404): check the playlist id, and that it is not private")
        if status == 401:
            return JobError(f"{what}: Spotify rejected the access token (HTTP 401): {message}")
        return JobError(f"{what}: HTTP {status}: {message}")
    return JobError(f"{what}: {type(exc).__name__} talking to {settings.api_prefix} (after retries)")


def iter_playlist_items(client: Any, playlist_id: str, settings: SpotifySettings) -> Iterator[dict | None]:
    """Every entry of a playlist, following ``next`` links until the last page."""
    page = client.playlist_items(
        playlist_id,
        limit=min(settings.page_size, MAX_PAGE_SIZE),
        market=settings.market,
        additional_types=("track", "episode"),
    )
    seen: set[str] = set()
    while page:
        yield from page.get("items") or []
        nxt = page.get("next")
        if not nxt:
            return
        if nxt in seen:  # a server bug must not become an endless loop
            raise JobError(f"Spotify playlist {playlist_id}: paging repeats {nxt}")
        seen.add(nxt)
        page = client.next(page)


# -- one playlist item ----------------------------------------------------------------------
@dataclass(frozen=True)
class PlaylistItem:
    spotify_id: str | None
    title: str
    artists: list[str]
    isrc: str | None


def classify_entry(entry: Any) -> PlaylistItem | str:
    """A playable track of a playlist entry, or why it is skipped: ``"null"`` (removed or
    unavailable), ``"local"`` (a user's local file), ``"episode"`` (podcast).

    Entries carry the track under ``item`` since the February 2026 API change and under the
    deprecated ``track`` before it; both are read.
    """
    if not isinstance(entry, dict):
        return "null"
    obj = entry.get("item") if entry.get("item") is not None else entry.get("track")
    if not isinstance(obj, dict):
        return "null"
    if entry.get("is_local") or obj.get("is_local") or str(obj.get("uri") or "").startswith("spotify:local:"):
        return "local"
    if obj.get("type") == "episode" or obj.get("episode") is True:
        return "episode"
    if obj.get("type") not in (None, "track"):
        return "null"
    artists = [a.get("name") or "" for a in obj.get("artists") or [] if isinstance(a, dict)]
    isrc = (obj.get("external_ids") or {}).get("isrc")
    return PlaylistItem(obj.get("id"), obj.get("name") or "", [a for a in artists if a], isrc)


# -- merge ----------------------------------------------------------------------------------
@dataclass
class PlaylistStats:
    playlist_id: str
    genre: str
    items: int = 0
    matched_isrc: int = 0
    matched_name: int = 0
    unmatched: int = 0
    skipped: Counter = field(default_factory=Counter)  # null / local / episode


@dataclass
class SpotifyLabelsSummary:
    run_id: str
    labels_uri: str
    report_uri: str
    catalogue_index_uri: str
    dry_run: bool = False
    playlists: list[PlaylistStats] = field(default_factory=list)
    added: list[dict] = field(default_factory=list)  # new labels.csv rows
    already_labelled: int = 0
    conflicts: list[dict] = field(default_factory=list)
    unmatched: list[dict] = field(default_factory=list)
    index_rejects: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        verb = "would add" if self.dry_run else "added"
        out = [
            f"labels spotify {self.run_id}: {len(self.playlists)} playlists in {self.seconds:.1f}s"
            + (" (dry run: labels.csv unchanged)" if self.dry_run else ""),
        ]
        for p in self.playlists:
            skipped = ", ".join(f"{n} {k}" for k, n in sorted(p.skipped.items()))
            out.append(
                f"  {p.playlist_id} -> {p.genre}: {p.items} items, matched {p.matched_isrc} by ISRC + "
                f"{p.matched_name} by artist+title, {p.unmatched} unmatched"
                + (f", skipped {skipped}" if skipped else "")
            )
        per_genre = Counter(r["genre"] for r in self.added)
        genres = ", ".join(f"{g} {n}" for g, n in sorted(per_genre.items()))
        out.append(
            f"  {verb} {len(self.added)} labels"
            + (f" ({genres})" if genres else "")
            + f", {self.already_labelled} already labelled, {len(self.conflicts)} conflicts (not written)"
        )
        for c in self.conflicts[:10]:
            out.append(f"  conflict: {c['track_id']}: {c['detail']}")
        if len(self.conflicts) > 10:
            out.append(f"  ... {len(self.conflicts) - 10} more conflicts in the report")
        if self.index_rejects:
            out.append(f"  catalogue index rows rejected: {len(self.index_rejects)} (see the report)")
        out.append(f"  labels {self.labels_uri}")
        out.append(f"  report {self.report_uri}")
        return out

    def report(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "dry_run": self.dry_run,
            "labels_uri": self.labels_uri,
            "catalogue_index_uri": self.catalogue_index_uri,
            "playlists": [{**asdict(p), "skipped": dict(p.skipped)} for p in self.playlists],
            "added": self.added,
            "already_labelled": self.already_labelled,
            "conflicts": self.conflicts,
            "unmatched": self.unmatched,
            "index_rejects": self.index_rejects,
        }


def _clean(text: str) -> str:
    """No control characters (newlines included) in a CSV cell taken from an API."""
    return " ".join("".join(" " if ord(c) < 32 or ord(c) == 127 else c for c in text).split())


def merge_labels(
    labels_uri: str,
    existing_text: str | None,
    proposals: dict[str, dict[str, list[str]]],
    artist_of: dict[str, str],
    genres: list[str],
) -> tuple[str | None, list[dict], int, list[dict]]:
    """Merge proposed labels (``track_id -> genre -> [source, ...]``) into labels.csv text.

    Returns ``(new text or None if unchanged, added rows, already labelled, conflicts)``.
    Existing rows stay byte for byte; only a header lacking ``artist``/``source`` is extended
    (older rows then simply have those cells empty, which the labels parser reads as absent).
    """
    existing_genres: dict[str, set[str]] = defaultdict(set)
    header: list[str] = list(LABEL_COLUMNS)
    newline, bom, body = "\n", "", ""
    if existing_text:
        bom = "\ufeff" if existing_text.startswith("\ufeff") else ""
        body = existing_text[len(bom) :]
        first_line = body.splitlines(keepends=True)[0] if body else ""
        newline = "\r\n" if first_line.endswith("\r\n") else "\n"
        reader = csv.DictReader(io.StringIO(body))
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        if "track_id" not in header or "genre" not in header:
            raise JobError(f"{labels_uri}: header must name track_id and genre; not merging into it")
        for row in reader:
            track_id, genre = (row.get("track_id") or "").strip(), (row.get("genre") or "").strip()
            if track_id and genre:
                existing_genres[track_id].add(genre.casefold())
    canonical = {g.casefold(): g for g in genres}

    added: list[dict] = []
    conflicts: list[dict] = []
    already = 0
    for track_id in sorted(proposals):
        by_genre = proposals[track_id]
        if len(by_genre) > 1:
            detail = "; ".join(f"{g} from {', '.join(sorted(set(s)))}" for g, s in sorted(by_genre.items()))
            conflicts.append(
                {
                    "track_id": track_id,
                    "kind": "playlists",
                    "detail": f"playlists disagree: {detail}",
                    "genres": {g: sorted(set(s)) for g, s in by_genre.items()},
                }
            )
            continue
        ((genre, sources),) = by_genre.items()
        have = existing_genres.get(track_id)
        if have and have == {genre.casefold()}:
            already += 1
        elif have:
            shown = ", ".join(sorted(canonical.get(g, g) for g in have))
            conflicts.append(
                {
                    "track_id": track_id,
                    "kind": "existing",
                    "detail": f"labels.csv says {shown}, {', '.join(sorted(set(sources)))} says {genre} (kept {shown})",
                    "existing": sorted(canonical.get(g, g) for g in have),
                    "genre": genre,
                    "sources": sorted(set(sources)),
                }
            )
        else:
            added.append(
                {
                    "track_id": track_id,
                    "genre": genre,
                    "artist": _clean(artist_of.get(track_id, "")),
                    "source": sources[0],
                }
            )
    if not added:
        return None, added, already, conflicts

    new_header = header + [c for c in ("artist", "source") if c not in header]
    out = io.StringIO()
    if existing_text:
        lines = body.splitlines(keepends=True)
        if new_header != header:
            csv.writer(out, lineterminator=newline).writerow(new_header)
            lines = lines[1:]
        rest = "".join(lines)
        out.write(rest)
        if rest and not rest.endswith(("\n", "\r")):
            out.write(newline)
    else:
        csv.writer(out, lineterminator=newline).writerow(new_header)
    writer = csv.writer(out, lineterminator=newline)
    for row in added:
        writer.writerow([row.get(c, "") for c in new_header])
    return bom + out.getvalue(), added, already, conflicts


# -- the command ----------------------------------------------------------------------------
def default_report_uri(cfg: Any, run_id: str) -> str:
    return join(cfg.storage.root, "reports", "labels", f"spotify-{run_id}.json")


def default_catalogue_index_uri(cfg: Any) -> str:
    """``catalogue_index.csv`` beside labels.csv (``spotify.catalogue_index_uri`` overrides)."""
    return cfg.catalogue.labels_uri.rsplit("/", 1)[0] + "/catalogue_index.csv"


def run_spotify_labels(
    cfg: Any,
    playlists: Iterable[str],
    catalogue_index_uri: str | None = None,
    report_uri: str | None = None,
    dry_run: bool = False,
    client: Any | None = None,
    settings: SpotifySettings | None = None,
) -> SpotifyLabelsSummary:
    """Read each ``PLAYLIST_ID=GENRE`` playlist, match its tracks to the catalogue index, merge
    new labels into ``catalogue.labels_uri`` (atomically; not with ``dry_run``) and write a JSON
    report (per-playlist counts, rows added, conflicts, unmatched items, index rows rejected).

    ``client``: a ready ``spotipy.Spotify`` (default: :func:`make_client` from ``settings``).
    """
    import requests
    from spotipy.exceptions import SpotifyBaseException

    started = time.monotonic()
    settings = settings or SpotifySettings.from_config(cfg)
    labels_uri = cfg.catalogue.labels_uri
    if not labels_uri:
        raise ConfigError("labels spotify writes labels: set catalogue.labels_uri")
    specs = parse_playlist_specs(playlists, list(cfg.genres))
    storage = Storage.from_config(cfg)
    index_uri = catalogue_index_uri or settings.catalogue_index_uri or default_catalogue_index_uri(cfg)
    index = load_catalogue_index(storage, index_uri)
    run_id = commit.new_run_id()
    summary = SpotifyLabelsSummary(
        run_id=run_id,
        labels_uri=labels_uri,
        report_uri=report_uri or default_report_uri(cfg, run_id),
        catalogue_index_uri=index_uri,
        dry_run=dry_run,
        index_rejects=index.rejects,
    )
    if index.rejects:
        log.warning(
            "labels spotify: %d catalogue index rows rejected (first: %s: %s)",
            len(index.rejects),
            index.rejects[0]["where"],
            index.rejects[0]["reason"],
        )
    client = client or make_client(settings)

    proposals: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for spec in specs:
        stats = PlaylistStats(spec.playlist_id, spec.genre)
        what = f"Spotify playlist {spec.playlist_id}"
        try:
            for position, entry in enumerate(iter_playlist_items(client, spec.playlist_id, settings)):
                stats.items += 1
                item = classify_entry(entry)
                if isinstance(item, str):
                    stats.skipped[item] += 1
                    continue
                match = index.match(item.isrc, item.artists, item.title)
                if not match.track_ids:
                    stats.unmatched += 1
                    summary.unmatched.append(
                        {
                            "playlist": spec.playlist_id,
                            "genre": spec.genre,
                            "position": position,
                            "spotify_id": item.spotify_id,
                            "artist": ", ".join(item.artists),
                            "title": item.title,
                            "isrc": item.isrc,
                            "reason": match.reason,
                        }
                    )
                    continue
                if match.method == "isrc":
                    stats.matched_isrc += 1
                else:
                    stats.matched_name += 1
                for track_id in match.track_ids:
                    sources = proposals[track_id][spec.genre]
                    if spec.source not in sources:
                        sources.append(spec.source)
        except (SpotifyBaseException, requests.exceptions.RequestException) as exc:
            raise _spotify_error(exc, what, settings) from None
        log.info(
            "labels spotify: %s -> %s: %d items, %d by ISRC, %d by artist+title, %d unmatched, skipped %s",
            spec.playlist_id,
            spec.genre,
            stats.items,
            stats.matched_isrc,
            stats.matched_name,
            stats.unmatched,
            dict(stats.skipped) or "none",
        )
        summary.playlists.append(stats)

    existing = _read_text(storage, labels_uri) if storage.exists(labels_uri) else None
    text, summary.added, summary.already_labelled, summary.conflicts = merge_labels(
        labels_uri, existing, {t: dict(g) for t, g in proposals.items()}, index.artist_of, list(cfg.genres)
    )
    if text is not None and not dry_run:
        # The merged file must still read as labels (ingest's parser): check before replacing.
        parse_labels(text, labels_uri, list(cfg.genres))
        storage.write_bytes(labels_uri, text.encode("utf-8"))
    summary.seconds = time.monotonic() - started
    storage.write_bytes(summary.report_uri, json.dumps(summary.report(), indent=2, ensure_ascii=False).encode())
    for conflict in summary.conflicts:
        log.warning("labels spotify: conflict for %s: %s", conflict["track_id"], conflict["detail"])
    return summary


def _read_text(storage: Storage, uri: str) -> str:
    """UTF-8 text, a byte-order mark kept (as ``\ufeff``) so that the merge preserves it."""
    try:
        return storage.read_bytes(uri).decode("utf-8")
    except UnicodeDecodeError:
        raise JobError(f"{uri}: not UTF-8 text") from None
