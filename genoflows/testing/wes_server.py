"""The GA4GH reference WES server (PyPI `wes-service`, cwltool backend) on 127.0.0.1 for tests and the demo.

`wes-server` has no --host flag; uvicorn binds 127.0.0.1. Its service-info runs `cwl-runner --version` on every
call (seconds on a loaded machine), so the readiness probe waits long. Runs live under `<workdir>/workflows/`. The
venv's bin goes first on PATH so its `cwl-runner` and the tools the workflows call are found.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WesServer:
    def __init__(self, workdir: Path | None = None, startup_timeout: float = 180.0):
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="wes-")
        self.workdir = Path(workdir or self._tmp.name)
        self.port = _free_port()
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/ga4gh/wes/v1"

    def __enter__(self) -> WesServer:
        bindir = str(Path(sys.executable).parent)
        env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.workdir.mkdir(parents=True, exist_ok=True)
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
                if httpx.get(f"{self.base_url}/service-info", timeout=60).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.__exit__()
        raise RuntimeError("wes-server did not answer service-info in time")

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()
        if self._tmp:
            self._tmp.cleanup()
