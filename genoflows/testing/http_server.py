"""A real HTTP file server on 127.0.0.1 for tests, the demo and benchmarks.

It serves a directory the way a GIAB mirror, ENA's FTP-over-HTTPS or a lab web server does (GET, HEAD,
single Range requests, Content-Length), and can misbehave on request: 503s, 429s with Retry-After, connections
dropped half-way, corrupt bodies (also only on a resumed Range request), an HTML maintenance page answered with
200, a response that never comes (timeouts), 404s, and whole families of files hidden (a mirror without
checksum sidecars). Dynamic endpoints (ENA's filereport API, an imputation server) plug in as routes.
An optional per-connection bandwidth cap makes throughput benchmarks honest.
"""

from __future__ import annotations

import mimetypes
import re
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

FAULT_KINDS = ("503", "404", "429", "drop", "corrupt", "corrupt-resume", "nolength", "html", "stall")
MAINTENANCE_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>Service temporarily unavailable</title></head>\n"
    b"<body><h1>Down for maintenance</h1><p>Please try again later.</p></body></html>\n"
)
RouteHandler = Callable[[dict[str, list[str]]], tuple[int, str, bytes]]


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    path: str
    status: int
    range: str | None


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """Clients that hang up (and our own injected drops) are part of the job, not errors to print."""
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class FileServer:
    """Serve `root` over HTTP on 127.0.0.1; use as a context manager or call start()/stop()."""

    def __init__(
        self,
        root: Path,
        *,
        bandwidth_bytes_per_s: float | None = None,
        port: int = 0,
        gzip_content_encoding: bool = False,
    ):
        self.root = Path(root).resolve()
        self.bandwidth = bandwidth_bytes_per_s
        # Like a misconfigured web server: .gz files labelled Content-Encoding: gzip (clients that decode
        # transparently would store the decompressed bytes).
        self.gzip_content_encoding = gzip_content_encoding
        self.requests: list[LoggedRequest] = []
        self._faults: dict[str, deque[str]] = defaultdict(deque)
        self._hidden: list[str] = []
        self.retry_after = "1"  # the Retry-After value sent with an injected 429
        self.release_stalled = threading.Event()  # set to let stalled responses end (stop() sets it)
        self._routes: dict[str, RouteHandler] = {}
        self._lock = threading.Lock()
        self._httpd = _QuietServer(("127.0.0.1", port), _make_handler(self))
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, relpath: str) -> str:
        return f"{self.base_url}/{relpath.lstrip('/')}"

    def add_fault(self, name_substring: str, kind: str, times: int = 1) -> None:
        """The next `times` GETs of a path containing `name_substring` misbehave as `kind`: an HTTP 503 or 404,
        a 429 with `Retry-After: <self.retry_after>`, a connection dropped half-way (`drop`), a flipped byte
        (`corrupt`; `corrupt-resume`: only a Range request takes it, so it hits the resumed part of a body),
        a body sent without Content-Length, ended by closing the connection (`nolength`), an HTML maintenance
        page with status 200 (`html`), or headers that never come until `release_stalled` is set (`stall`)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; choose one of {FAULT_KINDS}")
        with self._lock:
            self._faults[name_substring].extend([kind] * times)

    def hide(self, name_substring: str) -> None:
        """Answer 404 for every path containing `name_substring` from now on (e.g. ".md5": no sidecars)."""
        with self._lock:
            self._hidden.append(name_substring)

    def add_route(self, path: str, handler: RouteHandler) -> None:
        """Answer GETs of `path` (exact, without query) with handler(query) -> (status, content_type, body)."""
        self._routes[path] = handler

    def downloads(self, name_substring: str = "") -> list[LoggedRequest]:
        """GET requests of files (not routes) whose path contains `name_substring`."""
        return [r for r in self.requests if r.method == "GET" and name_substring in r.path and r.path not in self._routes]

    def _take_fault(self, path: str, ranged: bool) -> str | None:
        with self._lock:
            for key, queue in self._faults.items():
                if key in path and queue:
                    if queue[0] == "corrupt-resume" and not ranged:
                        return None  # waits for the resumed request
                    return queue.popleft()
        return None

    def _is_hidden(self, path: str) -> bool:
        with self._lock:
            return any(h in path for h in self._hidden)

    def start(self) -> FileServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="genoflows-fileserver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release_stalled.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FileServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _make_handler(server: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - silence stderr access log
            pass

        def _log(self, status: int) -> None:
            server.requests.append(
                LoggedRequest(self.command, urlparse(self.path).path, status, self.headers.get("Range"))
            )

        def _simple(self, status: int, body: bytes = b"", ctype: str = "text/plain") -> None:
            self._log(status)
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_HEAD(self) -> None:  # noqa: N802
            self.do_GET()

        def do_GET(self) -> None:  # noqa: N802
            parsed = urlparse(self.path)
            path = unquote(parsed.path)
            if path in server._routes:
                status, ctype, body = server._routes[path](parse_qs(parsed.query))
                self._simple(status, body, ctype)
                return
            target = (server.root / path.lstrip("/")).resolve()
            if not target.is_relative_to(server.root) or not target.is_file() or server._is_hidden(path):
                self._simple(404, b"not found\n")
                return
            fault = server._take_fault(path, "Range" in self.headers) if self.command == "GET" else None
            if fault in ("503", "404"):
                self._simple(int(fault), f"injected {fault}\n".encode())
                return
            if fault == "429":
                self._log(429)
                self.send_response(429)
                self.send_header("Retry-After", server.retry_after)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if fault == "html":  # a proxy or CDN maintenance page, with status 200
                self._simple(200, MAINTENANCE_PAGE, "text/html; charset=utf-8")
                return
            if fault == "stall":
                server.release_stalled.wait(60)
                self.close_connection = True
                return
            self._send_file(target, path, fault)

        def _send_file(self, target: Path, path: str, fault: str | None) -> None:
            stat = target.stat()
            size = stat.st_size
            etag = f'"{size:x}-{stat.st_mtime_ns:x}"'
            start, end, status = 0, size - 1, 200
            rng = self.headers.get("Range")
            if_range = self.headers.get("If-Range")
            if rng and if_range is not None and if_range != etag:
                rng = None  # RFC 9110: the representation changed, send all of it
            if rng:
                m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
                if not m or int(m.group(1)) >= size:
                    self._log(416)
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start, status = int(m.group(1)), 206
                end = int(m.group(2)) if m.group(2) else size - 1
            length = end - start + 1
            self._log(status)
            self.send_response(status)
            self.send_header("Content-Type", mimetypes.guess_type(path)[0] or "application/octet-stream")
            if fault == "nolength":
                self.send_header("Connection", "close")
                self.close_connection = True
            else:
                self.send_header("Content-Length", str(length))
            if server.gzip_content_encoding and path.endswith(".gz"):
                self.send_header("Content-Encoding", "gzip")
            self.send_header("ETag", etag)
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            if self.command == "HEAD":
                return
            with open(target, "rb") as fh:
                fh.seek(start)
                body_budget = length // 2 if fault == "drop" else length
                self._stream(fh, body_budget, corrupt=fault in ("corrupt", "corrupt-resume"))
            if fault == "drop":
                self.close_connection = True
                self.wfile.flush()
                self.connection.shutdown(2)

        def _stream(self, fh, nbytes: int, *, corrupt: bool) -> None:
            chunk = 64 * 1024
            sent, t0, first = 0, time.monotonic(), True
            while sent < nbytes:
                data = fh.read(min(chunk, nbytes - sent))
                if not data:
                    break
                if corrupt and first:
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                first = False
                sent += len(data)
                if server.bandwidth:  # pace before sending: the response ends when its last byte is sent, so a
                    ahead = sent / server.bandwidth - (time.monotonic() - t0)  # client that has it all may
                    if ahead > 0:  # open its next connection at once without meeting a connection cap
                        time.sleep(ahead)
                self.wfile.write(data)

    return Handler
