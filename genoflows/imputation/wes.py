"""GA4GH WES 1.x client (bearer token): service-info, submit a workflow, poll, outputs, cancel.

Written from the WES OpenAPI (v1.0/1.1) and checked against the reference server `wes-service` 5.0, whose
quirks it tolerates: ListRuns answers `workflows` instead of `runs`, list items carry no tags (so a run is
found by reading each run's `request.tags`), and only RUNNING/COMPLETE/EXECUTOR_ERROR are reported.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from urllib.parse import urlparse

import httpx
from pydantic import SecretStr

from genoflows.imputation.errors import (
    AuthError,
    CorruptDownload,
    PermanentImputationError,
    TransientServerError,
)
from genoflows.imputation.states import Phase, wes_state

# A CWL CommandLineTool wrapping the local minimac4 engine's command line (same flags as genoflows.tools.minimac4).
MINIMAC4_CWL = """cwlVersion: v1.2
class: CommandLineTool
doc: minimac4 imputation of one chromosome (genoflows); outputs chr<N>.dose.vcf.gz and chr<N>.info.gz
baseCommand: minimac4
arguments: ["-o", "chr$(inputs.chrom).dose.vcf.gz", "-O", "vcf.gz", "-s", "chr$(inputs.chrom).info.gz",
            "-f", "GT,DS,HDS,GP"]
inputs:
  reference: {type: File, inputBinding: {position: 1}, doc: "panel compressed by minimac4 --compress-reference"}
  target: {type: File, inputBinding: {position: 2}, secondaryFiles: [.tbi]}
  chrom: string
outputs:
  dose: {type: File, outputBinding: {glob: "chr*.dose.vcf.gz"}}
  info: {type: File, outputBinding: {glob: "chr*.info.gz"}}
"""
WORKFLOW_FILE = "genoflows-minimac4.cwl"
TAG = "genoflows_job"


class WesClient:
    def __init__(self, base_url: str, token: SecretStr | str | None, *, timeout: float = 60.0):
        self.base_url = base_url.rstrip("/")
        self.host = urlparse(self.base_url).netloc
        self._token = token if isinstance(token, SecretStr) or token is None else SecretStr(token)
        self.requests = 0
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, follow_redirects=True)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> WesClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token.get_secret_value()}"} if self._token else {}

    def _call(self, method: str, path: str, **kw) -> dict:
        self.requests += 1
        try:
            resp = self._http.request(method, path, headers=self._headers(), **kw)
        except httpx.TransportError as exc:
            raise TransientServerError(
                f"{method} {self.host}{path}: connection failed ({type(exc).__name__})"
            ) from None
        if resp.status_code in (401, 403):
            raise AuthError(
                f"{method} {self.host}{path}: HTTP {resp.status_code}, the bearer token was refused (invalid or "
                f"expired); get a new token from the service and save it in the imputation-server block. Not retried."
            )
        if resp.status_code >= 500 or resp.status_code == 429:
            raise TransientServerError(f"{method} {self.host}{path}: HTTP {resp.status_code}; retrying")
        if resp.status_code >= 400:
            try:
                msg = resp.json().get("msg", resp.text)
            except ValueError:
                msg = resp.text
            raise PermanentImputationError(
                f"{method} {self.host}{path}: HTTP {resp.status_code}: {str(msg)[:500]}"
            )
        return resp.json()

    def service_info(self) -> dict:
        return self._call("GET", "/service-info")

    def submit(
        self,
        workflow_url: str,
        params: dict,
        *,
        attachments: dict[str, str | bytes | Path] | None = None,
        workflow_type: str = "CWL",
        workflow_type_version: str = "v1.2",
        tags: dict[str, str] | None = None,
        engine_parameters: dict | None = None,
    ) -> str:
        data = {
            "workflow_url": workflow_url,
            "workflow_params": json.dumps(params),
            "workflow_type": workflow_type,
            "workflow_type_version": workflow_type_version,
            "tags": json.dumps(tags or {}),
        }
        if engine_parameters:
            data["workflow_engine_parameters"] = json.dumps(engine_parameters)
        files, handles = [], []
        try:
            for name, body in (attachments or {}).items():
                if isinstance(body, Path):  # streamed from disk, not read into memory (panels are large)
                    handles.append(open(body, "rb"))  # noqa: SIM115 - closed below
                    body = handles[-1]
                elif isinstance(body, str):
                    body = body.encode()
                files.append(("workflow_attachment", (name, body)))
            return str(self._call("POST", "/runs", data=data, files=files or None)["run_id"])
        finally:
            for fh in handles:
                fh.close()

    def list_runs(self) -> list[dict]:
        body = self._call("GET", "/runs")
        return body.get("runs", body.get("workflows", []))

    def run_log(self, run_id: str) -> dict:
        return self._call("GET", f"/runs/{run_id}")

    def status(self, run_id: str) -> tuple[str, Phase]:
        return wes_state(self._call("GET", f"/runs/{run_id}/status")["state"])

    def cancel(self, run_id: str) -> None:
        self._call("POST", f"/runs/{run_id}/cancel")

    def find_run(self, tag_value: str) -> str | None:
        """The run whose `tags[genoflows_job]` is `tag_value` (the repair of a crash between submit and record)."""
        for item in self.list_runs():
            tags = item.get("tags")
            if tags is None:
                try:
                    tags = self.run_log(item["run_id"]).get("request", {}).get("tags") or {}
                except PermanentImputationError:
                    continue
            if isinstance(tags, str):
                tags = json.loads(tags or "{}")
            if tags.get(TAG) == tag_value:
                return item["run_id"]
        return None

    def fetch_output(self, obj: dict, dest: Path) -> Path:
        """Bring a CWL File output here (file:// on a shared filesystem, or http(s)), checking size and sha1."""
        loc = obj.get("location") or ""
        parsed = urlparse(loc)
        part = dest.with_name(dest.name + ".part")
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            if parsed.scheme == "file":
                shutil.copyfile(parsed.path, part)
            elif parsed.scheme in ("http", "https"):
                with self._http.stream("GET", loc, headers=self._headers()) as resp, open(part, "wb") as out:
                    resp.raise_for_status()
                    for chunk in resp.iter_bytes(1 << 20):
                        out.write(chunk)
            else:
                raise PermanentImputationError(
                    f"WES output {obj.get('basename')}: unsupported location scheme {parsed.scheme!r}"
                )
            if "size" in obj and part.stat().st_size != int(obj["size"]):
                raise CorruptDownload(
                    f"{dest.name}: {part.stat().st_size} bytes, the run log says {obj['size']}"
                )
            algo, _, want = str(obj.get("checksum", "")).partition("$")
            if algo in ("sha1", "sha256", "md5") and hashlib.new(algo, part.read_bytes()).hexdigest() != want:
                raise CorruptDownload(f"{dest.name}: {algo} differs from the run log's checksum")
            part.replace(dest)
        except (OSError, httpx.HTTPError) as exc:
            raise CorruptDownload(
                f"{dest.name}: could not fetch {parsed.scheme} output ({type(exc).__name__})"
            ) from None
        finally:
            part.unlink(missing_ok=True)
        return dest
