"""Where verified results end up: `<out_dir>/<job name>/` locally, or uploaded under an `s3://` prefix after
verification, with an `imputation.json` manifest (file, bytes, sha256, service, job id, tool versions)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from urllib.parse import urlparse

from genoflows.files import atomic_output
from genoflows.imputation.remote import sha256_cached

MANIFEST = "imputation.json"
SKIP = {MANIFEST}


def is_s3(out_dir: str) -> bool:
    return urlparse(str(out_dir)).scheme == "s3"


def staging_dir(out_dir: str, data_dir: Path) -> Path:
    """The local working directory for an out_dir: the directory itself, or a stable place for an s3:// prefix."""
    if not is_s3(out_dir):
        return Path(out_dir)
    return Path(data_dir) / "imputation-staging" / hashlib.sha256(str(out_dir).encode()).hexdigest()[:16]


def write_manifest(job_dir: Path, files: list[Path], meta: dict, uris: dict[str, str] | None = None) -> Path:
    """Write the manifest atomically; `files` are paths inside job_dir."""
    entries = []
    for f in sorted(set(files)):
        rel = str(f.relative_to(job_dir))
        entry = {"file": rel, "bytes": f.stat().st_size, "sha256": sha256_cached(f)}
        if uris:
            entry["uri"] = uris[rel]
        entries.append(entry)
    doc = {**meta, "files": entries}
    path = job_dir / MANIFEST
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=2))
    return path


def upload_files(job_dir: Path, files: list[Path], out_uri: str, s3) -> dict[str, str]:
    """Upload each verified file to `<out_uri>/<relative path>` unless an object with the same sha256 is there."""
    parsed = urlparse(out_uri)
    bucket, prefix = parsed.netloc, parsed.path.strip("/")
    uris = {}
    for f in files:
        rel = str(f.relative_to(job_dir))
        key = f"{prefix}/{rel}" if prefix else rel
        digest = sha256_cached(f)
        try:
            head = s3.head_object(Bucket=bucket, Key=key)
            same = (
                head.get("Metadata", {}).get("sha256") == digest and head["ContentLength"] == f.stat().st_size
            )
        except Exception:  # noqa: BLE001 - absent (404) or unreadable: upload
            same = False
        if not same:
            s3.upload_file(str(f), bucket, key, ExtraArgs={"Metadata": {"sha256": digest}})
        uris[rel] = f"s3://{bucket}/{key}"
    return uris
