"""Cloudgene v2 REST client (MIS2, AfriGen-D/H3Africa, TOPMed), written from the servers' source contract.

Routes: `POST /api/v2/jobs/submit/{app}` (multipart, `X-Auth-Token`), `GET /api/v2/jobs[?page]`,
`GET /api/v2/jobs/{id}/status`, `GET /api/v2/jobs/{id}/cancel`, anonymous downloads from
`GET /share/results/{hash}/{name}` (10 per file, every GET counts). Each error is mapped to what the caller
can do: transient (maintenance, 5xx, concurrent-job limit, dropped connection) or permanent. The token is
only ever put in a request header; no message built here contains it.
"""

from __future__ import annotations

import html
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlparse

import httpx
from pydantic import SecretStr

from genoflows.imputation.errors import (
    AuthError,
    CorruptDownload,
    DownloadLimitExhausted,
    PermanentImputationError,
    ResultsRetired,
    TransientServerError,
)
from genoflows.imputation.states import Phase, cloudgene_state

SUCCESS_MESSAGE = re.compile(r"successfully added", re.I)
CONCURRENT_LIMIT = re.compile(r"jobs per user can be executed simultaneously", re.I)
MAX_DOWNLOADS = re.compile(r"max downloads exceeded", re.I)


@dataclass(frozen=True)
class RemoteFile:
    """One downloadable result file (`outputParams[].files[]`)."""

    param: str
    name: str
    hash: str
    size_display: str
    downloads_left: int

    @property
    def safe_name(self) -> str:
        """The file name checked against path escapes (names from a server are untrusted)."""
        parts = self.name.replace("\\", "/").split("/")
        if self.name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise PermanentImputationError(
                f"server listed an unsafe result file name {self.name!r}; refusing it"
            )
        return "/".join(parts)


def display_size(n: int) -> str:
    """commons-io `byteCountToDisplaySize` (integer division), the server's `size` string for `n` bytes."""
    for unit, factor in (
        ("EB", 1 << 60),
        ("PB", 1 << 50),
        ("TB", 1 << 40),
        ("GB", 1 << 30),
        ("MB", 1 << 20),
        ("KB", 1 << 10),
    ):
        if n // factor > 0:
            return f"{n // factor} {unit}"
    return f"{n} bytes"


