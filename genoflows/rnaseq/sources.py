"""Where each run's reads come from: resolve files, sizes and md5s for every run before any download.

Sources, tried in the order given: `ena` (FASTQ.gz with md5 from the ENA filereport API), `aws` (the
AWS Open Data `.sra` object, converted locally by fasterq-dump), `ncbi` (NCBI's SDL locate API, also an
`.sra`). Explicit `fastq_uris` in the metadata win over all of them. Knowing sizes up front is what lets
the scheduler reserve disk before a download starts.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

import httpx

from genoflows.rnaseq.metadata import Layout, Run

SourceName = Literal["ena", "aws", "ncbi"]
SOURCES: tuple[str, ...] = ("ena", "aws", "ncbi")
ENA_FIELDS = "run_accession,fastq_ftp,fastq_md5,fastq_bytes,library_layout,read_count"
#: fasterq-dump needs room for the .sra, the FASTQ (~4x) and its temp files (~4x): reserve 10x (readme).
SRA_EXPANSION = 10.0
MD5 = re.compile(r"^[0-9a-fA-F]{32}$")


class SourceUnavailable(RuntimeError):
    """This source has nothing for the run (try the next one)."""


class ResolveError(RuntimeError):
    """No source could provide the run; the message lists what each one said."""


@dataclass(frozen=True)
class RemoteFile:
    uri: str
    name: str  # local file name, validated (no directories)
    size: int | None
    md5: str | None = None


@dataclass(frozen=True)
class ResolvedRun:
    """A run with concrete files to fetch, the disk to reserve and what the files should contain."""

    run: Run
    source: str  # ena | aws | ncbi | explicit
    files: tuple[RemoteFile, ...]
    layout: Layout | None  # None for .sra until fasterq-dump has run
    reserve_bytes: int
    expected_fragments: int | None = None  # reads (single) or pairs (paired) the FASTQ must contain
    notes: tuple[str, ...] = field(default=())

    @property
    def needs_conversion(self) -> bool:
        return self.source in ("aws", "ncbi")


def safe_filename(name: str, run: str) -> str:
    """A server-provided file name must be a plain name belonging to the run (no dirs, no `..`)."""
    if "/" in name or "\\" in name or name in ("", ".", "..") or ".." in name or not name.startswith(run):
        raise SourceUnavailable(f"refusing file name {name!r} for run {run}: not a plain file of that run")
    return name


class SourceTransient(RuntimeError):
    """A service failed in a way worth retrying (5xx, 429, dropped connection, a maintenance page)."""


RETRY_AFTER_CAP_SECONDS = 120.0


def _get(client: httpx.Client, url: str, params: dict | None = None, method: str = "GET") -> httpx.Response:
    """One HTTP request, no retries here: 5xx, 429 and connection errors raise SourceTransient, and the caller's
    Prefect task retries them with the project's one policy. A 429 waits out its Retry-After first, so the retry
    never comes sooner than the server asked."""
    try:
        resp = client.request(method, url, params=params, follow_redirects=True)
    except httpx.TransportError as exc:
        raise SourceTransient(f"{url}: {type(exc).__name__}: {exc}") from exc
    if resp.status_code == 429:
        wait = _retry_after(resp.headers.get("retry-after"))
        if wait:
            time.sleep(min(wait, RETRY_AFTER_CAP_SECONDS))
        raise SourceTransient(f"{url}: HTTP 429 Too Many Requests (Retry-After {resp.headers.get('retry-after')})")
    if resp.status_code >= 500 or resp.status_code == 408:
        raise SourceTransient(f"{url}: HTTP {resp.status_code} from the server")
    return resp


def _retry_after(value: str | None) -> float:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); 0 when absent or unreadable."""
    if not value:
        return 0.0
    if value.strip().isdigit():
        return float(value.strip())
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 0.0
    from datetime import UTC, datetime

    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _looks_like_html(resp: httpx.Response) -> bool:
    head = resp.text[:512].lstrip().lower()
    return "html" in resp.headers.get("content-type", "").lower() or head.startswith(("<!doctype", "<html", "<?xml"))


