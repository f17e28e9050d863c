"""Bring truth sets and the reference genome into the reference cache, verified and indexed.

The download itself is injected (`Fetcher`): the Prefect task passes `tasks.fetch.fetch_file` under the project's
retry policy, tests and scripts can pass `genoflows.fetch.fetch`. Every download, checksum sidecars included,
goes through it, so one retry policy covers all of them. What lives here is the policy around it:
- a file already in the cache is re-checked (`genoflows.fetch.check_cached`: its pinned size and sha256, the
  start and end of its content); one that fails is discarded and fetched again (a miss), never trusted;
- otherwise a published md5 is looked up (`catalogue.checksum_sources`, then the release's `current.tree`;
  first hit wins): only a definite 404 means "not published there"; a sidecar or tree that keeps failing fails
  the download, naming it;
- the sha256 pinned by an earlier download is reused, and the download is verified against both and against
  its content (`genoflows.verify`) before it is kept;
- a fresh download is pinned (sha256 + size) in `<reference_dir>/giab-manifest.json` only after it passed;
- a missing .tbi is built locally; a gzipped FASTA is decompressed once and faidx-indexed (temp name, rename).
"""

from __future__ import annotations

import gzip
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import pysam
from filelock import FileLock

from genoflows import verify
from genoflows.fetch import (
    BadSourceFile,
    FetchResult,
    NotFound,
    check_cached,
    discard_cached,
    file_digest,
    redact_url,
)
from genoflows.files import atomic_output
from genoflows.giab.catalogue import RemoteFile, TruthFiles
from genoflows.giab.checksums import TREE_NAME, Manifest, md5_for, md5_from_tree
from genoflows.giab.query import build_tbi

Log = Callable[[str], None]
Fetcher = Callable[..., FetchResult | None]  # fetch(uri, dest, md5=, sha256=, kind=, missing_ok=)


class CacheMismatch(RuntimeError):
    """A cached file no longer matches what was pinned when it was downloaded (it is then fetched again)."""


@dataclass
class LocalTruth:
    """A truth set in the local cache."""

    label: str
    vcf: Path
    bed: Path | None


@dataclass
class Brought:
    path: Path
    downloaded: bool
    checksum: str  # how it was verified: "md5 <source>", "sha256 pin", "pinned now", "cached"


def find_published_md5(remote: RemoteFile, fetcher: Fetcher, workdir: Path) -> tuple[str | None, str | None]:
    """(md5, where it was found) from the first checksum source that lists the file, else (None, None).

    Each listing is fetched with `fetcher` (the same retry policy as the file itself). Only `NotFound` (HTTP 404,
    no such object or file) moves on to the next name; any other failure propagates and names the listing, so
    a flaky mirror never silently downgrades a download to "no published checksum"."""
    memo: dict[str, str | None] = {}
    with tempfile.TemporaryDirectory(prefix=".md5-", dir=workdir) as tmp:
        for i, url in enumerate(remote.md5_sources):
            if url not in memo:
                try:  # a folder per listing keeps its real name (the task run is named after it)
                    name = PurePosixPath(urlparse(url).path).name or "checksums"
                    got = fetcher(url, Path(tmp) / str(i) / name, kind="checksum", missing_ok=True)
                    # A listing is short; a release's current.tree lists every file of the FTP: read it whole.
                    limit = None if name == TREE_NAME else 1_000_000
                    memo[url] = got.path.read_text(errors="replace")[:limit] if got is not None else None
                except NotFound:
                    memo[url] = None
            text = memo[url]
            if text and (md5 := _md5_in(text, url, remote)):
                return md5, url
    return None, None


def _md5_in(text: str, source_url: str, remote: RemoteFile) -> str | None:
    """The md5 of `remote` in the listing fetched from `source_url`: a `current.tree` by the file's path below the
    tree's directory, any other listing by file name (`md5_for`)."""
    if PurePosixPath(urlparse(source_url).path).name != TREE_NAME:
        return md5_for(text, remote.name, source_url)
    tree_dir = source_url.rsplit("/", 1)[0] + "/"
    if not remote.url.startswith(tree_dir):
        return None
    return md5_from_tree(text.splitlines(), urlparse(remote.url[len(tree_dir):]).path)


