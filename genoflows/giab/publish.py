"""An `s3://` out_dir for GIAB: runs are computed in a local scratch directory, then published to S3.

    <out>/<sample_id>/run-<key>/{metrics.csv, run.json, provenance.jsonl, tools.log, bcftools/..., ...}
    <out>/<sample_id>/run-<key>/.genoflows-done.json   the run's manifest (every file's size and sha256),
                                                       written LAST and only if absent (If-None-Match: *)

The run key is the local one (`genoflows.giab.runs.run_key`: input versions, truth, engine, build). A run is
finished on S3 if and only if its manifest exists: the flow looks for it before anything is downloaded, so a
rerun with the same inputs from a fresh machine (an ECS task) reports "up to date" and writes nothing. A finished
run is never uploaded again, so never overwritten. The data files go up first, each checked by S3 against its
Content-MD5 (multipart: per-part SHA-256) and then by its stored size; the manifest goes last, so a task killed
mid-upload leaves no manifest and the next run uploads again. Two runs of the same key at the same moment: the
first manifest stands, the second run's is refused and it reports the first as the finished run.

The uploads reuse the RNA-seq state module's verified `put_file` (one S3 uploader in the project). Plain
functions taking a boto3 client; the Prefect tasks (retries) are in tasks/giab.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from genoflows.fetch import TransientFetchError, classify_s3_error, split_s3_uri
from genoflows.remote import MANIFEST, RemoteStateError, is_remote, join, put_file, read_json

__all__ = ["MANIFEST", "RemoteRun", "drop_scratch", "is_remote", "published_files", "scratch_dir"]


def scratch_dir(out_uri: str, data_dir: Path) -> Path:
    """The local working directory of an s3:// out_dir: `<data_dir>/giab-scratch/<hash of the URI>`."""
    split_s3_uri(out_uri.rstrip("/") + "/x")  # a clear error for s3:// without a bucket
    return Path(data_dir) / "giab-scratch" / hashlib.sha256(out_uri.rstrip("/").encode()).hexdigest()[:16]


def published_files(run_dir: Path) -> list[Path]:
    """The files of a finished run that are published: everything but engines' work directories and hidden
    files (the same list as the run's files artifact)."""
    run_dir = Path(run_dir)
    return sorted(p for p in run_dir.rglob("*") if p.is_file() and "work" not in p.relative_to(run_dir).parts
                  and not p.name.startswith("."))


def drop_scratch(run_dir: Path) -> None:
    """Remove a published run's scratch copy (only a directory under a `giab-scratch` tree)."""
    run_dir = Path(run_dir)
    if "giab-scratch" in run_dir.parts and run_dir.name.startswith("run-"):
        shutil.rmtree(run_dir, ignore_errors=True)


def _s3_call(uri: str, call):
    """Run one S3 call; a botocore error becomes the project's transient/permanent fetch error (so the task's
    retry policy retries throttling and 5xx, and not AccessDenied or NoSuchBucket)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return call()
    except (ClientError, BotoCoreError) as exc:
        if isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") == "BadDigest":
            raise TransientFetchError(f"{uri}: S3 received a body other than the one sent (BadDigest); "
                                      "will retry") from exc
        raise classify_s3_error(uri, exc) from exc


@dataclass(frozen=True)
class RemoteRun:
    """One run key's place on S3: `<out_uri>/<sample_id>/run-<key>/`."""

    uri: str
    client: object

    @classmethod
    def of(cls, out_uri: str, sample_id: str, key: str, client) -> RemoteRun:
        return cls(join(out_uri, sample_id, f"run-{key}"), client)

    @property
    def manifest_uri(self) -> str:
        return join(self.uri, MANIFEST)

    def metrics_uri(self) -> str:
        return join(self.uri, "metrics.csv")

    def finished(self) -> dict | None:
        """The run's manifest when it is finished on S3, else None (one GET; nothing else is read)."""
        doc = _s3_call(self.manifest_uri, lambda: read_json(self.client, self.manifest_uri))
        if doc is not None and not isinstance(doc.get("files"), dict):
            raise RemoteStateError(f"{self.manifest_uri}: not a GIAB run manifest (no 'files'); delete it and rerun")
        return doc

    def upload(self, run_dir: Path, key: str) -> tuple[dict, bool]:
        """Publish the finished local `run_dir`: its files (verified), then the manifest, only if absent.

        Returns (the manifest that stands on S3, True when this call wrote it). An already finished run is not
        touched at all."""
        if (done := self.finished()) is not None:
            return done, False
        run_dir = Path(run_dir)
        files = {}
        for path in published_files(run_dir):
            rel = path.relative_to(run_dir).as_posix()
            uri = join(self.uri, rel)
            files[rel] = _s3_call(uri, lambda p=path, u=uri: put_file(self.client, p, u))
        manifest = {"key": key, "published": datetime.now(UTC).isoformat(timespec="seconds"), "files": files}
        local = run_dir / MANIFEST  # hidden: not itself a published file; kept as the scratch copy's record
        local.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        try:
            _s3_call(self.manifest_uri, lambda: put_file(self.client, local, self.manifest_uri, only_new=True))
        except FileExistsError:  # a concurrent run of the same key finished first: its manifest stands
            return self.finished() or manifest, False
        return manifest, True
