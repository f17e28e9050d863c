"""Bring a URI (s3://, http(s)://, file:// or a local path) to a local file, verified.

One attempt per call; the Prefect task in `tasks/fetch.py` retries it. The rules every caller relies on:
- a file under its final name is complete and verified (download to `<name>.part`, check size and checksums,
  then rename atomically), so an existing destination is a cache hit and touches no network;
- a partial `.part` left by a dropped connection is resumed with an HTTP Range request on the next attempt;
- a body that fails its checksum is deleted, so the retry starts clean and nothing bad is ever kept;
- errors are split into `TransientFetchError` (5xx, 429, resets, truncation, checksum: retry) and
  `PermanentFetchError` (4xx, AccessDenied, missing object, disk full: do not retry);
- concurrent fetches of one destination (two flow runs needing the same reference) serialise on a file lock;
- a source replaced since it was fetched (an S3 object re-uploaded under the same key, by its ETag; a local
  file, by its modification time) is fetched again; the old copy stays in place until the new one is verified.
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import httpx
from filelock import FileLock

from genoflows.settings import get_settings

Progress = Callable[[int, int | None], None]
CHUNK = 1 << 20


class FetchError(RuntimeError):
    """A fetch failed; the message names the URI and what to do."""


class TransientFetchError(FetchError):
    """Worth retrying: server errors, throttling, dropped connections, corrupt bodies."""


class PermanentFetchError(FetchError):
    """Retrying will not help: not found, access denied, disk full, bad URI."""


class ChecksumMismatch(TransientFetchError):
    """The body did not match its published checksum or size; the partial file was removed."""


@dataclass(frozen=True)
class FetchResult:
    uri: str
    path: Path
    size: int
    downloaded: bool  # False when the destination was already complete (cache hit)


def fetch(
    uri: str,
    dest: Path,
    *,
    md5: str | None = None,
    sha256: str | None = None,
    size: int | None = None,
    progress: Progress | None = None,
    s3_client=None,
) -> FetchResult:
    """Fetch `uri` to `dest` unless `dest` is already there and its source unchanged; verify; rename into place."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest.parent / f".{dest.name}.lock")):  # hidden: it stays behind, harmlessly
        scheme = urlparse(uri).scheme
        signature = None  # what identifies this version of the source, recorded next to the copy
        if dest.exists() and not _source_changed(uri, scheme, dest, s3_client):
            return FetchResult(uri, dest, dest.stat().st_size, downloaded=False)
        part = dest.with_name(dest.name + ".part")
        try:
            if scheme in ("http", "https"):
                _fetch_http(uri, part, size=size, progress=progress)
            elif scheme == "s3":
                size, etag = _fetch_s3(uri, part, size=size, progress=progress, client=s3_client)
                signature = {"uri": uri, "etag": etag}
            elif scheme in ("", "file"):
                signature = _fetch_local(uri, part, progress=progress)
            else:
                raise PermanentFetchError(f"unsupported URI scheme {scheme!r} in {uri}: use s3://, https:// or a path")
            _verify(uri, part, md5=md5, sha256=sha256, size=size)
        except PermanentFetchError:
            _discard(part)  # nothing is resumed after a permanent failure: leave nothing behind
            raise
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                _discard(part)
                raise PermanentFetchError(
                    f"disk full while writing {dest} from {uri}: free space in {dest.parent} and run again"
                ) from exc
            raise
        part.replace(dest)
        _validator_path(part).unlink(missing_ok=True)
        record = _source_record(dest)
        if signature is not None:  # recorded only once the verified file is in place
            record.with_name(record.name + ".tmp").write_text(json.dumps(signature))
            record.with_name(record.name + ".tmp").replace(record)
        else:
            record.unlink(missing_ok=True)
        return FetchResult(uri, dest, dest.stat().st_size, downloaded=True)


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _verify(uri: str, part: Path, *, md5: str | None, sha256: str | None, size: int | None) -> None:
    actual_size = part.stat().st_size
    problems = []
    if size is not None and actual_size != size:
        problems.append(f"size {actual_size} != expected {size}")
    if not problems and md5 and (got := file_digest(part, "md5")) != md5.lower():
        problems.append(f"md5 {got} != expected {md5}")
    if not problems and sha256 and (got := file_digest(part, "sha256")) != sha256.lower():
        problems.append(f"sha256 {got} != expected {sha256}")
    if problems:
        _discard(part)
        raise ChecksumMismatch(f"{uri}: {'; '.join(problems)}; the partial file was removed")


def _check_free_space(path: Path, needed: int, uri: str) -> None:
    free = shutil.disk_usage(path.parent).free
    if needed > free:
        raise PermanentFetchError(
            f"not enough disk for {uri}: needs {needed} more bytes, {free} free in {path.parent}; free space and rerun"
        )


# --- http(s) -----------------------------------------------------------------------------------------------


def _discard(part: Path) -> None:
    """Remove a partial download and its resume validator."""
    part.unlink(missing_ok=True)
    _validator_path(part).unlink(missing_ok=True)