def bring(remote: RemoteFile, root: Path, fetcher: Fetcher, *, log: Log | None = None, kind: str | None = None) -> Brought:
    """Make `root/remote.relpath` present and verified; download only when it is not cached or fails its check."""
    dest = Path(root) / remote.relpath
    manifest = Manifest(root)
    pin = manifest.get(remote.relpath)
    kind = kind or verify.infer_kind(dest.name)
    if dest.exists():
        problem = check_cached(dest, kind=kind, sha256=pin.sha256 if pin else None, size=pin.size if pin else None)
        if problem is None:
            if pin is None:  # verified in full just now (check_cached has no record to lean on): pin it
                manifest.pin(remote.relpath, url=redact_url(remote.url), sha256=file_digest(dest, "sha256"),
                             size=dest.stat().st_size, md5_source=None)
            return Brought(dest, False, "cached")
        if pin is not None and file_digest(dest, "sha256") == pin.sha256:  # pinned from a bad body: forget it
            manifest.unpin(remote.relpath)
            pin = None
        if log:
            log(f"cached {dest.name} fails its check ({problem}); discarding it and downloading it again")
        discard_cached(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    md5, md5_source = find_published_md5(remote, fetcher, dest.parent)
    result = fetcher(remote.url, dest, md5=md5, sha256=pin.sha256 if pin else None, kind=kind)
    how = f"md5 from {redact_url(md5_source)}" if md5 else ("sha256 pinned earlier" if pin else "no published checksum")
    how += f", content checked ({kind})"
    if pin is None:
        manifest.pin(
            remote.relpath,
            url=redact_url(remote.url),  # the manifest is for people: no pre-signed tokens in it
            sha256=result.sha256 or file_digest(result.path, "sha256"),
            size=result.path.stat().st_size,
            md5_source=redact_url(md5_source) if md5_source else None,
        )
        how += "; sha256 pinned now"
    if log:
        log(f"{dest.name}: {'downloaded' if result.downloaded else 'cached'}, verified by {how}")
    return Brought(result.path, result.downloaded, how)


def bring_truth(
    truth: TruthFiles,
    root: Path,
    fetcher: Fetcher,
    *,
    log: Log | None = None,
    provenance_dir: Path | None = None,
) -> tuple[LocalTruth, list[Brought]]:
    """Truth VCF, its index (built locally when the mirror has none) and the confident-region BED."""
    got = [bring(truth.vcf, root, fetcher, log=log)]
    vcf = got[0].path
    try:
        got.append(bring(truth.tbi, root, fetcher, log=log))
    except (NotFound, BadSourceFile) as exc:
        if log:
            log(f"no usable index for {vcf.name} on the mirror ({exc}); indexing it locally")
        with FileLock(str(vcf.parent / f".{vcf.name}.tbi.lock")):
            if not Path(f"{vcf}.tbi").exists():
                build_tbi(vcf, log=log, provenance_dir=provenance_dir)
    bed = None
    if truth.bed is not None:
        got.append(bring(truth.bed, root, fetcher, log=log))
        bed = got[-1].path
    return LocalTruth(truth.label, vcf, bed), got


def indexed_fasta(path: Path, *, log: Log | None = None) -> Path:
    """An uncompressed, faidx-indexed FASTA next to `path` (decompressed once when `path` is gzipped).

    A prepared FASTA whose .fai does not fit it (a killed or tampered preparation) is prepared again."""
    path = Path(path)
    target = path.with_name(path.name.removesuffix(".gz")) if path.name.endswith(".gz") else path
    fai = Path(f"{target}.fai")
    with FileLock(str(target.parent / f".{target.name}.prepare.lock")):
        if target.exists() and fai.exists() and fai_fits(target):
            return target
        if target != path:
            if log:
                log(f"decompressing {path.name} (hap.py and bcftools norm need a plain or bgzipped+faidx FASTA)")
            with atomic_output(target, index="fai") as tmp, gzip.open(path, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        else:
            with atomic_output(fai) as tmp:
                pysam.faidx(str(target), "--fai-idx", str(tmp))
    return target


def fai_fits(fasta: Path) -> bool:
    """Does `<fasta>.fai` describe `fasta`? Its last record must end where the file ends (a cheap check that
    catches a truncated or replaced FASTA and a half-written index)."""
    fai = Path(f"{fasta}.fai")
    try:
        verify.check(fai, "fai")
        last = fai.read_text().strip().splitlines()[-1].split("\t")
        length, offset, bases, width = (int(x) for x in last[1:5])
    except (OSError, ValueError, IndexError, verify.ContentError):
        return False
    full, rest = divmod(length, bases) if bases else (0, 0)
    end = offset + full * width + (rest + (width - bases) if rest else 0)  # just past the last newline
    return end - (width - bases) <= fasta.stat().st_size <= end + width


def fasta_ready(fasta_relpath: str, root: Path) -> Path | None:
    """The prepared FASTA if the cache already has it (so a run needs no network at all)."""
    path = Path(root) / fasta_relpath
    target = path.with_name(path.name.removesuffix(".gz"))
    return target if target.exists() and Path(f"{target}.fai").exists() and fai_fits(target) else None