def _layout_note(run: Run, layout: str | None, source: str) -> tuple[str, ...]:
    if run.layout and layout and run.layout != layout:
        return (f"layout mismatch: metadata says {run.layout}, {source} files are {layout}; using {layout}",)
    return ()


def resolve_ena(run: Run, client: httpx.Client, base_url: str) -> ResolvedRun:
    """ENA filereport -> `_1`/`_2` (paired, third unpaired file ignored) or the single file, with md5/bytes."""
    resp = _get(client, f"{base_url.rstrip('/')}/filereport",
                {"accession": run.run, "result": "read_run", "fields": ENA_FIELDS, "format": "tsv"})  # fmt: skip
    if resp.status_code == 200 and _looks_like_html(resp):  # a maintenance or login page, not a report
        title = re.search(r"<title>(.*?)</title>", resp.text, re.I | re.S)
        raise SourceTransient(f"ENA filereport answered an HTML page instead of a TSV for {run.run} "
                              f"({(title.group(1).strip() if title else 'no title')[:80]!r}): ENA is probably "
                              "under maintenance; will retry")  # fmt: skip
    if resp.status_code not in (200, 204) or (resp.status_code == 204 or not resp.text.strip()):
        raise SourceUnavailable(f"ENA has no record of {run.run} (HTTP {resp.status_code})")
    lines = [line.split("\t") for line in resp.text.splitlines() if line.strip()]
    header, rows = lines[0], [dict(zip(lines[0], r, strict=False)) for r in lines[1:]]
    if "run_accession" not in header or "fastq_ftp" not in header:
        raise SourceTransient(f"ENA filereport for {run.run} is not the TSV asked for (first line "
                              f"{resp.text.splitlines()[0][:80]!r}); will retry")  # fmt: skip
    row = next((r for r in rows if r.get("run_accession") == run.run), None)
    if row is None:
        raise SourceUnavailable(f"ENA filereport for {run.run} has no row for the run (ENA does not know it)")
    urls = [u for u in row.get("fastq_ftp", "").split(";") if u]
    if not urls:
        raise SourceUnavailable(f"ENA lists no FASTQ for {run.run} (empty fastq_ftp)")
    md5s = row.get("fastq_md5", "").split(";")
    sizes = row.get("fastq_bytes", "").split(";")
    scheme = urlparse(base_url).scheme or "https"
    by_name: dict[str, RemoteFile] = {}
    for i, u in enumerate(urls):
        uri = u if "://" in u else f"{scheme}://{u}"
        name = safe_filename(uri.rsplit("/", 1)[-1], run.run)
        md5 = md5s[i] if i < len(md5s) and MD5.match(md5s[i]) else None
        size = int(sizes[i]) if i < len(sizes) and sizes[i].isdigit() else None
        by_name[name] = RemoteFile(uri, name, size, md5)
    r1, r2, single = (by_name.get(f"{run.run}{s}.fastq.gz") for s in ("_1", "_2", ""))
    if r1 and r2:
        files, layout = (r1, r2), "paired"
    elif single or r1:
        files, layout = (single or r1,), "single"
    else:
        raise SourceUnavailable(f"ENA files for {run.run} are not named {run.run}[_1|_2].fastq.gz: {sorted(by_name)}")
    files = tuple(_with_size(client, f) for f in files)
    reads = row.get("read_count", "")
    expected = int(reads) if reads.isdigit() and len(by_name) == len(files) else None
    return ResolvedRun(run, "ena", files, layout, sum(f.size or 0 for f in files), expected,  # type: ignore[arg-type]
                       _layout_note(run, layout, "ENA"))  # fmt: skip


def _with_size(client: httpx.Client, f: RemoteFile) -> RemoteFile:
    """Fill a missing size with a HEAD request: the disk reservation needs it."""
    if f.size is not None:
        return f
    resp = _get(client, f.uri, method="HEAD")
    length = resp.headers.get("content-length")
    if resp.status_code != 200 or not length:
        raise SourceUnavailable(f"{f.uri}: HTTP {resp.status_code}, size unknown")
    return RemoteFile(f.uri, f.name, int(length), f.md5)


def _sra_run(run: Run, uri: str, size: int, md5: str | None, source: str, expansion: float) -> ResolvedRun:
    f = RemoteFile(uri, f"{run.run}.sra", size, md5)
    return ResolvedRun(run, source, (f,), None, int(size * expansion), None)


def resolve_aws(run: Run, client: httpx.Client, base_url: str, expansion: float = SRA_EXPANSION) -> ResolvedRun:
    """The AWS ODP object `<base>/<run>/<run>` (or the metadata's AWS_Link), sized with a HEAD request."""
    uri = run.aws_link if run.aws_link and run.aws_link.startswith(("http://", "https://")) else None
    uri = uri or f"{base_url.rstrip('/')}/{run.run}/{run.run}"
    resp = _get(client, uri, method="HEAD")
    length = resp.headers.get("content-length")
    if resp.status_code != 200 or not length:
        raise SourceUnavailable(f"AWS ODP has no object for {run.run} (HTTP {resp.status_code} for {uri})")
    return _sra_run(run, uri, int(length), None, "aws", expansion)


def resolve_ncbi(run: Run, client: httpx.Client, sdl_url: str, expansion: float = SRA_EXPANSION) -> ResolvedRun:
    """NCBI SDL v2: the full-quality `.sra` file of the run and a free location for it."""
    resp = _get(client, sdl_url, {"acc": run.run, "accept-alternate-locations": "yes"})
    try:
        result = resp.json()["result"][0]
    except (ValueError, KeyError, IndexError) as exc:
        if resp.status_code == 200 and _looks_like_html(resp):
            raise SourceTransient(f"NCBI SDL answered an HTML page instead of JSON for {run.run}; will retry") from exc
        raise SourceUnavailable(f"NCBI SDL answered {resp.status_code} without a result for {run.run}") from exc
    for f in result.get("files", []):
        if f.get("type") != "sra" or str(f.get("name", "")).endswith(".noqual"):
            continue
        locs = [loc for loc in f.get("locations", []) if not loc.get("payRequired") and loc.get("link")]
        locs.sort(key=lambda loc: {"sra-ncbi": 0, "s3": 1, "gs": 2}.get(loc.get("service"), 3))
        if locs and str(f.get("size", "")).isdigit():
            md5 = f.get("md5") if MD5.match(str(f.get("md5", ""))) else None
            return _sra_run(run, locs[0]["link"], int(f["size"]), md5, "ncbi", expansion)
    raise SourceUnavailable(f"NCBI SDL has no free .sra for {run.run}: {result.get('msg', 'no usable file')}")


def _explicit_size(uri: str, client: httpx.Client, s3: Callable[[], object] | None) -> int:
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
        return _with_size(client, RemoteFile(uri, "x", None)).size or 0
    if scheme == "s3":
        from botocore.exceptions import BotoCoreError, ClientError

        from genoflows.fetch import TransientFetchError, classify_s3_error, s3_client, split_s3_uri

        bucket, key = split_s3_uri(uri)
        try:
            return int((s3() if s3 else s3_client()).head_object(Bucket=bucket, Key=key)["ContentLength"])
        except (ClientError, BotoCoreError) as exc:
            err = classify_s3_error(uri, exc)
            raise (SourceTransient(str(err)) if isinstance(err, TransientFetchError) else err) from exc
    path = Path(urlparse(uri).path if scheme == "file" else uri)
    if not path.is_file():
        raise ResolveError(f"{uri}: no such file (from the metadata's fastq_uris)")
    return path.stat().st_size


def resolve_explicit(run: Run, client: httpx.Client, s3: Callable[[], object] | None = None) -> ResolvedRun:
    """URIs given in the metadata: 2 = paired, 1 = single; local names derived from the run id."""
    if len(run.uris) not in (1, 2):
        raise ResolveError(f"{run.run}: fastq_uris must list 1 (single) or 2 (paired) files, got {len(run.uris)}")
    layout = "paired" if len(run.uris) == 2 else "single"
    files = []
    for i, uri in enumerate(run.uris):
        gz = ".gz" if uri.endswith(".gz") else ""
        name = f"{run.run}_{i + 1}.fastq{gz}" if layout == "paired" else f"{run.run}.fastq{gz}"
        md5 = run.md5s[i] if i < len(run.md5s) and MD5.match(run.md5s[i]) else None
        files.append(RemoteFile(uri, name, _explicit_size(uri, client, s3), md5))
    return ResolvedRun(run, "explicit", tuple(files), layout, sum(f.size or 0 for f in files), None,  # type: ignore[arg-type]
                       _layout_note(run, layout, "the given"))  # fmt: skip


@dataclass(frozen=True)
class Endpoints:
    ena_base_url: str
    sra_odp_base_url: str
    ncbi_sdl_url: str
    sra_expansion: float = SRA_EXPANSION
    timeout_s: float = 30.0
    s3: Callable[[], object] | None = None  # an S3 client factory (credentials) for explicit s3:// URIs


def resolve_run(run: Run, order: Sequence[str], endpoints: Endpoints, client: httpx.Client) -> ResolvedRun:
    """The first source in `order` that has the run; ResolveError listing every source's answer."""
    if run.uris:
        return resolve_explicit(run, client, endpoints.s3)
    reasons = []
    for source in order:
        try:
            if source == "ena":
                return resolve_ena(run, client, endpoints.ena_base_url)
            if source == "aws":
                return resolve_aws(run, client, endpoints.sra_odp_base_url, endpoints.sra_expansion)
            if source == "ncbi":
                return resolve_ncbi(run, client, endpoints.ncbi_sdl_url, endpoints.sra_expansion)
            raise ResolveError(f"unknown source {source!r}; choose from {SOURCES}")
        except SourceUnavailable as exc:
            reasons.append(f"{source}: {exc}")
    raise ResolveError(f"no source has {run.run} ({'; '.join(reasons) or 'no sources given'})")


def resolve_all(
    runs: Sequence[Run], order: Sequence[str], endpoints: Endpoints, *, workers: int = 8
) -> tuple[list[ResolvedRun], list[tuple[str, str]], list[tuple[str, str]]]:
    """Resolve runs concurrently (one HTTP round trip each). Returns (resolved, failed, transient): `failed`
    runs no source has, `transient` runs a service could not answer for now (worth retrying); never raises."""
    bad = [s for s in order if s not in SOURCES]
    if bad:
        raise ResolveError(f"unknown source(s) {bad}; choose from {SOURCES}")
    resolved: list[ResolvedRun] = []
    failed: list[tuple[str, str]] = []
    transient: list[tuple[str, str]] = []
    with httpx.Client(timeout=endpoints.timeout_s) as client, ThreadPoolExecutor(max(1, workers)) as pool:
        futures = [(r, pool.submit(resolve_run, r, order, endpoints, client)) for r in runs]
        for r, fut in futures:
            try:
                resolved.append(fut.result())
            except SourceTransient as exc:
                transient.append((r.run, str(exc)))
            except (ResolveError, SourceUnavailable) as exc:
                failed.append((r.run, str(exc)))
            except Exception as exc:  # noqa: BLE001 - S3, HTTP, OS or anything else: that run fails, not the species
                failed.append((r.run, f"{type(exc).__name__}: {exc}"))
    return resolved, failed, transient
