"""A TCP proxy on 127.0.0.1 that breaks every Nth connection, for fault-injection tests.

``FaultProxy(upstream_port, every=4).start()`` listens on a free loopback port and forwards
each connection to ``127.0.0.1:upstream_port`` (SeaweedFS in the tests). Connections are
counted in the order their first request arrives, separately per client kind (boto3 / s3fs's
aiobotocore, told apart by the User-Agent), so that each library's traffic gets its share of
faults however much of the other there is. Every ``every``-th connection of a kind is broken,
the modes taking turns. A connection whose first request is the retry of one just broken (the
same request line and Range) passes: real faults are not aimed at one request, and with several
processes sharing the count, every retry of one request could otherwise land on a broken slot.
With ``every=1`` nothing passes: the store is down.

- ``reset``: the request reaches the server; the answer is cut after half of its first chunk
  and the client gets a TCP RST (SO_LINGER 0, then close): a reset mid-response.
- ``stall``: the request reaches the server (so retried writes really repeat), the answer is
  withheld until the client gives up (its read timeout) or ``stall_s`` passes.
- ``slowdown``: the request never reaches the server; the proxy answers ``503 SlowDown``, as
  S3 does when it throttles, and closes the connection.

Bounded: a connection's loop ends when either side closes, when its fault is done, or when the
proxy stops; :meth:`stop` closes everything and joins the threads. ``faults`` records each
injected fault (mode, kind, request line) so a test can show faults really happened.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

MODES = ("reset", "stall", "slowdown")
SLOWDOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
CHUNK = 64 * 1024
POLL_S = 0.1


@dataclass
class Fault:
    mode: str
    kind: str  # "boto3" or "aiobotocore" (s3fs)
    request: str  # the connection's first request line, e.g. "GET /bucket/key HTTP/1.1"


@dataclass
class FaultProxy:
    upstream_port: int
    every: int = 4
    modes: tuple[str, ...] = MODES
    stall_s: float = 30.0
    port: int = 0
    connections: dict[str, int] = field(default_factory=dict)  # by kind
    faults: list[Fault] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _just_broken: set[str] = field(default_factory=set)  # requests whose retry passes
    _threads: list[threading.Thread] = field(default_factory=list)
    _listener: socket.socket | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def count(self, mode: str) -> int:
        with self._lock:
            return sum(f.mode == mode for f in self.faults)

    def start(self) -> FaultProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        listener.settimeout(POLL_S)
        self._listener, self.port = listener, listener.getsockname()[1]
        self._spawn(self._accept_loop)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._listener is not None:
            self._listener.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals -------------------------------------------------------------------------
    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._spawn(self._serve, client)

    def _decide(self, first: bytes) -> tuple[str | None, str, str]:
        """(fault mode or None, client kind, request line) for a connection's first bytes."""
        head = first.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        lines = head.split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        kind = "aiobotocore" if "aiobotocore" in headers.get("user-agent", "").lower() else "boto3"
        key = f"{lines[0]} {headers.get('range', '')}"
        with self._lock:
            n = self.connections[kind] = self.connections.get(kind, 0) + 1
            if self.every > 1 and key in self._just_broken:  # a retry: it passes (and may be broken again later)
                self._just_broken.discard(key)
                return None, kind, lines[0]
            if n % self.every:
                return None, kind, lines[0]
            self._just_broken.add(key)
            # The k-th broken connection of a kind gets modes[k % len(modes)]: fixed by the
            # count, not by which earlier faults have finished.
            return self.modes[(n // self.every - 1) % len(self.modes)], kind, lines[0]

    def _record(self, mode: str, kind: str, request: str) -> None:
        with self._lock:
            self.faults.append(Fault(mode, kind, request))

    def _serve(self, client: socket.socket) -> None:
        upstream = None
        client.settimeout(5)  # no send blocks for ever on a client that stopped reading
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            self._pump(client, upstream)
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()

    @staticmethod
    def _slow_down(client: socket.socket, head_only: bool) -> None:
        head = (
            "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
            f"Content-Length: {len(SLOWDOWN_BODY)}\r\nConnection: close\r\n\r\n"
        )
        client.sendall(head.encode() + (b"" if head_only else SLOWDOWN_BODY))
        client.shutdown(socket.SHUT_WR)

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        mode: str | None = None
        decided = False
        kind = request = ""
        stall_until = None
        while not self._stop.is_set():
            if stall_until is not None and time.monotonic() > stall_until:
                self._record("stall", kind, request)
                return
            readable, _, _ = select.select([client, upstream], [], [], POLL_S)
            if client in readable:
                data = client.recv(CHUNK)
                if not data:  # the client hung up (after its read timeout, if stalled)
                    if stall_until is not None:
                        self._record("stall", kind, request)
                    return
                if not decided:
                    mode, kind, request = self._decide(data)
                    decided = True
                    if mode == "slowdown":
                        self._slow_down(client, head_only=request.startswith("HEAD "))
                        self._record("slowdown", kind, request)
                        return
                upstream.sendall(data)
            if upstream in readable:
                data = upstream.recv(CHUNK)
                if not data:
                    return
                if mode == "reset":
                    client.sendall(data[: len(data) // 2])
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self._record("reset", kind, request)
                    return  # _serve closes the client: with linger 0 that sends RST
                if mode == "stall":
                    stall_until = stall_until or time.monotonic() + self.stall_s
                    continue  # the answer is read from the server and dropped
                client.sendall(data)
