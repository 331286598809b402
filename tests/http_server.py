"""A file server on 127.0.0.1 that wants credentials and answers ranged reads, like a product download host.

``ProductServer(folder, users={"ada": "pw"}, tokens={"tok"})`` serves the files under ``folder`` from a
thread of the test process: ``HEAD`` and ``GET`` with one byte range (``206``, ``Content-Range``,
``Accept-Ranges``, ``Content-Length``) or none (``200``, the whole file), keep-alive, one thread per
connection. Every request must carry HTTP Basic credentials of ``users`` or a bearer token of
``tokens`` (``accept`` changes them); others get ``401``. ``fail(503, 429)`` makes it answer the next
requests with those statuses first (``Retry-After: 0``). It records every request, and the body bytes of its answer,
before it answers: a client that has an answer finds it counted.

    with ProductServer(folder, users={"ada": "pw"}) as server:
        ... f"{server.url}/path/in/folder.TIF" ...
        assert server.bytes_sent < total // 2 and server.count(401) == 0
"""

from __future__ import annotations

import base64
import re
import threading
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass(frozen=True)
class Served:
    """One request and the answer: ``status`` and the bytes of its body."""

    method: str
    path: str
    range: str | None
    authorization: str | None
    status: int
    nbytes: int


class ProductServer:
    """A threaded HTTP server on a free port of 127.0.0.1 over the files of ``root``."""

    def __init__(
        self, root: Path, users: dict[str, str] | None = None, tokens: set[str] | frozenset[str] = frozenset()
    ) -> None:
        self.root = Path(root).resolve()
        self._lock = threading.Lock()
        self._accepted: set[str] = set()
        self.accept(users or {}, tokens)
        self._faults: deque[int] = deque()
        self.requests: list[Served] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        #: ``127.0.0.1:port``, and the server's URL.
        self.netloc = f"127.0.0.1:{self._server.server_address[1]}"
        self.url = f"http://{self.netloc}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="product-server", daemon=True)

    def __enter__(self) -> ProductServer:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def accept(self, users: dict[str, str], tokens: set[str] | frozenset[str] = frozenset()) -> None:
        """Accept these credentials (only these) from now on."""
        accepted = {f"Basic {base64.b64encode(f'{u}:{p}'.encode()).decode()}" for u, p in users.items()}
        with self._lock:
            self._accepted = accepted | {f"Bearer {token}" for token in tokens}

    def fail(self, *statuses: int) -> None:
        """Answer the next requests with ``statuses``, one each, before serving again."""
        with self._lock:
            self._faults.extend(statuses)

    def reset(self) -> None:
        """Forget the requests recorded so far (and any faults not yet given)."""
        with self._lock:
            self.requests.clear()
            self._faults.clear()

    @property
    def bytes_sent(self) -> int:
        """Body bytes sent in all recorded answers."""
        with self._lock:
            return sum(r.nbytes for r in self.requests)

    def count(self, status: int) -> int:
        """How many recorded answers had ``status``."""
        with self._lock:
            return sum(r.status == status for r in self.requests)

    def _record(self, served: Served) -> None:
        with self._lock:
            self.requests.append(served)

    def _next_fault(self) -> int | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def _authorized(self, header: str | None) -> bool:
        with self._lock:
            return header in self._accepted


def _handler(server: ProductServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: clients reuse connections as they would with a real host

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def _answer(self, body: bool) -> None:
            auth = self.headers.get("Authorization")
            requested = self.headers.get("Range")
            path = unquote(urlsplit(self.path).path)

            def record(status: int, nbytes: int = 0) -> None:
                server._record(Served(self.command, path, requested, auth, status, nbytes))

            fault = server._next_fault()
            if fault is not None:
                record(fault)  # recorded before the answer goes out: a client that has it sees it counted
                return self._status_only(fault, {"Retry-After": "0"})
            if not server._authorized(auth):
                record(401)
                return self._status_only(401, {"WWW-Authenticate": 'Basic realm="products"'})
            file = (server.root / path.lstrip("/")).resolve()
            if not file.is_relative_to(server.root) or not file.is_file():
                record(404)
                return self._status_only(404)
            size = file.stat().st_size
            span = _span(requested, size)
            if span is None:
                record(416)
                return self._status_only(416, {"Content-Range": f"bytes */{size}"})
            start, end = span
            status = 200 if requested is None else 206
            record(status, end - start if body else 0)
            self.send_response(status)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(end - start))
            self.send_header("Content-Type", "application/octet-stream")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
            self.end_headers()
            if body:
                with file.open("rb") as stream:
                    stream.seek(start)
                    for offset in range(start, end, 1 << 20):
                        self.wfile.write(stream.read(min(1 << 20, end - offset)))

        def _status_only(self, status: int, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


def _span(header: str | None, size: int) -> tuple[int, int] | None:
    """[start, end) of one ``Range: bytes=`` (whole file when there is none); None when unsatisfiable or multiple."""
    if header is None:
        return 0, size
    found = _RANGE.match(header.strip())
    if found is None:
        return None  # several ranges, or another unit: not served here
    first, last = found[1], found[2]
    if not first:
        start = max(0, size - int(last or 0))
        return (start, size) if last else None
    start = int(first)
    end = min(size, int(last) + 1) if last else size
    return (start, end) if start < end else None
