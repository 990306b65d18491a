"""A fake Spotify Web API on 127.0.0.1 for offline tests: the two endpoints genrecast uses.

- ``POST /api/token``: client-credentials grant (HTTP Basic ``id:secret``, form
  ``grant_type=client_credentials``) -> ``{"access_token", "token_type": "Bearer", "expires_in"}``;
  wrong credentials -> 400 ``invalid_client``, as the Accounts service answers.
- ``GET /v1/playlists/{id}/items?limit&offset&market&additional_types``: a paging object
  (``href``, ``items``, ``limit``, ``next``, ``offset``, ``previous``, ``total``) with absolute
  ``next`` URLs; ``limit`` above 50 is a 400, as in the 2026 API. ``/tracks`` (removed for
  Development Mode apps in March 2026) answers 403.

Entries are shaped like real playlist item objects after the February 2026 change: the
track under ``item`` and, during the deprecation window, also under ``track`` (builders can
emit either alone). Faults are queued per path/offset: ``fake.fail(...)`` makes the next
matching request answer e.g. 429 with ``Retry-After``. Every request is recorded.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
ADDED_BY = {
    "external_urls": {"spotify": "https://open.spotify.com/user/genrecast-curator"},
    "href": "https://api.spotify.com/v1/users/genrecast-curator",
    "id": "genrecast-curator",
    "type": "user",
    "uri": "spotify:user:genrecast-curator",
}


def spotify_id(seed: str) -> str:
    """A deterministic 22-character base-62 id, like Spotify's."""
    n = int.from_bytes(hashlib.sha256(seed.encode()).digest(), "big")
    out = []
    for _ in range(22):
        n, r = divmod(n, 62)
        out.append(BASE62[r])
    return "".join(out)


def _artist(name: str) -> dict:
    aid = spotify_id("artist:" + name)
    return {
        "external_urls": {"spotify": f"https://open.spotify.com/artist/{aid}"},
        "href": f"https://api.spotify.com/v1/artists/{aid}",
        "id": aid,
        "name": name,
        "type": "artist",
        "uri": f"spotify:artist:{aid}",
    }


def track_object(title: str, artists: list[str], isrc: str | None, seed: str | None = None) -> dict:
    """A full track object (fields Development Mode still returns: no popularity/markets)."""
    tid = spotify_id("track:" + (seed or f"{artists}:{title}"))
    album_id = spotify_id("album:" + (seed or title))
    return {
        "album": {
            "album_type": "album",
            "artists": [_artist(a) for a in artists[:1]],
            "external_urls": {"spotify": f"https://open.spotify.com/album/{album_id}"},
            "href": f"https://api.spotify.com/v1/albums/{album_id}",
            "id": album_id,
            "images": [],
            "name": f"{title} (album)",
            "release_date": "2019-05-03",
            "release_date_precision": "day",
            "total_tracks": 10,
            "type": "album",
            "uri": f"spotify:album:{album_id}",
        },
        "artists": [_artist(a) for a in artists],
        "disc_number": 1,
        "duration_ms": 201_000,
        "episode": False,
        "explicit": False,
        "external_ids": {"isrc": isrc} if isrc else {},
        "external_urls": {"spotify": f"https://open.spotify.com/track/{tid}"},
        "href": f"https://api.spotify.com/v1/tracks/{tid}",
        "id": tid,
        "is_local": False,
        "name": title,
        "preview_url": None,
        "track": True,
        "track_number": 1,
        "type": "track",
        "uri": f"spotify:track:{tid}",
    }


def episode_object(name: str) -> dict:
    eid = spotify_id("episode:" + name)
    return {
        "audio_preview_url": None,
        "description": "A podcast episode",
        "duration_ms": 1_800_000,
        "episode": True,
        "explicit": False,
        "external_urls": {"spotify": f"https://open.spotify.com/episode/{eid}"},
        "href": f"https://api.spotify.com/v1/episodes/{eid}",
        "id": eid,
        "name": name,
        "release_date": "2025-01-01",
        "show": {"id": spotify_id("show:" + name), "name": "A show", "type": "show"},
        "track": False,
        "type": "episode",
        "uri": f"spotify:episode:{eid}",
    }


def local_object(title: str, artist: str) -> dict:
    """A user's local file in a playlist: no id, ``spotify:local:`` URI, no ISRC."""
    return {
        "album": {"album_type": None, "artists": [], "id": None, "name": "Local album", "type": "album", "uri": None},
        "artists": [{"external_urls": {}, "href": None, "id": None, "name": artist, "type": "artist", "uri": None}],
        "disc_number": 0,
        "duration_ms": 180_000,
        "explicit": False,
        "external_ids": {},
        "external_urls": {},
        "href": None,
        "id": None,
        "is_local": True,
        "name": title,
        "track_number": 0,
        "type": "track",
        "uri": f"spotify:local:{artist}:Local+album:{title}:180",
    }


def entry(obj: dict | None, key: str = "both", is_local: bool | None = None) -> dict:
    """A playlist item object wrapping ``obj``: under ``item`` (2026), ``track`` (deprecated) or both."""
    out: dict[str, Any] = {
        "added_at": "2026-03-01T12:00:00Z",
        "added_by": ADDED_BY,
        "is_local": bool(obj and obj.get("is_local")) if is_local is None else is_local,
        "primary_color": None,
        "video_thumbnail": {"url": None},
    }
    if key in ("both", "item"):
        out["item"] = obj
    if key in ("both", "track"):
        out["track"] = obj
    return out