def _validator_path(part: Path) -> Path:
    """Where the ETag/Last-Modified of the response that started `part` is kept, for If-Range on resume."""
    return part.with_name(part.name + ".validator")


def _fetch_http(url: str, part: Path, *, size: int | None, progress: Progress | None) -> None:
    have = part.stat().st_size if part.exists() else 0
    validator_file = _validator_path(part)
    # identity: the bytes on disk must be the bytes published (a .gz served with Content-Encoding: gzip
    # would otherwise be decompressed on the way in).
    headers = {"Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
        if validator_file.exists():  # the server sends the whole new file if it changed since
            headers["If-Range"] = validator_file.read_text()
    timeout = httpx.Timeout(get_settings().http_timeout_seconds, connect=10.0)
    try:
        with httpx.stream("GET", url, headers=headers, timeout=timeout, follow_redirects=True) as resp:
            status = resp.status_code
            if status == 416 and have:  # asked beyond the end: the part was already whole, or stale
                if size is not None and have == size:
                    return
                _discard(part)
                raise TransientFetchError(f"{url}: range not satisfiable for a stale partial file; restarting")
            if status in (408, 429) or status >= 500:
                raise TransientFetchError(f"{url}: server answered HTTP {status}; will retry")
            if status >= 400:
                raise PermanentFetchError(f"{url}: HTTP {status} {resp.reason_phrase}; check the URL or access")
            if status == 206 and _range_start(resp) != have:
                _discard(part)
                raise TransientFetchError(f"{url}: server resumed at the wrong offset; restarting from zero")
            if status == 200:
                have = 0  # a fresh body: no Range asked, Range ignored, or the file changed (If-Range)
            total = _total_length(resp, have)
            if total is not None and size is not None and total != size:
                _discard(part)
                raise ChecksumMismatch(f"{url}: server reports {total} bytes, expected {size}; nothing kept")
            if total is not None:
                _check_free_space(part, total - have, url)
            done = have
            with open(part, "ab" if status == 206 else "wb") as fh:
                if status == 200:  # the part now holds this response's bytes: remember its version
                    _remember_validator(resp, validator_file)
                for chunk in resp.iter_raw():  # as received, so a drop keeps what arrived
                    fh.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
            if total is not None and done < total:
                raise TransientFetchError(f"{url}: body truncated at {done} of {total} bytes; will resume")
    except (httpx.TransportError, httpx.DecodingError) as exc:
        raise TransientFetchError(f"{url}: {type(exc).__name__}: {exc}; will resume") from exc


def _remember_validator(resp: httpx.Response, validator_file: Path) -> None:
    etag = resp.headers.get("etag", "")
    validator = etag if etag and not etag.startswith("W/") else resp.headers.get("last-modified")
    if validator:
        validator_file.write_text(validator)
    else:
        validator_file.unlink(missing_ok=True)


def _range_start(resp: httpx.Response) -> int | None:
    crange = resp.headers.get("content-range", "")
    try:
        return int(crange.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _total_length(resp: httpx.Response, have: int) -> int | None:
    length = resp.headers.get("content-length")
    if resp.status_code == 206:
        crange = resp.headers.get("content-range", "")
        if "/" in crange and crange.rsplit("/", 1)[1].isdigit():
            return int(crange.rsplit("/", 1)[1])
        return have + int(length) if length else None
    return int(length) if length else None


# --- s3 ----------------------------------------------------------------------------------------------------


def split_s3_uri(uri: str) -> tuple[str, str]:
    """('bucket', 'key/prefix') from s3://bucket/key/prefix."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise PermanentFetchError(f"not an s3:// URI: {uri!r}; expected s3://bucket/key")
    return parsed.netloc, parsed.path.lstrip("/")


def s3_client(endpoint_url: str | None = None, credentials_block: str | None = None):
    """A boto3 S3 client: from a saved prefect-aws `AwsCredentials` block when named, else from settings
    (keys, endpoint), else the default AWS credential chain (instance role, ~/.aws)."""
    import boto3
    from botocore.config import Config

    s = get_settings()
    config = Config(retries={"max_attempts": 2, "mode": "standard"})
    endpoint = endpoint_url or s.s3_endpoint_url
    if credentials_block:
        from prefect_aws import AwsCredentials

        creds = AwsCredentials.load(credentials_block)
        endpoint = endpoint or creds.aws_client_parameters.endpoint_url
        return creds.get_boto3_session().client("s3", endpoint_url=endpoint, config=config)
    kwargs: dict = {"region_name": s.aws_region, "endpoint_url": endpoint}
    if s.aws_access_key_id and s.aws_secret_access_key:
        kwargs["aws_access_key_id"] = s.aws_access_key_id
        kwargs["aws_secret_access_key"] = s.aws_secret_access_key.get_secret_value()
    return boto3.client("s3", config=config, **kwargs)


def classify_s3_error(uri: str, exc: Exception) -> FetchError:
    """Map a botocore error to a transient or permanent fetch error with a helpful message."""
    from botocore.exceptions import (
        ClientError,
        NoCredentialsError,
        NoRegionError,
        ParamValidationError,
        PartialCredentialsError,
    )

    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return PermanentFetchError(
            f"{uri}: no usable AWS credentials; save an AwsCredentials block (aws_credentials_block=...) "
            "or set GENOFLOWS_AWS_ACCESS_KEY_ID / GENOFLOWS_AWS_SECRET_ACCESS_KEY"
        )
    if isinstance(exc, (ParamValidationError, NoRegionError)):
        return PermanentFetchError(f"{uri}: invalid S3 request ({exc}); check the bucket, key and region")
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch") or status == 403:
            return PermanentFetchError(
                f"{uri}: access denied ({code}); check the AWS credentials block or bucket policy"
            )
        if code in ("NoSuchKey", "404", "NoSuchBucket", "NotFound") or status == 404:
            return PermanentFetchError(f"{uri}: no such object ({code}); check the bucket and key")
        if status >= 500 or code in ("SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable"):
            return TransientFetchError(f"{uri}: S3 error {code}; will retry")
        return PermanentFetchError(f"{uri}: S3 error {code}")
    return TransientFetchError(f"{uri}: {type(exc).__name__}: {exc}; will retry")


def _source_record(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.source.json"


def _local_signature(uri: str) -> dict:
    src = Path(urlparse(uri).path if uri.startswith("file://") else uri)
    st = src.stat()
    return {"uri": uri, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def _s3_signature(uri: str, client) -> dict:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3_uri(uri)
    try:
        etag = (client or s3_client()).head_object(Bucket=bucket, Key=key).get("ETag", "").strip('"')
    except (ClientError, BotoCoreError) as exc:
        raise classify_s3_error(uri, exc) from exc
    return {"uri": uri, "etag": etag}


def _source_changed(uri: str, scheme: str, dest: Path, s3_client) -> bool:
    """Is the cached `dest` a copy of another version of its source? Compared with what was recorded when it was
    fetched: an S3 object's ETag (one HEAD, no download), a local file's size, mtime and inode (a corrected file
    moved into place keeps its older mtime, so "newer" is not the test). HTTP sources (published truth sets,
    ENA files) are immutable and have no record."""
    record = _source_record(dest)
    if scheme not in ("s3", "", "file") or not record.exists():
        return False
    if scheme != "s3" and not Path(urlparse(uri).path if uri.startswith("file://") else uri).is_file():
        return False  # the source is gone: the verified copy is all there is
    now = _s3_signature(uri, s3_client) if scheme == "s3" else _local_signature(uri)
    return json.loads(record.read_text()) != now


def _fetch_s3(uri: str, part: Path, *, size: int | None, progress: Progress | None, client) -> tuple[int, str]:
    from boto3.s3.transfer import TransferConfig
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3_uri(uri)
    client = client or s3_client()
    try:
        head = client.head_object(Bucket=bucket, Key=key)
        total = int(head["ContentLength"])
        if size is not None and total != size:
            raise ChecksumMismatch(f"{uri}: object has {total} bytes, expected {size}")
        _check_free_space(part, total, uri)
        done = 0

        def _cb(n: int) -> None:
            nonlocal done
            done += n
            if progress:
                progress(done, total)

        config = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20, max_concurrency=8)
        client.download_file(bucket, key, str(part), Config=config, Callback=_cb)
        etag = head.get("ETag", "").strip('"')
        _verify_etag(uri, part, etag, client, bucket, key)
        return total, etag
    except (ClientError, BotoCoreError) as exc:
        part.unlink(missing_ok=True)
        raise classify_s3_error(uri, exc) from exc


def _verify_etag(uri: str, part: Path, etag: str, client, bucket: str, key: str) -> None:
    """Single-part ETags are the MD5; multipart ETags are MD5 of part MD5s (part size read from part 1)."""
    if not etag or len(etag.split("-")[0]) != 32:
        return  # SSE-KMS and some S3 clones use opaque ETags: the size check stands alone
    if "-" in etag:
        part_size = int(client.head_object(Bucket=bucket, Key=key, PartNumber=1)["ContentLength"])
        digests = []
        with open(part, "rb") as fh:
            while chunk := fh.read(part_size):
                digests.append(hashlib.md5(chunk).digest())
        got = hashlib.md5(b"".join(digests)).hexdigest() + f"-{len(digests)}"
    else:
        got = file_digest(part, "md5")
    if got != etag:
        part.unlink(missing_ok=True)
        raise ChecksumMismatch(f"{uri}: ETag {etag} != computed {got}; the partial file was removed")


# --- local -------------------------------------------------------------------------------------------------


def _fetch_local(uri: str, part: Path, *, progress: Progress | None) -> dict:
    """Copy a local file; returns its signature as it was before the copy began."""
    src = Path(urlparse(uri).path if uri.startswith("file://") else uri)
    if not src.is_file():
        raise PermanentFetchError(f"{src}: no such file; check the path")
    signature = _local_signature(uri)
    _check_free_space(part, signature["size"], uri)
    shutil.copyfile(src, part)
    if progress:
        progress(part.stat().st_size, part.stat().st_size)
    return signature
