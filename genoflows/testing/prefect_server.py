"""A real `prefect server start` on 127.0.0.1 (free port, SQLite in a temp dir) for tests that need the whole
server: the UI, automations and their services, workers. Everything it starts it stops, by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prefect_cli() -> str:
    """The `prefect` executable of this interpreter's environment."""
    return str(Path(sys.executable).parent / "prefect")


@dataclass
class PrefectServer:
    url: str  # http://127.0.0.1:PORT
    home: Path
    log: Path
    children: list[subprocess.Popen] = field(default_factory=list)

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    def env(self, **extra: str) -> dict[str, str]:
        """An environment whose Prefect CLI and client talk to this server (PREFECT_HOME kept apart)."""
        return {**os.environ, "PREFECT_API_URL": self.api_url, "PREFECT_HOME": str(self.home),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra}

    def start(self, argv: list[str], log: Path, **popen) -> subprocess.Popen:
        """Start a helper process (a worker) in its own process group; stopped with the server at the latest."""
        handle = open(log, "ab")  # noqa: SIM115 - the process owns it
        proc = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True, **popen)
        self.children.append(proc)
        return proc


def stop_process(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM the process group we started, then SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)
    except ProcessLookupError:
        pass


@contextmanager
def prefect_server(workdir: Path, startup_timeout: float = 240) -> Iterator[PrefectServer]:
    """`prefect server start` on a free 127.0.0.1 port with its database under `workdir`; yields when healthy."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = PrefectServer(url=f"http://127.0.0.1:{port}", home=workdir / "home", log=workdir / "server.log")
    server.home.mkdir(exist_ok=True)
    env = server.env(
        PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{workdir / 'prefect.db'}",
        PREFECT_UI_API_URL=server.api_url,
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port),
    )
    env.pop("PREFECT_API_URL")  # the server itself must not talk to another API
    proc = server.start([prefect_cli(), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                        server.log, env=env)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"prefect server exited ({proc.returncode}):\n{server.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{server.api_url}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"prefect server not healthy after {startup_timeout} s:\n"
                                   f"{server.log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield server
    finally:
        for child in reversed(server.children):
            stop_process(child)
