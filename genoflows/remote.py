"""Finished work on `s3://`, shared by every pipeline whose out_dir may be a bucket (RNA-seq, GIAB).

One rule: a unit of work is finished on S3 if and only if its manifest (MANIFEST: every file's size and sha256)
exists; data files go up first (single PUTs checked by S3 against Content-MD5, large files per part, the stored
size checked after), the manifest last and only if absent (If-None-Match: *), so finished work is never
overwritten. Plain functions taking a boto3 client; the callers' Prefect tasks add the retry policy.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

from genoflows.fetch import PermanentFetchError, TransientFetchError, split_s3_uri

MANIFEST = ".genoflows-done.json"


class RemoteStateError(PermanentFetchError):
    """The S3 state is not what it must be (the message names the object and what to do); retrying cannot help."""


class StateUnwritable(RemoteStateError):
    """S3 refuses to store a run for a reason every run shares (access denied, no such bucket)."""


def is_remote(uri: str | Path | None) -> bool:
    return str(uri or "").startswith("s3://")


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def sha256_md5(path: Path) -> tuple[str, str, int]:
    s, m = hashlib.sha256(), hashlib.md5()  # noqa: S324 - Content-MD5 is what S3 checks an upload against
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            s.update(chunk)
            m.update(chunk)
    return s.hexdigest(), base64.b64encode(m.digest()).decode(), path.stat().st_size


def is_missing(exc: Exception) -> bool:
    from botocore.exceptions import ClientError

    return isinstance(exc, ClientError) and (
        exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")
        or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404
    )


def precondition_failed(exc: Exception) -> bool:
    from botocore.exceptions import ClientError

    return isinstance(exc, ClientError) and (
        exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict")
        or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (409, 412)
    )


def put_file(client, path: Path, uri: str, *, only_new: bool = False) -> dict:
    """Upload one file; S3 checks the body against Content-MD5 (single PUT) or per part (large files), and the
    stored size is checked. `only_new`: If-None-Match *, so an existing object is never replaced (FileExistsError)."""
    bucket, key = split_s3_uri(uri)
    sha, md5_b64, size = sha256_md5(path)
    if size <= 64 << 20:
        kw = {"IfNoneMatch": "*"} if only_new else {}
        try:
            with open(path, "rb") as fh:
                client.put_object(Bucket=bucket, Key=key, Body=fh, ContentMD5=md5_b64, **kw)
        except Exception as exc:
            if only_new and precondition_failed(exc):
                raise FileExistsError(uri) from exc
            raise
    else:  # an index of a large transcriptome: multipart, each part checked by S3 (sha256 checksums)
        client.upload_file(str(path), bucket, key, ExtraArgs={"ChecksumAlgorithm": "SHA256"})
    stored = client.head_object(Bucket=bucket, Key=key)["ContentLength"]
    if stored != size:
        raise TransientFetchError(f"{uri}: stored {stored} bytes, uploaded {size}; the upload will be retried")
    return {"size": size, "sha256": sha}


def read_json(client, uri: str) -> dict | None:
    """A small JSON object, or None when it does not exist; RemoteStateError when it is not JSON."""
    bucket, key = split_s3_uri(uri)
    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as exc:
        if is_missing(exc):
            return None
        raise
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise RemoteStateError(f"{uri}: not a JSON manifest ({exc}); delete it and rerun") from exc
    if not isinstance(doc, dict):
        raise RemoteStateError(f"{uri}: not a JSON manifest; delete it and rerun")
    return doc


def put_json(client, uri: str, doc: Mapping, *, only_new: bool) -> bool:
    """Write a manifest; False when `only_new` and one is already there (it is kept, not replaced)."""
    bucket, key = split_s3_uri(uri)
    body = json.dumps(doc, indent=1, sort_keys=True).encode()
    md5 = base64.b64encode(hashlib.md5(body).digest()).decode()  # noqa: S324
    try:
        client.put_object(Bucket=bucket, Key=key, Body=body, ContentMD5=md5, ContentType="application/json",
                          **({"IfNoneMatch": "*"} if only_new else {}))  # fmt: skip
    except Exception as exc:
        if only_new and precondition_failed(exc):
            return False
        raise
    return True