def strip_html(text: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", text or "")).strip()


def failure_text(job: dict) -> str:
    """The server's own error messages of a failed job (type-1 step messages), as plain text."""
    errors = [
        f"{step.get('name', '?')}: {strip_html(m.get('message', ''))}"
        for step in job.get("steps") or []
        for m in step.get("logMessages") or []
        if m.get("type") == 1
    ]
    return (
        "; ".join(errors)
        or "the server gave no message (for an unknown refpanel MIS2 logs the reason only in its admin log)"
    )


class CloudgeneClient:
    """Talks to one Cloudgene server as one user (token) for one app id."""

    def __init__(
        self,
        base_url: str,
        token: SecretStr | str,
        app: str,
        *,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.app = app
        self._token = token if isinstance(token, SecretStr) else SecretStr(token)
        self.host = urlparse(self.base_url).netloc
        self.requests: Counter = Counter()
        self._http = httpx.Client(
            base_url=self.base_url, timeout=timeout, follow_redirects=True, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> CloudgeneClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- plumbing -------------------------------------------------------------------------------------------
    def _auth(self) -> dict[str, str]:
        return {"X-Auth-Token": self._token.get_secret_value()}

    def _send(self, method: str, path: str, *, auth: bool = True, kind: str = "api", **kw) -> httpx.Response:
        self.requests[kind] += 1
        try:
            resp = self._http.request(method, path, headers=self._auth() if auth else None, **kw)
        except httpx.TransportError as exc:
            raise TransientServerError(
                f"{method} {self.host}{path}: connection failed ({type(exc).__name__}); retrying"
            ) from None
        self._raise_for(resp, method, path)
        return resp

    def _raise_for(self, resp: httpx.Response, method: str, path: str) -> None:
        code = resp.status_code
        if code < 400:
            return
        message = _message(resp)
        where = f"{method} {self.host}{path}"
        if code in (401, 403) and "/share/" not in path:
            raise AuthError(
                f"{where}: HTTP {code}, the API token was refused (invalid, expired or revoked; creating a new "
                f"token revokes the old one). Create a token in the server's profile page and save it in the "
                f"imputation-server block. Not retried."
            )
        if code == 503:
            raise TransientServerError(f"{where}: HTTP 503, server in maintenance ({message}); waiting")
        if code >= 500:
            raise TransientServerError(f"{where}: HTTP {code} ({message[:200]}); retrying")
        if code == 400 and CONCURRENT_LIMIT.search(message):
            raise TransientServerError(f"{where}: {message} Waiting for a slot.")
        if code == 400 and MAX_DOWNLOADS.search(message):
            raise DownloadLimitExhausted(
                f"{where}: {message} This file has no downloads left on the server; ask the server's "
                f"operators to reset the limit or resubmit the job."
            )
        if code == 404 and "workspace" in message.lower():
            raise ResultsRetired(f"{where}: {message} The server deleted the results (they are kept 7 days).")
        raise PermanentImputationError(f"{where}: HTTP {code}: {message[:500]}")

    # --- jobs -----------------------------------------------------------------------------------------------
    def submit(self, files: Sequence[Path], params: dict[str, str], job_name: str) -> str:
        """One multipart POST (never retried here: the caller decides, after looking the job up by name)."""
        data = {k: str(v) for k, v in params.items() if v is not None}
        data["job-name"] = job_name
        handles = [open(f, "rb") for f in files]  # noqa: SIM115 - closed below
        try:
            parts = [
                ("files", (Path(f).name, h, "application/octet-stream"))
                for f, h in zip(files, handles, strict=True)
            ]
            resp = self._send(
                "POST", f"/api/v2/jobs/submit/{quote(self.app)}", data=data, files=parts, kind="submit"
            )
        finally:
            for h in handles:
                h.close()
        body = _json(resp)
        job_id = body.get("id")
        if not body.get("success", True) or not job_id:
            raise PermanentImputationError(
                f"submit to {self.host}: the server did not accept the job: {_message(resp)}"
            )
        return safe_job_id(job_id)

    def list_jobs(self) -> list[dict]:
        body = _json(self._send("GET", "/api/v2/jobs"))
        return body.get("data", []) if isinstance(body, dict) else body

    def find_job_by_name(self, name: str) -> dict | None:
        """The newest job named `name` (repairs a crash between the submit call and the record of its id)."""
        found = [j for j in self.list_jobs() if j.get("name") == name]
        found.sort(key=lambda j: j.get("submittedOn") or 0)
        return found[-1] if found else None

    def status(self, job_id: str) -> dict:
        return _json(self._send("GET", f"/api/v2/jobs/{safe_job_id(job_id)}/status", kind="status"))

    def cancel(self, job_id: str) -> dict:
        return _json(self._send("GET", f"/api/v2/jobs/{safe_job_id(job_id)}/cancel", kind="cancel"))

    @staticmethod
    def phase(job: dict) -> tuple[str, Phase]:
        return cloudgene_state(job.get("state", 2))

    @staticmethod
    def output_files(job: dict) -> list[RemoteFile]:
        files = []
        for param in job.get("outputParams") or []:
            if not param.get("download", True):
                continue
            for f in param.get("files") or []:
                files.append(
                    RemoteFile(
                        param=str(param.get("id") or param.get("name") or "output"),
                        name=f["name"],
                        hash=f["hash"],
                        size_display=str(f.get("size", "")),
                        downloads_left=int(f.get("count", -1)),
                    )
                )
        return files

    def download(self, remote: RemoteFile, dest: Path, on_get: Callable[[], None] | None = None) -> int:
        """Stream one file to `dest` via a `.part` name; size-checked. `on_get` runs before the GET (it counts)."""
        if not re.fullmatch(r"[0-9a-fA-F]{16,128}", remote.hash):
            raise PermanentImputationError(f"server listed a malformed download hash for {remote.name!r}")
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        path = f"/share/results/{remote.hash}/{quote(remote.safe_name)}"
        if on_get is not None:
            on_get()
        self.requests["download"] += 1
        try:
            with self._http.stream("GET", path) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    self._raise_for(resp, "GET", f"/share/results/<hash>/{remote.safe_name}")
                expected = resp.headers.get("content-length")
                n = 0
                with open(part, "wb") as out:
                    for chunk in resp.iter_bytes(1 << 20):
                        out.write(chunk)
                        n += len(chunk)
        except httpx.TransportError as exc:
            part.unlink(missing_ok=True)
            raise CorruptDownload(
                f"{remote.name}: connection broke during the download ({type(exc).__name__})"
            ) from None
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        problem = None
        if expected is not None and int(expected) != n:
            problem = f"got {n} bytes, Content-Length said {expected}"
        elif remote.size_display and display_size(n) != remote.size_display:
            problem = f"got {n} bytes ({display_size(n)}), the server listed {remote.size_display}"
        if problem:
            part.unlink(missing_ok=True)
            raise CorruptDownload(f"{remote.name}: truncated or wrong size: {problem}")
        part.replace(dest)
        return n


JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def safe_job_id(job_id: str) -> str:
    """Job ids go into URL paths and file names: accept only plain ids."""
    if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id) or ".." in job_id:
        raise PermanentImputationError(f"server returned an unusable job id {str(job_id)[:80]!r}")
    return job_id


def _json(resp: httpx.Response) -> dict:
    try:
        return resp.json()
    except ValueError:
        raise TransientServerError(
            f"{resp.request.method} {resp.request.url.path}: expected JSON, got {resp.headers.get('content-type')!r}"
        ) from None


def _message(resp: httpx.Response) -> str:
    try:
        body = resp.json()
        if isinstance(body, dict) and body.get("message"):
            return str(body["message"])
    except ValueError:
        pass
    return resp.text.strip()[:500]
