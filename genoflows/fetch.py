"""Bring a URI (s3://, http(s)://, file:// or a local path) to a local file, verified.

One attempt per call; the Prefect task in `tasks/fetch.py` retries it. The rules every caller relies on
(docs/fetch.md has the whole contract):
- a file under its final name is complete and verified: it is downloaded to `<name>.part`, checked (size,
  published md5/sha256, S3 ETag, then its content by kind, see `genoflows.verify`) and only then renamed;
  a sha256 is recorded for it only after it passed;
- `kind=` says what the file is when its name does not (`vcf`, `bed`, `fasta`, `tbi`, `checksum`, ... or
  `data` for no content check); by default the kind comes from the destination name;
- an existing destination is a cache hit, re-checked cheaply first (size and the recorded sha256 when it was
  modified since, the caller's sha256, the start and end of the body); a hit that fails is discarded and
  fetched again (healed), never trusted;
- a partial `.part` left by a dropped connection is resumed with an HTTP Range request on the next attempt; a
  body that fails any check is deleted, so the retry starts clean; a body that fails its published checksum
  twice in a row with the same bytes is a bad source (`BadSourceFile`) when the caller asks
  (`repeat_is_bad_source`, RNA-seq's reads): transfer damage does not repeat itself;
- errors are `TransientFetchError` (5xx, 429, resets, truncation, a corrupt body: retry) or
  `PermanentFetchError` (4xx, AccessDenied, disk full, a file whose published checksum matched but whose content
  is bad: do not retry); `NotFound` (a definite 404 / NoSuchKey / no such file) is the permanent error that
  means "not published", e.g. for a checksum sidecar;
- concurrent fetches of one destination serialise on a file lock;
- a source replaced since it was fetched (an S3 object by its ETag, a local file by size/mtime/inode) is
  fetched again; the old copy stays in place until the new one is verified;
- URLs in messages are redacted (`redact_url`): no query strings (pre-signed tokens), no user:password.
"""

from __future__ import annotations

import base64
import email.utils
import errno
import hashlib
import json
import shutil
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse, urlunparse

import httpx
from filelock import FileLock

from genoflows import verify
from genoflows.settings import get_settings

if TYPE_CHECKING:
    from prefect_aws import AwsCredentials

Progress = Callable[[int, int | None], None]
Log = Callable[[str], None]
CHUNK = 1 << 20
CHEAP_DEEP_LIMIT = 16 << 20  # cache hits below this size get the full content check, larger ones the cheap one


class FetchError(RuntimeError):
    """A fetch failed; the message names the URI and what to do."""


class TransientFetchError(FetchError):
    """Worth retrying: server errors, throttling, dropped connections, corrupt bodies."""


class PermanentFetchError(FetchError):
    """Retrying will not help: not found, access denied, disk full, bad URI."""


class NotFound(PermanentFetchError):
    """The source definitely does not exist (HTTP 404/410, S3 NoSuchKey, no such local file)."""


class ChecksumMismatch(TransientFetchError):
    """The body did not match its published checksum or size; the partial file was removed."""


class ContentMismatch(TransientFetchError):
    """The body is not what its name or kind says (HTML page, corrupt gzip, bad VCF...); it was removed."""


class BadSourceFile(PermanentFetchError):
    """The source itself is bad: its bytes matched their checksum (or it is a local file) but fail the content
    check, or an S3 object does not match its own ETag twice. Fetching again cannot help."""


@dataclass(frozen=True)
class FetchResult:
    uri: str
    path: Path
    size: int
    downloaded: bool  # False when the destination was already complete (cache hit)
    sha256: str | None = None  # of the verified file, when known
    healed: bool = False  # a cached copy failed its check and was replaced


def redact_url(url: str) -> str:
    """`url` without query string, fragment and user:password: safe for logs, errors and artifacts."""
    try:
        p = urlparse(str(url))
    except ValueError:
        return "<unparseable URL>"
    if not p.scheme or p.scheme == "file":
        return str(url).split("?", 1)[0]
    netloc = p.hostname or ""
    if p.port:
        netloc += f":{p.port}"
    return urlunparse((p.scheme, netloc, p.path, "", "", ""))


