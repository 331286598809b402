"""A fault-injecting HTTP proxy for tests: put it in front of a real server, then tell it to misbehave.

``FaultProxy(upstream)`` listens on 127.0.0.1 and forwards every request to ``upstream`` unchanged,
``Host`` header included, so links the server builds from it point back through the proxy. Told to,
it answers the first N requests (or all) itself instead: an HTTP status with an optional
``Retry-After``, or no answer at all (it holds the connection past the client's timeout). It counts
and records every request it receives, whatever it does with it.

    with FaultProxy(stac_url) as proxy:
        proxy.inject(Fault(status=503), first=2)  # two 503s, then the real server
        ...
        assert proxy.count == 5
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

#: Headers that belong to one connection, never forwarded (RFC 9110 section 7.6.1).
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "transfer-encoding"}
    | {"upgrade", "content-length"}
)


@dataclass(frozen=True)
class Fault:
    """What to do instead of forwarding: answer ``status`` (with ``Retry-After: retry_after`` when set),
    or, with ``hang_s``, hold the connection that long and close it without an answer. With ``path``,
    only requests for that path (query string aside) get the fault; the others are forwarded."""

    status: int = 500
    retry_after: str | None = None
    hang_s: float | None = None
    path: str | None = None

    def applies_to(self, path: str) -> bool:
        """True when a request for ``path`` is one this fault is for."""
        return self.path is None or path.split("?", 1)[0] == self.path


@dataclass(frozen=True)
class Request:
    """One request the proxy received, and what it did with it (``forwarded`` or the fault)."""

    method: str
    path: str
    headers: dict[str, str]
    outcome: str


class FaultProxy:
    """A threaded HTTP proxy on 127.0.0.1 in front of ``upstream`` (``http://host:port``)."""

    def __init__(self, upstream: str, upstream_timeout_s: float = 60.0) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise ValueError(f"upstream must be http://host:port, got {upstream!r}")
        self._upstream = (parts.hostname, parts.port)
        self._upstream_timeout_s = upstream_timeout_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._fault: Fault | None = None
        self._first: int | None = None
        self._faulted = 0
        self.requests: list[Request] = []
        self._server = _Server(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self._thread.start()

    def inject(self, fault: Fault, first: int | None = None) -> None:
        """Apply ``fault`` to the next ``first`` requests it is for (all when None); clears the request log."""
        with self._lock:
            self._fault, self._first, self._faulted = fault, first, 0
            self.requests.clear()

    def heal(self) -> None:
        """Forward every request from now on; clears the request log."""
        with self._lock:
            self._fault, self._first, self._faulted = None, None, 0
            self.requests.clear()

    @property
    def count(self) -> int:
        """How many requests arrived since the last ``inject`` or ``heal``."""
        with self._lock:
            return len(self.requests)

    def outcomes(self) -> list[str]:
        """What the proxy did with each request, in order: ``forwarded``, ``HTTP 503``, ``hang``."""
        with self._lock:
            return [r.outcome for r in self.requests]

    def close(self) -> None:
        """Stop serving; requests still hanging are let go at once."""
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    # --- used by the handler ----------------------------------------------------------------------

    def _decide(self, method: str, path: str, headers: dict[str, str]) -> Fault | None:
        with self._lock:
            fault = self._fault
            if fault is not None and fault.applies_to(path) and (self._first is None or self._faulted < self._first):
                self._faulted += 1
            else:
                fault = None
            outcome = "forwarded" if fault is None else ("hang" if fault.hang_s else f"HTTP {fault.status}")
            self.requests.append(Request(method, path, headers, outcome))
            return fault

    def _forward(self, method: str, path: str, headers: dict[str, str], body: bytes | None) -> tuple[int, list, bytes]:
        connection = http.client.HTTPConnection(*self._upstream, timeout=self._upstream_timeout_s)
        try:
            forwarded = {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}
            connection.request(method, path, body=body, headers=forwarded)
            response = connection.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            connection.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up on a hanging request is expected: print nothing."""


def send_reply(handler: BaseHTTPRequestHandler, status: int, headers: Iterable[tuple[str, str]], data: bytes) -> None:
    """Answer with ``status``, ``headers`` (hop-by-hop ones dropped), the body's length and ``data``."""
    handler.send_response(status)
    for key, value in headers:
        if key.lower() not in HOP_BY_HOP:
            handler.send_header(key, value)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._handle(None)

        def do_POST(self) -> None:
            self._handle(self.rfile.read(int(self.headers.get("Content-Length", 0))))

        def _handle(self, body: bytes | None) -> None:
            headers = dict(self.headers.items())
            fault = proxy._decide(self.command, self.path, headers)
            if fault is None:
                status, response_headers, data = proxy._forward(self.command, self.path, headers, body)
            elif fault.hang_s:
                proxy._stop.wait(fault.hang_s)
                self.close_connection = True
                return
            else:
                status, data = fault.status, b'{"code": "InjectedFault", "description": "injected by FaultProxy"}'
                response_headers = [("Content-Type", "application/json")]
                if fault.retry_after is not None:
                    response_headers.append(("Retry-After", fault.retry_after))
            send_reply(self, status, response_headers, data)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler
