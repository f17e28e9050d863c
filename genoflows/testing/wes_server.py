"""The GA4GH reference WES server (PyPI `wes-service`, cwltool backend) on 127.0.0.1 for tests and the demo,
optionally behind a bearer-token reverse proxy (wes-service itself has no auth; DNAstack-style services do).

`wes-server` has no --host flag; uvicorn binds 127.0.0.1. Its service-info runs `cwl-runner --version` on every
call (seconds on a loaded machine), so the readiness probe waits long. Runs live under `<workdir>/workflows/`. The
venv's bin goes first on PATH so its `cwl-runner` and the tools the workflows call are found.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "host",
    "content-length",
}


class BearerProxy:
    """A real reverse proxy on 127.0.0.1 that checks `Authorization: Bearer <token>` before forwarding to
    `upstream`: 401 (WES error body) when the token is missing or unknown, 403 when it is known but has no
    rights. `tokens` maps token -> True (may use the service) / False (authenticated, not authorised). Every
    request is counted per status in `statuses` (the tests check that a refused token is not retried)."""

    def __init__(self, upstream: str, tokens: dict[str, bool]):
        self.upstream = upstream.rstrip("/")
        self.tokens = dict(tokens)
        self.statuses: list[int] = []
        self._http = httpx.Client(timeout=300)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet; and never log the Authorization header
                pass

            def _refuse(self, code: int, msg: str) -> None:
                body = json.dumps({"msg": msg, "status_code": code}).encode()
                proxy.statuses.append(code)
                self.send_response(code)
                if code == 401:
                    self.send_header("WWW-Authenticate", 'Bearer realm="wes"')
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
                if scheme.lower() != "bearer" or token not in proxy.tokens:
                    return self._refuse(401, "missing or invalid bearer token")
                if not proxy.tokens[token]:
                    return self._refuse(403, "this token may not use the workflow execution service")
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in HOP_BY_HOP and k.lower() != "authorization"
                }
                resp = proxy._http.request(
                    self.command, proxy.upstream + self.path, content=body, headers=headers
                )
                proxy.statuses.append(resp.status_code)
                self.send_response(resp.status_code)
                for k, v in resp.headers.items():
                    if k.lower() not in HOP_BY_HOP and k.lower() != "content-encoding":
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(resp.content)))
                self.end_headers()
                self.wfile.write(resp.content)

            do_GET = do_POST = do_DELETE = _forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._http.close()


class WesServer:
    """wes-service on a free port; with `tokens`, clients reach it only through a BearerProxy (`base_url`)."""

    def __init__(
        self,
        workdir: Path | None = None,
        startup_timeout: float = 180.0,
        tokens: dict[str, bool] | None = None,
    ):
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="wes-")
        self.workdir = Path(workdir or self._tmp.name)
        self.port = _free_port()
        self.startup_timeout = startup_timeout
        self.tokens = tokens
        self.proxy: BearerProxy | None = None
        self.proc: subprocess.Popen | None = None

    @property
    def upstream_url(self) -> str:
        """wes-service itself (no auth)."""
        return f"http://127.0.0.1:{self.port}/ga4gh/wes/v1"

    @property
    def base_url(self) -> str:
        """What clients use: the bearer proxy when tokens were given, else wes-service directly."""
        if self.proxy is not None:
            return f"http://127.0.0.1:{self.proxy.port}/ga4gh/wes/v1"
        return self.upstream_url

    def run_dir(self, run_id: str) -> Path:
        """Where wes-service keeps a run (request.json, cwl.input.json, outdir/)."""
        return self.workdir / "workflows" / run_id

    def __enter__(self) -> WesServer:
        bindir = str(Path(sys.executable).parent)
        # TMPDIR: wes-service stages each run's attachments in a mkdtemp() directory; keep those in workdir.
        (self.workdir / "tmp").mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
            "TMPDIR": str(self.workdir / "tmp"),
        }
        self._log = open(self.workdir / "wes-server.log", "wb")  # noqa: SIM115 - closed in __exit__
        self.proc = subprocess.Popen(
            [
                str(Path(bindir) / "wes-server"),
                "--port",
                str(self.port),
                "--backend",
                "wes_service.cwl_runner",
            ],
            cwd=self.workdir,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"wes-server exited: {(self.workdir / 'wes-server.log').read_text()[-2000:]}"
                )
            try:
                if httpx.get(f"{self.upstream_url}/service-info", timeout=60).status_code == 200:
                    if self.tokens is not None:
                        self.proxy = BearerProxy(f"http://127.0.0.1:{self.port}", self.tokens)
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.__exit__()
        raise RuntimeError("wes-server did not answer service-info in time")

    def __exit__(self, *exc) -> None:
        if self.proxy is not None:
            self.proxy.close()
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()
        if self._tmp:
            self._tmp.cleanup()