def fetch(
    uri: str,
    dest: Path,
    *,
    md5: str | None = None,
    sha256: str | None = None,
    size: int | None = None,
    kind: str | None = None,
    progress: Progress | None = None,
    s3_client=None,
    log: Log | None = None,
    missing_ok: bool = False,
    repeat_is_bad_source: bool = False,
) -> FetchResult | None:
    """Fetch `uri` to `dest` unless `dest` is already there, unchanged at the source and still passing its checks;
    verify (size, checksums, content of `kind`); rename into place. `missing_ok`: return None instead of raising
    `NotFound` (for optional files such as checksum sidecars, so a 404 is an answer, not a failure).
    `repeat_is_bad_source`: the same wrong body twice in a row is `BadSourceFile` (permanent), see `_verify`."""
    try:
        return _fetch(uri, dest, md5=md5, sha256=sha256, size=size, kind=kind, progress=progress,
                      s3_client=s3_client, log=log, repeat_is_bad_source=repeat_is_bad_source)
    except NotFound:
        if missing_ok:
            return None
        raise


def _fetch(uri: str, dest: Path, *, md5, sha256, size, kind, progress, s3_client, log,
           repeat_is_bad_source: bool = False) -> FetchResult:  # fmt: skip
    dest = Path(dest)
    kind = kind or verify.infer_kind(dest.name)
    if kind not in verify.KINDS:
        raise PermanentFetchError(f"unknown kind {kind!r} for {dest.name}; choose one of {', '.join(verify.KINDS)}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shown = redact_url(uri)
    with FileLock(str(dest.parent / f".{dest.name}.lock")):  # hidden: it stays behind, harmlessly
        scheme = urlparse(uri).scheme
        healed = False
        changed, now = _source_changed(uri, scheme, dest, s3_client) if dest.exists() else (True, None)
        if dest.exists() and not changed:
            problem, digests = _check_cached(dest, kind=kind, md5=md5, sha256=sha256, size=size)
            if problem is None:
                if digests is not None:  # verified in full for the first time: record it
                    st = dest.stat()
                    _write_record(dest, {"uri": uri, "kind": kind, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                         **digests, **({"source": now} if now else {})})
                return FetchResult(uri, dest, dest.stat().st_size, False, _record(dest).get("sha256"))
            if log:
                log(f"cached {dest} fails its check ({problem}); discarding it and fetching {shown} again")
            discard_cached(dest)
            healed = True
        part = dest.with_name(dest.name + ".part")
        signature = None  # what identifies this version of the source, recorded next to the copy
        proven = False  # the bytes are shown equal to the source's (so a content failure is permanent)
        try:
            if scheme in ("http", "https"):
                _fetch_http(uri, part, size=size, progress=progress)
            elif scheme == "s3":
                size, etag, proven = _fetch_s3(uri, part, size=size, progress=progress, client=s3_client, log=log)
                signature = {"etag": etag}
            elif scheme in ("", "file"):
                signature = _fetch_local(uri, part, progress=progress)
                proven = True
            else:
                raise PermanentFetchError(f"unsupported URI scheme {scheme!r} in {shown}: use s3://, https:// or a path")
            digests = _verify(shown, part, md5=md5, sha256=sha256, size=size, repeat_is_bad_source=repeat_is_bad_source)
            proven = proven or bool(md5 or sha256)
            _verify_content(shown, dest, part, kind, proven)
        except PermanentFetchError:
            _discard(part)  # nothing is resumed after a permanent failure: leave nothing behind
            raise
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                _discard(part)
                raise PermanentFetchError(
                    f"disk full while writing {dest} from {shown}: free space in {dest.parent} and run again"
                ) from exc
            if part.exists() and part.stat().st_size == 0:
                _discard(part)
            raise
        except TransientFetchError:
            if part.exists() and part.stat().st_size == 0:
                _discard(part)  # an empty partial is worth nothing to a resume
            raise
        part.replace(dest)
        _validator_path(part).unlink(missing_ok=True)
        st = dest.stat()
        record = {"uri": uri, "kind": kind, "size": st.st_size, "mtime_ns": st.st_mtime_ns, **digests}
        if signature is not None:
            record["source"] = signature
        _write_record(dest, record)
        return FetchResult(uri, dest, st.st_size, True, digests["sha256"], healed)


def check_cached(
    path: Path, *, kind: str | None = None, md5: str | None = None, sha256: str | None = None, size: int | None = None
) -> str | None:
    """Why the cached `path` cannot be trusted, or None when it passes.

    With a record of its verification (written by `fetch`): size as recorded; the recorded sha256 against
    `sha256`; when the file was modified since (mtime), its digest recomputed; the content checked cheaply
    (fully below CHEAP_DEEP_LIMIT). Without one (a file from an older cache or put there by hand): everything
    is checked in full, and a record is written when it passes."""
    return _check_cached(path, kind=kind, md5=md5, sha256=sha256, size=size)[0]


def _check_cached(
    path: Path, *, kind: str | None, md5: str | None, sha256: str | None, size: int | None
) -> tuple[str | None, dict | None]:
    """(problem or None, digests when they were computed because the file had no record)."""
    path = Path(path)
    kind = kind or verify.infer_kind(path.name)
    st = path.stat()
    digests = None
    rec = _record(path)
    if size is not None and st.st_size != size:
        return f"size {st.st_size} != expected {size}", None
    if rec.get("sha256"):
        if st.st_size != rec.get("size"):
            return f"size {st.st_size} != {rec.get('size')} when it was verified", None
        if sha256 and sha256.lower() != rec["sha256"]:
            return f"sha256 {rec['sha256']} != expected {sha256}", None
        if md5 and rec.get("md5") and md5.lower() != rec["md5"]:
            return f"md5 {rec['md5']} != expected {md5}", None
        if st.st_mtime_ns != rec.get("mtime_ns") and (got := file_digest(path, "sha256")) != rec["sha256"]:
            return f"modified since it was verified (sha256 {got} != {rec['sha256']})", None
        deep = st.st_size <= CHEAP_DEEP_LIMIT
    else:
        digests = _digests(path)
        if sha256 and digests["sha256"] != sha256.lower():
            return f"sha256 {digests['sha256']} != expected {sha256}", None
        if md5 and digests["md5"] != md5.lower():
            return f"md5 {digests['md5']} != expected {md5}", None
        deep = True
    try:
        verify.check(path, kind, deep=deep)
    except verify.ContentError as exc:
        return str(exc), None
    return None, digests


def discard_cached(path: Path) -> None:
    """Remove a cached file and its verification record (its partial, if any, too)."""
    path = Path(path)
    path.unlink(missing_ok=True)
    _record_path(path).unlink(missing_ok=True)
    _discard(path.with_name(path.name + ".part"))


def discard_partial(dest: Path) -> None:
    """Remove what a failed download of `dest` left for resuming (called once retries are exhausted)."""
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    _discard(part)
    _mismatch_marker(part).unlink(missing_ok=True)
    _digest_marker(part).unlink(missing_ok=True)


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _digests(path: Path) -> dict[str, str]:
    """md5 and sha256 in one pass."""
    m, s = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            m.update(chunk)
            s.update(chunk)
    return {"md5": m.hexdigest(), "sha256": s.hexdigest()}


def _verify(shown: str, part: Path, *, md5: str | None, sha256: str | None, size: int | None,
            repeat_is_bad_source: bool = False) -> dict[str, str]:  # fmt: skip
    actual_size = part.stat().st_size
    if size is not None and actual_size != size:
        _discard(part)
        raise ChecksumMismatch(f"{shown}: size {actual_size} != expected {size}; the partial file was removed")
    digests = _digests(part)
    problems = []
    if md5 and digests["md5"] != md5.lower():
        problems.append(f"md5 {digests['md5']} != expected {md5}")
    if sha256 and digests["sha256"] != sha256.lower():
        problems.append(f"sha256 {digests['sha256']} != expected {sha256}")
    marker = _digest_marker(part)
    if problems:
        with open(part, "rb") as fh:
            what = verify.describe_body(fh.read(4096))
        problems += [what] if what else []  # say what arrived when it is plain to see
        _discard(part)
        if what is not None or not repeat_is_bad_source:  # a service's answer (a maintenance page...), not the file: transient, however often
            marker.unlink(missing_ok=True)
        elif marker.exists() and marker.read_text() == digests["sha256"]:  # the same wrong bytes twice in a row:
            marker.unlink(missing_ok=True)  # the source holds them (a transfer error would not repeat itself)
            raise BadSourceFile(f"{shown}: {'; '.join(problems)}, twice in a row with the same bytes: the file at "
                                "the source does not match its published checksum; nothing was kept. Ask the "
                                "provider to fix the file or its checksum")  # fmt: skip
        else:
            marker.write_text(digests["sha256"])
        raise ChecksumMismatch(f"{shown}: {'; '.join(problems)}; the partial file was removed")
    marker.unlink(missing_ok=True)
    return digests


def _digest_marker(part: Path) -> Path:
    """Remembers the digest of a body that failed its published checksum, so the same bytes arriving again are a
    bad source (permanent), not a transfer error (hidden, removed on success and when retries are exhausted)."""
    return part.with_name(f".{part.name}.digest-mismatch")


def _verify_content(shown: str, dest: Path, part: Path, kind: str, proven: bool) -> None:
    try:
        verify.check(part, kind)
    except verify.ContentError as exc:
        _discard(part)
        if proven:
            raise BadSourceFile(
                f"{shown}: the file itself is not a valid {kind} file ({exc}), although its bytes match the source; "
                f"nothing was kept as {dest.name}. Fix or replace the source file"
            ) from exc
        raise ContentMismatch(f"{shown}: {exc}; nothing was kept as {dest.name}, it will be fetched again") from exc


def _check_free_space(path: Path, needed: int, shown: str) -> None:
    free = shutil.disk_usage(path.parent).free
    if needed > free:
        raise PermanentFetchError(
            f"not enough disk for {shown}: needs {needed} more bytes, {free} free in {path.parent}; free space and rerun"
        )


def _discard(part: Path) -> None:
    """Remove a partial download and its resume validator."""
    part.unlink(missing_ok=True)
    _validator_path(part).unlink(missing_ok=True)


# --- the verification record next to each cached file ----------------------------------------------------------


def _record_path(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.source.json"


def _record(dest: Path) -> dict:
    try:
        return json.loads(_record_path(dest).read_text())
    except (OSError, ValueError):
        return {}


def _write_record(dest: Path, record: dict) -> None:
    from genoflows.files import temp_path

    path = _record_path(dest)
    tmp = temp_path(path)
    try:
        tmp.write_text(json.dumps(record, sort_keys=True))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


# --- http(s) -----------------------------------------------------------------------------------------------


def _validator_path(part: Path) -> Path:
    """Where the ETag/Last-Modified of the response that started `part` is kept, for If-Range on resume."""
    return part.with_name(part.name + ".validator")


def http_timeout() -> httpx.Timeout:
    """The timeout of every HTTP request genoflows makes (settings.http_timeout_seconds)."""
    t = get_settings().http_timeout_seconds
    return httpx.Timeout(t, connect=min(t, 10.0))


def retry_after_seconds(value: str | None, *, cap: float) -> float | None:
    """Seconds asked by a Retry-After header (delta-seconds or HTTP-date), bounded by `cap`; None if absent."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, min(cap, seconds))


_wait = time.sleep  # tests record the Retry-After waits instead of sleeping


def _fetch_http(url: str, part: Path, *, size: int | None, progress: Progress | None) -> None:
    shown = redact_url(url)
    have = part.stat().st_size if part.exists() else 0
    validator_file = _validator_path(part)
    # identity: the bytes on disk must be the bytes published (a .gz served with Content-Encoding: gzip
    # would otherwise be decompressed on the way in).
    headers = {"Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
        if validator_file.exists():  # the server sends the whole new file if it changed since
            headers["If-Range"] = validator_file.read_text()
    try:
        with httpx.stream("GET", url, headers=headers, timeout=http_timeout(), follow_redirects=True) as resp:
            status = resp.status_code
            if status == 416 and have:  # asked beyond the end: the part was already whole, or stale
                if size is not None and have == size:
                    return
                _discard(part)
                raise TransientFetchError(f"{shown}: range not satisfiable for a stale partial file; restarting")
            if status in (429, 503):
                # Throttled or in maintenance: wait what the server asks (bounded) before the retry policy's delay.
                wait = retry_after_seconds(resp.headers.get("retry-after"), cap=get_settings().retry_max_delay_seconds)
                asked = f" (Retry-After {resp.headers['retry-after']!r} honoured)" if wait is not None else ""
                resp.close()  # do not hold the connection while waiting
                if wait:
                    _wait(wait)
                raise TransientFetchError(f"{shown}: server answered HTTP {status}{asked}; will retry")
            if status == 408 or status >= 500:
                raise TransientFetchError(f"{shown}: server answered HTTP {status}; will retry")
            if status in (404, 410):
                raise NotFound(f"{shown}: HTTP {status} {resp.reason_phrase}; check the URL")
            if status >= 400:
                raise PermanentFetchError(f"{shown}: HTTP {status} {resp.reason_phrase}; check the URL or access")
            if status == 206 and _range_start(resp) != have:
                _discard(part)
                raise TransientFetchError(f"{shown}: server resumed at the wrong offset; restarting from zero")
            if status == 200:
                have = 0  # a fresh body: no Range asked, Range ignored, or the file changed (If-Range)
            total = _total_length(resp, have)
            if total is not None and size is not None and total != size:
                _discard(part)
                raise ChecksumMismatch(f"{shown}: server reports {total} bytes, expected {size}; nothing kept")
            if total is not None:
                _check_free_space(part, total - have, shown)
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
                raise TransientFetchError(f"{shown}: body truncated at {done} of {total} bytes; will resume")
    except (httpx.TransportError, httpx.DecodingError) as exc:
        raise TransientFetchError(f"{shown}: {type(exc).__name__}: {redact_url(str(exc))}; will resume") from exc


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
        raise PermanentFetchError(f"not an s3:// URI: {redact_url(uri)!r}; expected s3://bucket/key")
    return parsed.netloc, parsed.path.lstrip("/")


def s3_client(endpoint_url: str | None = None, aws_credentials: AwsCredentials | None = None):
    """A boto3 S3 client with the project's timeouts: from a prefect-aws `AwsCredentials` block object when
    given, else from settings (keys, endpoint), else the default AWS credential chain (instance role, ~/.aws)."""
    import boto3
    from botocore.config import Config

    s = get_settings()
    config = Config(
        retries={"max_attempts": 2, "mode": "standard"},
        connect_timeout=min(s.http_timeout_seconds, 10.0),
        read_timeout=s.http_timeout_seconds,
    )
    endpoint = endpoint_url or s.s3_endpoint_url
    if aws_credentials is not None:  # the block's own endpoint is more specific than the process settings
        endpoint = endpoint_url or aws_credentials.aws_client_parameters.endpoint_url or s.s3_endpoint_url
        return aws_credentials.get_boto3_session().client("s3", endpoint_url=endpoint, config=config)
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

    uri = redact_url(uri)
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return PermanentFetchError(
            f"{uri}: no usable AWS credentials; pass an AwsCredentials block (aws_credentials=...) "
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


def _s3_error(uri: str, exc: Exception) -> FetchError:
    """classify_s3_error, with a missing object as `NotFound` (what fetch's callers test for)."""
    err = classify_s3_error(uri, exc)
    if isinstance(err, PermanentFetchError) and ": no such object (" in str(err):
        return NotFound(str(err))
    return err


def _local_signature(uri: str) -> dict:
    src = Path(urlparse(uri).path if uri.startswith("file://") else uri)
    st = src.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def _s3_signature(uri: str, client) -> dict:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3_uri(uri)
    try:
        etag = (client or s3_client()).head_object(Bucket=bucket, Key=key).get("ETag", "").strip('"')
    except (ClientError, BotoCoreError) as exc:
        raise _s3_error(uri, exc) from exc
    return {"etag": etag}


def _source_changed(uri: str, scheme: str, dest: Path, s3_client) -> tuple[bool, dict | None]:
    """(is the cached `dest` a copy of another version of its source?, the source's signature now). Compared with
    what was recorded when it was fetched: an S3 object's ETag (one HEAD, no download), a local file's size, mtime
    and inode (a corrected file moved into place keeps its older mtime, so "newer" is not the test). HTTP sources
    (published truth sets, ENA files) are immutable: only their content is re-checked. A copy with no record at
    all (put there by hand, an older cache) is judged by its content alone."""
    if scheme not in ("s3", "", "file"):
        return False, None
    if scheme != "s3" and not Path(urlparse(uri).path if uri.startswith("file://") else uri).is_file():
        return False, None  # the source is gone: the verified copy is all there is
    rec = _record(dest)
    now = _s3_signature(uri, s3_client) if scheme == "s3" else _local_signature(uri)
    if not rec:
        return False, now
    return rec.get("uri") != uri or rec.get("source") != now, now


def _mismatch_marker(part: Path) -> Path:
    """Remembers a first ETag mismatch so that the second one in a row is permanent (hidden, removed on success
    and when retries are exhausted)."""
    return part.with_name(f".{part.name}.etag-mismatch")


def _fetch_s3(
    uri: str, part: Path, *, size: int | None, progress: Progress | None, client, log: Log | None
) -> tuple[int, str, bool]:
    """(size, ETag, whether the body was proven equal to the object) after downloading `uri` to `part`."""
    from boto3.s3.transfer import TransferConfig
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3_uri(uri)
    client = client or s3_client()
    try:
        head = client.head_object(Bucket=bucket, Key=key)
        total = int(head["ContentLength"])
        if size is not None and total != size:  # S3 says so: not a transfer problem
            raise BadSourceFile(f"{uri}: object has {total} bytes, expected {size}; it changed since it was listed")
        _check_free_space(part, total, uri)
        done = 0

        def _cb(n: int) -> None:
            nonlocal done
            done += n
            if progress:
                progress(done, total)

        config = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20, max_concurrency=8)
        etag = head.get("ETag", "").strip('"')
        client.download_file(bucket, key, str(part), Config=config, Callback=_cb)
        marker = _mismatch_marker(part)
        try:
            proven = _verify_etag(uri, part, etag, client, bucket, key, head, log=log)
        except ChecksumMismatch as exc:
            _discard(part)
            if marker.exists() and marker.read_text() == etag:  # the second download in a row: the object is bad
                marker.unlink(missing_ok=True)
                raise BadSourceFile(
                    f"{exc}; downloaded twice with the same result, so the object in S3 does not match its own "
                    f"ETag: re-upload it"
                ) from exc
            marker.write_text(etag)
            raise
        marker.unlink(missing_ok=True)
        return total, etag, proven
    except (ClientError, BotoCoreError) as exc:
        _discard(part)
        raise _s3_error(uri, exc) from exc


def _multipart_etag(path: Path, part_sizes: list[int]) -> str:
    digests = []
    with open(path, "rb") as fh:
        for n in part_sizes:
            h = hashlib.md5()
            left = n
            while left and (chunk := fh.read(min(CHUNK, left))):
                h.update(chunk)
                left -= len(chunk)
            digests.append(h.digest())
        if fh.read(1):
            return "(file longer than its parts)"
    return hashlib.md5(b"".join(digests)).hexdigest() + f"-{len(part_sizes)}"


def _part_sizes(client, bucket: str, key: str, count: int) -> list[int] | None:
    """The sizes of parts 1..count of a multipart object, from HEAD ?partNumber=n; None when S3 does not say
    (some S3 clones do not support partNumber)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return [int(client.head_object(Bucket=bucket, Key=key, PartNumber=n)["ContentLength"])
                for n in range(1, count + 1)]
    except (ClientError, BotoCoreError, KeyError, ValueError):
        return None


def _verify_etag(uri: str, part: Path, etag: str, client, bucket: str, key: str, head: dict,
                 *, log: Log | None = None) -> bool:
    """Check the body against the object's ETag: the MD5 for a single-part upload, the MD5 of the parts' MD5s
    for a multipart one (parts may be uneven: their sizes are asked of S3). When the ETag cannot be recomputed
    (SSE-KMS, S3 clones, parts unknown) a full-object checksum S3 holds is used instead; with neither, only the
    size and the content check stand (returns False)."""
    total = part.stat().st_size
    if total != int(head["ContentLength"]):
        raise ChecksumMismatch(f"{uri}: downloaded {total} bytes, the object has {head['ContentLength']}")
    base = etag.split("-")[0]
    if etag and len(base) == 32 and all(c in "0123456789abcdef" for c in base.lower()):
        if "-" not in etag:
            got = file_digest(part, "md5")
        else:
            count = int(etag.split("-")[1])
            first = _part_sizes(client, bucket, key, 1)
            got = None
            if first:  # the usual layout first: equal parts, a shorter last one (one HEAD)
                even = [first[0]] * (count - 1) + [total - first[0] * (count - 1)]
                got = _multipart_etag(part, even) if 0 < even[-1] <= first[0] else None
            if first and got != etag:  # parts of different sizes: ask for each one
                sizes = _part_sizes(client, bucket, key, count)
                got = _multipart_etag(part, sizes) if sizes and sum(sizes) == total else None
            if got is None:
                return _verify_full_object_checksum(uri, part, client, bucket, key, log=log)
        if got != etag:
            raise ChecksumMismatch(f"{uri}: ETag {etag} != computed {got}; the partial file was removed")
        return True
    return _verify_full_object_checksum(uri, part, client, bucket, key, log=log)


def _verify_full_object_checksum(uri: str, part: Path, client, bucket: str, key: str, *, log: Log | None) -> bool:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    except (ClientError, BotoCoreError):
        head = {}
    composite = head.get("ChecksumType") == "COMPOSITE" or "-" in str(head.get("ChecksumSHA256") or "") + str(
        head.get("ChecksumCRC32") or "")  # a checksum of part checksums: not comparable with the whole body
    if not composite:
        if want := head.get("ChecksumSHA256"):
            got = base64.b64encode(bytes.fromhex(file_digest(part, "sha256"))).decode()
        elif want := head.get("ChecksumCRC32"):
            crc = 0
            with open(part, "rb") as fh:
                while chunk := fh.read(CHUNK):
                    crc = zlib.crc32(chunk, crc)
            got = base64.b64encode(crc.to_bytes(4, "big")).decode()
        else:
            want = got = None
        if want is not None:
            if got != want:
                raise ChecksumMismatch(f"{uri}: full-object checksum {want} != computed {got}")
            return True
    if log:
        log(f"{uri}: its ETag cannot be recomputed and S3 holds no full-object checksum; verified by size and content")
    return False


# --- local -------------------------------------------------------------------------------------------------


def _fetch_local(uri: str, part: Path, *, progress: Progress | None) -> dict:
    """Copy a local file; returns its signature as it was before the copy began."""
    src = Path(urlparse(uri).path if uri.startswith("file://") else uri)
    if not src.is_file():
        raise NotFound(f"{src}: no such file; check the path")
    signature = _local_signature(uri)
    _check_free_space(part, signature["size"], uri)
    shutil.copyfile(src, part)
    if progress:
        progress(part.stat().st_size, part.stat().st_size)
    return signature
