"""Where GWAS inputs and outputs live: `s3://bucket/prefix` or a local directory, behind one small interface.

Downloads go through `genoflows.fetch.fetch` (temp name, verify, rename; an unchanged source is not fetched
again). Uploads write the object and then check its size, so a result is never reported that is not there.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from genoflows.fetch import fetch, split_s3_uri


def is_s3(uri: str | Path) -> bool:
    return str(uri).startswith("s3://")


def client_for(aws_credentials=None):
    """An S3 client from a prefect-aws `AwsCredentials` block object, else from settings / the AWS chain."""
    from genoflows.fetch import s3_client

    return s3_client(None, aws_credentials)


@dataclass(frozen=True)
class ObjectInfo:
    uri: str
    size: int
    etag: str


def stat(uri: str, client=None) -> ObjectInfo | None:
    """Size and ETag (local: size and mtime) of `uri`, or None when it does not exist."""
    if is_s3(uri):
        from botocore.exceptions import ClientError

        bucket, key = split_s3_uri(uri)
        try:
            head = (client or client_for()).head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return ObjectInfo(uri, int(head["ContentLength"]), head.get("ETag", "").strip('"'))
    path = Path(uri)
    if not path.is_file():
        return None
    st = path.stat()
    return ObjectInfo(uri, st.st_size, f"{st.st_mtime_ns:x}-{st.st_size:x}")


def exists(uri: str, client=None) -> bool:
    return stat(uri, client) is not None


def list_objects(prefix_uri: str, client=None) -> list[ObjectInfo]:
    """Every object under `prefix_uri` (recursively), with size and ETag."""
    if is_s3(prefix_uri):
        bucket, key = split_s3_uri(prefix_uri)
        pages = (client or client_for()).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
        return [
            ObjectInfo(f"s3://{bucket}/{o['Key']}", int(o["Size"]), o.get("ETag", "").strip('"'))
            for page in pages
            for o in page.get("Contents", [])
        ]
    root = Path(prefix_uri)
    if not root.is_dir():
        return []
    return [info for p in sorted(root.rglob("*")) if p.is_file() and (info := stat(str(p)))]


def download(uri: str, dest: Path, client=None) -> Path:
    """`uri` as a verified local file at `dest` (a local source is copied, never moved)."""
    if is_s3(uri):
        fetch(uri, dest, s3_client=client or client_for())
    else:
        fetch(str(Path(uri).resolve()), dest)
    return dest


def read_text(uri: str, client=None) -> str:
    if is_s3(uri):
        bucket, key = split_s3_uri(uri)
        return (client or client_for()).get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    return Path(uri).read_text()


def upload(path: Path, uri: str, client=None) -> str:
    """Put a local file at `uri` (an s3:// key or a local path); check the stored size."""
    size = path.stat().st_size
    if is_s3(uri):
        bucket, key = split_s3_uri(uri)
        c = client or client_for()
        c.upload_file(str(path), bucket, key)
        stored = c.head_object(Bucket=bucket, Key=key)["ContentLength"]
    else:
        dest = Path(uri)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        shutil.copyfile(path, tmp)
        tmp.replace(dest)
        stored = dest.stat().st_size
    if stored != size:
        raise OSError(f"upload of {path} to {uri} stored {stored} bytes, expected {size}")
    return uri


def join(base: str, *parts: str) -> str:
    return "/".join([str(base).rstrip("/"), *[p.strip("/") for p in parts]])