@dataclass
class Fault:
    path: str  # request path, e.g. /v1/playlists/ID/items
    offset: int | None  # only requests for this page (None: any)
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: dict | None = None
    times: int = 1


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    status: int


class FakeSpotify:
    """The server; ``with FakeSpotify(id, secret) as fake:`` runs it on 127.0.0.1:<free port>."""

    MAX_LIMIT = 50

    def __init__(self, client_id: str, client_secret: str, access_token: str = "fake-access-token-9d1e0c") -> None:
        self.client_id, self.client_secret, self.access_token = client_id, client_secret, access_token
        self.playlists: dict[str, list[dict | None]] = {}
        self.forbidden: set[str] = set()
        self.faults: list[Fault] = []
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- setup ---------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def api_prefix(self) -> str:
        return self.base_url + "/v1/"

    @property
    def auth_url(self) -> str:
        return self.base_url + "/api/token"

    def items_path(self, playlist_id: str) -> str:
        return f"/v1/playlists/{playlist_id}/items"

    def fail(self, path: str, status: int, offset: int | None = None, times: int = 1, **headers: str) -> None:
        """The next ``times`` requests to ``path`` (and page ``offset``) answer ``status``."""
        body = {"error": {"status": status, "message": {429: "API rate limit exceeded"}.get(status, "Server error")}}
        hdrs = {k.replace("_", "-"): v for k, v in headers.items()}
        with self._lock:
            self.faults.append(Fault(path, offset, status, hdrs, body, times))

    def served(self, path: str, status: int | None = None) -> list[Request]:
        return [r for r in self.requests if r.path == path and (status is None or r.status == status)]

    def __enter__(self) -> FakeSpotify:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="fake-spotify", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # -- request handling ----------------------------------------------------------------
    def _take_fault(self, path: str, offset: int | None) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.path == path and fault.times > 0 and fault.offset in (None, offset):
                    fault.times -= 1
                    return fault
        return None

    def handle(self, method: str, raw_path: str, headers: Any, body: bytes) -> tuple[int, dict[str, str], dict]:
        url = urlparse(raw_path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        offset = int(query["offset"]) if query.get("offset", "").isdigit() else None
        fault = self._take_fault(url.path, offset)
        if fault is not None:
            return fault.status, fault.headers, fault.body or {}
        if url.path == "/api/token" and method == "POST":
            return self._token(headers, body)
        if method != "GET" or not url.path.startswith("/v1/"):
            return 405, {}, {"error": {"status": 405, "message": "Method not allowed"}}
        if headers.get("Authorization") != f"Bearer {self.access_token}":
            return 401, {}, {"error": {"status": 401, "message": "Invalid access token"}}
        parts = url.path.split("/")  # ['', 'v1', 'playlists', ID, 'items']
        if len(parts) == 5 and parts[2] == "playlists" and parts[4] == "tracks":
            return 403, {}, {"error": {"status": 403, "message": "Forbidden"}}
        if len(parts) == 5 and parts[2] == "playlists" and parts[4] == "items":
            return self._items(parts[3], query)
        return 404, {}, {"error": {"status": 404, "message": "Service not found"}}

    def _token(self, headers: Any, body: bytes) -> tuple[int, dict[str, str], dict]:
        expected = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        form = {k: v[-1] for k, v in parse_qs(body.decode()).items()}
        if form.get("grant_type") != "client_credentials":
            return 400, {}, {"error": "unsupported_grant_type", "error_description": "grant_type parameter is missing"}
        if headers.get("Authorization") != f"Basic {expected}":
            return 400, {}, {"error": "invalid_client", "error_description": "Invalid client"}
        return 200, {}, {"access_token": self.access_token, "token_type": "Bearer", "expires_in": 3600}

    def _items(self, playlist_id: str, query: dict[str, str]) -> tuple[int, dict[str, str], dict]:
        if playlist_id in self.forbidden:
            return 403, {}, {"error": {"status": 403, "message": "Forbidden"}}
        if playlist_id not in self.playlists:
            return 404, {}, {"error": {"status": 404, "message": "Resource not found"}}
        try:
            limit, offset = int(query.get("limit", "20")), int(query.get("offset", "0"))
        except ValueError:
            return 400, {}, {"error": {"status": 400, "message": "Invalid limit or offset"}}
        if not 1 <= limit <= self.MAX_LIMIT or offset < 0:
            return 400, {}, {"error": {"status": 400, "message": "Invalid limit"}}
        entries = self.playlists[playlist_id]
        extra = {k: query[k] for k in ("market", "additional_types") if k in query}

        def page_url(at: int) -> str:
            return f"{self.api_prefix}playlists/{playlist_id}/items?" + urlencode(
                {"offset": at, "limit": limit, **extra}
            )

        return (
            200,
            {},
            {
                "href": page_url(offset),
                "items": entries[offset : offset + limit],
                "limit": limit,
                "next": page_url(offset + limit) if offset + limit < len(entries) else None,
                "offset": offset,
                "previous": page_url(max(0, offset - limit)) if offset > 0 else None,
                "total": len(entries),
            },
        )


def _handler_for(fake: FakeSpotify) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as requests' session expects

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            status, headers, payload = fake.handle(method, self.path, self.headers, body)
            url = urlparse(self.path)
            with fake._lock:
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                fake.requests.append(Request(method, url.path, query, status))
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._serve("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._serve("POST")

        def log_message(self, format: str, *args: Any) -> None:  # quiet: requests are in fake.requests
            pass

    return Handler
